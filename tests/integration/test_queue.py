"""The queue on the real database and the real broker: dedup, healing, snooze, SLA
escalation, optimistic concurrency, bulk answers, the outbox and the callback replay."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas.actions import CallbackCapture, CreateException, CreateExceptionData, ExceptionSpec, HealCondition, RuleRef
from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.events import PaymentCaptured, StockChanged
from schemas.exceptions import ExceptionStatus, Resolution, ResolutionReason, Snooze
from schemas.registry import EXCEPTIONS, PAYMENTS, PAYMENTS as PAYMENTS_TOPIC, STOCK
from services.exceptions import store, workflow
from services.exceptions.queue import Queue
from services.exceptions.settings import ExceptionsConfig
from storeops_cli.broker import RunningBroker
from storeops.db import make_engine, make_sessionmaker
from storeops.kafka import make_producer
from storeops.settings import Settings
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

DANA = Actor(kind="person", name="dana")
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


@pytest.fixture
async def queue(migrated: str, broker: RunningBroker, clock: Clock) -> AsyncIterator[Queue]:
    settings = Settings(kafka={"bootstrap_servers": broker.bootstrap_servers, "flavor": broker.flavor})
    producer = make_producer(settings.kafka, "test-queue")
    await producer.start()
    engine = make_engine(migrated)
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
    with pytest.raises(workflow.Refused) as refused:
        await queue.change_one(created.after.id, 1, assign("bo"))
    assert refused.value.status_code == 409 and "version" in refused.value.reason
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
    assert [(o.outcome, o.status_code) for o in outcomes] == [
        ("done", 200), ("done", 200), ("done", 200), ("refused", 409), ("refused", 409), ("refused", 404)]
    assert "version" in outcomes[3].detail
    assert outcomes[4].allowed == ["New"]  # from Resolved only a reopen
    ids = {str(s.id) for s in created[:3]}
    records = await read_topic(broker.bootstrap_servers, EXCEPTIONS.name, lambda rs: ids <= {
        json.loads(r.value)["subject"] for r in rs if json.loads(r.value)["type"] == "ExceptionSnoozed"})
    snoozed = [json.loads(r.value) for r in records if json.loads(r.value)["subject"] in ids]
    assert sorted(r["type"] for r in snoozed if r["type"] == "ExceptionSnoozed") == ["ExceptionSnoozed"] * 3
    assert all(r["data"]["actor"] == {"kind": "person", "name": "dana"} for r in snoozed if r["type"] == "ExceptionSnoozed")


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
    assert sent["data"]["raw_callback"] == '{"psp":"8535"}' and sent["data"]["requested_by"]["name"] == "dana"
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
    with pytest.raises(workflow.Refused) as refused:
        await queue.replay(created.after.id, 1, lambda s, now: workflow.replay_callback(s, DANA, now))
    assert refused.value.status_code == 422


async def test_a_person_cannot_reopen_while_another_is_open_for_the_same_entity(queue: Queue) -> None:
    sku = f"sku-{tag()}"
    [first] = await queue.apply_batch([raised(sku)], [])
    await queue.change_one(first.after.id, 1, lambda s, now: workflow.transition(
        s, ExceptionStatus.RESOLVED, DANA, now, queue.sla, resolution=Resolution(reason=ResolutionReason.FIXED)))
    [second] = await queue.apply_batch([raised(sku)], [])
    with pytest.raises(workflow.Refused) as refused:
        await queue.change_one(first.after.id, 2, lambda s, now: workflow.transition(
            s, ExceptionStatus.NEW, DANA, now, queue.sla))
    assert refused.value.status_code == 409 and str(second.after.id) in refused.value.reason


async def test_raising_by_hand_twice_names_the_open_one(queue: Queue) -> None:
    fields = {"type": ExceptionType.ADDRESS_PROBLEM, "severity": Severity.LOW, "title": "bad zip",
              "entity_type": EntityType.ORDER, "entity_id": f"ord-{tag()}"}
    first = await queue.create(workflow.create_by_person(fields, DANA, queue.clock(), queue.sla))
    with pytest.raises(workflow.Refused) as refused:
        await queue.create(workflow.create_by_person(fields, DANA, queue.clock(), queue.sla))
    assert str(first.id) in refused.value.reason


async def test_the_queue_is_rebuilt_from_the_exceptions_topic(
    queue: Queue, broker: RunningBroker, fresh_database: str, clock: Clock
) -> None:
    from services.exceptions.rebuild import NotEmpty, read_changes, rebuild
    from services import load_spec

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
    with pytest.raises(workflow.Refused) as refused:
        await queue.replay(created.after.id, 2, lambda s, now: workflow.replay_callback(s, DANA, now))
    assert refused.value.status_code == 409 and "version" in refused.value.reason
    assert (await state_of(queue, created.after.id)).replays == []
