"""Webhooks: the store's endpoints, and the one sender for them and for rules' ``call_webhook`` steps.

An endpoint receives every occurrence of the types it names (none: every type), store-wide, signed
as Standard Webhooks say: ``webhook-id`` (the delivery's id, the same on every attempt),
``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``
with the ``whsec_`` secret; during a rotation's grace period one signature per secret, space
separated). ``headers_credential`` names a credential whose value is a JSON object of extra
headers (``{"X-Api-Key": "..."}``); they never replace the three signing headers.

A 2xx within ``webhook_timeout_seconds`` is a success; anything else is a failure and is retried
on the schedule, a redirect included (it is not followed). 410 disables the endpoint, as does an
endpoint failing without a success for ``endpoint_disable_after_seconds``; its waiting deliveries
are cancelled (``POST .../recover`` sends them later) and ``ledger.on_trouble`` is told.

A rules' ``call_webhook`` request is sent as the rule wrote it (method, URL, headers, body) with
``webhook-id`` added; its credential's value is the ``Authorization`` header's value, verbatim
(``Bearer abc``, ``Basic ...``). Its health is tracked per host (``url:<host>``).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import secrets
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Boolean, String, Text, Uuid, delete, event, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column
from standardwebhooks.webhooks import Webhook

from schemas.common import Actor, EntityType
from schemas.envelope import deterministic_id
from services.notifier import ledger, metrics
from services.notifier.credentials import Cipher, credential_value
from services.notifier.errors import NotifierError
from services.notifier.events import Occurrence
from services.notifier.ledger import Attempt, DeliveryRow, RouteRow, Trouble
from services.notifier.settings import NotifierConfig, notifier_config
from services.notifier.state import state_of
from services.notifier.store import OUTBOX, Base, CredentialRow
from storeops import outbound
from storeops.db import JSONType, UTCDateTime, insert_ignore, table_of
from storeops.service import Runtime

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
NOTIFIER = Actor(kind="system", name="notifier")  # who disables an endpoint that failed too long, or answered 410
USER_AGENT = "storeops-notifier"
SIGNING_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})


class MessageRow(Base):
    """An occurrence as endpoints receive it (Svix' message), kept for ``message_retention_days`` whether
    or not an endpoint took it, so that a recover can send it to an endpoint that never got it (what
    Convoy's users ask for: an endpoint added or re-enabled after the fact)."""

    __tablename__ = "webhook_messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # message_id(type, occurrence id)
    occurrence_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)


class EndpointRow(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500))
    event_types: Mapped[list[str]] = mapped_column(JSONType)  # empty: every type
    secret: Mapped[str] = mapped_column(Text)  # encrypted with the notifier's cipher
    previous_secret: Mapped[str | None] = mapped_column(Text)  # encrypted; signs too until previous_secret_until
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    headers_credential: Mapped[str | None] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 24 random bytes in base64 (as Svix makes them)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def endpoint_route(endpoint_id: uuid.UUID) -> str:
    return f"endpoint:{endpoint_id}"


def signatures(secrets_: Sequence[str], msg_id: str, at: datetime, body: str) -> str:
    """The ``webhook-signature`` value: one ``v1,`` signature per secret, space separated."""
    return " ".join(Webhook(s).sign(msg_id, at, body) for s in secrets_)


def matches(endpoint: EndpointRow, occurrence: Occurrence) -> bool:
    return not endpoint.event_types or occurrence.type in endpoint.event_types


def body_of(occurrence: Occurrence, now: datetime) -> dict[str, Any]:
    """What an endpoint receives for ``occurrence``: its type, when it was enqueued, its data."""
    return {"type": occurrence.type, "timestamp": now.isoformat(), "data": occurrence.payload}


