"""The audit trail searched and exported through the real audit app, on a database of its own.

Every kept record is read as an audit entry: a search by an order finds its events, the action a
rule emitted about it, the exception raised for it, that exception's notification and the rule's run;
the filters (entity type, action and action prefix, actor, source, time, topic) each narrow it; the
newest-first order pages by its own cursors; an export streams every match as CSV or NDJSON, past
one page, and is itself an audit entry.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy import select

from schemas import audit
from schemas.actions import AdjustPrice, AdjustPriceData, CreateException, RuleRef, RuleRunData, RuleRunRecorded
from schemas.common import Actor, EntityType, Severity
from schemas.envelope import Envelope
from schemas.events import OrderPlaced
from schemas.registry import ACTIONS, AUDIT, COMMANDS, EXCEPTIONS, NOTIFICATIONS, ORDERS, RULE_RUNS, Topic
from services.audit.app import SPEC as AUDIT_SPEC
from services.audit.settings import AuditSettings
from services.audit.store import OUTBOX, add_records
from services.exceptions.settings import ExceptionsConfig
from services.exceptions.workflow import create_from_action
from services.notifier.logic import in_app_notification
from storeops.auth import Role
from storeops.consumer import Received
from storeops.db import make_engine, make_sessionmaker
from storeops.service import build_app
from storeops.settings import KafkaSettings
from storeops_cli.broker import RunningBroker
from tests.helpers import bearer
from tests.integration.test_stores import action, placed

pytestmark = pytest.mark.integration

RULE = RuleRef(rule_id="big-orders", rule_version=3, mode="LIVE")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def received(topic: Topic, record: Envelope, offset: int, partition: int = 0) -> Received:
    key, value = topic.encode(record)
    return Received(ConsumerRecord(topic.name, partition, offset, 0, 0, key, value, None, len(key), len(value), ()),
                    topic, record)


async def keep(url: str, items: list[tuple[Topic, Envelope]]) -> None:
    """Kept as the audit consumer keeps them (offsets per topic, partition 0)."""
    offsets: dict[str, int] = {}
    batch = []
    for topic, record in items:
        offsets[topic.name] = offsets.get(topic.name, -1) + 1
        batch.append(received(topic, record, offsets[topic.name]))
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine).begin() as session:
            assert await add_records(session, batch) == len(batch)
    finally:
        await engine.dispose()


@dataclass
class Story:
    """One order's morning: placed, a rule's run and action, the exception, its notification; a price
    command for a sku; a person's change to a credential; another order."""

    order: OrderPlaced
    other: OrderPlaced
    create: CreateException
    exception_id: uuid.UUID
    run_id: uuid.UUID
    notification_id: uuid.UUID
    sku: str
    records: list[tuple[Topic, Envelope]]


def story() -> Story:
    order, other = placed("ord-1"), placed("ord-2")
    order = order.model_copy(update={"time": T0})
    other = other.model_copy(update={"time": T0 + timedelta(hours=2)})
    create = action(Severity.HIGH, 0, "ord-1")
    create = create.model_copy(update={"time": T0 + timedelta(minutes=1), "data": create.data.model_copy(update={"rule": RULE})})
    change = create_from_action(create, T0 + timedelta(minutes=1), ExceptionsConfig().sla).record(create)
    note = in_app_notification(change, "ops-team")
    run_id = uuid.uuid4()
    run = RuleRunRecorded(type="RuleRunRecorded", subject=RULE.rule_id, time=T0 + timedelta(minutes=1), data=RuleRunData(
        run_id=run_id, rule=RULE, event_id=order.id, event_type="OrderPlaced", subject="ord-1", status="completed",
        started_at=T0, action_ids=[create.id]))
    command = AdjustPrice(type="AdjustPrice", subject="sku-9", time=T0 + timedelta(minutes=5), data=AdjustPriceData(
        rule=RULE, run_id=run_id, sku="sku-9", old_price=Decimal("20.00"), new_price=Decimal("18.00"), currency="EUR"))
    person = Actor(kind="person", name="alice", role="admin", token_id="tok-1")
    manual = audit.entry(source="storeops/notifier", action="credential.replaced", actor=person,
                         entities=[(EntityType.CREDENTIAL, "smtp-login")], at=T0 + timedelta(minutes=30))
    return Story(order, other, create, change.data.exception_id, run_id, note.data.notification_id, "sku-9", [
        (ORDERS, order), (RULE_RUNS, run), (ACTIONS, create), (EXCEPTIONS, change), (NOTIFICATIONS, note),
        (COMMANDS, command), (AUDIT, manual), (ORDERS, other)])


