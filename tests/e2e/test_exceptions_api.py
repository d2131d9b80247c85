"""The exception queue as an operations team uses it: over HTTP, against the real
services, fed through ingest, with every refusal answered clearly."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from schemas.registry import PAYMENTS
from services.exceptions.store import get_state
from storeops.auth import Role
from storeops.db import make_engine, make_sessionmaker
from storeops_cli.bench.stack import BenchStack
from storeops_cli.runner import wait_ready
from tests.helpers import bearer, eventually, read_topic

pytestmark = pytest.mark.e2e


@pytest.fixture
async def api(stack: BenchStack, tokens: dict[Role, str]) -> Any:
    """The queue's API as an operator works it (the suite's operator token, "test-operator")."""
    async with httpx.AsyncClient(base_url=stack.urls["exceptions"], timeout=10, headers=bearer(tokens[Role.operator])) as client:
        yield client


def actor_of(token: str) -> dict[str, Any]:
    """The actor a change made with ``token`` names: the token's principal."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return {"kind": "person", "name": claims["sub"], "role": claims["role"], "token_id": claims["jti"],
            "rule_id": None, "rule_version": None}  # a person acts for no rule


async def ingest(stack: BenchStack, kind: str, data: dict[str, Any], type_: str) -> str:
    event_id = str(uuid.uuid4())
    async with stack.async_client(timeout=10) as client:
        response = await client.post(f"{stack.urls['ingest']}/v1/events/{kind}", json={
            "id": event_id, "type": type_, "source": "tests", "data": data})
    assert response.status_code == 202, response.text
    return event_id


async def one_for(api: httpx.AsyncClient, entity_id: str, **params: Any) -> dict[str, Any] | None:
    items = (await api.get("/v1/exceptions", params={"entity_id": entity_id, **params})).json()["items"]
    assert len(items) <= 1, items
    return items[0] if items else None


def tag() -> str:
    return uuid.uuid4().hex[:10]


def fields_of(response: httpx.Response) -> list[str]:
    """The fields an error answer names (every error has the one shape)."""
    return [e["field"] for e in response.json()["errors"]]


async def test_work_an_exception_from_new_to_healed_and_back(stack: BenchStack, api: httpx.AsyncClient,
                                                               tokens: dict[Role, str]) -> None:
    sku = f"sku-{tag()}"
    await ingest(stack, "stock", {"sku": sku, "on_hand": 2, "reorder_point": 5}, "StockChanged")
    exc = await eventually(lambda: one_for(api, sku))
    assert (exc["status"], exc["version"], exc["heal"]["at_least"]) == ("New", 1, "5")
    url = f"/v1/exceptions/{exc['id']}"

    assigned = await api.post(f"{url}/assign", json={"version": 1, "assignee": "ana"})
    assert (assigned.status_code, assigned.json()["assignee"], assigned.json()["version"]) == (200, "ana", 2)
    # someone else (the stack's admin token) with the version they read before: stale whoever asks
    stale = await api.post(f"{url}/assign", json={"version": 1, "assignee": "bo"}, headers=stack.headers)
    assert stale.status_code == 409 and fields_of(stale) == ["version"] and "version 2" in stale.text
    no_reason = await api.post(f"{url}/status", json={"version": 2, "status": "Resolved"})
    assert no_reason.status_code == 422 and fields_of(no_reason) == ["resolution"]
    named = await api.post(f"{url}/status", json={"actor": "ana", "version": 2, "status": "In Progress"})
    assert named.status_code == 422 and fields_of(named) == ["actor"], named.text  # a body cannot name its actor
    started = await api.post(f"{url}/status", json={"version": 2, "status": "In Progress"})
    assert started.status_code == 200 and started.json()["status"] == "In Progress"

    restock = await ingest(stack, "stock", {"sku": sku, "on_hand": 30, "reorder_point": 5}, "StockChanged")
    healed = await eventually(lambda: one_for(api, sku, status="Resolved"))
    assert healed["resolution"]["automatic"] is True and healed["resolution"]["evidence"] == restock

    await ingest(stack, "stock", {"sku": sku, "on_hand": 1, "reorder_point": 5}, "StockChanged")
    back = await eventually(lambda: one_for(api, sku, status="New"))
    assert back["id"] == exc["id"] and back["flap_count"] == 1 and back["occurrences"] == 2
    page = (await api.get(f"{url}/history")).json()
    history = page["items"]
    assert page["next_cursor"] is None
    assert [h["type"] for h in history] == [
        "ExceptionCreated", "ExceptionAssigned", "ExceptionStatusChanged", "ExceptionResolved", "ExceptionReopened"]
    assert history[1]["data"]["actor"] == actor_of(tokens[Role.operator])  # the token's principal
    assert history[2]["data"]["actor"] == actor_of(tokens[Role.operator])
    assert history[3]["data"]["actor"]["kind"] == "system"


