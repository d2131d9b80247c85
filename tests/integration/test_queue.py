"""The queue on the real database and the real broker: dedup, healing, snooze, SLA
escalation (Critical included), optimistic concurrency, bulk answers, the outbox and
the callback replay; then the API through the real app: its error shape, cursors,
bounds and settings, and who may ask (each route's role; a change names the token's principal)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from schemas.actions import CallbackCapture, CreateException, CreateExceptionData, ExceptionSpec, HealCondition, RuleRef
from schemas.common import EntityType, ExceptionType, Severity
from schemas.events import PaymentCaptured, StockChanged
from schemas.exceptions import ExceptionStatus, Resolution, ResolutionReason, Snooze
from schemas.registry import EXCEPTIONS, PAYMENTS, STOCK
from schemas.registry import PAYMENTS as PAYMENTS_TOPIC
from services.exceptions import store, workflow
from services.exceptions.app import SPEC
from services.exceptions.queue import Outcome, Queue
from services.exceptions.settings import ExceptionsConfig, ExceptionsSettings
from storeops.auth import Principal, Role
from storeops.db import make_engine, make_sessionmaker
from storeops.errors import Conflict, Invalid, NotFound
from storeops.http import encode_cursor, status_of
from storeops.kafka import make_producer
from storeops.service import build_app
from storeops.settings import KafkaSettings, Settings
from storeops_cli.broker import RunningBroker
from tests.helpers import (
    assert_forbidden,
    assert_role_matrix,
    bearer,
    postgres_database,
    read_topic,
    token_id,
)

pytestmark = pytest.mark.integration

# a change as the API makes it: its actor is the authenticated principal
DANA = Principal("dana", Role.operator, "tok-dana", "token").actor()
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def queue_database(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's own database with the exceptions tables, not the suite's: the e2e stack's
    exceptions service sweeps and flushes the suite's outbox too, and a second publisher of one
    outbox may put a change on the topic twice (at least once is the contract; consumers drop
    the repeat by id), which this module's exact counts of records would misread."""
    with contextlib.ExitStack() as cleanup:
        if database_url.startswith("sqlite"):
            url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('queue') / 'exceptions.db'}"
        else:
            url = cleanup.enter_context(postgres_database(database_url, "storeops_queue"))
        SPEC.migrate(url)
        yield url


@pytest.fixture
async def queue(queue_database: str, broker: RunningBroker, clock: Clock) -> AsyncIterator[Queue]:
    settings = Settings(kafka={"bootstrap_servers": broker.bootstrap_servers, "flavor": broker.flavor})
    producer = make_producer(settings.kafka, "test-queue")
    await producer.start()
    engine = make_engine(queue_database)
    try:
        yield Queue(make_sessionmaker(engine), producer, ExceptionsConfig(), clock=clock)
    finally:
        await producer.stop()
        await engine.dispose()


def raised(entity: str, severity: Severity = Severity.MEDIUM, *, type_: ExceptionType = ExceptionType.INVENTORY,
           heal: HealCondition | None = None, callback: CallbackCapture | None = None,
           time: datetime | None = None, impact: str | None = None) -> CreateException:
    entity_type = EntityType.SKU if type_ is ExceptionType.INVENTORY else EntityType.ORDER
    return CreateException(
        type="CreateException", subject=entity, time=time or datetime.now(UTC),
        data=CreateExceptionData(
            rule=RuleRef(rule_id="low-stock", rule_version=1, mode="LIVE"), evidence=[uuid.uuid4()],
            exception=ExceptionSpec(type=type_, severity=severity, title=f"problem with {entity}",
                                    entity_type=entity_type, entity_id=entity, heal=heal, callback=callback,
                                    impact=Decimal(impact) if impact else None, currency="EUR" if impact else None)))


def stock(sku: str, on_hand: int, time: datetime | None = None) -> StockChanged:
    return STOCK.adapter.validate_python(
        {"type": "StockChanged", "time": time or datetime.now(UTC), "data": {"sku": sku, "on_hand": on_hand}})


def captured(order_id: str) -> PaymentCaptured:
    return PAYMENTS.adapter.validate_python({"type": "PaymentCaptured", "data": {
        "order_id": order_id, "payment_id": "p1", "amount": "10.00", "currency": "EUR", "gateway": "adyen"}})


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def state_of(queue: Queue, exception_id: uuid.UUID):
    async with queue.sessions() as session:
        return await store.get_state(session, exception_id)


RESTOCK = HealCondition(event_type="StockChanged", field="on_hand", at_least=Decimal(10))


