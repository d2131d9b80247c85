"""Events posted over HTTP flow through all five services as real processes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.registry import DEADLETTER, ORDERS
from storeops.auth import Role
from storeops_cli.bench.stack import BenchStack
from tests.helpers import bearer, eventually, read_topic

pytestmark = pytest.mark.e2e


def order(total: str = "2500.00", order_id: str | None = None, **extra: Any) -> dict[str, Any]:
    order_id = order_id or f"ord-{uuid.uuid4().hex[:12]}"
    return {"id": str(uuid.uuid4()), "type": "OrderPlaced", "source": "tests",
            "data": {"order_id": order_id, "customer_id": "cus-1", "total": total, "currency": "EUR", **extra}}


async def get(stack: BenchStack, url: str, **params: Any) -> Any:
    """A GET with the stack's token."""
    async with stack.async_client(timeout=10) as client:
        response = await client.get(url, params=params)
        response.raise_for_status()
        return response.json()


async def post(stack: BenchStack, url: str, body: Any) -> httpx.Response:
    """A POST with the stack's token."""
    async with stack.async_client(timeout=10) as client:
        return await client.post(url, json=body)


async def exceptions_for(stack: BenchStack, entity_id: str) -> list[dict]:
    found = (await get(stack, f"{stack.urls['exceptions']}/v1/exceptions", entity_id=entity_id))["items"]
    assert all(e["entity_id"] == entity_id for e in found)
    return found