@pytest.fixture
def audit_db(fresh_database: str) -> str:
    AUDIT_SPEC.migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def audit_app(audit_db: str, broker: RunningBroker, tmp_path: Any,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FastAPI]:
    """The audit service as it is built, on a database of its own, without its consumer."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = AuditSettings(database_url=audit_db, data_dir=tmp_path,
                             kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor))
    app = build_app(replace(AUDIT_SPEC, consumes=(), watches=()), settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(audit_app: FastAPI, tokens: dict[Role, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=audit_app), base_url="http://audit",
                                 headers=bearer(tokens[Role.viewer])) as client:
        yield client


@pytest.fixture
async def kept(fresh_database: str, audit_app: FastAPI) -> Story:
    told = story()
    await keep(fresh_database, told.records)
    return told


async def found(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await api.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def actions(items: list[dict[str, Any]]) -> list[str]:
    return [i["entry"]["action"] for i in items]


async def test_a_search_by_an_order_finds_everything_about_it(api: httpx.AsyncClient, kept: Story) -> None:
    items = await found(api, entity="ord-1")
    assert actions(items) == ["order.placed", "rule_run.completed", "exception.requested", "exception.created",
                              "notification.created"]
    run, requested, created, note = (i["entry"] for i in items[1:])
    assert run["actor"] == {"kind": "system", "name": "rules", "rule_id": "big-orders", "rule_version": 3}
    assert {"type": "rule_run", "id": str(kept.run_id)} in run["entities"] and run["cause"] == str(kept.order.id)
    assert requested["entities"][0] == {"type": "order", "id": "ord-1"}
    assert created["entities"][:2] == [{"type": "exception", "id": str(kept.exception_id)}, {"type": "order", "id": "ord-1"}]
    assert created["before"] is None and created["after"]["severity"] == "High"
    assert note["entities"][0] == {"type": "notification", "id": str(kept.notification_id)}  # found by its exception
    assert [i["record_id"] for i in await found(api, entity="ord-2")] == [str(kept.other.id)]
    assert actions(await found(api, entity="ord-1", entity_type="order")) == actions(items)
    assert await found(api, entity="ord-1", entity_type="sku") == []
    by_exception = await found(api, entity=str(kept.exception_id))
    assert actions(by_exception) == ["exception.created", "notification.created"]


@pytest.mark.parametrize(("params", "expected"), [
    ({"entity_type": "sku"}, ["price.command_emitted"]),
    ({"entity_type": "credential"}, ["credential.replaced"]),
    ({"action": "price.command_emitted"}, ["price.command_emitted"]),
    ({"action": "exception."}, ["exception.requested", "exception.created"]),
    ({"action": ["order.placed", "credential."]}, ["order.placed", "order.placed", "credential.replaced"]),
    ({"actor": "alice"}, ["credential.replaced"]),
    ({"actor_kind": "person"}, ["credential.replaced"]),
    ({"actor": "rules", "action": "rule_run."}, ["rule_run.completed"]),
    ({"source": "storeops/notifier"}, ["notification.created", "credential.replaced"]),
    ({"topic": COMMANDS.name}, ["price.command_emitted"]),
    ({"since": "2026-11-23T09:05:00Z", "until": "2026-11-23T10:00:00Z"}, ["price.command_emitted", "credential.replaced"]),
    ({"since": "2026-11-23T10:00:00+01:00", "until": "2026-11-23T09:01:00Z"}, ["order.placed"]),
    ({"entity": "ord-1", "actor": "alice"}, []),
])
async def test_each_filter_narrows_the_trail(api: httpx.AsyncClient, kept: Story, params: dict[str, Any],
                                             expected: list[str]) -> None:
    assert actions(await found(api, **params)) == expected


async def test_a_manual_change_reads_as_it_was_written(api: httpx.AsyncClient, kept: Story) -> None:
    [item] = await found(api, actor="alice")
    assert item["entry"] == {"action": "credential.replaced", "cause": None, "before": None, "after": None,
                             "actor": {"kind": "person", "name": "alice", "role": "admin", "token_id": "tok-1"},
                             "entities": [{"type": "credential", "id": "smtp-login"}]}
    assert (item["topic"], item["partition"], item["offset"], item["conflict"]) == (AUDIT.name, 0, 0, False)


async def test_newest_first_pages_with_cursors_of_its_own(api: httpx.AsyncClient, kept: Story) -> None:
    oldest = await found(api, limit=100)
    seen: list[str] = []
    cursor = None
    while True:
        page = (await api.get("/v1/audit", params={"order": "newest", "limit": 3} | ({"cursor": cursor} if cursor else {}))).json()
        seen += [i["record_id"] for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [i["record_id"] for i in reversed(oldest)] and len(seen) == len(kept.records)
    newest = (await api.get("/v1/audit", params={"order": "newest", "limit": 2})).json()
    refused = await api.get("/v1/audit", params={"cursor": newest["next_cursor"]})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "cursor"
    assert "newest" in refused.json()["errors"][0]["error"]
    backwards = await api.get("/v1/audit", params={"order": "newest", "cursor": oldest[2]["cursor"]})
    assert backwards.status_code == 422 and backwards.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(("params", "field"), [
    ({"action": ""}, "action"),
    ({"action": "x" * 101}, "action"),
    ({"entity_type": "Not A Type"}, "entity_type"),
    ({"actor_kind": "robot"}, "actor_kind"),
    ({"order": "sideways"}, "order"),
    ({"since": "2026-11-23T09:00:00"}, "since"),
])
async def test_a_bad_filter_is_refused_naming_it(api: httpx.AsyncClient, params: dict[str, Any], field: str) -> None:
    for path in ("/v1/audit", "/v1/audit/export"):
        response = await api.get(path, params=params)
        assert response.status_code == 422, (path, response.text)
        assert [e["field"] for e in response.json()["errors"]] == [field], path


async def test_an_export_streams_every_match_past_a_page_and_is_an_audit_entry(
        api: httpx.AsyncClient, fresh_database: str, kept: Story) -> None:
    many = [placed("ord-many", f"{n}.00") for n in range(2_100)]  # more than two export pages
    await keep(fresh_database, [(ORDERS, e) for e in many])

    ndjson = await api.get("/v1/audit/export", params={"entity": "ord-many", "format": "ndjson"})
    assert ndjson.status_code == 200 and ndjson.headers["content-type"] == "application/x-ndjson"
    disposition = ndjson.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="storeops-audit-') and disposition.endswith('.ndjson"')
    lines = [orjson.loads(line) for line in ndjson.content.splitlines()]
    assert [line["record_id"] for line in lines] == [str(e.id) for e in many]
    assert lines[0]["entry"]["action"] == "order.placed" and lines[0]["payload"]["data"]["total"] == "0.00"

    exported = await api.get("/v1/audit/export", params={"entity": "ord-1", "format": "csv", "order": "newest"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["action"] for r in rows] == actions(await found(api, entity="ord-1", order="newest"))
    note = rows[0]
    assert (note["entity_type"], note["entity_id"]) == ("notification", str(kept.notification_id))
    assert orjson.loads(rows[-1]["entities"]) == [{"type": "order", "id": "ord-1"}, {"type": "customer", "id": "c"}]
    assert rows[-2]["actor"] == "rules" and rows[-1]["topic"] == ORDERS.name and rows[-1]["conflict"] == "false"

    engine = make_engine(fresh_database)
    try:
        async with make_sessionmaker(engine)() as session:
            values = (await session.scalars(select(OUTBOX.table.c.value).order_by(OUTBOX.table.c.seq))).all()
    finally:
        await engine.dispose()
    entries = [audit.AuditEntryRecorded.model_validate_json(v) for v in values]
    assert [e.data.action for e in entries] == ["audit.exported", "audit.exported"]
    first, second = (e.data for e in entries)
    assert first.actor.name == "test-viewer" and first.actor.kind == "person" and first.actor.token_id
    assert first.after == {"format": "ndjson", "order": "oldest", "filters": {"entity": "ord-many"}}
    assert second.after == {"format": "csv", "order": "newest", "filters": {"entity": "ord-1"}}
    assert [str(e.subject) for e in entries] == [ndjson.headers["x-export-id"], exported.headers["x-export-id"]]