async def test_same_type_and_entity_is_one_exception_and_a_redelivery_counts_nothing(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    first, second = raised(sku), raised(sku, Severity.HIGH)
    created = await queue.apply_batch([first], [])
    assert [c.kind for c in created] == ["created"]
    again = await queue.apply_batch([first, second], [])  # first redelivered, second is new
    assert [c.kind for c in again] == ["updated"]
    state = await state_of(queue, created[0].after.id)
    assert state.occurrences == 2
    assert state.severity is Severity.HIGH  # the higher of the two
    assert state.evidence == [*first.data.evidence, *second.data.evidence]
    assert state.last_seen == max(first.time, second.time)
    assert await queue.apply_batch([first, second], []) == []  # both redelivered


async def test_stock_restored_heals_it_with_that_event_as_evidence_and_a_relapse_reopens_it(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    [created] = await queue.apply_batch([raised(sku, heal=RESTOCK)], [])
    not_enough = stock(sku, 9)
    assert await queue.apply_batch([], [not_enough]) == []
    restored = stock(sku, 12)
    [healed] = await queue.apply_batch([], [restored])
    assert healed.kind == "resolved" and healed.actor.kind == "system"
    assert healed.after.resolution == Resolution(
        reason=ResolutionReason.FIXED, automatic=True, evidence=restored.id, note=healed.after.resolution.note)
    [reopened] = await queue.apply_batch([raised(sku, heal=RESTOCK)], [])
    assert reopened.kind == "reopened" and reopened.after.id == created.after.id
    assert reopened.after.flap_count == 1 and reopened.after.status is ExceptionStatus.NEW
    assert reopened.after.resolution is None


async def test_a_stale_event_does_not_heal_a_newer_occurrence(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    now = datetime.now(UTC)
    await queue.apply_batch([raised(sku, heal=RESTOCK, time=now)], [])
    assert await queue.apply_batch([], [stock(sku, 50, time=now - timedelta(minutes=5))]) == []


async def test_a_persons_resolution_stands_and_the_next_occurrence_is_a_new_exception(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    [created] = await queue.apply_batch([raised(sku)], [])
    resolve = lambda s, now: workflow.transition(  # noqa: E731
        s, ExceptionStatus.RESOLVED, DANA, now, queue.sla, resolution=Resolution(reason=ResolutionReason.FALSE_POSITIVE))
    await queue.change_one(created.after.id, 1, resolve)
    [fresh] = await queue.apply_batch([raised(sku)], [])
    assert fresh.kind == "created" and fresh.after.id != created.after.id


async def test_snoozed_until_an_event_wakes_when_it_arrives_for_that_entity(queue: Queue) -> None:
    sku, other = f"sku-{tag()}", f"sku-{tag()}"
    [created] = await queue.apply_batch([raised(sku)], [])
    snooze = lambda s, now: workflow.transition(  # noqa: E731
        s, ExceptionStatus.SNOOZED, DANA, now, queue.sla, snooze=Snooze(until_event="StockChanged"))
    await queue.change_one(created.after.id, 1, snooze)
    assert await queue.apply_batch([], [stock(other, 1)]) == []  # another sku
    [woke] = await queue.apply_batch([], [stock(sku, 1)])
    assert woke.kind == "woke" and woke.after.status is ExceptionStatus.NEW


def answer(o: Outcome) -> tuple[str, int]:
    return ("done", 200) if o.refusal is None else ("refused", status_of(o.refusal))


def reason(exc: pytest.ExceptionInfo) -> str:
    return "; ".join(f"{e['field']}: {e['error']}" for e in exc.value.errors)


async def test_sweep_escalates_past_the_sla_and_wakes_expired_snoozes(queue: Queue, clock: Clock) -> None:
    low, snoozed = f"sku-{tag()}", f"sku-{tag()}"
    [a] = await queue.apply_batch([raised(low, Severity.LOW)], [])
    [b] = await queue.apply_batch([raised(snoozed)], [])
    until = clock.now + timedelta(minutes=30)
    await queue.change_one(b.after.id, 1, lambda s, now: workflow.transition(
        s, ExceptionStatus.SNOOZED, DANA, now, queue.sla, snooze=Snooze(until=until)))
    clock.advance(minutes=10)
    assert {c.after.id for c in await queue.sweep()}.isdisjoint({a.after.id, b.after.id})
    clock.advance(hours=24)
    swept = {c.after.id: c for c in await queue.sweep()}
    assert swept[a.after.id].kind == "escalated" and swept[a.after.id].after.severity is Severity.MEDIUM
    assert "SLA" in swept[a.after.id].cause
    assert swept[b.after.id].kind == "woke"
    assert (await state_of(queue, b.after.id)).status is ExceptionStatus.NEW


async def test_a_stale_version_is_refused_and_nothing_is_overwritten(queue: Queue) -> None:
    [created] = await queue.apply_batch([raised(f"sku-{tag()}")], [])
    assign = lambda who: lambda s, now: workflow.assign(s, who, DANA, now)  # noqa: E731
    await queue.change_one(created.after.id, 1, assign("ana"))
    with pytest.raises(Conflict) as refused:
        await queue.change_one(created.after.id, 1, assign("bo"))
    assert refused.value.errors[0]["field"] == "version" and "version 2" in reason(refused)
    assert (await state_of(queue, created.after.id)).assignee == "ana"


async def test_an_occurrence_after_a_persons_change_applies_to_the_new_version(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    [created] = await queue.apply_batch([raised(sku)], [])
    await queue.change_one(created.after.id, 1, lambda s, now: workflow.assign(s, "ana", DANA, now))
    [again] = await queue.apply_batch([raised(sku)], [])
    assert again.after.version == 3 and again.after.assignee == "ana" and again.after.occurrences == 2


async def test_bulk_answers_per_id_and_records_each_change(queue: Queue, broker: RunningBroker) -> None:
    batch = [raised(f"sku-{tag()}") for _ in range(5)]
    created = [c.after for c in await queue.apply_batch(batch, [])]
    resolved_already = created[4]
    await queue.change_one(resolved_already.id, 1, lambda s, now: workflow.transition(
        s, ExceptionStatus.RESOLVED, DANA, now, queue.sla, resolution=Resolution(reason=ResolutionReason.FIXED)))
    items = [(s.id, 1) for s in created[:3]] + [(created[3].id, 7), (resolved_already.id, 2), (uuid.uuid4(), 1)]
    outcomes = await queue.change_many(items, lambda s, now: workflow.transition(
        s, ExceptionStatus.SNOOZED, DANA, now, queue.sla, snooze=Snooze(until=now + timedelta(hours=1))))
    assert [answer(o) for o in outcomes] == [
        ("done", 200), ("done", 200), ("done", 200), ("refused", 409), ("refused", 409), ("refused", 404)]
    assert outcomes[3].refusal.errors[0]["field"] == "version" and outcomes[3].version == 1
    assert outcomes[4].refusal.allowed == ["New"]  # from Resolved only a reopen
    assert isinstance(outcomes[5].refusal, NotFound)
    ids = {str(s.id) for s in created[:3]}
    records = await read_topic(broker.bootstrap_servers, EXCEPTIONS.name, lambda rs: ids <= {
        json.loads(r.value)["subject"] for r in rs if json.loads(r.value)["type"] == "ExceptionSnoozed"})
    snoozed = [json.loads(r.value) for r in records if json.loads(r.value)["subject"] in ids]
    assert sorted(r["type"] for r in snoozed if r["type"] == "ExceptionSnoozed") == ["ExceptionSnoozed"] * 3
    assert all(r["data"]["actor"] == {"kind": "person", "name": "dana", "role": "operator", "token_id": "tok-dana",
                                        "rule_id": None, "rule_version": None}
               for r in snoozed if r["type"] == "ExceptionSnoozed")


async def test_every_change_is_in_the_history_and_published_once_committed(queue: Queue) -> None:
    [created] = await queue.apply_batch([raised(f"sku-{tag()}")], [])
    await queue.change_one(created.after.id, 1, lambda s, now: workflow.assign(s, "ana", DANA, now))
    async with queue.sessions() as session:
        history = [json.loads(v) for v in await store.history(session, created.after.id)]
        assert await store.unpublished(session) == []
    assert [h["type"] for h in history] == ["ExceptionCreated", "ExceptionAssigned"]
    assert [h["data"]["after"]["version"] for h in history] == [1, 2]


async def test_a_committed_change_left_unpublished_by_a_crash_is_published_by_the_next_flush(queue: Queue) -> None:
    [created] = await queue.apply_batch([raised(f"sku-{tag()}")], [])
    change = workflow.assign(created.after, "ana", DANA, queue.clock())
    async with queue.sessions.begin() as session:  # committed, then "crashed" before publishing
        await queue._record(session, change)
    assert await queue.flush() >= 1
    async with queue.sessions() as session:
        assert await store.unpublished(session) == []


async def test_a_failed_callback_is_replayed_to_the_payments_topic_or_accepted(queue: Queue, broker: RunningBroker) -> None:
    order = f"ord-{tag()}"
    capture = CallbackCapture(gateway="adyen", error="signature mismatch", raw_callback='{"psp":"8535"}')
    [created] = await queue.apply_batch(
        [raised(order, Severity.HIGH, type_=ExceptionType.PAYMENT_CALLBACK_FAILURE, callback=capture,
                heal=HealCondition(event_type="PaymentCaptured"))], [])
    after = await queue.replay(created.after.id, 1, lambda s, now: workflow.replay_callback(s, DANA, now))
    assert after.status is ExceptionStatus.IN_PROGRESS and len(after.replays) == 1
    replay_id = str(after.replays[0].replay_id)
    records = await read_topic(broker.bootstrap_servers, PAYMENTS_TOPIC.name,
                               lambda rs: any(json.loads(r.value)["id"] == replay_id for r in rs))
    [sent] = [json.loads(r.value) for r in records if json.loads(r.value)["id"] == replay_id]
    assert sent["type"] == "PaymentCallbackReplayRequested"
    assert sent["data"]["raw_callback"] == '{"psp":"8535"}'
    assert sent["data"]["requested_by"] == {"kind": "person", "name": "dana", "role": "operator", "token_id": "tok-dana",
                                        "rule_id": None, "rule_version": None}
    # the replay worked: the capture heals it
    [healed] = await queue.apply_batch([], [captured(order)])
    assert healed.kind == "resolved" and healed.after.resolution.automatic


async def test_accepting_a_callback_as_it_is_resolves_with_the_reason_recorded(queue: Queue) -> None:
    order = f"ord-{tag()}"
    capture = CallbackCapture(gateway="adyen", error="late", raw_callback="{}")
    [created] = await queue.apply_batch(
        [raised(order, type_=ExceptionType.PAYMENT_CALLBACK_FAILURE, callback=capture)], [])
    resolution = Resolution(reason=ResolutionReason.OTHER, note="captured by hand in the gateway")
    after = await queue.change_one(created.after.id, 1, lambda s, now: workflow.accept_callback(
        s, resolution, DANA, now, queue.sla))
    assert after.status is ExceptionStatus.RESOLVED and after.resolution.callback == "accepted"


async def test_replaying_without_a_callback_is_refused(queue: Queue) -> None:
    [created] = await queue.apply_batch([raised(f"sku-{tag()}")], [])
    with pytest.raises(Invalid) as refused:
        await queue.replay(created.after.id, 1, lambda s, now: workflow.replay_callback(s, DANA, now))
    assert refused.value.errors[0]["field"] == "exception_id" and "callback" in reason(refused)


async def test_a_person_cannot_reopen_while_another_is_open_for_the_same_entity(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    [first] = await queue.apply_batch([raised(sku)], [])
    await queue.change_one(first.after.id, 1, lambda s, now: workflow.transition(
        s, ExceptionStatus.RESOLVED, DANA, now, queue.sla, resolution=Resolution(reason=ResolutionReason.FIXED)))
    [second] = await queue.apply_batch([raised(sku)], [])
    with pytest.raises(Conflict) as refused:
        await queue.change_one(first.after.id, 2, lambda s, now: workflow.transition(
            s, ExceptionStatus.NEW, DANA, now, queue.sla))
    assert str(second.after.id) in reason(refused) and refused.value.extra["open_exception"] == str(second.after.id)


async def test_raising_by_hand_twice_names_the_open_one(queue: Queue) -> None:
    fields = {"type": ExceptionType.ADDRESS_PROBLEM, "severity": Severity.LOW, "title": "bad zip",
              "entity_type": EntityType.ORDER, "entity_id": f"ord-{tag()}"}
    first = await queue.create(workflow.create_by_person(fields, DANA, queue.clock(), queue.sla))
    with pytest.raises(Conflict) as refused:
        await queue.create(workflow.create_by_person(fields, DANA, queue.clock(), queue.sla))
    assert str(first.id) in reason(refused) and refused.value.extra["open_exception"] == str(first.id)


async def test_the_queue_is_rebuilt_from_the_exceptions_topic(
    queue: Queue, broker: RunningBroker, fresh_database: str, clock: Clock
) -> None:
    from services import load_spec
    from services.exceptions.rebuild import NotEmpty, read_changes, rebuild

    sku, order = f"sku-{tag()}", f"ord-{tag()}"
    first = raised(sku, heal=RESTOCK)
    [a] = await queue.apply_batch([first], [])
    await queue.apply_batch([raised(sku, heal=RESTOCK)], [])
    await queue.apply_batch([], [stock(sku, 40)])  # healed
    [b] = await queue.apply_batch([raised(order, type_=ExceptionType.ORDER)], [])
    await queue.change_one(b.after.id, 1, lambda s, now: workflow.assign(s, "ana", DANA, now))
    await queue.change_one(b.after.id, 2, lambda s, now: workflow.transition(
        s, ExceptionStatus.SNOOZED, DANA, now, queue.sla, snooze=Snooze(until=now + timedelta(days=1))))
    ours = [a.after.id, b.after.id]
    originals = {i: await state_of(queue, i) for i in ours}
    async with queue.sessions() as session:
        histories = {i: [json.loads(v) for v in await store.history(session, i)] for i in ours}

    records = await read_changes(broker.bootstrap_servers, idle_seconds=1.5)
    await asyncio.to_thread(load_spec("exceptions").migrate, fresh_database)  # alembic runs its own event loop
    engine = make_engine(fresh_database)
    try:
        rebuilt = Queue(make_sessionmaker(engine), queue.producer, ExceptionsConfig(), clock=clock)
        report = await rebuild(rebuilt.sessions, records)
        assert report.exceptions >= 2 and report.records >= 6
        for i in ours:
            assert await state_of(rebuilt, i) == originals[i]
            async with rebuilt.sessions() as session:
                assert [json.loads(v) for v in await store.history(session, i)] == histories[i]
                assert await store.unpublished(session) == []
        assert await rebuilt.apply_batch([first], []) == []  # an action applied before the rebuild stays applied
        with pytest.raises(NotEmpty):
            await rebuild(rebuilt.sessions, records)
    finally:
        await engine.dispose()


async def test_replaying_from_a_stale_version_is_refused(queue: Queue) -> None:
    capture = CallbackCapture(gateway="adyen", error="timeout", raw_callback="{}")
    [created] = await queue.apply_batch(
        [raised(f"ord-{tag()}", type_=ExceptionType.PAYMENT_CALLBACK_FAILURE, callback=capture)], [])
    with pytest.raises(Conflict) as refused:
        await queue.replay(created.after.id, 2, lambda s, now: workflow.replay_callback(s, DANA, now))
    assert refused.value.errors[0]["field"] == "version" and "version 2" in reason(refused)
    assert (await state_of(queue, created.after.id)).replays == []


# --- SLA: Critical too ------------------------------------------------------------


async def test_a_critical_left_new_past_its_sla_is_raised_again_each_period(
    queue: Queue, clock: Clock, broker: RunningBroker
) -> None:
    [created] = await queue.apply_batch([raised(f"ord-{tag()}", Severity.CRITICAL, type_=ExceptionType.VIP)], [])
    assert created.after.sla_due_at == clock.now + timedelta(minutes=15)  # the documented default
    clock.advance(minutes=14)
    assert created.after.id not in {c.after.id for c in await queue.sweep()}
    clock.advance(minutes=2)
    [breach] = [c for c in await queue.sweep() if c.after.id == created.after.id]
    assert (breach.kind, breach.after.severity, breach.after.escalations) == ("escalated", Severity.CRITICAL, 1)
    assert breach.after.sla_due_at == clock.now + timedelta(minutes=15) and "SLA breached" in breach.cause
    assert created.after.id not in {c.after.id for c in await queue.sweep()}  # once per period
    clock.advance(minutes=15)
    [again] = [c for c in await queue.sweep() if c.after.id == created.after.id]
    assert again.after.escalations == 2
    stored = await state_of(queue, created.after.id)
    assert (stored.severity, stored.escalations, stored.status) == (Severity.CRITICAL, 2, ExceptionStatus.NEW)
    subject = str(created.after.id)
    records = await read_topic(broker.bootstrap_servers, EXCEPTIONS.name, lambda rs: sum(
        json.loads(r.value)["subject"] == subject and json.loads(r.value)["type"] == "ExceptionEscalated" for r in rs) == 2)
    assert len([r for r in records if json.loads(r.value)["subject"] == subject]) == 3  # created, escalated twice
    # picked up: no more reminders
    await queue.change_one(created.after.id, 3, lambda s, now: workflow.transition(
        s, ExceptionStatus.IN_PROGRESS, DANA, now, queue.sla))
    clock.advance(hours=5)
    assert created.after.id not in {c.after.id for c in await queue.sweep()}


async def test_a_critical_stored_without_a_due_time_gets_one_from_the_sweep(queue: Queue, clock: Clock) -> None:
    """Critical exceptions raised before Critical had an SLA carry none; the sweep sets it, recorded."""
    [created] = await queue.apply_batch([raised(f"ord-{tag()}", Severity.CRITICAL, type_=ExceptionType.VIP)], [])
    legacy = created.after.model_copy(update={"sla_due_at": None, "version": 2})
    async with queue.sessions.begin() as session:
        await store.write_state(session, legacy)
    clock.advance(minutes=1)
    [armed] = [c for c in await queue.sweep() if c.after.id == legacy.id]
    assert armed.kind == "updated" and armed.after.sla_due_at == legacy.updated_at + timedelta(minutes=15)
    clock.advance(minutes=15)
    [breach] = [c for c in await queue.sweep() if c.after.id == legacy.id]
    assert breach.kind == "escalated" and breach.after.escalations == 1


# --- the API through the real app -------------------------------------------------

BULK_MAX = 3


@pytest.fixture
async def exceptions_app(queue_database: str, broker: RunningBroker, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FastAPI]:
    """The exceptions service as it is built, verifying the suite's tokens, on this module's database, with a small
    bulk_max; no consumer, no sweep."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = ExceptionsSettings(
        database_url=queue_database, kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor),
        exceptions={"bulk_max": BULK_MAX},
    )
    app = build_app(replace(SPEC, consumes=(), watches=(), background=None), settings)
    async with app.router.lifespan_context(app):
        yield app


class AsTheRouteNeeds(httpx.Auth):
    """Each request with the token of the role its route needs: a viewer's to read the queue, an operator's
    to work it. A request that brings its own Authorization keeps it."""

    def __init__(self, tokens: dict[Role, str]) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        role = Role.viewer if request.method == "GET" else Role.operator
        request.headers.setdefault("Authorization", f"Bearer {self.tokens[role]}")
        yield request


@pytest.fixture
async def api(exceptions_app: FastAPI, tokens: dict[Role, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=exceptions_app), base_url="http://exceptions",
                                 auth=AsTheRouteNeeds(tokens)) as client:
        yield client


@pytest.fixture
async def anonymous(exceptions_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no token unless told to."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=exceptions_app), base_url="http://exceptions") as client:
        yield client


def by_hand(entity_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "address_problem", "severity": "Low", "title": "zip code missing",
            "entity_type": "order", "entity_id": entity_id, **extra}


def opaque(raw: bytes) -> str:
    """A cursor-looking string holding ``raw`` (what no page of ours would give)."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


async def test_a_nul_character_in_a_body_field_is_422_naming_it_and_changes_nothing(api: httpx.AsyncClient) -> None:
    """PostgreSQL refuses NUL in text and JSONB: it was a 500 here, now it is refused at the door."""
    entity = f"ord-{tag()}"
    before = (await api.get("/v1/exceptions/counts")).json()
    for body, field in ((by_hand(entity, title="zip\x00code"), "title"), (by_hand(f"{entity}\x00"), "entity_id")):
        response = await api.post("/v1/exceptions", json=body)
        assert response.status_code == 422, response.text
        assert fields_of(response) == [field] and "NUL" in response.json()["errors"][0]["error"]
    assert (await api.get("/v1/exceptions", params={"q": entity})).json() == {"items": [], "next_cursor": None}
    assert (await api.get("/v1/exceptions/counts")).json() == before
    assert (await api.post("/v1/exceptions", json=by_hand(entity))).status_code == 201  # the same, clean, is fine


async def test_refusals_are_answered_in_the_one_error_shape(api: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    missing = await api.get(f"/v1/exceptions/{unknown}")
    assert missing.status_code == 404 and missing.json() == {
        "errors": [{"field": "exception_id", "error": f"no exception {unknown}"}]}
    assert fields_of(await api.get("/v1/exceptions/not-a-uuid")) == ["exception_id"]
    created = (await api.post("/v1/exceptions", json=by_hand(f"ord-{tag()}"))).json()
    url = f"/v1/exceptions/{created['id']}"
    twice = await api.post("/v1/exceptions", json=by_hand(created["entity_id"]))
    assert twice.status_code == 409 and fields_of(twice) == ["entity_id"]
    assert twice.json()["open_exception"] == created["id"]
    resolved = await api.post(f"{url}/resolve", json={"version": 1, "reason": "fixed"})
    assert resolved.status_code == 200
    illegal = await api.post(f"{url}/status", json={"version": 2, "status": "In Progress"})
    assert illegal.status_code == 409 and illegal.json() == {
        "errors": [{"field": "status", "error": "cannot go from Resolved to In Progress"}], "allowed": ["New"]}
    stale = await api.post(f"{url}/assign", json={"version": 1, "assignee": "ana"})
    assert stale.status_code == 409 and fields_of(stale) == ["version"]
    reopened = await api.post(f"{url}/status", json={"version": 2, "status": "New"})
    assert reopened.status_code == 200
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    snooze = await api.post(f"{url}/snooze", json={"version": 3, "until": past})
    assert snooze.status_code == 422 and fields_of(snooze) == ["until"]  # this body is the snooze itself
    status = await api.post(f"{url}/status", json={"version": 3, "status": "Snoozed",
                                                   "snooze": {"until": past}})
    assert status.status_code == 422 and fields_of(status) == ["snooze.until"]
    other = await api.post(f"{url}/status", json={"version": 3, "status": "Resolved",
                                                  "resolution": {"reason": "other"}})
    assert other.status_code == 422 and fields_of(other) == ["resolution.note"]
    no_reason = await api.post(f"{url}/status", json={"version": 3, "status": "Resolved"})
    assert no_reason.status_code == 422 and fields_of(no_reason) == ["resolution"]
    nothing = await api.patch(url, json={"version": 3})
    assert nothing.status_code == 422 and fields_of(nothing) == ["(body)"]
    replay = await api.post(f"{url}/callback/replay", json={"version": 3})
    assert replay.status_code == 422 and fields_of(replay) == ["exception_id"]
    assert (await api.get(url)).json()["version"] == 3  # none of it changed anything


async def test_garbage_cursors_and_huge_integers_are_422_naming_the_parameter(api: httpx.AsyncClient) -> None:
    created = (await api.post("/v1/exceptions", json=by_hand(f"ord-{tag()}"))).json()
    url = f"/v1/exceptions/{created['id']}"
    garbage = ("not-ours", encode_cursor(5), encode_cursor("z" * 69), encode_cursor("0" * 68), encode_cursor(["x"]),
               "%%%", "x" * 3000)
    for cursor in garbage:
        response = await api.get("/v1/exceptions", params={"cursor": cursor})
        assert response.status_code == 422 and fields_of(response) == ["cursor"], (cursor, response.text)
    for cursor in ("not-ours", encode_cursor("x"), encode_cursor(-1), opaque(b"18446744073709551616")):
        response = await api.get(f"{url}/history", params={"cursor": cursor})
        assert response.status_code == 422 and fields_of(response) == ["cursor"], (cursor, response.text)
    for path, params in (("/v1/exceptions", {"limit": "99999999999999999999999"}), (f"{url}/history", {"limit": "0"}),
                         (f"{url}/history", {"limit": "99999999999999999999999"})):
        response = await api.get(path, params=params)
        assert response.status_code == 422 and fields_of(response) == ["limit"]
    huge = await api.post(f"{url}/assign", json={"version": 99999999999999999999999, "assignee": "x"})
    assert huge.status_code == 422 and fields_of(huge) == ["version"]
    bulk = await api.post("/v1/exceptions/bulk", json={"action": "reassign", "assignee": "x",
                                                       "items": [{"id": created["id"], "version": 2**63}]})
    assert bulk.status_code == 422 and fields_of(bulk) == ["items[0].version"]


async def test_the_queue_and_the_history_are_paged_to_a_null_next_cursor(api: httpx.AsyncClient) -> None:
    run = tag()
    ids = [(await api.post("/v1/exceptions", json=by_hand(f"ord-{run}-{n}"))).json()["id"] for n in range(3)]
    seen, cursor = [], None
    for _ in range(3):
        params = {"q": run, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/exceptions", params=params)).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and cursor is None  # same severity and impact: oldest first; 2 + 1, then null
    exact = (await api.get("/v1/exceptions", params={"q": run, "limit": 3})).json()
    assert len(exact["items"]) == 3 and exact["next_cursor"] is None  # the last page, even when full
    url = f"/v1/exceptions/{ids[0]}"
    for version, assignee in ((1, "ana"), (2, "bo")):
        assigned = await api.post(f"{url}/assign", json={"version": version, "assignee": assignee})
        assert assigned.status_code == 200
    kinds, cursor, pages = [], None, 0
    while True:
        page = (await api.get(f"{url}/history", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        kinds += [r["type"] for r in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (kinds, pages) == (["ExceptionCreated", "ExceptionAssigned", "ExceptionAssigned"], 2)
    assert (await api.get(f"/v1/exceptions/{uuid.uuid4()}/history")).status_code == 404


async def test_bulk_is_bounded_by_the_bulk_max_setting_and_answers_each_id_in_the_error_shape(
    api: httpx.AsyncClient,
) -> None:
    run = tag()
    ids = [(await api.post("/v1/exceptions", json=by_hand(f"ord-{run}-{n}"))).json()["id"] for n in range(2)]
    resolve = {"action": "resolve", "resolution": {"reason": "duplicate"}}
    too_many = await api.post("/v1/exceptions/bulk", json={
        **resolve, "items": [{"id": str(uuid.uuid4()), "version": 1} for _ in range(BULK_MAX + 1)]})
    assert too_many.status_code == 422 and fields_of(too_many) == ["items"]
    assert str(BULK_MAX) in too_many.json()["errors"][0]["error"]
    unknown = str(uuid.uuid4())
    items = [{"id": ids[0], "version": 1}, {"id": ids[1], "version": 4}, {"id": unknown, "version": 1}]
    response = await api.post("/v1/exceptions/bulk", json={**resolve, "items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["done"], body["refused"]) == (1, 2)
    done, stale, missing = body["results"]
    assert done == {"id": ids[0], "outcome": "done", "status_code": 200, "version": 2}
    assert (stale["outcome"], stale["status_code"], stale["version"]) == ("refused", 409, 1)
    assert [e["field"] for e in stale["errors"]] == ["version"] and "allowed" not in stale
    assert missing == {"id": unknown, "outcome": "refused", "status_code": 404,
                       "errors": [{"field": "id", "error": f"no exception {unknown}"}]}
    again = await api.post("/v1/exceptions/bulk", json={
        "action": "status", "status": "In Progress", "items": [{"id": ids[0], "version": 2}]})
    [illegal] = again.json()["results"]
    assert illegal == {"id": ids[0], "outcome": "refused", "status_code": 409, "version": 2,
                       "errors": [{"field": "status", "error": "cannot go from Resolved to In Progress"}],
                       "allowed": ["New"]}


# --- who may ask: every route declares its role; a change names the token's principal --------

ROUTES = {  # every route of the exceptions API, and the role it needs
    ("GET", "/v1/exceptions"): Role.viewer,
    ("GET", "/v1/exceptions/counts"): Role.viewer,
    ("GET", "/v1/exceptions/{exception_id}"): Role.viewer,
    ("GET", "/v1/exceptions/{exception_id}/history"): Role.viewer,
    ("POST", "/v1/exceptions"): Role.operator,
    ("PATCH", "/v1/exceptions/{exception_id}"): Role.operator,
    ("POST", "/v1/exceptions/{exception_id}/assign"): Role.operator,
    ("POST", "/v1/exceptions/{exception_id}/status"): Role.operator,
    ("POST", "/v1/exceptions/{exception_id}/snooze"): Role.operator,
    ("POST", "/v1/exceptions/{exception_id}/resolve"): Role.operator,
    ("POST", "/v1/exceptions/{exception_id}/callback/replay"): Role.operator,
    ("POST", "/v1/exceptions/{exception_id}/callback/accept"): Role.operator,
    ("POST", "/v1/exceptions/bulk"): Role.operator,
}
async def test_every_route_declares_its_role_and_refuses_a_token_without_it(
    exceptions_app: FastAPI, anonymous: httpx.AsyncClient, tokens: dict[Role, str]
) -> None:
    await assert_role_matrix(exceptions_app, anonymous, ROUTES, tokens, exception_id=uuid.uuid4())


def every_change(exception_id: str, entity_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """One valid request for each change route, on exception ``exception_id`` at version 1."""
    url = f"/v1/exceptions/{exception_id}"
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return [
        ("POST", "/v1/exceptions", by_hand(entity_id)),
        ("PATCH", url, {"version": 1, "title": "zip code still missing"}),
        ("POST", f"{url}/assign", {"version": 1, "assignee": "ana"}),
        ("POST", f"{url}/status", {"version": 1, "status": "In Progress"}),
        ("POST", f"{url}/snooze", {"version": 1, "until": later}),
        ("POST", f"{url}/resolve", {"version": 1, "reason": "fixed"}),
        ("POST", f"{url}/callback/replay", {"version": 1}),
        ("POST", f"{url}/callback/accept", {"version": 1, "reason": "fixed"}),
        ("POST", "/v1/exceptions/bulk", {"action": "resolve", "resolution": {"reason": "fixed"},
                                         "items": [{"id": exception_id, "version": 1}]}),
    ]


async def test_a_viewer_or_a_service_changes_nothing_and_a_body_naming_an_actor_is_refused(
    api: httpx.AsyncClient, tokens: dict[Role, str]
) -> None:
    created = (await api.post("/v1/exceptions", json=by_hand(f"ord-{tag()}"))).json()
    url, fresh = f"/v1/exceptions/{created['id']}", f"ord-{tag()}"
    changes = every_change(created["id"], fresh)
    assert {(method, path.replace(created["id"], "{exception_id}")) for method, path, _ in changes} == {
        route for route, role in ROUTES.items() if role is Role.operator}  # every change route
    for held in (Role.viewer, Role.service):
        for method, path, body in changes:
            assert_forbidden(await api.request(method, path, json=body, headers=bearer(tokens[held])), Role.operator, held)
    for method, path, body in changes:  # the operator's token, but the body claims someone
        for actor in ("dana", {"kind": "person", "name": "dana", "role": "admin"}):
            response = await api.request(method, path, json={**body, "actor": actor})
            assert response.status_code == 422 and fields_of(response) == ["actor"], (path, response.text)
    assert (await api.get(url)).json() == created  # none of it changed anything
    assert [h["type"] for h in (await api.get(f"{url}/history")).json()["items"]] == ["ExceptionCreated"]
    assert (await api.get("/v1/exceptions", params={"q": fresh})).json() == {"items": [], "next_cursor": None}


async def test_an_operator_works_the_queue_and_each_change_names_the_operator(
    api: httpx.AsyncClient, tokens: dict[Role, str], broker: RunningBroker
) -> None:
    operator = {"kind": "person", "name": "test-operator", "role": "operator", "token_id": token_id(tokens[Role.operator]),
                "rule_id": None, "rule_version": None}  # a person acts for no rule
    raised_ = await api.post("/v1/exceptions", json=by_hand(f"ord-{tag()}"))
    assert raised_.status_code == 201 and raised_.json()["raised_by"] == operator
    one, other = raised_.json()["id"], (await api.post("/v1/exceptions", json=by_hand(f"ord-{tag()}"))).json()["id"]
    assigned = await api.post(f"/v1/exceptions/{one}/assign", json={"version": 1, "assignee": "ana"})
    assert assigned.status_code == 200 and assigned.json()["assignee"] == "ana"
    resolved = await api.post(f"/v1/exceptions/{one}/resolve", json={"version": 2, "reason": "fixed"})
    assert resolved.status_code == 200 and resolved.json()["status"] == "Resolved"
    bulk = await api.post("/v1/exceptions/bulk", json={"action": "resolve", "resolution": {"reason": "duplicate"},
                                                       "items": [{"id": other, "version": 1}]})
    assert bulk.status_code == 200 and (bulk.json()["done"], bulk.json()["refused"]) == (1, 0)

    histories = {i: (await api.get(f"/v1/exceptions/{i}/history")).json()["items"] for i in (one, other)}
    assert [(h["type"], h["data"]["actor"]) for h in histories[one]] == [
        ("ExceptionCreated", operator), ("ExceptionAssigned", operator), ("ExceptionResolved", operator)]
    assert [(h["type"], h["data"]["actor"], h["data"]["cause"]) for h in histories[other]][1:] == [
        ("ExceptionResolved", operator, "bulk request")]
    expected = {(i, h["id"]) for i, history in histories.items() for h in history}
    records = await read_topic(broker.bootstrap_servers, EXCEPTIONS.name, lambda rs: expected <= {
        (json.loads(r.value)["subject"], json.loads(r.value)["id"]) for r in rs})
    published = {json.loads(r.value)["id"]: json.loads(r.value) for r in records if json.loads(r.value)["subject"] in (one, other)}
    for history in histories.values():
        for change in history:
            assert published[change["id"]] == change and change["data"]["actor"] == operator  # the topic says the same


async def test_an_admins_change_names_the_admin(api: httpx.AsyncClient, tokens: dict[Role, str]) -> None:
    created = (await api.post("/v1/exceptions", json=by_hand(f"ord-{tag()}"), headers=bearer(tokens[Role.admin]))).json()
    admin = {"kind": "person", "name": "test-admin", "role": "admin", "token_id": token_id(tokens[Role.admin]),
             "rule_id": None, "rule_version": None}
    assert created["raised_by"] == admin
    [change] = (await api.get(f"/v1/exceptions/{created['id']}/history")).json()["items"]
    assert change["data"]["actor"] == admin
