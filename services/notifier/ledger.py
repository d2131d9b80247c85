"""The delivery ledger: every e-mail and webhook delivery, its due time, its attempts.

One mechanism for every channel. A delivery is a row with a unique ``key`` (enqueuing the
same thing twice is a no-op) and an ``id`` that never changes: the ``webhook-id`` of every
attempt, the basis of an e-mail's ``Message-ID``. The loop (``run``) claims due rows,
hands each to the sender registered for its channel (``register``), records the attempt
and the state it leaves the row in, and schedules the next attempt. Attempts are recorded in
batches (``Recorder``): whatever finished while the last batch committed goes in one transaction.

The state before a send (``delivering``, with the claim's holder and expiry) is committed
before the send and the state after it with the attempt, so a process that dies in
between leaves a claim that expires; the row is then taken over and sent again with
the same id, which the receiver dedupes on. Nothing is lost; a resend is possible only
in that window.

Two processes share the work: on PostgreSQL the claim is ``SELECT ... FOR UPDATE SKIP
LOCKED``, so each due row is claimed by one of them. SQLite (the embedded default) runs
one notifier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from aiokafka.errors import KafkaError
from sqlalchemy import (
    BigInteger,
    CursorResult,
    Float,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.envelope import deterministic_id, utcnow
from schemas.notifications import NotificationCreated
from schemas.registry import NOTIFICATIONS
from services.notifier import metrics
from services.notifier.settings import NotifierConfig, notifier_config
from services.notifier.state import state_of
from services.notifier.store import Base, NotifyRequestRow, to_announce
from storeops.db import BigIntPK, JSONType, UTCDateTime, insert_new, table_of
from storeops.service import Runtime

log = logging.getLogger(__name__)

State = Literal["pending", "delivering", "delivered", "dead", "cancelled"]
OPEN_STATES: tuple[State, ...] = ("pending", "delivering")
EXCERPT_BYTES = 1024


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_state_due_at", "state", "due_at"),          # the loop's claim
        Index("ix_deliveries_endpoint_created_at", "endpoint_id", "created_at"),  # an endpoint's list, recover
        Index("ix_deliveries_route_state", "route", "state"),            # queue depth per route
        Index("ix_deliveries_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    channel: Mapped[str] = mapped_column(String(20))
    route: Mapped[str] = mapped_column(String(300))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    recipient: Mapped[str | None] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer)  # in the current round (a replay starts a new one)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class AttemptRow(Base):
    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_delivery_id_number", "delivery_id", "number"),)

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... over the delivery's life, replays included
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    response: Mapped[str | None] = mapped_column(Text)  # the first EXCERPT_BYTES of the answer
    error: Mapped[str | None] = mapped_column(Text)
    state_before: Mapped[str] = mapped_column(String(20))
    state_after: Mapped[str] = mapped_column(String(20))


class RouteRow(Base):
    """Health per route: what a run of failures looks like for one endpoint, SMTP server or URL host."""

    __tablename__ = "delivery_routes"

    route: Mapped[str] = mapped_column(String(300), primary_key=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_streak: Mapped[int] = mapped_column(BigInteger)


@dataclass
class Attempt:
    """What one send did. ``failed``: permanent, no retry; ``gone``: a 410, disable the endpoint."""

    outcome: Literal["delivered", "retry", "failed", "gone"]
    status_code: int | None = None
    latency_ms: float = 0
    detail: str = ""
    retry_after: float | None = None
    response: str | None = None  # the first bytes of the answer, if there was one


class Sender(Protocol):
    async def send(self, delivery: DeliveryRow) -> Attempt: ...

    async def close(self) -> None:
        """Let go of connections (the loop is ending)."""


@dataclass(frozen=True)
class Trouble:
    """Something a person should hear about: an endpoint disabled, or a delivery that died."""

    kind: Literal["endpoint_disabled", "delivery_dead"]
    route: str
    reason: str
    at: datetime
    delivery_id: uuid.UUID | None = None
    endpoint_id: uuid.UUID | None = None
    owner: str | None = None  # who created the endpoint, when it is one


Settle = Callable[[AsyncSession, DeliveryRow, Attempt, datetime, NotifierConfig], Awaitable[None]]

_SENDERS: dict[str, Callable[[Runtime[Any]], Sender]] = {}
# Called in the transaction that records an attempt (webhooks.py disables endpoints here).
after_attempt: list[Settle] = []
# Called in the transaction that disables an endpoint or dead-letters a delivery (the inbox tells people).
on_trouble: list[Callable[[AsyncSession, Trouble], Awaitable[None]]] = []
# Called by the loop every PERIODIC_SECONDS (webhooks.py refreshes the per-route gauges).
periodic: list[Callable[[Runtime[Any]], Awaitable[None]]] = []
PERIODIC_SECONDS = 5.0


def register(channel: str, factory: Callable[[Runtime[Any]], Sender]) -> None:
    """Deliveries of ``channel`` go out through ``factory(rt)`` (one per delivery loop)."""
    _SENDERS[channel] = factory


def delivery_id(key: str) -> uuid.UUID:
    """The id a delivery with ``key`` has: the same however often it is enqueued."""
    return deterministic_id("delivery", key)


def smtp_route(smtp_url: str | None) -> str:
    """The route e-mail is tracked under: ``smtp:<host:port>``, ``smtp:unset`` while there is no server."""
    if not smtp_url:
        return "smtp:unset"
    parts = urllib.parse.urlsplit(smtp_url)
    port = parts.port or (465 if parts.scheme == "smtps" else 587)
    return f"smtp:{parts.hostname}:{port}"


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to add: ``key`` makes it idempotent (its id is ``delivery_id(key)``)."""

    channel: str
    key: str
    route: str
    payload: dict[str, Any]
    recipient: str | None = None
    endpoint_id: uuid.UUID | None = None
    due_at: datetime | None = None


