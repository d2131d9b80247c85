"""Subscriptions and teams: who hears about what, on which channel. The tables, their
queries, and ``route``: the pure matching of occurrences to deliveries (no I/O, no clock).

The defaults, with nothing configured (``route``'s ``defaults``):
- the default team (settings default_recipient, "ops-team") hears every exception
  created / escalated / reopened / woke in-app, as long as it has no subscription of its
  own; every principal reads its Critical and High ones in their inbox (store.Audience);
- an exception's assignee hears those too, and "assigned to you", in-app, as long as
  they have no subscription of their own.
Critical severities (settings critical_severities) cannot be muted: the default in-app
notification of a critical exception goes out whatever the owner's subscriptions say,
and quiet hours never hold back a critical occurrence.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Boolean, Index, Integer, String, Uuid, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.notifier.events import Occurrence
from services.notifier.store import Base
from storeops.db import JSONType, UTCDateTime, insert_new, table_of

SubscriptionChannel = Literal["in_app", "email", "email_digest", "webhook"]
TEAM_PREFIX = "team:"
DEFAULT_TYPES = frozenset({"exception.created", "exception.escalated", "exception.reopened", "exception.woke"})
DEFAULT_SEVERITIES = frozenset({"Critical", "High"})  # what every principal reads of the default team's feed


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_owner", "owner"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    owner: Mapped[str] = mapped_column(String(205))  # a principal's name, or team:<name>
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)  # subscriptions_api.SubscriptionIn, as JSON
    enabled: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(200))


class TeamMemberRow(Base):
    __tablename__ = "team_members"
    __table_args__ = (Index("ix_team_members_member", "member"),)

    team: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[str] = mapped_column(String(200), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    added_by: Mapped[str] = mapped_column(String(200))


# --- the model route() works on ------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    tz: str

    def holds(self, now: datetime) -> bool:
        """Whether ``now`` falls in the quiet hours (which may span midnight)."""
        local = now.astimezone(ZoneInfo(self.tz)).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True)
class Subscription:
    id: uuid.UUID
    owner: str
    event_types: frozenset[str]
    channel: SubscriptionChannel = "in_app"
    severities: frozenset[str] = frozenset()  # empty: any
    exception_types: frozenset[str] = frozenset()
    entity: str | None = None
    address: str | None = None
    window: str | None = None
    tz: str = "UTC"
    endpoint_id: uuid.UUID | None = None
    quiet_hours: QuietHours | None = None
    enabled: bool = True

    @property
    def recipient(self) -> str:
        """The feed an in-app notification of this subscription lands in."""
        return self.owner.removeprefix(TEAM_PREFIX)

    def matches(self, occurrence: Occurrence, teams: Mapping[str, Collection[str]]) -> bool:
        if not self.enabled or occurrence.type not in self.event_types:
            return False
        if self.severities and occurrence.severity not in self.severities:
            return False
        if self.exception_types and occurrence.exception_type not in self.exception_types:
            return False
        if self.entity and occurrence.entity != self.entity:
            return False
        if occurrence.type == "exception.assigned":  # "assigned to me": the owner, or one of the team
            members = teams.get(self.recipient, ()) if self.owner.startswith(TEAM_PREFIX) else (self.owner,)
            return occurrence.assignee is not None and occurrence.assignee in members
        return True


@dataclass(frozen=True)
class InApp:
    occurrence: Occurrence
    recipient: str


@dataclass(frozen=True)
class Mail:
    occurrence: Occurrence
    recipient: str
    address: str


@dataclass(frozen=True)
class Held:
    """An e-mail kept for a digest (or until quiet hours end: window daily@<end>)."""

    occurrence: Occurrence
    recipient: str
    address: str
    window: str
    tz: str


@dataclass(frozen=True)
class Hook:
    occurrence: Occurrence
    endpoint_id: uuid.UUID
    owner: str


@dataclass
class Routing:
    in_app: list[InApp] = field(default_factory=list)
    email_now: list[Mail] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    webhooks: list[Hook] = field(default_factory=list)
    delayed: list[Held] = field(default_factory=list)  # e-mails quiet hours held back (also in ``held``)


# rule_run.failed says more than violation.detected: the one kept when a record is both for one feed
_PRECEDENCE = {"rule_run.failed": 1}


def route(occurrences: Sequence[Occurrence], subscriptions: Sequence[Subscription],
          teams: Mapping[str, Collection[str]], now: datetime, *, default_recipient: str,
          critical: Collection[str]) -> Routing:
    """Who gets what of ``occurrences``: at most one in-app notification per record and feed,
    at most one e-mail per record and address (now or held)."""
    owners = {s.owner for s in subscriptions}
    in_app: dict[tuple[uuid.UUID, str], InApp] = {}
    mails: dict[tuple[uuid.UUID, str], Mail | Held] = {}
    routing = Routing()
    for occurrence in occurrences:
        is_critical = occurrence.severity in critical
        for recipient in _default_recipients(occurrence, owners, default_recipient, is_critical):
            _keep(in_app, InApp(occurrence, recipient))
        for sub in subscriptions:
            if not sub.matches(occurrence, teams):
                continue
            quiet = not is_critical and sub.quiet_hours is not None and sub.quiet_hours.holds(now)
            _deliver(sub, occurrence, quiet, in_app, mails, routing)
    routing.in_app = list(in_app.values())
    routing.email_now = [m for m in mails.values() if isinstance(m, Mail)]
    routing.held = [m for m in mails.values() if isinstance(m, Held)]
    return routing


def _default_recipients(occurrence: Occurrence, owners: Collection[str], default_recipient: str,
                        is_critical: bool) -> list[str]:
    if not occurrence.type.startswith("exception."):
        return []
    found = []
    team_owner = TEAM_PREFIX + default_recipient
    if occurrence.type in DEFAULT_TYPES and (is_critical or team_owner not in owners):
        found.append(default_recipient)
    assignee = occurrence.assignee
    if assignee and assignee != default_recipient and (is_critical or assignee not in owners):
        if occurrence.type in DEFAULT_TYPES or occurrence.type == "exception.assigned":
            found.append(assignee)
    return found


def _deliver(sub: Subscription, occurrence: Occurrence, quiet: bool, in_app: dict[tuple[uuid.UUID, str], InApp],
             mails: dict[tuple[uuid.UUID, str], Mail | Held], routing: Routing) -> None:
    match sub.channel:
        case "in_app":  # an inbox is silent: quiet hours do not hold it back
            _keep(in_app, InApp(occurrence, sub.recipient))
        case "email" if quiet:
            assert sub.address is not None and sub.quiet_hours is not None  # SubscriptionIn requires both
            held = Held(occurrence, sub.recipient, sub.address, f"daily@{sub.quiet_hours.end:%H:%M}", sub.quiet_hours.tz)
            if (occurrence.id, sub.address) not in mails:
                mails[(occurrence.id, sub.address)] = held
                routing.delayed.append(held)
        case "email":
            assert sub.address is not None
            mails[(occurrence.id, sub.address)] = Mail(occurrence, sub.recipient, sub.address)  # now beats held
        case "email_digest":
            assert sub.address is not None and sub.window is not None
            mails.setdefault((occurrence.id, sub.address), Held(occurrence, sub.recipient, sub.address, sub.window, sub.tz))
        case "webhook":
            assert sub.endpoint_id is not None
            routing.webhooks.append(Hook(occurrence, sub.endpoint_id, sub.owner))


def _keep(in_app: dict[tuple[uuid.UUID, str], InApp], item: InApp) -> None:
    key = (item.occurrence.id, item.recipient)
    old = in_app.get(key)
    if old is None or _PRECEDENCE.get(item.occurrence.type, 0) > _PRECEDENCE.get(old.occurrence.type, 0):
        in_app[key] = item


# --- queries --------------------------------------------------------------------------------


def subscription_of(row: SubscriptionRow) -> Subscription:
    """The matching model of a stored subscription."""
    spec = row.spec
    filters = spec.get("filters") or {}
    quiet = spec.get("quiet_hours")
    return Subscription(
        id=row.id, owner=row.owner, event_types=frozenset(spec["event_types"]), channel=spec["channel"],
        severities=frozenset(filters.get("severities") or ()), exception_types=frozenset(filters.get("exception_types") or ()),
        entity=filters.get("entity"), address=spec.get("address"), window=spec.get("window"), tz=spec.get("tz") or "UTC",
        endpoint_id=uuid.UUID(spec["endpoint_id"]) if spec.get("endpoint_id") else None,
        quiet_hours=QuietHours(time.fromisoformat(quiet["start"]), time.fromisoformat(quiet["end"]), quiet["tz"])
        if quiet else None,
        enabled=row.enabled,
    )


async def all_subscriptions(session: AsyncSession) -> list[Subscription]:
    """Every subscription (the handler matches each batch against all of them)."""
    return [subscription_of(r) for r in (await session.scalars(select(SubscriptionRow))).all()]


async def list_subscriptions(session: AsyncSession, owner: str | None, after: uuid.UUID | None,
                             limit: int) -> Sequence[SubscriptionRow]:
    query = select(SubscriptionRow).order_by(SubscriptionRow.id).limit(limit)
    if owner is not None:
        query = query.where(SubscriptionRow.owner == owner)
    if after is not None:
        query = query.where(SubscriptionRow.id > after)
    return (await session.scalars(query)).all()


async def get_subscription(session: AsyncSession, subscription_id: uuid.UUID) -> SubscriptionRow | None:
    return await session.get(SubscriptionRow, subscription_id)


async def email_address_of(session: AsyncSession, recipient: str) -> str | None:
    """The address of the recipient's first enabled e-mail subscription (now before digest), if any."""
    owners = (recipient, TEAM_PREFIX + recipient)
    rows = (await session.scalars(select(SubscriptionRow).where(
        SubscriptionRow.owner.in_(owners), SubscriptionRow.enabled.is_(True)).order_by(SubscriptionRow.created_at))).all()
    ranked = sorted((r for r in rows if r.spec.get("address")), key=lambda r: r.spec["channel"] != "email")
    return ranked[0].spec["address"] if ranked else None


async def teams(session: AsyncSession) -> dict[str, set[str]]:
    """Every team and its members."""
    found: dict[str, set[str]] = {}
    for team, member in (await session.execute(select(TeamMemberRow.team, TeamMemberRow.member))).all():
        found.setdefault(team, set()).add(member)
    return found


async def teams_of(session: AsyncSession, member: str) -> set[str]:
    return set((await session.scalars(select(TeamMemberRow.team).where(TeamMemberRow.member == member))).all())


async def members_of(session: AsyncSession, team: str) -> list[str]:
    query = select(TeamMemberRow.member).where(TeamMemberRow.team == team).order_by(TeamMemberRow.member)
    return list((await session.scalars(query)).all())


async def add_member(session: AsyncSession, team: str, member: str, actor: str, now: datetime) -> bool:
    """True when ``member`` was not in ``team`` yet."""
    row = {"team": team, "member": member, "added_at": now, "added_by": actor}
    return bool(await insert_new(session, table_of(TeamMemberRow), [row]))


async def remove_member(session: AsyncSession, team: str, member: str) -> bool:
    result = await session.execute(delete(TeamMemberRow).where(TeamMemberRow.team == team, TeamMemberRow.member == member))
    return bool(getattr(result, "rowcount", 0))
