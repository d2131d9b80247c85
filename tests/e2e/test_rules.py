"""Rules as a store uses them: written over HTTP with a token, run by the real services on
events that came in through ingest, every step handed to its owner (the notifier with the
rules service's own token) and on record, the guardrails and every failure path of a step,
and a replay from offset 0."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import func, select

from schemas.registry import ACTIONS, COMMANDS, RULE_RUNS
from services.rules.store import RuleRunRow
from storeops.db import make_engine
from storeops_cli.bench.stack import BenchStack
from storeops_cli.runner import Child, wait_ready
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.e2e


def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def http(stack: BenchStack) -> Any:
    """A client carrying the stack's (admin) token: every request but the probes needs one."""
    async with stack.async_client(timeout=15) as client:
        yield client


def principal(stack: BenchStack) -> str:
    """The name the stack's token proves: the one a change records."""
    return str(jwt.decode(stack.token, options={"verify_signature": False})["sub"])


async def ingest(stack: BenchStack, http: httpx.AsyncClient, kind: str, type_: str, data: dict[str, Any],
                 **envelope: Any) -> str:
    event_id = str(uuid.uuid4())
    response = await http.post(f"{stack.urls['ingest']}/v1/events/{kind}",
                               json={"id": event_id, "type": type_, "source": "tests", "data": data, **envelope})
    assert response.status_code == 202, response.text
    return event_id


async def new_rule(stack: BenchStack, http: httpx.AsyncClient, definition: dict[str, Any], *, live: bool) -> str:
    rule_id = f"t-{tag()}"
    created = await http.post(f"{stack.urls['rules']}/v1/rules",
                              json={"id": rule_id, "definition": definition, "status": "active"})
    assert created.status_code == 201, created.text
    assert created.json()["updated_by"] == principal(stack)
    if live:
        switched = await http.post(f"{stack.urls['rules']}/v1/rules/{rule_id}/mode", json={"mode": "LIVE"})
        assert switched.status_code == 200, switched.text
        assert switched.json()["live_by"] == principal(stack)
    return rule_id


