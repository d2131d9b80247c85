"""/v1/subscriptions: who hears about what, and the teams a subscription can belong to.

An operator manages their own subscriptions (owner = their name); an admin anyone's and the
teams' (owner = team:<name>) and the teams' members; a viewer reads.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.common import EntityType, ExceptionType, Severity
from schemas.notifications import EmailAddress
from services.notifier import mail
from services.notifier import subscriptions as subs
from services.notifier.events import EVENT_TYPES
from services.notifier.store import OUTBOX
from services.notifier.webhooks import EndpointRow
from storeops.auth import Principal, Role, requires
from storeops.errors import Forbidden, Invalid, NotFound
from storeops.http import CursorQuery, answers, decode_cursor, encode_cursor
from storeops.service import runtime

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]  # the vocabulary, spelled once in events.py
Owner = Annotated[str, StringConstraints(min_length=1, max_length=205, strip_whitespace=True)]
Name = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\s:/]+$")]
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_UNKNOWN = answers(not_found="No subscription with this id")


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severities: list[Severity] = Field(default_factory=list, max_length=4, description="Empty: any")
    exception_types: list[ExceptionType] = Field(default_factory=list, max_length=20, description="Empty: any")
    entity: str | None = Field(default=None, min_length=1, max_length=300, description='"<entity type>:<id>", e.g. "sku:A-1"')


class QuietHoursIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(description="HH:MM, local time in tz")
    end: str = Field(description="HH:MM; before start for hours that span midnight")
    tz: str = "UTC"


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner | None = Field(default=None, description="A principal's name or team:<name>; omitted: yours")
    event_types: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    filters: Filters = Field(default_factory=Filters)
    channel: subs.SubscriptionChannel = "in_app"
    address: EmailAddress | None = Field(default=None, description="Where e-mail goes (email, email_digest)")
    window: str | None = Field(default=None, description='The digest\'s window: "hourly" or "daily@HH:MM" (email_digest)')
    tz: str = Field(default="UTC", description="The recipient's time zone (IANA name) for the digest window")
    endpoint_id: uuid.UUID | None = Field(default=None, description="The webhook endpoint (webhook)")
    quiet_hours: QuietHoursIn | None = Field(default=None, description="Hold non-critical e-mail back during these hours")
    enabled: bool = True


class SubscriptionPublic(SubscriptionIn):
    id: uuid.UUID
    owner: str
    version: int
    created_at: AwareDatetime
    updated_at: AwareDatetime
    updated_by: str

    @classmethod
    def of(cls, row: subs.SubscriptionRow) -> SubscriptionPublic:
        return cls(**row.spec, id=row.id, owner=row.owner, enabled=row.enabled, version=row.version,
                   created_at=row.created_at, updated_at=row.updated_at, updated_by=row.updated_by)


def check(body: SubscriptionIn) -> None:
    """What a field's type cannot say: the fields each channel needs, clocks and time zones."""
    needs = {"email": ("address",), "email_digest": ("address", "window"), "webhook": ("endpoint_id",)}
    for name in needs.get(body.channel, ()):
        if getattr(body, name) is None:
            raise Invalid(name, f"required for channel {body.channel}")
    _zone(body.tz, "tz")
    if body.channel == "email_digest":
        assert body.window is not None
        try:
            mail.parse_window(body.window, body.tz)
        except ValueError as exc:
            raise Invalid("window", str(exc)) from None
    if body.quiet_hours is not None:
        for part in ("start", "end"):
            if not _CLOCK.match(getattr(body.quiet_hours, part)):
                raise Invalid(f"quiet_hours.{part}", "a time of day as HH:MM (00:00 to 23:59)")
        if body.quiet_hours.start == body.quiet_hours.end:
            raise Invalid("quiet_hours.end", "the same as start: quiet hours need a length")
        _zone(body.quiet_hours.tz, "quiet_hours.tz")
        if body.owner and body.owner.startswith(subs.TEAM_PREFIX):
            raise Invalid("quiet_hours", "quiet hours are a person's; a team's subscription has none")