async def enqueue_all(session: AsyncSession, deliveries: Iterable[NewDelivery], now: datetime) -> int:
    """Add deliveries in one statement (idempotent on each key): how many were new. Set
    ``deliveries_due`` after the commit."""
    rows: dict[str, dict[str, Any]] = {}
    for d in deliveries:
        rows.setdefault(d.key, {"id": delivery_id(d.key), "key": d.key, "channel": d.channel, "route": d.route,
                                "endpoint_id": d.endpoint_id, "recipient": d.recipient, "payload": d.payload,
                                "state": "pending", "attempts": 0, "due_at": d.due_at or now, "created_at": now,
                                "updated_at": now})
    return len(await insert_new(session, table_of(DeliveryRow), rows.values()))


async def enqueue(session: AsyncSession, *, channel: str, key: str, route: str, payload: dict[str, Any], now: datetime,
                  due_at: datetime | None = None, endpoint_id: uuid.UUID | None = None,
                  recipient: str | None = None) -> bool:
    """Add one delivery (idempotent on ``key``): True when new. Set ``deliveries_due`` after the commit."""
    return bool(await enqueue_all(session, [NewDelivery(channel, key, route, payload, recipient, endpoint_id, due_at)], now))


async def cancel(session: AsyncSession, keys_or_ids: Iterable[str | uuid.UUID]) -> int:
    """Cancel deliveries not delivered yet (by key or id); how many. A send already in flight still
    completes, but its outcome no longer changes the row."""
    ids = {k if isinstance(k, uuid.UUID) else delivery_id(k) for k in keys_or_ids}
    if not ids:
        return 0
    result = await session.execute(update(DeliveryRow).where(DeliveryRow.id.in_(ids), DeliveryRow.state.in_(OPEN_STATES))
                                   .values(state="cancelled", updated_at=utcnow()))
    assert isinstance(result, CursorResult)
    return result.rowcount


async def reopen(session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime) -> int:
    """Send finished deliveries again (replay, recover): a new round of attempts, due now, same id."""
    if not ids:
        return 0
    result = await session.execute(
        update(DeliveryRow).where(DeliveryRow.id.in_(set(ids)), DeliveryRow.state.not_in(OPEN_STATES))
        .values(state="pending", attempts=0, due_at=now, claimed_by=None, claimed_until=None, updated_at=now))
    assert isinstance(result, CursorResult)
    return result.rowcount