async def test_every_service_is_ready_and_exposes_metrics(stack: BenchStack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:  # no token: the probes and /metrics are open
        for name in stack.children:
            ready = await client.get(f"{stack.urls[name]}/readyz")
            assert ready.status_code == 200, (name, ready.text)
            assert all(ready.json()["checks"].values())
            assert (await client.get(f"{stack.urls[name]}/healthz")).json() == {"status": "ok"}
            metrics = (await client.get(f"{stack.urls[name]}/metrics")).text
            assert f"storeops_{name}_" in metrics


async def test_high_value_order_reaches_queue_feed_and_audit(stack: BenchStack) -> None:
    event = order("4200.00")
    order_id = event["data"]["order_id"]
    response = await post(stack, f"{stack.urls['ingest']}/v1/events/orders", event)
    assert response.status_code == 202, response.text
    accepted = response.json()["accepted"][0]
    assert accepted["id"] == event["id"] and accepted["topic"] == ORDERS.name

    [exc] = await eventually(lambda: exceptions_for(stack, order_id))
    assert (exc["severity"], exc["type"], exc["status"]) == ("High", "vip", "New")
    assert Decimal(exc["impact"]) == Decimal("4200.00") and exc["evidence"] == [event["id"]]
    assert exc["source"] == {"rule_id": "high-value-order", "rule_version": 1, "mode": "LIVE"}

    async def feed_has_it() -> list[dict]:
        items = (await get(stack, f"{stack.urls['notifier']}/v1/notifications", limit=1000))["items"]
        return [n for n in items if n["exception_id"] == exc["id"]]

    [note] = await eventually(feed_has_it)
    assert note["severity"] == "High" and order_id in note["title"]

    async def audit_of(entity: str, type_: str) -> list[dict]:
        items = (await get(stack, f"{stack.urls['audit']}/v1/audit", entity=entity))["items"]
        return [r for r in items if r["type"] == type_]

    [placed] = await eventually(lambda: audit_of(order_id, "OrderPlaced"))
    assert (placed["topic"], placed["partition"], placed["offset"]) == (ORDERS.name, accepted["partition"], accepted["offset"])
    assert placed["payload"]["data"]["total"] == "4200.00"
    assert await eventually(lambda: audit_of(exc["id"], "ExceptionCreated"))
    assert await eventually(lambda: audit_of(order_id, "CreateException"))
    runs = (await get(stack, f"{stack.urls['rules']}/v1/rules/runs", rule_id="high-value-order", limit=1000))["items"]
    assert [r for r in runs if r["event_id"] == event["id"]]


async def test_ingest_takes_events_from_a_store_connector_token_and_no_other(
        stack: BenchStack, tokens: dict[Role, str]) -> None:
    """A store's connector posts with a service token; no token is 401, a viewer's or an operator's
    403 naming the role, and nothing refused reaches the topic."""
    event = order("15.00")
    url = f"{stack.urls['ingest']}/v1/events/orders"
    async with httpx.AsyncClient(timeout=10) as client:
        anonymous = await client.post(url, json=event)
        refused = [await client.post(url, json=event, headers=bearer(tokens[role])) for role in (Role.viewer, Role.operator)]
        connector = await client.post(url, json=event, headers=bearer(tokens[Role.service]))
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer"), anonymous.text
    assert [e["field"] for e in anonymous.json()["errors"]] == ["Authorization"]
    for response in refused:
        assert response.status_code == 403 and response.json()["needed_role"] == "service", response.text
        assert [e["field"] for e in response.json()["errors"]] == ["Authorization"]
    assert connector.status_code == 202 and connector.json()["accepted"][0]["id"] == event["id"], connector.text
    records = await read_topic(stack.broker.bootstrap_servers, ORDERS.name,
                               until=lambda rs: any(event["id"].encode() in r.value for r in rs))
    assert sum(event["id"].encode() in r.value for r in records) == 1


async def test_order_below_threshold_raises_nothing(stack: BenchStack) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    # Same key, same partition: once the second order's exception exists, the
    # first one has certainly been evaluated.
    for total in ("999.99", "1000.00"):
        assert (await post(stack, f"{stack.urls['ingest']}/v1/events/orders", order(total, order_id))).status_code == 202
    found = await eventually(lambda: exceptions_for(stack, order_id))
    assert [Decimal(e["impact"]) for e in found] == [Decimal("1000.00")]


async def test_stock_below_threshold_raises_inventory_exception(stack: BenchStack) -> None:
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    event = {"type": "StockChanged", "data": {"sku": sku, "location": "main", "on_hand": 0, "reorder_point": 4}}
    assert (await post(stack, f"{stack.urls['ingest']}/v1/events/stock", event)).status_code == 202
    [exc] = await eventually(lambda: exceptions_for(stack, sku))
    assert (exc["type"], exc["severity"], exc["entity_type"]) == ("inventory", "High", "sku")


async def test_invalid_event_gets_422_and_nothing_reaches_the_topic(stack: BenchStack) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    bad = order("-5.00", order_id)
    response = await post(stack, f"{stack.urls['ingest']}/v1/events/orders", bad)
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == []
    assert body["rejected"][0]["errors"][0]["field"] == "data.total"
    assert "greater than or equal to 0" in body["rejected"][0]["errors"][0]["error"]
    assert body["errors"][0]["field"] == "data.total"  # the one error shape every service answers

    sentinel = order("10.00", order_id)  # same key, same partition, after the bad one
    assert (await post(stack, f"{stack.urls['ingest']}/v1/events/orders", sentinel)).status_code == 202
    records = await read_topic(stack.broker.bootstrap_servers, ORDERS.name,
                               until=lambda rs: any(sentinel["id"].encode() in r.value for r in rs))
    assert not [r for r in records if bad["id"].encode() in r.value]


async def test_batch_keeps_valid_events_and_names_each_rejected_one(stack: BenchStack) -> None:
    good1, good2 = order("12.00"), order("13.00")
    bad = order("14.00")
    bad["data"]["currency"] = "euro"
    response = await post(stack, f"{stack.urls['ingest']}/v1/events/orders", [good1, bad, good2])
    assert response.status_code == 207
    body = response.json()
    assert [a["id"] for a in body["accepted"]] == [good1["id"], good2["id"]]
    assert body["rejected"] == [{"index": 1, "id": bad["id"],
                                 "errors": [{"field": "data.currency", "error": "String should match pattern '^[A-Z]{3}$'"}]}]


async def test_wrong_event_type_for_the_endpoint_is_refused(stack: BenchStack) -> None:
    response = await post(stack, f"{stack.urls['ingest']}/v1/events/stock", order())
    assert response.status_code == 422
    assert response.json()["rejected"][0]["errors"][0]["field"] == "type"


@pytest.mark.parametrize("body", [b"{nope", b"[]", b"42"])
async def test_unusable_body_gets_422(stack: BenchStack, body: bytes) -> None:
    async with stack.async_client(timeout=10) as client:
        response = await client.post(f"{stack.urls['ingest']}/v1/events/orders", content=body,
                                     headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "(body)"


async def test_malformed_records_are_dead_lettered_and_the_stream_goes_on(stack: BenchStack) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    good = order("3100.00", order_id)
    not_json = b"{this is not json"
    wrong_shape = orjson.dumps({"type": "OrderPlaced", "data": {"order_id": order_id}})
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        first = await producer.send_and_wait(ORDERS.name, not_json, key=order_id.encode())
        second = await producer.send_and_wait(ORDERS.name, wrong_shape, key=order_id.encode())
        await producer.send_and_wait(ORDERS.name, orjson.dumps(good), key=order_id.encode())
    finally:
        await producer.stop()

    assert await eventually(lambda: exceptions_for(stack, order_id))  # the good record after them was processed

    def dead_letters(records: list) -> list:
        return [DEADLETTER.decode(r.value).data for r in records if r.key == order_id.encode()]

    records = await read_topic(stack.broker.bootstrap_servers, DEADLETTER.name,
                               until=lambda rs: {(d.service, d.offset) for d in dead_letters(rs)} >= {
                                   ("rules", o.offset) for o in (first, second)})
    await asyncio.sleep(1.5)  # audit reads the topic too: a dead letter of its own would be there by now
    records = await read_topic(stack.broker.bootstrap_servers, DEADLETTER.name,
                               until=lambda rs: len(dead_letters(rs)) >= 2)
    by_offset = {(d.service, d.offset): d for d in dead_letters(records)}
    assert set(by_offset) == {("rules", first.offset), ("rules", second.offset)}  # one dead letter per bad record
    decode = by_offset[("rules", first.offset)]
    assert (decode.stage, decode.topic, decode.partition, decode.original_value) == ("decode", ORDERS.name, first.partition, not_json)
    validate = by_offset[("rules", second.offset)]
    assert validate.stage == "validate" and validate.original_value == wrong_shape
    assert "data.customer_id: Field required" in validate.error


async def test_redelivered_event_has_no_second_effect(stack: BenchStack) -> None:
    # the same event twice, as a client retry sends it: with its time (without one, ingest stamps each
    # copy with its own, and the audit trail keeps the second as a conflict: same id, other content)
    event = order("5000.00") | {"time": datetime.now(UTC).isoformat()}
    order_id = event["data"]["order_id"]
    for _ in range(2):
        assert (await post(stack, f"{stack.urls['ingest']}/v1/events/orders", event)).status_code == 202
    [exc] = await eventually(lambda: exceptions_for(stack, order_id))

    async def audit_rows() -> list[dict]:
        return (await get(stack, f"{stack.urls['audit']}/v1/audit", entity=order_id))["items"]

    # both copies are on the topic; audit must have read past the second one
    await read_topic(stack.broker.bootstrap_servers, ORDERS.name,
                     until=lambda rs: sum(event["id"].encode() in r.value for r in rs) == 2)
    rows = await eventually(audit_rows)
    assert sum(r["type"] == "OrderPlaced" for r in rows) == 1
    items = (await get(stack, f"{stack.urls['notifier']}/v1/notifications", limit=1000))["items"]
    assert sum(n["exception_id"] == exc["id"] for n in items) == 1
    assert len(await exceptions_for(stack, order_id)) == 1


async def test_feed_cursor_returns_only_what_came_after(stack: BenchStack) -> None:
    feed = f"{stack.urls['notifier']}/v1/notifications"
    cursor = None
    while True:  # drain to the current end; each item carries the cursor to go on from
        page = await get(stack, feed, limit=1000, **({"cursor": cursor} if cursor else {}))
        cursor = page["items"][-1]["cursor"] if page["items"] else cursor
        if page["next_cursor"] is None:
            break
    assert cursor is not None
    orders = [order("1500.00") for _ in range(3)]
    assert (await post(stack, f"{stack.urls['ingest']}/v1/events/orders", orders)).status_code == 202
    ids = {o["data"]["order_id"] for o in orders}

    async def caught_up() -> list[dict]:
        items = (await get(stack, feed, cursor=cursor, limit=1000))["items"]
        return items if sum(any(i in n["title"] for i in ids) for n in items) == 3 else []

    items = await eventually(caught_up)
    seen = {n["id"] for n in items}
    last = await get(stack, feed, cursor=items[-1]["cursor"])
    assert not seen & {n["id"] for n in last["items"]} and last["next_cursor"] is None
    async with stack.async_client(timeout=10) as client:
        for bad_cursor in ("yesterday", "99999999999999999999999", "OTk5OTk5OTk5OTk5OTk5OTk5OTk5"):
            bad = await client.get(feed, params={"cursor": bad_cursor})
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor", bad.text


async def test_audit_filters_by_time_range_and_refuses_bad_ranges(stack: BenchStack) -> None:
    event = order("20.00")
    event["time"] = "2026-01-02T03:04:05Z"
    order_id = event["data"]["order_id"]
    assert (await post(stack, f"{stack.urls['ingest']}/v1/events/orders", event)).status_code == 202
    url = f"{stack.urls['audit']}/v1/audit"
    inside = await eventually(lambda: _items(stack, url, entity=order_id, since="2026-01-02T00:00:00Z", until="2026-01-03T00:00:00Z"))
    assert [r["record_id"] for r in inside] == [event["id"]]
    assert await _items(stack, url, entity=order_id, since="2026-01-02T03:04:06Z") == []
    async with stack.async_client(timeout=10) as client:
        naive = await client.get(url, params={"since": "2026-01-02T00:00:00"})
        backwards = await client.get(url, params={"since": "2026-01-03T00:00:00Z", "until": "2026-01-02T00:00:00Z"})
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "since"
    assert backwards.status_code == 422 and backwards.json()["errors"][0]["field"] == "until"


async def _items(stack: BenchStack, url: str, **params: Any) -> list[dict]:
    return (await get(stack, url, **params))["items"]


async def test_envelope_with_bad_data_is_recorded_by_audit_and_dead_lettered_by_rules(stack: BenchStack) -> None:
    """Audit records what was on the topic; the domain consumer refuses its contract."""
    event = order("-1.00")
    event["subject"] = order_id = event["data"]["order_id"]
    event["time"] = "2026-11-23T10:00:00Z"
    raw = orjson.dumps(event)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(ORDERS.name, raw, key=order_id.encode())
    finally:
        await producer.stop()
    [row] = await eventually(lambda: _items(stack, f"{stack.urls['audit']}/v1/audit", entity=order_id, topic=ORDERS.name))
    assert (row["offset"], row["payload"]) == (sent.offset, event)
    records = await read_topic(stack.broker.bootstrap_servers, DEADLETTER.name,
                               until=lambda rs: any(r.key == order_id.encode() for r in rs))
    [dead] = [DEADLETTER.decode(r.value).data for r in records if r.key == order_id.encode()]
    assert (dead.service, dead.stage, dead.offset) == ("rules", "validate", sent.offset)
    assert "data.total" in dead.error
    # ...and the dead letter itself is on record, under the same entity.
    assert await eventually(lambda: _items(stack, f"{stack.urls['audit']}/v1/audit", entity=order_id, topic=DEADLETTER.name))