async def test_illegal_moves_are_refused_with_the_allowed_ones_named(stack: BenchStack, api: httpx.AsyncClient) -> None:
    created = await api.post("/v1/exceptions", json={
        "type": "address_problem", "severity": "Low", "title": "zip code missing",
        "entity_type": "order", "entity_id": f"ord-{tag()}"})
    assert created.status_code == 201
    url = f"/v1/exceptions/{created.json()['id']}"
    resolved = await api.post(f"{url}/resolve", json={"version": 1, "reason": "customer_contacted"})
    assert resolved.status_code == 200 and resolved.json()["resolution"]["reason"] == "customer_contacted"
    illegal = await api.post(f"{url}/status", json={"version": 2, "status": "In Progress"})
    assert illegal.status_code == 409
    assert illegal.json() == {
        "errors": [{"field": "status", "error": "cannot go from Resolved to In Progress"}], "allowed": ["New"]}
    other = await api.post(f"{url}/status", json={"version": 2, "status": "New"})
    assert other.status_code == 200 and other.json()["resolution"] is None


async def test_bad_requests_name_the_field(api: httpx.AsyncClient) -> None:
    unknown = await api.get(f"/v1/exceptions/{uuid.uuid4()}")
    assert unknown.status_code == 404 and fields_of(unknown) == ["exception_id"]
    cursor = await api.get("/v1/exceptions", params={"cursor": "not-ours"})
    assert cursor.status_code == 422 and fields_of(cursor) == ["cursor"]
    status = await api.get("/v1/exceptions", params={"status": "Closed"})
    assert status.status_code == 422 and fields_of(status) == ["status[0]"]
    huge = await api.get("/v1/exceptions", params={"limit": "99999999999999999999999"})
    assert huge.status_code == 422 and fields_of(huge) == ["limit"]
    other = await api.post(f"/v1/exceptions/{uuid.uuid4()}/resolve",
                           json={"version": 1, "reason": "other"})
    assert other.status_code == 422 and fields_of(other) == ["note"]
    wake = await api.post(f"/v1/exceptions/{uuid.uuid4()}/snooze",
                          json={"version": 1, "until_event": "StockRestored"})
    assert wake.status_code == 422 and fields_of(wake) == ["until_event"] and "StockChanged" in json.dumps(wake.json())
    too_many = await api.post("/v1/exceptions/bulk", json={
        "action": "reassign", "assignee": "ana",
        "items": [{"id": str(uuid.uuid4()), "version": 1} for _ in range(1001)]})
    assert too_many.status_code == 422 and fields_of(too_many) == ["items"]  # exceptions.bulk_max: 1,000 by default