async def runs_of(stack: BenchStack, http: httpx.AsyncClient, rule_id: str) -> list[dict[str, Any]]:
    """Every run of the rule, page after page."""
    runs: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = await http.get(f"{stack.urls['rules']}/v1/rules/{rule_id}/runs",
                                  params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        runs += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return runs


async def the_run(stack: BenchStack, http: httpx.AsyncClient, rule_id: str, event_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        for run in await runs_of(stack, http, rule_id):
            if run["event_id"] == event_id and run["status"] in ("completed", "failed", "cancelled"):
                return run
        return None
    return await eventually(finished, timeout=30)


def order(order_id: str, marker: str, total: str = "120.00") -> dict[str, Any]:
    return {"order_id": order_id, "customer_id": "c-1", "total": total, "currency": "EUR", "tags": [marker],
            "lines": [{"sku": f"sku-{marker}", "quantity": 1, "unit_price": total}]}


async def test_a_live_rule_hands_every_step_to_its_owner_and_a_replay_from_offset_0_repeats_nothing(
    stack: BenchStack, http: httpx.AsyncClient
) -> None:
    marker = tag()
    notifier = stack.urls["notifier"]
    put = await http.put(f"{notifier}/v1/credentials/erp-{marker}", json={"value": "s3cret"})
    assert put.status_code in (200, 201), put.text
    rule_id = await new_rule(stack, http, {
        "name": "Big tagged order", "trigger": {"event_types": ["OrderPlaced"], "tags": {"include": [marker]}},
        "conditions": {"path": "data.total", "op": "ge", "value": 100},
        "actions": [
            {"id": "raise", "type": "create_exception", "exception_type": "order", "severity": "Medium",
             "title": "Order {{ data.order_id }} needs a look", "impact": {"path": "data.total"}},
            {"id": "tell", "type": "send_notification", "recipients": [f"desk-{marker}"],
             "title": "Order {{ data.order_id }}: {{ steps.raise.output.severity }}"},
            {"id": "hook", "type": "call_webhook", "url": "https://erp.example.com/orders/{{ data.order_id }}",
             "body": "{\"total\": \"{{ data.total }}\"}", "credential": f"erp-{marker}"},
            {"id": "mail", "type": "send_email", "to": ["ops@example.com"], "subject": "Order {{ data.order_id }}",
             "body": "**{{ data.total }}** {{ data.currency }}", "format": "markdown"},
            {"id": "hold", "type": "update_inventory", "sku": "{{ data.lines[0].sku }}", "set_on_hand": 0},
        ]}, live=True)
    order_id = f"ord-{marker}"
    event_id = await ingest(stack, http, "orders", "OrderPlaced", order(order_id, marker))

    run = await the_run(stack, http, rule_id, event_id)
    assert run["status"] == "completed", run
    steps = {s["step_id"]: s for s in run["steps"]}
    assert {k: s["status"] for k, s in steps.items()} == dict.fromkeys(("raise", "tell", "hook", "mail", "hold"), "succeeded")
    assert not any(s["simulated"] for s in steps.values())
    assert steps["tell"]["inputs"]["title"] == f"Order {order_id}: Medium"
    assert "s3cret" not in str(run)  # the credential is named, never resolved into the run

    # the exception through the actions topic and the exceptions service
    async def raised() -> dict[str, Any] | None:
        items = (await http.get(f"{stack.urls['exceptions']}/v1/exceptions", params={"entity_id": order_id})).json()["items"]
        return items[0] if items else None
    exception = await eventually(raised)
    assert (exception["type"], exception["severity"], exception["source"]["rule_id"]) == ("order", "Medium", rule_id)
    # the notification in the recipient's feed; the e-mail and the webhook stored by the notifier
    feed = await eventually(lambda: _feed(http, notifier, f"desk-{marker}"))
    assert feed[0]["title"] == f"Order {order_id}: Medium"
    for step in ("hook", "mail"):
        stored = await http.get(f"{notifier}/v1/requests/{steps[step]['output']['request_id']}")
        assert stored.status_code == 200 and stored.json()["status"] == "accepted", stored.text
    # the command on the commands topic, the run on the rule-runs topic
    command_id = steps["hold"]["output"]["command_id"]
    await read_topic(stack.bootstrap_servers, COMMANDS.name, lambda rs: any(command_id.encode() in r.value for r in rs))
    await read_topic(stack.bootstrap_servers, RULE_RUNS.name, lambda rs: any(run["run_id"].encode() in r.value for r in rs))

    # replay: a new consumer group reads every event topic from offset 0
    engine = make_engine(stack.database_url_for("rules"))
    try:
        async with engine.connect() as conn:
            runs_before = await conn.scalar(select(func.count()).select_from(RuleRunRow))
        original = stack.children["rules"]
        await asyncio.to_thread(stack.kill9, "rules")
        replay = Child("rules", original.port, original.log_path,
                       {**original.env, "STOREOPS_KAFKA__CLIENT_ID_PREFIX": f"replay-{marker}"})
        replay.start()
        try:
            await asyncio.to_thread(wait_ready, [replay], 60)
            replayed = await eventually(lambda: _replay_settled(stack, replay.url), timeout=60)
            assert replayed >= 1  # our run, among others, was found on record and skipped
            async with engine.connect() as conn:
                assert await conn.scalar(select(func.count()).select_from(RuleRunRow)) == runs_before
        finally:
            replay.stop()
        await asyncio.to_thread(stack.restart, "rules")
        await asyncio.to_thread(wait_ready, [stack.children["rules"]], 60)
    finally:
        await engine.dispose()
    action_id = steps["raise"]["output"]["action_id"]
    records = await read_topic(stack.bootstrap_servers, ACTIONS.name, lambda rs: any(action_id.encode() in r.value for r in rs))
    assert sum(action_id.encode() in r.value for r in records) == 1


async def _feed(http: httpx.AsyncClient, notifier: str, recipient: str) -> list[dict[str, Any]]:
    return (await http.get(f"{notifier}/v1/notifications", params={"recipient": recipient})).json()["items"]


_last: dict[str, float] = {}


async def _replay_settled(stack: BenchStack, url: str) -> float | None:
    """The replayed-runs count once evaluation has stopped moving (the replay reached the end)."""
    async with stack.async_client(timeout=5) as client:
        text = (await client.get(f"{url}/metrics")).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(("storeops_rules_events_evaluated_total ", "storeops_rules_runs_replayed_total "))}
    evaluated = values.get("storeops_rules_events_evaluated_total", 0.0)
    previous, _last[url] = _last.get(url), evaluated
    await asyncio.sleep(1.0)
    if evaluated > 0 and previous == evaluated:
        return values.get("storeops_rules_runs_replayed_total", 0.0) or None
    return None


async def test_dry_run_records_what_it_would_do_and_hands_nothing_on(stack: BenchStack, http: httpx.AsyncClient) -> None:
    marker = tag()
    rule_id = await new_rule(stack, http, {
        "name": "Dry", "trigger": {"event_types": ["OrderPlaced"], "tags": {"include": [marker]}},
        "actions": [{"id": "raise", "type": "create_exception", "exception_type": "order", "severity": "Low",
                     "title": "would raise {{ data.order_id }}"}]}, live=False)
    order_id = f"ord-{marker}"
    event_id = await ingest(stack, http, "orders", "OrderPlaced", order(order_id, marker))
    run = await the_run(stack, http, rule_id, event_id)
    assert run["status"] == "completed" and run["rule"]["mode"] == "DRY_RUN" and run["action_ids"] == []
    [step] = run["steps"]
    assert step["simulated"] is True and step["inputs"]["title"] == f"would raise {order_id}"
    # nothing reached the actions topic, so the queue never hears of it
    await asyncio.sleep(1.0)
    items = (await http.get(f"{stack.urls['exceptions']}/v1/exceptions", params={"entity_id": order_id})).json()["items"]
    assert items == []


async def test_each_step_failure_is_on_record_and_stops_the_steps_after_it(stack: BenchStack, http: httpx.AsyncClient) -> None:
    marker = tag()
    notifier = stack.urls["notifier"]
    assert (await http.put(f"{notifier}/v1/credentials/gone-{marker}", json={"value": "x"})).status_code == 201
    rule_id = await new_rule(stack, http, {
        "name": "Webhook with a credential deleted later",
        "trigger": {"event_types": ["OrderPlaced"], "tags": {"include": [marker]}},
        "actions": [{"id": "hook", "type": "call_webhook", "url": "https://example.com/x", "credential": f"gone-{marker}"},
                    {"id": "after", "type": "flag_for_review", "reason": "never"}]}, live=True)
    assert (await http.delete(f"{notifier}/v1/credentials/gone-{marker}")).status_code == 204
    event_id = await ingest(stack, http, "orders", "OrderPlaced", order(f"ord-{marker}", marker))
    run = await the_run(stack, http, rule_id, event_id)
    assert run["status"] == "failed" and "unknown credential" in run["reason"]
    assert [s["status"] for s in run["steps"]] == ["failed", "cancelled"]
    assert run["action_ids"] == []

    # the notifier unreachable: retried, then the step fails and the run with it
    other = tag()
    tell_id = await new_rule(stack, http, {
        "name": "Tell", "trigger": {"event_types": ["OrderPlaced"], "tags": {"include": [other]}},
        "actions": [{"id": "tell", "type": "send_notification", "recipients": ["x"], "title": "t"}]}, live=True)
    await asyncio.to_thread(stack.kill9, "notifier")
    try:
        event_id = await ingest(stack, http, "orders", "OrderPlaced", order(f"ord-{other}", other))
        run = await the_run(stack, http, tell_id, event_id)
    finally:
        await asyncio.to_thread(stack.restart, "notifier")
        await asyncio.to_thread(wait_ready, [stack.children["notifier"]], 60)
    [step] = run["steps"]
    assert run["status"] == "failed" and step["status"] == "failed"
    assert "notifier unreachable" in step["error"] and step["attempts"] == 3


async def test_guardrails_price_limits_at_emission_loop_depth_and_rate(stack: BenchStack, http: httpx.AsyncClient) -> None:
    marker = tag()
    sku = f"sku-{marker}"
    price_rule = await new_rule(stack, http, {
        "name": "Undercut by 5%", "trigger": {"event_types": ["PriceChanged"]},
        "conditions": {"path": "data.sku", "op": "eq", "value": sku},
        "actions": [{"id": "cut", "type": "adjust_price", "new_price": {"path": "data.new_price", "factor": "0.95"},
                     "floor": "50", "max_change_pct_per_day": 8}]}, live=True)
    first = await ingest(stack, http, "prices", "PriceChanged", {"sku": sku, "new_price": "100.00", "currency": "EUR"})
    run = await the_run(stack, http, price_rule, first)
    assert run["status"] == "completed" and run["steps"][0]["output"]["new_price"] == "95.00"
    # 95.00 -> 90.25 is 5% on its own, but 9.75% from the day's reference of 100.00
    second = await ingest(stack, http, "prices", "PriceChanged", {"sku": sku, "new_price": "95.00", "currency": "EUR"})
    run = await the_run(stack, http, price_rule, second)
    assert run["status"] == "failed" and "guardrail at emission" in run["steps"][0]["error"], run
    assert "from 100.00 to 90.25" in run["steps"][0]["error"]

    loop_marker = tag()
    loop_rule = await new_rule(stack, http, {
        "name": "Loop", "trigger": {"event_types": ["OrderPlaced"], "tags": {"include": [loop_marker]}},
        "max_chain_depth": 2,
        "actions": [{"type": "flag_for_review", "reason": "r"}]}, live=True)
    deep = await ingest(stack, http, "orders", "OrderPlaced", order(f"ord-{loop_marker}", loop_marker), depth=3)
    run = await the_run(stack, http, loop_rule, deep)
    assert run["status"] == "cancelled" and run["reason"].startswith("loop guard")
    assert [s["status"] for s in run["steps"]] == ["cancelled"]

    rate_marker = tag()
    rate_rule = await new_rule(stack, http, {
        "name": "Rate", "trigger": {"event_types": ["OrderPlaced"], "tags": {"include": [rate_marker]}},
        "rate_limit": {"max_runs": 2, "per_seconds": 3600},
        "actions": [{"type": "flag_for_review", "reason": "r {{ data.order_id }}"}]}, live=True)
    events = [await ingest(stack, http, "orders", "OrderPlaced", order(f"ord-{rate_marker}-{i}", rate_marker)) for i in range(3)]
    statuses = [(await the_run(stack, http, rate_rule, e))["status"] for e in events]
    assert sorted(statuses) == ["cancelled", "completed", "completed"]


async def test_the_rules_api_of_the_running_service_asks_for_a_token(stack: BenchStack) -> None:
    async with stack.async_client("rules", timeout=15) as http:
        before = (await http.get("/v1/rules/high-value-order")).json()
        async with httpx.AsyncClient(base_url=stack.urls["rules"], timeout=15) as anonymous:
            read = await anonymous.get("/v1/rules")
            write = await anonymous.post("/v1/rules/high-value-order/mode",
                                         json={"mode": "DRY_RUN" if before["mode"] == "LIVE" else "LIVE"})
        for response in (read, write):
            assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
            assert [e["field"] for e in response.json()["errors"]] == ["Authorization"]
        assert (await http.get("/v1/rules/high-value-order")).json() == before  # nothing changed
