"""Each store on the real database: keyed effects make a repeat a no-op; queries order as promised."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.actions import CreateException, CreateExceptionData, ExceptionSpec, RuleRef
from schemas.common import EntityType, ExceptionType, Severity
from schemas.events import OrderPlaced
from schemas.registry import ORDERS
from services.audit.store import add_records, search
from services.exceptions.settings import ExceptionsConfig
from services.exceptions.workflow import create_from_action
from services.notifier.logic import in_app_notification
from services.notifier.store import add_notifications, notifications_after
from storeops.consumer import Received
from storeops.db import make_engine, make_sessionmaker

pytestmark = pytest.mark.integration


@pytest.fixture
async def session(migrated: str) -> AsyncIterator[AsyncSession]:
    engine = make_engine(migrated)
    try:
        async with make_sessionmaker(engine).begin() as s:
            yield s
            await s.rollback()  # each test leaves the database as it found it
    finally:
        await engine.dispose()


def action(severity: Severity, age_minutes: int, entity: str) -> CreateException:
    return CreateException(
        type="CreateException", subject=entity, time=datetime.now(UTC) - timedelta(minutes=age_minutes),
        data=CreateExceptionData(
            rule=RuleRef(rule_id="r", rule_version=1, mode="LIVE"), evidence=[uuid.uuid4()],
            exception=ExceptionSpec(type=ExceptionType.ORDER, severity=severity, title="t",
                                    entity_type=EntityType.ORDER, entity_id=entity, impact=Decimal("10.50"), currency="EUR")))


def placed(order_id: str, total: str = "1500.00") -> OrderPlaced:
    return ORDERS.adapter.validate_python({"type": "OrderPlaced", "data": {
        "order_id": order_id, "customer_id": "c", "total": total, "currency": "EUR"}})


async def test_notifications_are_stored_once_and_read_after_a_cursor(session: AsyncSession) -> None:
    now, sla = datetime.now(UTC), ExceptionsConfig().sla
    changes = [create_from_action(a, now, sla).record(a) for a in (action(Severity.HIGH, 1, f"e-{n}") for n in range(3))]
    recipient = f"team-{uuid.uuid4().hex[:6]}"
    notes = [in_app_notification(c, recipient) for c in changes]
    assert await add_notifications(session, notes) == 3
    assert await add_notifications(session, notes) == 0
    rows = await notifications_after(session, 0, recipient, 100)
    assert [r.id for r in rows] == [n.data.notification_id for n in notes]
    later = await notifications_after(session, rows[0].seq, recipient, 100)
    assert [r.id for r in later] == [n.data.notification_id for n in notes[1:]]


def received_at(event: OrderPlaced, offset: int) -> Received:
    key, value = ORDERS.encode(event)
    record = ConsumerRecord(ORDERS.name, 0, offset, 0, 0, key, value, None, len(key), len(value), ())
    return Received(record, ORDERS, event)


async def test_audit_keeps_one_row_per_record(session: AsyncSession) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    event = placed(order_id)
    base = 10_000_000 + uuid.uuid4().int % 1_000_000
    assert await add_records(session, [received_at(event, base)]) == 1
    assert await add_records(session, [received_at(event, base)]) == 0  # read again
    assert await add_records(session, [received_at(event, base + 1)]) == 0  # produced again with the same id
    [row] = await search(session, entity=order_id, since=None, until=None, topic=None, after=0, limit=10)
    assert (row.topic, row.offset, row.record_id) == (ORDERS.name, base, event.id)
    assert row.payload["data"]["total"] == "1500.00"


async def test_audit_keeps_a_new_record_at_an_origin_seen_before(session: AsyncSession) -> None:
    """Offsets restart at 0 when a topic is re-created or the embedded broker restarts."""
    first, second = placed(f"ord-{uuid.uuid4().hex[:8]}"), placed(f"ord-{uuid.uuid4().hex[:8]}")
    offset = 20_000_000 + uuid.uuid4().int % 1_000_000
    assert await add_records(session, [received_at(first, offset)]) == 1
    assert await add_records(session, [received_at(second, offset)]) == 1
    for event in (first, second):
        [row] = await search(session, entity=event.subject, since=None, until=None, topic=None, after=0, limit=10)
        assert (row.offset, row.record_id) == (offset, event.id)