async def test_filters_counts_and_cursor_pages_follow_the_ranking(api: httpx.AsyncClient) -> None:
    run = tag()
    made = []
    for severity, impact in [("Low", None), ("High", "10.00"), ("Critical", None), ("High", "900.00"), ("Medium", None)]:
        body = {"type": "pricing", "severity": severity, "title": f"price check {run}",
                "entity_type": "sku", "entity_id": f"sku-{run}-{len(made)}"}
        if impact:
            body |= {"impact": impact, "currency": "EUR"}
        response = await api.post("/v1/exceptions", json=body)
        assert response.status_code == 201, response.text
        made.append(response.json())
    expected = [made[2]["id"], made[3]["id"], made[1]["id"], made[4]["id"], made[0]["id"]]  # severity, impact, age
    seen, cursor, pages = [], None, 0
    while True:
        page = (await api.get("/v1/exceptions", params={"q": run, "limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (expected, 3)
    high = (await api.get("/v1/exceptions", params={"q": run, "severity": "High", "type": "pricing"})).json()["items"]
    assert [e["id"] for e in high] == [made[3]["id"], made[1]["id"]]
    counts = (await api.get("/v1/exceptions/counts", params={"q": run})).json()
    assert counts["total"] == 5 and counts["by_type"] == {"pricing": {"Low": 1, "High": 2, "Critical": 1, "Medium": 1}}
    assert counts["by_severity"] == {"Critical": 1, "High": 2, "Medium": 1, "Low": 1}


async def test_bulk_resolve_answers_each_id(api: httpx.AsyncClient) -> None:
    run = tag()
    ids = []
    for n in range(4):
        response = await api.post("/v1/exceptions", json={
            "type": "listing", "severity": "Medium", "title": f"listing {run}",
            "entity_type": "sku", "entity_id": f"sku-{run}-{n}"})
        ids.append(response.json()["id"])
    items = [{"id": ids[0], "version": 1}, {"id": ids[1], "version": 1}, {"id": ids[2], "version": 5},
             {"id": str(uuid.uuid4()), "version": 1}]
    response = await api.post("/v1/exceptions/bulk", json={
        "action": "resolve", "resolution": {"reason": "duplicate"}, "items": items})
    assert response.status_code == 200
    body = response.json()
    assert (body["done"], body["refused"]) == (2, 2)
    assert [(r["outcome"], r["status_code"]) for r in body["results"]] == [
        ("done", 200), ("done", 200), ("refused", 409), ("refused", 404)]
    assert [[e["field"] for e in r.get("errors", [])] for r in body["results"]] == [[], [], ["version"], ["id"]]
    left = (await api.get("/v1/exceptions", params={"q": run})).json()["items"]
    assert sorted(e["id"] for e in left) == sorted([ids[2], ids[3]])


async def test_a_failed_payment_callback_is_kept_replayed_and_healed_by_the_capture(
    stack: BenchStack, api: httpx.AsyncClient
) -> None:
    order = f"ord-{tag()}"
    raw = '{"pspReference":"8535","eventCode":"AUTHORISATION","success":"true"}'
    await ingest(stack, "payments", {"order_id": order, "gateway": "adyen", "error": "signature mismatch",
                                     "raw_callback": raw}, "PaymentCallbackFailed")
    exc = await eventually(lambda: one_for(api, order))
    assert exc["type"] == "payment_callback_failure" and exc["callback"]["raw_callback"] == raw
    replayed = await api.post(f"/v1/exceptions/{exc['id']}/callback/replay", json={"version": 1})
    assert replayed.status_code == 200 and replayed.json()["status"] == "In Progress"
    replay_id = replayed.json()["replays"][0]["replay_id"]
    records = await read_topic(stack.broker.bootstrap_servers, PAYMENTS.name,
                               lambda rs: any(json.loads(r.value)["id"] == replay_id for r in rs))
    [sent] = [json.loads(r.value) for r in records if json.loads(r.value)["id"] == replay_id]
    assert (sent["type"], sent["data"]["raw_callback"], sent["subject"]) == ("PaymentCallbackReplayRequested", raw, order)
    await ingest(stack, "payments", {"order_id": order, "payment_id": "pay-1", "amount": "20.00", "currency": "EUR",
                                     "gateway": "adyen"}, "PaymentCaptured")
    healed = await eventually(lambda: one_for(api, order, status="Resolved"))
    assert healed["resolution"]["automatic"] is True


async def test_a_snooze_that_ends_while_the_service_is_down_wakes_when_it_restarts(
    stack: BenchStack, api: httpx.AsyncClient
) -> None:
    created = (await api.post("/v1/exceptions", json={
        "type": "fraud_risk", "severity": "High", "title": "velocity check",
        "entity_type": "customer", "entity_id": f"cus-{tag()}"})).json()
    until = datetime.now(UTC) + timedelta(seconds=3)
    snoozed = await api.post(f"/v1/exceptions/{created['id']}/snooze",
                             json={"version": 1, "until": until.isoformat()})
    assert snoozed.status_code == 200 and snoozed.json()["status"] == "Snoozed"
    await asyncio.to_thread(stack.kill9, "exceptions")
    while datetime.now(UTC) < until + timedelta(seconds=1):
        await asyncio.sleep(0.2)
    await asyncio.to_thread(stack.restart, "exceptions")
    await asyncio.to_thread(wait_ready, [stack.children["exceptions"]], 60)

    async def woke() -> dict[str, Any] | None:
        state = (await api.get(f"/v1/exceptions/{created['id']}")).json()
        return state if state["status"] == "New" else None

    await eventually(woke, timeout=10)  # the sweep runs as the service starts
    history = (await api.get(f"/v1/exceptions/{created['id']}/history")).json()["items"]
    assert history[-1]["type"] == "ExceptionWoke" and "has passed" in history[-1]["data"]["cause"]


async def test_storeops_rebuild_exceptions_restores_the_queue_into_an_empty_database(
    stack: BenchStack, api: httpx.AsyncClient, fresh_database: str
) -> None:
    created = (await api.post("/v1/exceptions", json={
        "type": "return_or_damage", "severity": "Medium", "title": "parcel damaged",
        "entity_type": "shipment", "entity_id": f"shp-{tag()}"})).json()
    env = {**os.environ, **stack.broker.env(), "DATABASE_URL": fresh_database}
    command = [sys.executable, "-m", "storeops_cli.cli", "rebuild", "exceptions", "--idle-seconds", "1.5"]
    first = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "exceptions and" in first.stdout and "applied actions restored" in first.stdout
    engine = make_engine(fresh_database)
    try:
        async with make_sessionmaker(engine)() as session:
            assert (await get_state(session, uuid.UUID(created["id"]))).model_dump(mode="json") == created
    finally:
        await engine.dispose()
    again = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "not empty" in again.stderr