async def enqueue_occurrences(session: AsyncSession, occurrences: Sequence[Occurrence], now: datetime,
                              keep_messages: bool = True) -> int:
    """One delivery per (enabled endpoint that takes the type) × occurrence; how many were new. Each
    occurrence is kept as a message too (unless ``keep_messages`` is off: retention 0), so a recover can
    send it to an endpoint that did not get it. Idempotent: a redelivered record enqueues nothing again.
    Set ``deliveries_due`` after the commit."""
    if not occurrences:
        return 0
    bodies = {(o.type, o.id): body_of(o, now) for o in occurrences}
    if keep_messages:
        await insert_ignore(session, table_of(MessageRow), [
            {"id": message_id(o.type, o.id), "occurrence_id": o.id, "type": o.type, "created_at": now,
             "body": bodies[(o.type, o.id)]} for o in occurrences])
    endpoints = (await session.scalars(select(EndpointRow).where(EndpointRow.enabled.is_(True)))).all()
    return await ledger.enqueue_all(session, (
        endpoint_delivery(endpoint.id, o.type, o.id, bodies[(o.type, o.id)]) for o in occurrences
        for endpoint in endpoints if matches(endpoint, o)), now)


def endpoint_delivery(endpoint_id: uuid.UUID, type_: str, occurrence_id: uuid.UUID, body: dict[str, Any],
                      owner: str | None = None) -> ledger.NewDelivery:
    """The delivery of an occurrence to an endpoint (its key: one per endpoint, type and occurrence)."""
    return ledger.NewDelivery("webhook", f"endpoint:{endpoint_id}:{type_}:{occurrence_id}", endpoint_route(endpoint_id),
                              body, owner, endpoint_id)


def message_id(type_: str, occurrence_id: uuid.UUID) -> uuid.UUID:
    return deterministic_id("webhook-message", type_, str(occurrence_id))


async def enqueue_missed(session: AsyncSession, endpoint: EndpointRow, since: datetime, until: datetime,
                         now: datetime, page: int = 1000) -> int:
    """Deliveries to ``endpoint`` of the kept messages of [since, until) that it takes and never had a
    delivery of (it was created later, disabled, or did not take the type then), with the body other
    endpoints received; how many. What it had a delivery of is left to ``recover``'s resend."""
    new, after = 0, (since, uuid.UUID(int=0))
    while True:
        query = (select(MessageRow).where(MessageRow.created_at < until,
                                          tuple_(MessageRow.created_at, MessageRow.id) > tuple_(*after))
                 .order_by(MessageRow.created_at, MessageRow.id).limit(page))
        if endpoint.event_types:
            query = query.where(MessageRow.type.in_(endpoint.event_types))
        rows = (await session.scalars(query)).all()
        new += await ledger.enqueue_all(session, (endpoint_delivery(endpoint.id, m.type, m.occurrence_id, m.body)
                                                  for m in rows), now)
        if len(rows) < page:
            return new
        after = (rows[-1].created_at, rows[-1].id)


async def purge_messages(rt: Runtime[Any]) -> None:
    """Forget messages older than ``message_retention_days`` (``ledger.periodic``)."""
    days = notifier_config(rt.settings).message_retention_days
    if days <= 0:
        return
    async with rt.sessions.begin() as session:
        await session.execute(delete(MessageRow).where(MessageRow.created_at < datetime.now(UTC) - timedelta(days=days)))


# --- sending ----------------------------------------------------------------------------------


CACHE_SECONDS = 2.0  # how long a send reuses the endpoint, secrets and credentials another send loaded


@dataclass(frozen=True)
class _Endpoint:
    """An endpoint as a send needs it: its secrets decrypted, its extra headers read."""

    url: str
    keys: tuple[str, ...]
    previous_until: datetime | None  # keys[1:] sign until then
    headers: dict[str, str]


