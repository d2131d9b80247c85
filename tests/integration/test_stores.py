"""Each store on the real database: keyed effects make a repeat a no-op; queries order as promised.
The audit search is also read through the real audit app: paged by opaque cursor, bounded."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.actions import CreateException, CreateExceptionData, ExceptionSpec, RuleRef
from schemas.common import EntityType, ExceptionType, Severity
from schemas.events import OrderPlaced
from schemas.registry import ORDERS
from services.audit.app import SPEC as AUDIT_SPEC
from services.audit.settings import AuditSettings
from services.audit.store import Filters, add_records, search
from services.exceptions.settings import ExceptionsConfig
from services.exceptions.workflow import create_from_action
from services.notifier.logic import in_app_notification
from services.notifier.store import add_notifications, notifications_after
from storeops.auth import Role
from storeops.consumer import Received
from storeops.db import make_engine, make_sessionmaker
from storeops.http import encode_cursor
from storeops.service import build_app
from storeops.settings import KafkaSettings
from storeops_cli.broker import RunningBroker
from tests.helpers import bearer

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
    [row] = await search(session, Filters(entity=order_id), after=None, limit=10)
    assert (row.topic, row.offset, row.record_id) == (ORDERS.name, base, event.id)
    assert row.payload["data"]["total"] == "1500.00"


async def test_audit_keeps_a_new_record_at_an_origin_seen_before(session: AsyncSession) -> None:
    """Offsets restart at 0 when a topic is re-created or the embedded broker restarts."""
    first, second = placed(f"ord-{uuid.uuid4().hex[:8]}"), placed(f"ord-{uuid.uuid4().hex[:8]}")
    offset = 20_000_000 + uuid.uuid4().int % 1_000_000
    assert await add_records(session, [received_at(first, offset)]) == 1
    assert await add_records(session, [received_at(second, offset)]) == 1
    for event in (first, second):
        [row] = await search(session, Filters(entity=event.subject), after=None, limit=10)
        assert (row.offset, row.record_id) == (offset, event.id)


# --- the audit search through the real app ---------------------------------------------


@pytest.fixture
async def audit_app(migrated: str, broker: RunningBroker, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FastAPI]:
    """The audit service as it is built, verifying the suite's tokens, on the suite's database, without its
    consumer (it would record every topic)."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = AuditSettings(database_url=migrated,
                             kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor))
    app = build_app(replace(AUDIT_SPEC, consumes=()), settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def audit_api(audit_app: FastAPI, tokens: dict[Role, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A viewer's client: reading the audit trail is a viewer's."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=audit_app), base_url="http://audit",
                                 headers=bearer(tokens[Role.viewer])) as client:
        yield client


async def recorded(migrated: str, events: list[OrderPlaced]) -> None:
    """Kept for good (committed), as the audit consumer would; their entities are the test's own."""
    engine = make_engine(migrated)
    try:
        async with make_sessionmaker(engine).begin() as session:
            base = 30_000_000 + uuid.uuid4().int % 1_000_000
            assert await add_records(session, [received_at(e, base + n) for n, e in enumerate(events)]) == len(events)
    finally:
        await engine.dispose()


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


async def test_audit_pages_by_opaque_cursor_to_a_null_next_cursor(audit_api: httpx.AsyncClient, migrated: str) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    events = [placed(order_id, f"{n}.00") for n in range(1, 6)]
    await recorded(migrated, events)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"entity": order_id, "limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await audit_api.get("/v1/audit", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["items"][-1]["cursor"]  # the next page starts after the last record of this one
    assert ([r["record_id"] for r in seen], pages) == ([str(e.id) for e in events], 3)  # 2 + 2 + 1, then null
    full = (await audit_api.get("/v1/audit", params={"entity": order_id, "limit": 5})).json()
    assert len(full["items"]) == 5 and full["next_cursor"] is None  # the last page, even when full
    # a client resumes from the last record it saw, with that record's own cursor
    rest = (await audit_api.get("/v1/audit", params={"entity": order_id, "cursor": seen[2]["cursor"]})).json()
    assert [r["record_id"] for r in rest["items"]] == [str(e.id) for e in events[3:]] and rest["next_cursor"] is None
    end = (await audit_api.get("/v1/audit", params={"entity": order_id, "cursor": seen[-1]["cursor"]})).json()
    assert end == {"items": [], "next_cursor": None}


async def test_audit_refuses_garbage_cursors_huge_integers_and_bad_ranges_naming_the_field(
    audit_api: httpx.AsyncClient,
) -> None:
    huge = base64.urlsafe_b64encode(b"99999999999999999999999").decode().rstrip("=")
    for cursor in ("not-ours", "%%%", encode_cursor("12"), encode_cursor(-1), encode_cursor(1.5), huge, "x" * 3000):
        response = await audit_api.get("/v1/audit", params={"cursor": cursor})
        assert response.status_code == 422 and fields_of(response) == ["cursor"], (cursor, response.text)
    for limit in ("0", "1001", "99999999999999999999999"):
        response = await audit_api.get("/v1/audit", params={"limit": limit})
        assert response.status_code == 422 and fields_of(response) == ["limit"]
    naive = await audit_api.get("/v1/audit", params={"since": "2026-01-02T00:00:00"})
    assert naive.status_code == 422 and naive.json() == {
        "errors": [{"field": "since", "error": "give a timezone, e.g. 2026-11-23T09:00:00Z"}]}
    naive = await audit_api.get("/v1/audit", params={"until": "2026-01-02T00:00:00"})
    assert naive.status_code == 422 and fields_of(naive) == ["until"]
    backwards = await audit_api.get("/v1/audit", params={"since": "2026-01-03T00:00:00Z", "until": "2026-01-02T00:00:00Z"})
    assert backwards.status_code == 422 and fields_of(backwards) == ["until"]
    assert fields_of(await audit_api.get("/v1/audit", params={"since": "yesterday"})) == ["since"]


async def test_the_audit_trail_is_a_viewers_to_read_and_nobodys_without_a_token(
    audit_app: FastAPI, tokens: dict[Role, str], migrated: str
) -> None:
    declared = {(method.upper(), path): requirement["bearer"][0] for path, operations in audit_app.openapi()["paths"].items()
                for method, operation in operations.items() for requirement in operation.get("security", [])}
    assert declared == {("GET", "/v1/audit"): "viewer", ("GET", "/v1/audit/export"): "viewer"}  # a new route too
    event = placed(f"ord-{uuid.uuid4().hex[:8]}")
    await recorded(migrated, [event])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=audit_app), base_url="http://audit") as client:
        anonymous = await client.get("/v1/audit", params={"entity": event.subject})
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        body = anonymous.json()
        [error] = body["errors"]
        assert body.keys() == {"errors"} and error["field"] == "Authorization" and "Bearer" in error["error"]
        assert str(event.id) not in anonymous.text
        assert (await client.get("/v1/audit/export", params={"entity": event.subject})).status_code == 401
        for held, token in tokens.items():  # every role includes a viewer's reads
            response = await client.get("/v1/audit", params={"entity": event.subject}, headers=bearer(token))
            assert response.status_code == 200, (held, response.text)
            assert [r["record_id"] for r in response.json()["items"]] == [str(event.id)]
        for path in ("/healthz", "/readyz", "/metrics"):  # the probes stay open
            assert (await client.get(path)).status_code in (200, 503), path
