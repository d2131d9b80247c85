"""Webhook endpoints, the delivery ledger and delivery health, over HTTP.

``/v1/webhook-endpoints``: the store's integrations (admin writes, viewer reads). An endpoint's
``secret`` is answered once, when it is made or rotated, and never again. ``/v1/deliveries``: every
e-mail and webhook delivery with its attempts; a replay sends a finished one again with the same
id (its ``webhook-id``, as Svix keeps a message's id), a recover does so for an endpoint's dead
and cancelled deliveries of a time range, and the kept messages of that range it never had a delivery
of. ``/v1/delivery-health``: per route, how delivery goes.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field, StringConstraints
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.common import EntityType
from schemas.notifications import CredentialName
from services.notifier import ledger, store, webhooks
from services.notifier.events import EVENT_TYPES
from services.notifier.ledger import AttemptRow, DeliveryRow
from services.notifier.settings import notifier_config
from services.notifier.state import state_of
from services.notifier.webhooks import EndpointRow
from storeops import outbound
from storeops.auth import Principal, Role, requires
from storeops.errors import Conflict, Invalid, NotFound
from storeops.http import CursorQuery, UtcTime, answers, encode_time_cursor, time_cursor
from storeops.service import Runtime, runtime

router = APIRouter(tags=["webhooks"])

Url = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
EventType = Annotated[str, StringConstraints(max_length=100)]
_NO_ENDPOINT = "No webhook endpoint with this id"
_NO_DELIVERY = "No delivery with this id"


class EndpointCreate(BaseModel):
    url: Url
    event_types: list[EventType] = Field(default_factory=list, max_length=len(EVENT_TYPES),
                                         description="The types it receives; omitted or empty: every type")
    description: str = Field(default="", max_length=500)
    headers_credential: CredentialName | None = Field(
        default=None, description="A credential whose value is a JSON object of extra headers to send")


class EndpointUpdate(BaseModel):
    url: Url | None = None
    event_types: list[EventType] | None = Field(default=None, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = Field(default=None, description="true re-enables a disabled endpoint")


class EndpointPublic(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    event_types: list[str]
    headers_credential: str | None
    enabled: bool
    disabled_reason: str | None
    created_by: str
    created_at: AwareDatetime
    updated_at: AwareDatetime
    failing_since: AwareDatetime | None
    previous_secret_until: AwareDatetime | None = Field(description="Until then the secret before the last rotation signs too")

    @classmethod
    def of(cls, row: EndpointRow) -> EndpointPublic:
        return cls(id=row.id, url=row.url, description=row.description, event_types=row.event_types,
                   headers_credential=row.headers_credential, enabled=row.enabled, disabled_reason=row.disabled_reason,
                   created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at,
                   failing_since=row.failing_since, previous_secret_until=row.previous_secret_until)


class EndpointCreated(EndpointPublic):
    secret: str = Field(description="The signing secret (whsec_...): shown this once")


class EndpointPage(BaseModel):
    items: list[EndpointPublic]
    next_cursor: str | None


class SecretRotated(BaseModel):
    secret: str = Field(description="The new signing secret: shown this once")
    previous_secret_until: AwareDatetime = Field(description="The old secret signs too until then")


class RecoverRequest(BaseModel):
    since: UtcTime = Field(description="Deliveries (and messages) made at or after")
    until: UtcTime | None = Field(default=None, description="Deliveries (and messages) made before; default: now")
    missed: bool = Field(default=True, description=(
        "Also send the range's messages of the endpoint's types that it never had a delivery of (it was created "
        "later, disabled, or did not take the type then); kept for message_retention_days"))


class Recovered(BaseModel):
    recovered: int = Field(description="Dead or cancelled deliveries of the range sent again")
    missed: int = Field(default=0, description="Messages of the range the endpoint never had a delivery of, sent now")


class AttemptPublic(BaseModel):
    number: int
    at: AwareDatetime
    outcome: str
    status_code: int | None
    latency_ms: float
    response: str | None = Field(description="The first bytes (at most 1 KiB) of the answer")
    error: str | None
    state_before: str
    state_after: str


DeliveryState = Literal["pending", "delivering", "delivered", "dead", "cancelled"]


class DeliveryPublic(BaseModel):
    id: uuid.UUID = Field(description="The webhook-id of every attempt; the basis of an e-mail's Message-ID")
    channel: str
    route: str
    endpoint_id: uuid.UUID | None
    recipient: str | None
    state: str
    attempts: int = Field(description="Attempts in the current round (a replay starts a new one)")
    due_at: AwareDatetime
    created_at: AwareDatetime
    updated_at: AwareDatetime
    delivered_at: AwareDatetime | None
    last_error: str | None
    payload: dict[str, Any]

    @classmethod
    def of(cls, row: DeliveryRow) -> DeliveryPublic:
        return cls(id=row.id, channel=row.channel, route=row.route, endpoint_id=row.endpoint_id, recipient=row.recipient,
                   state=row.state, attempts=row.attempts, due_at=row.due_at, created_at=row.created_at,
                   updated_at=row.updated_at, delivered_at=row.delivered_at, last_error=row.last_error, payload=row.payload)


class DeliveryDetail(DeliveryPublic):
    attempt_log: list[AttemptPublic]


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None


class RouteHealth(BaseModel):
    route: str = Field(description="endpoint:<id>, url:<host> (rules' webhooks) or smtp:<host:port>")
    endpoint_id: uuid.UUID | None
    state: Literal["healthy", "failing", "disabled"]
    last_success_at: AwareDatetime | None
    failing_since: AwareDatetime | None
    failure_streak: int
    queue_depth: int = Field(description="Deliveries pending or in flight")


class HealthPage(BaseModel):
    items: list[RouteHealth]
    next_cursor: str | None = Field(None, description="Always null: every route is on one page")


# --- endpoints ---------------------------------------------------------------------------------


async def _check(rt: Runtime[Any], session: AsyncSession, url: str | None, event_types: list[str] | None,
                 headers_credential: str | None) -> None:
    """422 for each problem: an unknown event type, a URL that may not be called, an unknown credential."""
    errors = [{"field": f"event_types[{i}]", "error": f"unknown event type {t!r}; one of {', '.join(EVENT_TYPES)}"}
              for i, t in enumerate(event_types or []) if t not in EVENT_TYPES]
    if url is not None and (why := await asyncio.to_thread(outbound.refusal, url, rt.settings.outbound.networks)):
        errors.append({"field": "url", "error": why})
    if headers_credential is not None and not await store.credential_names(session, [headers_credential]):
        errors.append({"field": "headers_credential", "error": f"unknown credential {headers_credential!r}"})
    if errors:
        raise Invalid(None, errors=errors)


async def _endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> EndpointRow:
    row = await session.get(EndpointRow, endpoint_id)
    if row is None:
        raise NotFound("endpoint_id", f"unknown webhook endpoint {endpoint_id}")
    return row


@router.post("/v1/webhook-endpoints", status_code=201)
async def create_endpoint(request: Request, body: EndpointCreate, who: Principal = requires(Role.admin)) -> EndpointCreated:
    """A new endpoint, enabled; the answer carries its signing secret, this once."""
    rt, now = runtime(request), datetime.now(UTC)
    secret = webhooks.new_secret()
    async with rt.sessions.begin() as session:
        await _check(rt, session, body.url, body.event_types, body.headers_credential)
        row = EndpointRow(id=uuid.uuid4(), url=body.url, description=body.description,
                          event_types=list(dict.fromkeys(body.event_types)), secret=state_of(rt).cipher.encrypt(secret),
                          headers_credential=body.headers_credential, enabled=True, created_by=who.name,
                          created_at=now, updated_at=now)
        session.add(row)
        await _audited(session, who, "webhook.endpoint_created", row.id, None, _view(row))
    return EndpointCreated(**EndpointPublic.of(row).model_dump(), secret=secret)


@router.get("/v1/webhook-endpoints")
async def list_endpoints(request: Request, cursor: CursorQuery = None, limit: int = Query(100, ge=1, le=1000),
                         _: Principal = requires(Role.viewer)) -> EndpointPage:
    """Endpoints, oldest first (no secrets)."""
    after = time_cursor(cursor)
    query = select(EndpointRow).order_by(EndpointRow.created_at, EndpointRow.id).limit(limit + 1)
    if after is not None:
        at, last = after
        query = query.where(or_(EndpointRow.created_at > at, and_(EndpointRow.created_at == at, EndpointRow.id > last)))
    async with runtime(request).sessions() as session:
        rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return EndpointPage(items=[EndpointPublic.of(r) for r in rows],
                        next_cursor=encode_time_cursor(rows[-1].created_at, rows[-1].id) if more else None)


@router.get("/v1/webhook-endpoints/{endpoint_id}", responses=answers(not_found=_NO_ENDPOINT))
async def get_endpoint(request: Request, endpoint_id: uuid.UUID, _: Principal = requires(Role.viewer)) -> EndpointPublic:
    async with runtime(request).sessions() as session:
        return EndpointPublic.of(await _endpoint(session, endpoint_id))


@router.patch("/v1/webhook-endpoints/{endpoint_id}", responses=answers(not_found=_NO_ENDPOINT))
async def update_endpoint(request: Request, endpoint_id: uuid.UUID, body: EndpointUpdate,
                          who: Principal = requires(Role.admin)) -> EndpointPublic:
    """Change what is given. Disabling cancels its waiting deliveries; enabling starts it afresh."""
    rt, now = runtime(request), datetime.now(UTC)
    async with rt.sessions.begin() as session:
        row = await _endpoint(session, endpoint_id)
        await _check(rt, session, body.url, body.event_types, None)
        before = _view(row)
        if body.url is not None:
            row.url = body.url
        if body.event_types is not None:
            row.event_types = list(dict.fromkeys(body.event_types))
        if body.description is not None:
            row.description = body.description
        if body.enabled is True and not row.enabled:
            row.enabled, row.disabled_reason, row.failing_since = True, None, None
        elif body.enabled is False and row.enabled:
            row.enabled, row.disabled_reason = False, f"disabled by {who.name}"
            await _cancel_waiting(session, row.id, f"endpoint disabled by {who.name}", now)
        row.updated_at = now
        after = _view(row)
        if changed := {k for k in after if after[k] != before[k]}:
            await _audited(session, who, "webhook.endpoint_changed", row.id, {k: before[k] for k in changed},
                           {k: after[k] for k in changed})
    return EndpointPublic.of(row)


@router.delete("/v1/webhook-endpoints/{endpoint_id}", status_code=204, responses=answers(not_found=_NO_ENDPOINT))
async def delete_endpoint(request: Request, endpoint_id: uuid.UUID, who: Principal = requires(Role.admin)) -> Response:
    """Remove the endpoint; its waiting deliveries are cancelled, its delivery records kept."""
    now = datetime.now(UTC)
    async with runtime(request).sessions.begin() as session:
        row = await _endpoint(session, endpoint_id)
        await _cancel_waiting(session, row.id, f"endpoint deleted by {who.name}", now)
        await _audited(session, who, "webhook.endpoint_deleted", row.id, _view(row), None)
        await session.delete(row)
    return Response(status_code=204)


@router.post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret", responses=answers(not_found=_NO_ENDPOINT))
async def rotate_secret(request: Request, endpoint_id: uuid.UUID, who: Principal = requires(Role.admin)) -> SecretRotated:
    """A new secret, answered this once; the current one signs too for the grace period."""
    rt, now = runtime(request), datetime.now(UTC)
    until = now + timedelta(seconds=notifier_config(rt.settings).secret_rotation_grace_seconds)
    secret = webhooks.new_secret()
    async with rt.sessions.begin() as session:
        row = await _endpoint(session, endpoint_id)
        row.previous_secret, row.previous_secret_until = row.secret, until
        row.secret, row.updated_at = state_of(rt).cipher.encrypt(secret), now
        await _audited(session, who, "webhook.secret_rotated", row.id, None, {"previous_secret_until": until.isoformat()})
    return SecretRotated(secret=secret, previous_secret_until=until)


@router.post("/v1/webhook-endpoints/{endpoint_id}/recover",
             responses=answers(not_found=_NO_ENDPOINT, conflict="The endpoint is disabled: enable it first"))
async def recover(request: Request, endpoint_id: uuid.UUID, body: RecoverRequest,
                  who: Principal = requires(Role.admin)) -> Recovered:
    """Send again the endpoint's dead and cancelled deliveries made in [since, until) and, unless ``missed``
    is false, the messages of that range it takes but never had a delivery of."""
    rt, now = runtime(request), datetime.now(UTC)
    until = body.until or now
    if until <= body.since:
        raise Invalid("until", "must be after since")
    async with rt.sessions.begin() as session:
        row = await _endpoint(session, endpoint_id)
        if not row.enabled:
            raise Conflict("endpoint_id", f"the endpoint is disabled ({row.disabled_reason}); enable it first")
        ids = (await session.scalars(select(DeliveryRow.id).where(
            DeliveryRow.endpoint_id == endpoint_id, DeliveryRow.state.in_(("dead", "cancelled")),
            DeliveryRow.created_at >= body.since, DeliveryRow.created_at < until))).all()
        recovered = await ledger.reopen(session, list(ids), now)
        missed = await webhooks.enqueue_missed(session, row, body.since, until, now) if body.missed else 0
        await _audited(session, who, "webhook.recovered", row.id, None,
                       {"since": body.since.isoformat(), "until": until.isoformat(), "recovered": recovered, "missed": missed})
    state_of(rt).deliveries_due.set()
    return Recovered(recovered=recovered, missed=missed)


def _view(row: EndpointRow) -> dict[str, Any]:
    """What an audit entry shows of an endpoint (never a secret)."""
    return {"url": row.url, "description": row.description, "event_types": list(row.event_types),
            "headers_credential": row.headers_credential, "enabled": row.enabled, "disabled_reason": row.disabled_reason}


async def _audited(session: AsyncSession, who: Principal, action: str, endpoint_id: uuid.UUID,
                   before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    await store.OUTBOX.audit_change(session, who.actor(), action, [(EntityType.WEBHOOK_ENDPOINT, str(endpoint_id))],
                                    before, after)


async def _cancel_waiting(session: AsyncSession, endpoint_id: uuid.UUID, why: str, now: datetime) -> None:
    await session.execute(update(DeliveryRow).where(DeliveryRow.endpoint_id == endpoint_id,
                                                    DeliveryRow.state.in_(ledger.OPEN_STATES))
                          .values(state="cancelled", last_error=why, updated_at=now))


# --- deliveries ---------------------------------------------------------------------------------


@router.get("/v1/deliveries")
async def list_deliveries(
    request: Request,
    endpoint_id: uuid.UUID | None = None,
    state: DeliveryState | None = None,
    channel: Literal["email", "webhook"] | None = None,
    since: UtcTime | None = Query(None, description="Made at or after"),
    cursor: CursorQuery = None,
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = requires(Role.viewer),
) -> DeliveryPage:
    """Deliveries, newest first."""
    query = select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id.desc()).limit(limit + 1)
    for column, value in ((DeliveryRow.endpoint_id, endpoint_id), (DeliveryRow.state, state), (DeliveryRow.channel, channel)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(DeliveryRow.created_at >= since)
    if (after := time_cursor(cursor)) is not None:
        at, last = after
        query = query.where(or_(DeliveryRow.created_at < at, and_(DeliveryRow.created_at == at, DeliveryRow.id < last)))
    async with runtime(request).sessions() as session:
        rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(items=[DeliveryPublic.of(r) for r in rows],
                        next_cursor=encode_time_cursor(rows[-1].created_at, rows[-1].id) if more else None)


@router.get("/v1/deliveries/{delivery_id}", responses=answers(not_found=_NO_DELIVERY))
async def get_delivery(request: Request, delivery_id: uuid.UUID, _: Principal = requires(Role.viewer)) -> DeliveryDetail:
    """One delivery with every attempt, oldest first."""
    async with runtime(request).sessions() as session:
        row = await session.get(DeliveryRow, delivery_id)
        if row is None:
            raise NotFound("delivery_id", f"unknown delivery {delivery_id}")
        attempts = (await session.scalars(select(AttemptRow).where(AttemptRow.delivery_id == delivery_id)
                                          .order_by(AttemptRow.number, AttemptRow.seq))).all()
    return DeliveryDetail(**DeliveryPublic.of(row).model_dump(), attempt_log=[
        AttemptPublic(number=a.number, at=a.at, outcome=a.outcome, status_code=a.status_code, latency_ms=a.latency_ms,
                      response=a.response, error=a.error, state_before=a.state_before, state_after=a.state_after)
        for a in attempts])


@router.post("/v1/deliveries/{delivery_id}/replay", status_code=202,
             responses=answers(not_found=_NO_DELIVERY, conflict="Not finished yet, or its endpoint is disabled"))
async def replay(request: Request, delivery_id: uuid.UUID, who: Principal = requires(Role.admin)) -> DeliveryPublic:
    """Send a finished delivery again: a new round of attempts, due now, with the same id (``webhook-id``)."""
    rt, now = runtime(request), datetime.now(UTC)
    async with rt.sessions.begin() as session:
        row = await session.get(DeliveryRow, delivery_id)
        if row is None:
            raise NotFound("delivery_id", f"unknown delivery {delivery_id}")
        if row.state in ledger.OPEN_STATES:
            raise Conflict("delivery_id", f"the delivery is {row.state}: it goes out already")
        if row.endpoint_id is not None:
            endpoint = await session.get(EndpointRow, row.endpoint_id)
            if endpoint is None or not endpoint.enabled:
                raise Conflict("delivery_id", "its endpoint is " + ("deleted" if endpoint is None else "disabled"))
        before = {"state": row.state, "attempts": row.attempts}
        await ledger.reopen(session, [row.id], now)
        await session.refresh(row)
        entities = [(EntityType.DELIVERY, str(row.id))]
        if row.endpoint_id is not None:
            entities.append((EntityType.WEBHOOK_ENDPOINT, str(row.endpoint_id)))
        await store.OUTBOX.audit_change(session, who.actor(), "delivery.replayed", entities, before,
                                        {"state": row.state, "attempts": row.attempts})
    state_of(rt).deliveries_due.set()
    return DeliveryPublic.of(row)


@router.get("/v1/delivery-health")
async def delivery_health(request: Request, _: Principal = requires(Role.viewer)) -> HealthPage:
    """Per endpoint, SMTP server and URL host: state, last success, failure streak, queue depth."""
    async with runtime(request).sessions() as session:
        items = await webhooks.health(session)
    webhooks.publish(items)
    return HealthPage(items=[RouteHealth(**i) for i in items])