class _Recent:
    """What sends loaded lately, each for ``CACHE_SECONDS``: with 50 sends in flight to one endpoint,
    one session (and one decryption) per send was most of a send's time. Forgotten whenever this
    process commits a change to an endpoint or a credential (``_forget_on_commit``); a change made by
    another process is seen within ``CACHE_SECONDS``."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[float, Any]] = {}
        self.generation = 0

    async def get(self, key: tuple[str, str], load: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        hit = self.items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self.generation
        value = await load()
        if generation == self.generation:  # not loaded across a change
            self.items[key] = (now + CACHE_SECONDS, value)
        return value

    def forget(self) -> None:
        self.items.clear()
        self.generation += 1


class WebhookSender:
    """Sends endpoint deliveries and rules' webhook requests (ledger channel ``webhook``)."""

    def __init__(self, rt: Runtime[Any]) -> None:
        self.rt = rt
        self.config = notifier_config(rt.settings)
        self.allow = rt.settings.outbound.networks
        self.cipher: Cipher = state_of(rt).cipher
        self.recent = _Recent()
        _LIVE.add(self)
        # One pool of delivery_concurrency connections, kept alive; redirects are answers, never followed.
        self.http = outbound.Client(self.allow, timeout=self.config.webhook_timeout_seconds,
                                    connections=self.config.delivery_concurrency, read_limit=ledger.EXCERPT_BYTES)

    async def close(self) -> None:
        await self.http.close()

    async def send(self, delivery: DeliveryRow) -> Attempt:
        try:
            method, url, headers, body = await self._request(delivery)
        except _Refused as exc:
            return Attempt("failed", detail=str(exc))
        except NotifierError as exc:  # a credential that does not decrypt: fixable, so retried
            return Attempt("retry", detail=str(exc))
        return await self._call(method, url, headers, body)

    async def _request(self, delivery: DeliveryRow) -> tuple[str, str, dict[str, str], str | None]:
        if delivery.endpoint_id is not None:
            return await self._endpoint_request(delivery, delivery.endpoint_id)
        message = delivery.payload  # a rules' request: the WebhookMessage as handed over (intake.delivery_of)
        headers = {**message.get("headers", {}), "webhook-id": str(delivery.id)}
        if message.get("credential"):
            value = await self._credential(message["credential"])
            if value is None:
                raise _Refused(f"credential {message['credential']!r} no longer exists")
            headers["Authorization"] = value
        return message.get("method", "POST"), message["url"], headers, message.get("body")

    async def _endpoint_request(self, delivery: DeliveryRow, endpoint_id: uuid.UUID) -> tuple[str, str, dict[str, str], str]:
        endpoint = await self.recent.get(("endpoint", str(endpoint_id)), lambda: self._load_endpoint(endpoint_id))
        if isinstance(endpoint, _Refused):
            raise endpoint
        now = datetime.now(UTC)
        keys = endpoint.keys if endpoint.previous_until and endpoint.previous_until > now else endpoint.keys[:1]
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
        headers = {**endpoint.headers, "content-type": "application/json", "user-agent": USER_AGENT,
                   "webhook-id": str(delivery.id), "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signatures(keys, str(delivery.id), now, body)}
        return "POST", endpoint.url, headers, body

    async def _load_endpoint(self, endpoint_id: uuid.UUID) -> _Endpoint | _Refused:
        """The endpoint ready to send to, or why it cannot be sent to (kept like the endpoint)."""
        async with self.rt.sessions() as session:
            row = await session.get(EndpointRow, endpoint_id)
        if row is None:
            return _Refused("the endpoint was deleted")
        if not row.enabled:
            return _Refused(f"the endpoint is disabled: {row.disabled_reason}")
        keys = [self.cipher.decrypt("endpoint secret", row.secret)]
        until = row.previous_secret_until
        if row.previous_secret and until and until > datetime.now(UTC):
            keys.append(self.cipher.decrypt("endpoint secret", row.previous_secret))
        try:
            headers = await self._extra_headers(row.headers_credential)
        except _Refused as exc:
            return exc
        return _Endpoint(row.url, tuple(keys), until, headers)

    async def _credential(self, name: str) -> str | None:
        async def load() -> str | None:
            async with self.rt.sessions() as session:
                return await credential_value(session, self.cipher, name)
        value: str | None = await self.recent.get(("credential", name), load)
        return value

    async def _extra_headers(self, name: str | None) -> dict[str, str]:
        if name is None:
            return {}
        value = await self._credential(name)
        if value is None:
            raise _Refused(f"headers credential {name!r} no longer exists")
        try:
            extra = json.loads(value)
        except ValueError:
            extra = None
        if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise _Refused(f"headers credential {name!r} is not a JSON object of string headers")
        return {k: v for k, v in extra.items() if k.lower() not in SIGNING_HEADERS}

    async def _call(self, method: str, url: str, headers: dict[str, str], body: str | None) -> Attempt:
        started = time.perf_counter()
        try:
            answer = await self.http.send(method, url, headers=headers, max_redirects=None,
                                          content=body.encode() if body is not None else None)
        except outbound.OutboundRefused as exc:
            # one error for every refusal; a name that does not resolve (a DNS outage, a record not
            # there yet) may resolve later, the rest will not change.
            outcome: Literal["retry", "failed"] = "retry" if "does not resolve" in str(exc) else "failed"
            return Attempt(outcome, detail=f"refused: {exc}", latency_ms=_since(started))
        except outbound.SendFailed as exc:
            return Attempt("retry", None, _since(started), str(exc)[:500])
        return judge(answer, _since(started))


class _Refused(Exception):
    """The delivery cannot be sent as it stands (permanent): why."""


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def judge(answer: outbound.Answer, latency_ms: float) -> Attempt:
    """The attempt an answer makes: 2xx delivered, 410 gone, a redirect or anything else retried (429 and
    503 after their Retry-After)."""
    code, text = answer.status, answer.text[:ledger.EXCERPT_BYTES]
    if 200 <= code < 300:
        return Attempt("delivered", code, latency_ms, response=text)
    if code == 410:
        return Attempt("gone", code, latency_ms, "answered 410 Gone: disable me", response=text)
    if 300 <= code < 400:
        return Attempt("retry", code, latency_ms, f"answered {code}: a redirect is a failure", response=text)
    retry_after = retry_after_seconds(answer.headers.get("retry-after")) if code in (429, 503) else None
    return Attempt("retry", code, latency_ms, f"answered {code}", retry_after, text)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - (now or datetime.now(UTC))).total_seconds())


