"""Where the workflow meets the database and the topics: each change is written with
its version check and its outbox record in one transaction, then published.

The consumer, the API and the sweep all go through ``Queue``, so every path gets
the same guarantees: a stale version is refused or re-read, never overwritten;
a change committed is a change published, even across a crash (the outbox is
drained at start-up and on every sweep).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaProducer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.actions import CreateException
from schemas.envelope import Envelope, utcnow
from schemas.events import PaymentCallbackReplayRequested, PaymentCallbackReplayRequestedData
from schemas.exceptions import ExceptionState
from schemas.registry import EXCEPTIONS, PAYMENTS
from services.exceptions import metrics, store
from services.exceptions.settings import ExceptionsConfig
from services.exceptions.workflow import (
    OPEN,
    RESOLVED,
    Change,
    arm_sla,
    create_from_action,
    dedup_key,
    escalate,
    heal,
    occurrence,
    wake_on_event,
    wake_on_time,
)
from storeops.consumer import TRANSIENT_ERRORS
from storeops.errors import Conflict, NotFound, StoreopsError

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5
MakeChange = Callable[[ExceptionState, datetime], Change]


@dataclass(frozen=True)
class Outcome:
    """One id's answer in a bulk request: the state after the change, or why it was refused."""

    id: uuid.UUID
    state: ExceptionState | None = None  # the state after the change, when done
    refusal: StoreopsError | None = None  # NotFound, Conflict (stale version, illegal move...) or Invalid
    version: int | None = None  # the version now: after the change, or the one that stands

    @property
    def done(self) -> bool:
        return self.refusal is None