def next_wait(schedule: Sequence[float], attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones (None: the schedule is exhausted).
    ``schedule[0]`` is the wait before the first attempt; a ``Retry-After`` longer than the step wins."""
    if attempts >= len(schedule):
        return None
    return max(schedule[attempts], retry_after or 0)


# --- the loop -------------------------------------------------------------------------------


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def claim(session: AsyncSession, worker: str, limit: int, now: datetime, claim_for: timedelta,
                channels: Iterable[str]) -> list[DeliveryRow]:
    """Due rows of ``channels``, and rows whose claim expired (their process died), now held by ``worker``.
    A channel no sender is registered for here waits for a process that has one.

    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` (rows another claim holds are skipped, and these
    stay locked until the commit), then the UPDATE. As one ``UPDATE ... WHERE id IN (SELECT ... LIMIT
    ... FOR UPDATE SKIP LOCKED)`` PostgreSQL may run the subquery again per row and claim more than
    the limit. SQLite: the UPDATE checks "still due" under its write lock, so even two processes on
    one file never claim a row twice.
    """
    due = or_((DeliveryRow.state == "pending") & (DeliveryRow.due_at <= now),
              (DeliveryRow.state == "delivering") & (DeliveryRow.claimed_until < now))
    candidates = (select(DeliveryRow.id).where(due, DeliveryRow.channel.in_(list(channels)))
                  .order_by(DeliveryRow.due_at).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list((await session.scalars(candidates)).all())
    if not ids:
        return []
    statement = (update(DeliveryRow).where(DeliveryRow.id.in_(ids), due)
                 .values(state="delivering", claimed_by=worker, claimed_until=now + claim_for, updated_at=now)
                 .returning(DeliveryRow).execution_options(synchronize_session=False))
    return list((await session.scalars(statement)).all())


class Loop:
    """One process's delivery loop; ``run`` drives it.

    A delivery holds its slot (``inflight``) from its claim until its attempt is committed, so a
    process that dies resends at most ``delivery_concurrency`` deliveries (with the same id).
    Sends hand their attempts to one ``Recorder``, which records whatever has finished meanwhile
    in one transaction.
    """

    def __init__(self, rt: Runtime[Any], senders: dict[str, Sender] | None = None) -> None:
        self.rt = rt
        self.config: NotifierConfig = notifier_config(rt.settings)
        self.senders = senders if senders is not None else {c: f(rt) for c, f in _SENDERS.items()}
        self.worker = _worker_name()
        self.inflight: set[asyncio.Task[None]] = set()
        self.recorder = Recorder(rt, self.worker, self.config)

    async def claim_some(self) -> int:
        """Claim what fits in the free slots and start sending it; how many were claimed."""
        free = min(self.config.delivery_concurrency - len(self.inflight), self.config.delivery_batch)
        if free <= 0 or not self.senders:
            return 0
        now = utcnow()
        async with self.rt.sessions.begin() as session:
            rows = await claim(session, self.worker, free, now, timedelta(seconds=self.config.claim_seconds), self.senders)
        for row in rows:
            task = asyncio.create_task(self.deliver(row), name=f"delivery-{row.id}")
            self.inflight.add(task)
            task.add_done_callback(self._done)
        return len(rows)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a delivery failed unexpectedly", exc_info=task.exception())

    async def deliver(self, row: DeliveryRow) -> None:
        started = time.perf_counter()
        try:
            attempt = await self.senders[row.channel].send(row)
        except Exception as exc:  # a sender's bug must not lose the delivery: recorded, retried
            log.exception("sender raised", extra={"delivery_id": str(row.id), "channel": row.channel})
            attempt = Attempt("retry", detail=f"sender error: {type(exc).__name__}: {exc}"[:500])
        if not attempt.latency_ms:
            attempt.latency_ms = (time.perf_counter() - started) * 1000
        await self.record(row, attempt)

    async def record(self, row: DeliveryRow, attempt: Attempt) -> State | None:
        """Hand ``attempt`` to the recorder and wait until it is committed (what ``record`` answered)."""
        return await self.recorder.record(row, attempt)

    async def close(self) -> None:
        for sender in self.senders.values():
            await sender.close()


RECORD_BATCH = 200  # attempts recorded per transaction at most
RECORD_TRIES = 3  # a batch that fails (a deadlock, SQLite busy) is tried again, then its sends fail


@dataclass
class Finished:
    """One send's attempt, waiting to be recorded; ``done`` answers ``record``'s verdict for it."""

    row: DeliveryRow
    attempt: Attempt
    done: asyncio.Future[State | None]


class Recorder:
    """Records finished attempts in batches: one transaction for whatever finished while the last one
    committed. Runs as a task while there is something to record (none is left pending when idle)."""

    def __init__(self, rt: Runtime[Any], worker: str, config: NotifierConfig) -> None:
        self.rt, self.worker, self.config = rt, worker, config
        self.queue: asyncio.Queue[Finished] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def record(self, row: DeliveryRow, attempt: Attempt) -> State | None:
        done: asyncio.Future[State | None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Finished(row, attempt, done))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain(), name="delivery-recorder")
        return await done

    async def _drain(self) -> None:
        while not self.queue.empty():
            batch = [self.queue.get_nowait() for _ in range(min(RECORD_BATCH, self.queue.qsize()))]
            try:
                states, notes = await self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - each send's task reports it; the claims expire and are resent
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            await _announce(self.rt, notes)
            for item, state in zip(batch, states, strict=True):
                metrics.ATTEMPTS.labels(item.row.channel, item.attempt.outcome).inc()
                metrics.LATENCY.labels(item.row.channel).observe(item.attempt.latency_ms / 1000)
                if not item.done.done():
                    item.done.set_result(state)

    async def _commit(self, batch: Sequence[Finished]) -> tuple[list[State | None], list[NotificationCreated]]:
        """Record ``batch`` in one transaction: each attempt's state after, and the in-app notices its
        trouble stored (``on_trouble``), to announce once committed."""
        for tries in range(1, RECORD_TRIES + 1):
            try:
                async with self.rt.sessions.begin() as session:
                    states = await record_batch(session, [(f.row, f.attempt) for f in batch], utcnow(), self.worker,
                                                self.config)
                    notes = to_announce(session)
                return states, notes
            except DBAPIError as exc:
                if tries == RECORD_TRIES or exc.connection_invalidated:
                    raise
                log.warning("recording attempts failed; trying again", extra={"error": repr(exc), "batch": len(batch)})
                await asyncio.sleep(0.05 * tries)
        raise AssertionError("unreachable")


async def _announce(rt: Runtime[Any], notes: Sequence[NotificationCreated]) -> None:
    """Trouble notices on the notifications topic, as every in-app notification is. They are in the inbox
    already (committed): a broker away loses the announcement only, which is logged."""
    if not notes:
        return
    try:
        await rt.emitter.emit(NOTIFICATIONS, notes)
    except KafkaError as exc:
        log.warning("trouble notices stored but not announced", extra={"notifications": len(notes), "error": repr(exc)})


async def record(session: AsyncSession, row: DeliveryRow, attempt: Attempt, now: datetime, worker: str,
                 config: NotifierConfig) -> State | None:
    """Record one ``attempt`` on the claimed ``row`` (``record_batch`` of one)."""
    [state] = await record_batch(session, [(row, attempt)], now, worker, config)
    return state


@dataclass
class _Outcome:
    """What one attempt does to its row, computed before anything is written."""

    row: DeliveryRow
    attempt: Attempt
    after: State
    due_at: datetime | None
    last_error: str | None


def _outcome(row: DeliveryRow, attempt: Attempt, now: datetime, config: NotifierConfig) -> _Outcome:
    after: State = "delivered" if attempt.outcome == "delivered" else "dead"
    due_at = None
    if attempt.outcome == "retry":
        wait = next_wait(config.retry_schedule_seconds, row.attempts + 1, attempt.retry_after)
        if wait is not None:
            after, due_at = "pending", now + timedelta(seconds=wait)
    last_error = None if after == "delivered" else (attempt.detail or f"status {attempt.status_code}")[:2000]
    return _Outcome(row, attempt, after, due_at, last_error)


async def record_batch(session: AsyncSession, finished: Sequence[tuple[DeliveryRow, Attempt]], now: datetime,
                       worker: str, config: NotifierConfig) -> list[State | None]:
    """Record each attempt on its claimed row, in ``session``'s transaction: the attempts (numbered on from
    the row's last), the state after (one guarded UPDATE per state: a row whose claim was lost meanwhile,
    taken over or cancelled, is left as it is), the requests' status, ``after_attempt``, the dead ones'
    trouble and each route's health (one UPDATE per route). Per attempt, the new state or None when the
    claim was lost."""
    outcomes = [_outcome(row, attempt, now, config) for row, attempt in finished]
    held: set[uuid.UUID] = set()
    for state in ("delivered", "pending", "dead"):
        held |= await _update_group(session, [o for o in outcomes if o.after == state], state, now, worker)
    lost = {o.row.id for o in outcomes} - held
    found = dict((await session.execute(select(DeliveryRow.id, DeliveryRow.state).where(DeliveryRow.id.in_(lost)))).all()
                 ) if lost else {}
    numbers = await _last_numbers(session, [o.row.id for o in outcomes])
    attempts = []
    for o in outcomes:
        numbers[o.row.id] = numbers.get(o.row.id, 0) + 1
        attempts.append({"delivery_id": o.row.id, "number": numbers[o.row.id], "at": now, "outcome": o.attempt.outcome,
                         "status_code": o.attempt.status_code, "latency_ms": o.attempt.latency_ms,
                         "response": _excerpt(o.attempt.response), "error": o.attempt.detail or None,
                         "state_before": "delivering",
                         "state_after": o.after if o.row.id in held else found.get(o.row.id, "gone")})
    await session.execute(insert(AttemptRow), attempts)
    kept = [o for o in outcomes if o.row.id in held]
    await _settle_requests(session, kept)
    for o in kept:
        for settle in after_attempt:
            await settle(session, o.row, o.attempt, now, config)
        if o.after == "dead":
            await tell(session, Trouble("delivery_dead", o.row.route, o.last_error or "failed", now, o.row.id,
                                        o.row.endpoint_id))
    await count_routes(session, [(o.row.route, o.attempt.outcome == "delivered") for o in outcomes], now)
    return [o.after if o.row.id in held else None for o in outcomes]


async def _update_group(session: AsyncSession, group: Sequence[_Outcome], state: State, now: datetime,
                        worker: str) -> set[uuid.UUID]:
    """Move the rows of ``group`` this worker still holds to ``state``; the ids it held."""
    if not group:
        return set()
    ids = [o.row.id for o in group]
    values: dict[str, Any] = {"state": state, "attempts": DeliveryRow.attempts + 1, "updated_at": now,
                              "claimed_by": None, "claimed_until": None}
    if state == "delivered":
        values.update(delivered_at=now, last_error=None)
    else:  # per row: CASE id WHEN ... (one statement for the group)
        values["last_error"] = case({o.row.id: _bound(o.last_error, Text()) for o in group}, value=DeliveryRow.id)
        if state == "pending":
            values["due_at"] = case({o.row.id: _bound(o.due_at, UTCDateTime()) for o in group}, value=DeliveryRow.id)
    statement = (update(DeliveryRow)
                 .where(DeliveryRow.id.in_(ids), DeliveryRow.state == "delivering", DeliveryRow.claimed_by == worker)
                 .values(**values).returning(DeliveryRow.id).execution_options(synchronize_session=False))
    return set((await session.scalars(statement)).all())


def _bound(value: Any, type_: Any) -> Any:
    return bindparam(None, value, type_=type_)


async def _last_numbers(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Each delivery's last attempt number (its life's, replays included: ``attempts`` restarts per round)."""
    query = (select(AttemptRow.delivery_id, func.max(AttemptRow.number)).where(AttemptRow.delivery_id.in_(set(ids)))
             .group_by(AttemptRow.delivery_id))
    return {delivery: number for delivery, number in (await session.execute(query)).all()}


async def tell(session: AsyncSession, trouble: Trouble) -> None:
    """Hand ``trouble`` to every ``on_trouble`` hook, in the caller's transaction."""
    metrics.TROUBLE.labels(trouble.kind).inc()
    log.warning("delivery trouble", extra={"kind": trouble.kind, "route": trouble.route, "reason": trouble.reason})
    for hook in on_trouble:
        await hook(session, trouble)


async def count_route(session: AsyncSession, name: str, success: bool, now: datetime) -> None:
    """One attempt's mark on its route's health: a success resets the streak, a failure extends it."""
    await count_routes(session, [(name, success)], now)


@dataclass
class RouteMarks:
    """A batch's attempts on one route, in the order they finished."""

    successes: int = 0
    failures: int = 0
    failures_since_success: int = 0  # after the batch's last success (all of them without one)

    def add(self, success: bool) -> None:
        if success:
            self.successes, self.failures_since_success = self.successes + 1, 0
        else:
            self.failures, self.failures_since_success = self.failures + 1, self.failures_since_success + 1


def route_marks(marks: Iterable[tuple[str, bool]]) -> dict[str, RouteMarks]:
    """Per route, what a batch of (route, success) marks adds up to."""
    out: dict[str, RouteMarks] = {}
    for route, success in marks:
        out.setdefault(route, RouteMarks()).add(success)
    return out


async def count_routes(session: AsyncSession, marks: Iterable[tuple[str, bool]], now: datetime) -> None:
    """A batch's marks on its routes' health, one UPDATE per route (in name order: two processes' batches
    lock shared routes in the same order). A success resets the streak, a failure extends it."""
    for name, m in sorted(route_marks(marks).items()):
        streak = m.failures_since_success
        values: dict[str, Any] = (
            {"last_success_at": now, "failing_since": now if streak else None, "failure_streak": streak} if m.successes else
            {"failure_streak": RouteRow.failure_streak + streak, "failing_since": func.coalesce(RouteRow.failing_since, now)})
        if m.failures:
            values["last_failure_at"] = now
        result = await session.execute(update(RouteRow).where(RouteRow.route == name).values(**values))
        assert isinstance(result, CursorResult)
        if result.rowcount:
            continue
        first = {"route": name, "failure_streak": streak, "last_success_at": now if m.successes else None,
                 "last_failure_at": now if m.failures else None, "failing_since": now if streak else None}
        if not await insert_new(session, table_of(RouteRow), [first]):  # a concurrent first attempt made it
            await session.execute(update(RouteRow).where(RouteRow.route == name).values(**values))


async def _settle_requests(session: AsyncSession, outcomes: Sequence[_Outcome]) -> None:
    """Deliveries requests handed over (``payload.request_id``) keep their requests' status current:
    one UPDATE per status."""
    by_status: dict[str, list[uuid.UUID]] = {}
    for o in outcomes:
        request_id = o.row.payload.get("request_id") if o.row.payload.get("kind") == "request" else None
        if request_id is not None:
            status = {"delivered": "delivered", "dead": "dead"}.get(o.after, "accepted")
            by_status.setdefault(status, []).append(uuid.UUID(request_id))
    for status, ids in sorted(by_status.items()):
        await session.execute(update(NotifyRequestRow).where(NotifyRequestRow.request_id.in_(ids))
                              .values(status=status, attempts=NotifyRequestRow.attempts + 1))


def _excerpt(text: str | None) -> str | None:
    if text is None:
        return None
    return text.encode()[:EXCERPT_BYTES].decode(errors="ignore").replace("\x00", "\\u0000")


async def run(rt: Runtime[Any]) -> None:
    """The delivery loop: claims due rows and sends them, for the life of the process. Wakes on
    ``deliveries_due`` or every ``delivery_poll_seconds``; a database away is waited out."""
    loop = Loop(rt)
    try:
        await _run(rt, loop)
    finally:
        await loop.close()


async def _run(rt: Runtime[Any], loop: Loop) -> None:
    due = state_of(rt).deliveries_due
    backoff, last_periodic = 0.5, 0.0
    while True:
        try:
            if time.monotonic() - last_periodic >= PERIODIC_SECONDS:
                last_periodic = time.monotonic()
                for job in periodic:
                    await job(rt)
            claimed = await loop.claim_some()
            backoff = 0.5
        except (DBAPIError, OSError) as exc:
            if not is_outage(exc):
                raise
            log.warning("delivery claim failed; retrying", extra={"error": repr(exc), "backoff": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)
            continue
        if claimed and len(loop.inflight) < loop.config.delivery_concurrency:
            continue  # there may be more due now
        await _wait(loop, due)


def is_outage(exc: Exception) -> bool:
    """The database is away (waited out), as opposed to a bug (which crashes the process)."""
    return isinstance(exc, (OperationalError, OSError)) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


async def _wait(loop: Loop, due: asyncio.Event) -> None:
    """Until work is announced, the poll interval passes, or (when every slot is taken) a send ends."""
    waiter = asyncio.ensure_future(due.wait())
    waits: set[asyncio.Future[Any]] = {waiter}
    if len(loop.inflight) >= loop.config.delivery_concurrency:
        waits |= set(loop.inflight)
    try:
        await asyncio.wait(waits, timeout=loop.config.delivery_poll_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    due.clear()


async def queue_depths(session: AsyncSession) -> dict[str, int]:
    """Pending plus delivering deliveries per route."""
    query = select(DeliveryRow.route, func.count()).where(DeliveryRow.state.in_(OPEN_STATES)).group_by(DeliveryRow.route)
    return {route: count for route, count in (await session.execute(query)).all()}