async def endpoint_exists(session: AsyncSession, body: SubscriptionIn) -> None:
    """A webhook subscription names an endpoint that is there (422 naming endpoint_id)."""
    if body.channel == "webhook" and body.endpoint_id is not None \
            and await session.get(EndpointRow, body.endpoint_id) is None:
        raise Invalid("endpoint_id", f"no webhook endpoint {body.endpoint_id} (POST /v1/webhook-endpoints makes one)")


def _zone(name: str, field: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(field, "not an IANA time zone (such as Europe/Berlin)") from None


def may_manage(who: Principal, owner: str, field: str = "owner") -> None:
    """An operator manages their own; an admin anyone's and the teams'."""
    if who.may(Role.admin) or owner == who.name:
        return
    raise Forbidden(field, f"an operator manages their own subscriptions only ({who.name}); {owner} needs the role admin",
                    needed_role=Role.admin.value)


def _spec(body: SubscriptionIn) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude={"owner", "enabled"})


@router.post("", status_code=201)
async def create(request: Request, body: SubscriptionIn, who: Principal = requires(Role.operator)) -> SubscriptionPublic:
    """Subscribe: the owner (you, unless you are an admin naming someone or team:<name>) hears about these events."""
    owner = body.owner or who.name
    may_manage(who, owner)
    check(body.model_copy(update={"owner": owner}))
    now = datetime.now(UTC)
    row = subs.SubscriptionRow(id=uuid.uuid4(), owner=owner, spec=_spec(body), enabled=body.enabled, version=1,
                               created_at=now, updated_at=now, updated_by=who.name)
    async with runtime(request).sessions.begin() as session:
        await endpoint_exists(session, body)
        session.add(row)
        await _audited(session, who, "subscription.created", row, None, _view(row))
    return SubscriptionPublic.of(row)


@router.get("")
async def listed(request: Request, owner: str | None = Query(None, max_length=205), cursor: CursorQuery = None,
                 limit: int = Query(100, ge=1, le=1000), _: Principal = requires(Role.viewer)) -> dict[str, Any]:
    """Subscriptions, by id; ``owner`` narrows to one person's or team's."""
    position = decode_cursor(cursor)
    try:
        after = uuid.UUID(position) if position is not None else None
    except (TypeError, ValueError, AttributeError):
        raise Invalid("cursor", "not a cursor this service gave; use next_cursor of the previous page") from None
    async with runtime(request).sessions() as session:
        rows = await subs.list_subscriptions(session, owner, after, limit)
    items = [SubscriptionPublic.of(r).model_dump(mode="json") for r in rows]
    return {"items": items, "next_cursor": encode_cursor(str(rows[-1].id)) if len(rows) == limit else None}


@router.get("/{subscription_id}", responses=_UNKNOWN)
async def get(request: Request, subscription_id: uuid.UUID, _: Principal = requires(Role.viewer)) -> SubscriptionPublic:
    async with runtime(request).sessions() as session:
        row = await subs.get_subscription(session, subscription_id)
    if row is None:
        raise NotFound("subscription_id", "no subscription with this id")
    return SubscriptionPublic.of(row)


@router.put("/{subscription_id}", responses=_UNKNOWN)
async def replace(request: Request, subscription_id: uuid.UUID, body: SubscriptionIn,
                  who: Principal = requires(Role.operator)) -> SubscriptionPublic:
    """Replace a subscription (its owner stays; ``owner``, if given, must be the same)."""
    async with runtime(request).sessions.begin() as session:
        row = await subs.get_subscription(session, subscription_id)
        if row is None:
            raise NotFound("subscription_id", "no subscription with this id")
        may_manage(who, row.owner)
        if body.owner is not None and body.owner != row.owner:
            raise Invalid("owner", f"a subscription keeps its owner ({row.owner}); create a new one for {body.owner}")
        check(body.model_copy(update={"owner": row.owner}))
        await endpoint_exists(session, body)
        before = _view(row)
        row.spec, row.enabled, row.version = _spec(body), body.enabled, row.version + 1
        row.updated_at, row.updated_by = datetime.now(UTC), who.name
        after = _view(row)
        changed = {k for k in after if after[k] != before[k]}
        await _audited(session, who, "subscription.changed", row, {k: before[k] for k in changed},
                       {k: after[k] for k in changed})
    return SubscriptionPublic.of(row)