# --- what attempts do to endpoints -------------------------------------------------------------


async def disable(session: AsyncSession, endpoint: EndpointRow, reason: str, now: datetime) -> int:
    """Disable ``endpoint``, cancel its waiting deliveries and tell ``on_trouble``; how many were cancelled."""
    endpoint.enabled, endpoint.disabled_reason, endpoint.updated_at = False, reason[:500], now
    result = await session.execute(update(DeliveryRow).where(DeliveryRow.endpoint_id == endpoint.id,
                                                             DeliveryRow.state.in_(ledger.OPEN_STATES))
                                   .values(state="cancelled", last_error=f"endpoint disabled: {reason}"[:2000], updated_at=now))
    cancelled = int(getattr(result, "rowcount", 0))
    await OUTBOX.audit_change(session, NOTIFIER, "webhook.endpoint_disabled", [(EntityType.WEBHOOK_ENDPOINT, str(endpoint.id))],
                              {"enabled": True}, {"enabled": False, "disabled_reason": endpoint.disabled_reason,
                                                  "cancelled": cancelled})
    await ledger.tell(session, Trouble("endpoint_disabled", endpoint_route(endpoint.id), reason, now,
                                       endpoint_id=endpoint.id, owner=endpoint.created_by))
    return cancelled


async def settle(session: AsyncSession, delivery: DeliveryRow, attempt: Attempt, now: datetime,
                 config: NotifierConfig) -> None:
    """``ledger.after_attempt`` for endpoint deliveries: 410 disables, so does failing for too long."""
    if delivery.endpoint_id is None:
        return
    endpoint = await session.get(EndpointRow, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return
    if attempt.outcome == "delivered":
        if endpoint.failing_since is not None:  # no write otherwise: successes do not contend for the row
            endpoint.failing_since = None
    elif attempt.outcome == "gone":
        await disable(session, endpoint, "the endpoint answered 410 Gone", now)
    else:
        endpoint.failing_since = endpoint.failing_since or now
        if now - endpoint.failing_since >= timedelta(seconds=config.endpoint_disable_after_seconds):
            await disable(session, endpoint, f"failing since {endpoint.failing_since.isoformat()} without a success", now)


ledger.after_attempt.append(settle)
ledger.register("webhook", WebhookSender)


# --- what sends keep: forgotten when this process changes an endpoint or a credential -------------

_LIVE: weakref.WeakSet[WebhookSender] = weakref.WeakSet()
_WATCHED = frozenset({EndpointRow.__tablename__, CredentialRow.__tablename__})
_CHANGED = "storeops.webhooks_changed"


def _note_flush(session: Session, _context: Any) -> None:
    if any(isinstance(o, (EndpointRow, CredentialRow)) for o in (*session.new, *session.dirty, *session.deleted)):
        session.info[_CHANGED] = True


def _note_statement(state: ORMExecuteState) -> None:
    written = state.is_insert or state.is_update or state.is_delete
    table = getattr(state.statement, "table", None) if written else None
    if table is not None and getattr(table, "name", None) in _WATCHED:
        state.session.info[_CHANGED] = True


def _forget_on_commit(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        for sender in list(_LIVE):
            sender.recent.forget()


def _drop_on_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)


event.listen(Session, "after_flush", _note_flush)
event.listen(Session, "do_orm_execute", _note_statement)
event.listen(Session, "after_commit", _forget_on_commit)
event.listen(Session, "after_rollback", _drop_on_rollback)


# --- health ---------------------------------------------------------------------------------------


async def health(session: AsyncSession) -> list[dict[str, Any]]:
    """Per route (endpoint, URL host, SMTP server): state, last success, failure streak, queue depth."""
    routes = {r.route: r for r in (await session.scalars(select(RouteRow))).all()}
    depths = await ledger.queue_depths(session)
    endpoints = {endpoint_route(e.id): e for e in (await session.scalars(select(EndpointRow))).all()}
    out = []
    for name in sorted(set(routes) | set(depths) | set(endpoints)):
        route, endpoint = routes.get(name), endpoints.get(name)
        disabled = (endpoint is not None and not endpoint.enabled) or (endpoint is None and name.startswith("endpoint:"))
        streak = route.failure_streak if route else 0
        out.append({
            "route": name, "endpoint_id": endpoint.id if endpoint else None,
            "state": "disabled" if disabled else "failing" if streak else "healthy",
            "last_success_at": route.last_success_at if route else None,
            "failing_since": route.failing_since if route else None,
            "failure_streak": streak, "queue_depth": depths.get(name, 0),
        })
    return out


def publish(items: Sequence[dict[str, Any]]) -> None:
    """Set the per-route gauges from ``health``'s answer."""
    for item in items:
        route = item["route"]
        for state in ("healthy", "failing", "disabled"):
            metrics.ROUTE_UP.labels(route, state).set(1 if item["state"] == state else 0)
        metrics.ROUTE_STREAK.labels(route).set(item["failure_streak"])
        metrics.ROUTE_QUEUE.labels(route).set(item["queue_depth"])
        if item["last_success_at"] is not None:
            metrics.ROUTE_LAST_SUCCESS.labels(route).set(item["last_success_at"].timestamp())


async def refresh_gauges(rt: Runtime[Any]) -> None:
    async with rt.sessions() as session:
        publish(await health(session))


ledger.periodic.append(refresh_gauges)
ledger.periodic.append(purge_messages)