class Queue:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        producer: AIOKafkaProducer,
        config: ExceptionsConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.producer = producer
        self.config = config
        self.sla = config.sla
        self.clock = clock
        self._flush_lock = asyncio.Lock()

    # --- writing ------------------------------------------------------------------

    async def _record(self, session: AsyncSession, change: Change, caused_by: Envelope | None = None) -> None:
        await store.write_state(session, change.after)
        await store.add_to_outbox(session, [_outbox_row(change, caused_by)])
        metrics.CHANGES.labels(change.kind).inc()

    async def flush(self) -> int:
        """Publish every committed change not yet on its topic, oldest first; returns how many."""
        published = 0
        async with self._flush_lock:
            while True:
                async with self.sessions() as session:
                    rows = await store.unpublished(session)
                if not rows:
                    return published
                futures = [
                    await self.producer.send(r.topic, key=r.key.encode(), value=r.value.encode()) for r in rows
                ]
                await asyncio.gather(*futures)
                async with self.sessions.begin() as session:
                    await store.mark_published(session, [r.seq for r in rows])
                published += len(rows)

    # --- from the topics -------------------------------------------------------------

    async def apply_batch(self, actions: Sequence[CreateException], events: Sequence[Envelope]) -> list[Change]:
        """Actions raise or add to exceptions; events may wake or heal them. Redeliveries are no-ops."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                async with self.sessions.begin() as session:
                    changes = await self._apply_batch(session, actions, events)
                break
            except (store.StaleWrite, IntegrityError):
                # a person changed one of these exceptions meanwhile: re-read and apply again
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                log.info("batch met a concurrent change; applying it again", extra={"attempt": attempt + 1})
        if changes:  # leftovers of a crash are the sweep's to publish; most batches change nothing
            await self.flush()
        return changes

    async def _apply_batch(
        self, session: AsyncSession, actions: Sequence[CreateException], events: Sequence[Envelope]
    ) -> list[Change]:
        now = self.clock()
        fresh = await store.claim_actions(session, (a.id for a in actions))
        actions = [a for a in actions if a.id in fresh]  # the others were applied before: redelivery
        current = await store.candidates(
            session, (dedup_key(a.data.exception.type, a.data.exception.entity_type, a.data.exception.entity_id)
                      for a in actions)
        )
        changes: list[tuple[Change, Envelope]] = []
        for action in actions:
            spec = action.data.exception
            key = dedup_key(spec.type, spec.entity_type, spec.entity_id)
            state = current.get(key)
            change = (
                occurrence(state, action, now, self.sla) if state is not None
                else create_from_action(action, now, self.sla)
            )
            current[key] = change.after
            changes.append((change, action))
        if events:
            changes += await self._apply_events(session, events, {c.after.id: c.after for c, _ in changes}, now)
        # One exception may change several times in a batch: every change goes to the
        # outbox, but only its last state is written, checked against the version the
        # batch started from; new ones go in with one INSERT (one per row cost 0.8 ms
        # each on SQLite, most of the service's time under load).
        started: dict[uuid.UUID, int] = {}
        latest: dict[uuid.UUID, ExceptionState] = {}
        for change, _ in changes:
            started.setdefault(change.after.id, change.before.version if change.before else 0)
            latest[change.after.id] = change.after
            metrics.CHANGES.labels(change.kind).inc()
        await store.insert_states(session, [s for i, s in latest.items() if started[i] == 0])
        for exception_id, state in latest.items():
            if started[exception_id]:
                await store.write_state(session, state, expected=started[exception_id])
        await store.add_to_outbox(session, [_outbox_row(c, cause) for c, cause in changes])
        return [c for c, _ in changes]

    async def _apply_events(
        self, session: AsyncSession, events: Sequence[Envelope], pending: dict[uuid.UUID, ExceptionState], now: datetime
    ) -> list[tuple[Change, Envelope]]:
        subjects = {e.subject for e in events}
        states = {s.id: s for s in await store.watching(session, subjects, (e.type for e in events))}
        states.update({i: s for i, s in pending.items() if s.entity_id in subjects and (s.heal or s.snooze)})
        # an event concerns only the exceptions on its own entity: look them up, not scan them all
        by_entity: dict[str, list[uuid.UUID]] = {}
        for state in states.values():
            by_entity.setdefault(state.entity_id, []).append(state.id)
        changes = []
        for event in events:
            for exc_id in by_entity.get(event.subject, ()):
                state = states[exc_id]
                change = heal(state, event, now) or wake_on_event(state, event, now, self.sla)
                if change is not None:
                    states[exc_id] = change.after
                    changes.append((change, event))
        return changes

    # --- from people -----------------------------------------------------------------

    async def change_one(self, exception_id: uuid.UUID, version: int, make: MakeChange) -> ExceptionState:
        """Apply one person's change to the version they read; raises NotFound, Conflict or Invalid otherwise."""
        outcome = (await self.change_many([(exception_id, version)], make))[0]
        if outcome.refusal is not None:
            raise outcome.refusal
        assert outcome.state is not None
        return outcome.state

    async def change_many(self, items: Sequence[tuple[uuid.UUID, int]], make: MakeChange) -> list[Outcome]:
        """Each (id, version) gets its own change and its own answer, all in one transaction.

        The rows are read locked, every change is decided in memory, then all are
        written with one UPDATE and one outbox INSERT (1,000 items: about 2 s one
        statement at a time on PostgreSQL, see ``storeops bench queue``).
        """
        for attempt in range(CONFLICT_RETRIES):
            now = self.clock()
            try:
                async with self.sessions.begin() as session:
                    states = await store.get_states(session, (i for i, _ in items), lock=True)
                    reopening: set[str] = set()
                    decided = [
                        await self._decide(session, states.get(i), i, version, make, now, reopening)
                        for i, version in items
                    ]
                    changes = [c for _, c in decided if c is not None]
                    await store.write_states(session, [c.after for c in changes])
                    await store.add_to_outbox(session, [_outbox_row(c) for c in changes])
                break
            except IntegrityError:
                # a reopen raced another writer to the one open slot of its (type, entity):
                # read again, and the check in _decide names the winner
                if attempt == CONFLICT_RETRIES - 1:
                    raise
        for change in changes:
            metrics.CHANGES.labels(change.kind).inc()
        if changes:
            await self.flush()
        return [o for o, _ in decided]

    async def _decide(
        self, session: AsyncSession, state: ExceptionState | None, exception_id: uuid.UUID, version: int,
        make: MakeChange, now: datetime, reopening: set[str],
    ) -> tuple[Outcome, Change | None]:
        if state is None:
            return Outcome(exception_id, refusal=_not_found(exception_id)), None
        if state.version != version:
            return Outcome(exception_id, refusal=_stale(version, state.version), version=state.version), None
        try:
            change = make(state, now)
        except StoreopsError as exc:
            return Outcome(exception_id, refusal=exc, version=state.version), None
        if change.before is not None and change.before.status is RESOLVED and change.after.status in OPEN:
            key = dedup_key(state.type, state.entity_type, state.entity_id)
            if key in reopening:
                error = "another exception for this type and entity is reopened by this same request"
                return Outcome(exception_id, refusal=Conflict("status", error), version=version), None
            other = await store.open_exception(session, key)
            if other is not None:
                error = f"exception {other} is already open for this type and entity; work on that one"
                refusal = Conflict("status", error, open_exception=str(other))
                return Outcome(exception_id, refusal=refusal, version=version), None
            reopening.add(key)
        return Outcome(exception_id, state=change.after, version=change.after.version), change

    async def create(self, change: Change) -> ExceptionState:
        """A person raised an exception; Conflict names the open one if it already exists."""
        try:
            async with self.sessions.begin() as session:
                await self._record(session, change)
        except IntegrityError:
            async with self.sessions() as session:
                key = dedup_key(change.after.type, change.after.entity_type, change.after.entity_id)
                existing = (await store.candidates(session, [key])).get(key)
            open_id = str(existing.id) if existing else None
            raise Conflict("entity_id", f"already open as exception {open_id or '?'} for this type and entity; "
                           "add to that one", open_exception=open_id) from None
        await self.flush()
        return change.after

    async def replay(self, exception_id: uuid.UUID, version: int, make: Callable) -> ExceptionState:
        """Record a callback replay and publish the callback to the payments topic, both via the outbox."""
        now = self.clock()
        try:
            return await self._replay(exception_id, version, make, now)
        except store.StaleWrite:
            raise _stale(version, version + 1) from None

    async def _replay(self, exception_id: uuid.UUID, version: int, make: Callable, now: datetime) -> ExceptionState:
        async with self.sessions.begin() as session:
            state = await store.get_state(session, exception_id)
            if state is None:
                raise _not_found(exception_id)
            if state.version != version:
                raise _stale(version, state.version)
            change, replay = make(state, now)
            assert state.callback is not None
            await self._record(session, change)
            request = PaymentCallbackReplayRequested(
                id=replay.replay_id, type="PaymentCallbackReplayRequested", source="storeops/exceptions", time=now,
                subject=state.entity_id,
                data=PaymentCallbackReplayRequestedData(
                    order_id=state.entity_id, gateway=state.callback.gateway, raw_callback=state.callback.raw_callback,
                    replay_id=replay.replay_id, exception_id=state.id, requested_by=replay.requested_by,
                ),
            )
            await store.add_to_outbox(session, [store.outbox_row(state.id, PAYMENTS, request)])
        await self.flush()
        return change.after

    # --- the clock's moves -----------------------------------------------------------

    async def sweep(self) -> list[Change]:
        """Escalate what is past its SLA, wake what has slept long enough, publish leftovers."""
        now = self.clock()
        done: list[Change] = []
        while True:
            async with self.sessions.begin() as session:
                batch = await store.due(session, now)
                changes = [
                    c for s in batch
                    if (c := escalate(s, now, self.sla) or wake_on_time(s, now, self.sla) or arm_sla(s, now, self.sla))
                ]
                for change in changes:
                    try:
                        await self._record(session, change)
                    except store.StaleWrite:
                        continue  # a person got there first; the next sweep looks again
                    done.append(change)
            if len(batch) < 500 or not changes:
                break
        await self.flush()
        return done

    async def run_sweeps(self) -> None:
        """Sweep now (a snooze that ended while the service was down wakes at start) and then periodically."""
        while True:
            try:
                await self.sweep()
            except TRANSIENT_ERRORS as exc:  # a database or broker blip: the next sweep tries again
                log.warning("sweep failed; retrying at the next one", extra={"error": repr(exc)})
            await asyncio.sleep(self.config.sweep_seconds)


def _outbox_row(change: Change, caused_by: Envelope | None = None) -> dict:
    return store.outbox_row(change.after.id, EXCEPTIONS, change.record(caused_by))


def _stale(read: int, now: int) -> Conflict:
    return Conflict("version", f"you read version {read}, the exception is now at version {now}; reload and try again")


def _not_found(exception_id: uuid.UUID) -> NotFound:
    return NotFound("exception_id", f"no exception {exception_id}")