@router.delete("/{subscription_id}", status_code=204, responses=_UNKNOWN)
async def remove(request: Request, subscription_id: uuid.UUID, who: Principal = requires(Role.operator)) -> Response:
    async with runtime(request).sessions.begin() as session:
        row = await subs.get_subscription(session, subscription_id)
        if row is None:
            raise NotFound("subscription_id", "no subscription with this id")
        may_manage(who, row.owner)
        await _audited(session, who, "subscription.deleted", row, _view(row), None)
        await session.delete(row)
    return Response(status_code=204)


# --- teams --------------------------------------------------------------------------------


@router.get("/teams/{team}/members", responses=answers(not_found="No team of this name (a team is there once it has a member)"))
async def members(request: Request, team: Name, _: Principal = requires(Role.viewer)) -> dict[str, Any]:
    """A team's members."""
    async with runtime(request).sessions() as session:
        found = await subs.members_of(session, team)
    if not found:
        raise NotFound("team", "no team of this name (a team is there once it has a member)")
    return {"team": team, "members": found}


class Membership(BaseModel):
    team: str
    member: str


@router.put("/teams/{team}/members/{member}", responses={200: {"description": "A member already"},
                                                         201: {"model": Membership, "description": "Added"}})
async def add_member(request: Request, team: Name, member: Name, response: Response,
                     who: Principal = requires(Role.admin)) -> Membership:
    """Add a member: 201 when new, 200 when they were one already."""
    async with runtime(request).sessions.begin() as session:
        added = await subs.add_member(session, team, member, who.name, datetime.now(UTC))
        if added:
            await _member_audited(session, who, "team.member_added", team, member)
    response.status_code = 201 if added else 200
    return Membership(team=team, member=member)


@router.delete("/teams/{team}/members/{member}", status_code=204, responses=answers(not_found="Not a member of this team"))
async def remove_member(request: Request, team: Name, member: Name, who: Principal = requires(Role.admin)) -> Response:
    async with runtime(request).sessions.begin() as session:
        if not await subs.remove_member(session, team, member):
            raise NotFound("member", f"{member} is not a member of {team}")
        await _member_audited(session, who, "team.member_removed", team, member)
    return Response(status_code=204)


def _view(row: subs.SubscriptionRow) -> dict[str, Any]:
    return {"owner": row.owner, "enabled": row.enabled, "version": row.version, **row.spec}


async def _audited(session: AsyncSession, who: Principal, action: str, row: subs.SubscriptionRow,
                   before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    """The change's audit entry, in its transaction: it concerns the subscription and its owner."""
    owner = (EntityType.TEAM, row.owner.removeprefix(subs.TEAM_PREFIX)) if row.owner.startswith(subs.TEAM_PREFIX) \
        else (EntityType.PRINCIPAL, row.owner)
    await OUTBOX.audit_change(session, who.actor(), action, [(EntityType.SUBSCRIPTION, str(row.id)), owner], before, after)


async def _member_audited(session: AsyncSession, who: Principal, action: str, team: str, member: str) -> None:
    await OUTBOX.audit_change(session, who.actor(), action, [(EntityType.TEAM, team), (EntityType.PRINCIPAL, member)],
                              None if action == "team.member_added" else {"member": member},
                              {"member": member} if action == "team.member_added" else None)
