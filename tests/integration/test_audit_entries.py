"""Every API route that changes something writes exactly one audit entry, in the change's transaction.

The routes come from each service's own OpenAPI document: a POST, PUT, PATCH or DELETE that has
neither a scenario here nor a reason to be exempt fails ``test_every_changing_route_is_covered``,
so a new route without an audit entry cannot slip in. Each scenario prepares what its route needs,
then makes the one change; the entries its service's outbox gained during that request must be
exactly one, with the action, the principal (name, role, token id), the entity and the fields before
and after. The services run in-process on databases of their own, with the suite's broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from services.notifier.app import SPEC as NOTIFIER
from services.notifier.credentials import CREDENTIALS_KEY_ENV
from services.rules.app import SPEC as RULES
from storeops.auth import Role
from storeops.outbox import Outbox
from storeops.service import ServiceSpec, build_app
from storeops_cli.broker import RunningBroker, free_port
from tests.helpers import bearer, eventually, postgres_database, read_topic

pytestmark = pytest.mark.integration

# Changing routes whose change is recorded elsewhere than in an audit entry of their own, and why.
EXEMPT = {
    ("rules", "POST", "/v1/rules/test"): "changes nothing: runs a definition against a sample event",
    ("rules", "POST", "/v1/rules/backtest"): "changes nothing: replays stored events against a definition",
    ("notifier", "POST", "/v1/requests"): "the rules service's hand-over of a run's steps; the run is on storeops.rule-runs.v1",
}


def tag() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class Service:
    name: str
    spec: ServiceSpec[Any]
    app: FastAPI
    http: httpx.AsyncClient
    tokens: dict[Role, str]

    @property
    def outbox(self) -> Outbox:
        assert self.spec.outbox is not None
        return self.spec.outbox

    def as_(self, role: Role) -> dict[str, str]:
        return bearer(self.tokens[role])

    async def last_seq(self) -> int:
        async with self.app.state.runtime.sessions() as session:
            return int(await session.scalar(select(func.coalesce(func.max(self.outbox.table.c.seq), 0))))

    async def entries_after(self, seq: int) -> list[dict[str, Any]]:
        t = self.outbox.table
        async with self.app.state.runtime.sessions() as session:
            values = (await session.scalars(select(t.c.value).where(t.c.seq > seq, t.c.topic == "storeops.audit.v1")
                                            .order_by(t.c.seq))).all()
        return [json.loads(v) for v in values]


@contextlib.contextmanager
def database(database_url: str, tmp: Path, name: str) -> Iterator[str]:
    if database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp / f'{name}.db'}"
    else:
        with postgres_database(database_url, f"storeops_audit_{name}") as url:
            yield url


@pytest.fixture(scope="module")
def databases(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A database of its own for each service, migrated (outside the event loop: both run one)."""
    tmp = tmp_path_factory.mktemp("audit-dbs")
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(database(database_url, tmp, name)) for name in ("rules", "notifier")}
        RULES.migrate(urls["rules"])
        NOTIFIER.migrate(urls["notifier"])
        yield urls


@pytest.fixture(scope="module")
async def services(databases: dict[str, str], broker: RunningBroker, tokens: dict[Role, str],
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Service]]:
    tmp = tmp_path_factory.mktemp("audit-entries")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(CREDENTIALS_KEY_ENV, raising=False)
        patch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
        patch.setenv("STOREOPS_KAFKA__FLAVOR", broker.flavor)
        patch.setenv("STOREOPS_DATA_DIR", str(tmp))
        patch.setenv("STOREOPS_OUTBOUND__ALLOW_NETWORKS", "127.0.0.1/32")
        patch.setenv("STOREOPS_RULES__MIN_DRY_RUN_HOURS", "0")  # LIVE at once: the mode change is what is audited
        made: dict[str, Service] = {}
        async with contextlib.AsyncExitStack() as running:
            for name, spec in (("rules", RULES), ("notifier", NOTIFIER)):
                url = databases[name]
                patch.setenv("DATABASE_URL", url)
                app = build_app(replace(spec, consumes=(), watches=()), spec.settings())
                await running.enter_async_context(app.router.lifespan_context(app))
                http = await running.enter_async_context(httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url=f"http://{name}"))
                made[name] = Service(name, spec, app, http, tokens)
            yield made


# --- the scenarios: prepare, then make exactly one change ---------------------------------------

Scenario = Callable[[dict[str, Service], Callable[[], Awaitable[None]]], Awaitable["Expected"]]


@dataclass(frozen=True)
class Expected:
    response: httpx.Response
    action: str
    entity: str
    role: Role
    before: dict[str, Any] | None = None  # checked when given: these fields, before
    after: dict[str, Any] | None = None


def big_orders() -> dict[str, Any]:
    return {"name": "Big orders", "trigger": {"event_types": ["OrderPlaced"]},
            "conditions": {"all": [{"path": "data.total", "op": "ge", "value": 1000}]},
            "actions": [{"id": "raise", "type": "create_exception", "exception_type": "vip", "severity": "High",
                         "title": "Big order {{ data.order_id }}"}]}


async def new_rule(s: dict[str, Service], status: str = "draft") -> str:
    rules = s["rules"]
    rule_id = f"r-{tag()}"
    created = await rules.http.post("/v1/rules", json={"id": rule_id, "definition": big_orders(), "status": status},
                                    headers=rules.as_(Role.operator))
    assert created.status_code == 201, created.text
    return rule_id


async def rule_created(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    rule_id = f"r-{tag()}"
    await mark()
    response = await s["rules"].http.post("/v1/rules", json={"id": rule_id, "definition": big_orders()},
                                          headers=s["rules"].as_(Role.operator))
    return Expected(response, "rule.created", rule_id, Role.operator, None, {"version": 1, "status": "draft"})


async def rule_edited(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    rule_id = await new_rule(s)
    await mark()
    response = await s["rules"].http.put(f"/v1/rules/{rule_id}", json={"version": 1, "definition": big_orders()},
                                         headers=s["rules"].as_(Role.operator))
    return Expected(response, "rule.edited", rule_id, Role.operator, {"version": 1}, {"version": 2})


async def rule_status(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    rule_id = await new_rule(s)
    await mark()
    response = await s["rules"].http.post(f"/v1/rules/{rule_id}/status", json={"status": "active"},
                                          headers=s["rules"].as_(Role.admin))
    return Expected(response, "rule.status", rule_id, Role.admin, {"status": "draft"}, {"status": "active"})


async def rule_mode(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    rule_id = await new_rule(s, "active")
    await mark()
    response = await s["rules"].http.post(f"/v1/rules/{rule_id}/mode", json={"mode": "LIVE", "note": "reviewed"},
                                          headers=s["rules"].as_(Role.admin))
    return Expected(response, "rule.mode", rule_id, Role.admin, {"mode": "DRY_RUN"}, {"mode": "LIVE"})


async def credential_put(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    name = f"erp-{tag()}"
    await mark()
    response = await s["notifier"].http.put(f"/v1/credentials/{name}", json={"value": "Bearer s3cret"},
                                            headers=s["notifier"].as_(Role.admin))
    return Expected(response, "credential.created", name, Role.admin)


async def credential_delete(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n, name = s["notifier"], f"erp-{tag()}"
    assert (await n.http.put(f"/v1/credentials/{name}", json={"value": "x"}, headers=n.as_(Role.admin))).status_code == 201
    await mark()
    return Expected(await n.http.delete(f"/v1/credentials/{name}", headers=n.as_(Role.admin)),
                    "credential.deleted", name, Role.admin)


async def new_endpoint(n: Service) -> str:
    created = await n.http.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook", "description": "erp"},
                                headers=n.as_(Role.admin))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def endpoint_created(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    await mark()
    response = await n.http.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook", "event_types":
                                                                ["exception.created"]}, headers=n.as_(Role.admin))
    return Expected(response, "webhook.endpoint_created", response.json().get("id", "?"), Role.admin, None,
                    {"url": "http://127.0.0.1:9/hook", "event_types": ["exception.created"], "enabled": True})


async def endpoint_changed(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    endpoint_id = await new_endpoint(n)
    await mark()
    response = await n.http.patch(f"/v1/webhook-endpoints/{endpoint_id}", json={"description": "erp, new"},
                                  headers=n.as_(Role.admin))
    return Expected(response, "webhook.endpoint_changed", endpoint_id, Role.admin, {"description": "erp"},
                    {"description": "erp, new"})


async def endpoint_deleted(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    endpoint_id = await new_endpoint(n)
    await mark()
    return Expected(await n.http.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=n.as_(Role.admin)),
                    "webhook.endpoint_deleted", endpoint_id, Role.admin, {"url": "http://127.0.0.1:9/hook"})


async def secret_rotated(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    endpoint_id = await new_endpoint(n)
    await mark()
    return Expected(await n.http.post(f"/v1/webhook-endpoints/{endpoint_id}/rotate-secret", headers=n.as_(Role.admin)),
                    "webhook.secret_rotated", endpoint_id, Role.admin)


async def recovered(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    endpoint_id = await new_endpoint(n)
    await mark()
    response = await n.http.post(f"/v1/webhook-endpoints/{endpoint_id}/recover", json={"since": "2020-01-01T00:00:00Z"},
                                 headers=n.as_(Role.admin))
    return Expected(response, "webhook.recovered", endpoint_id, Role.admin, None, {"recovered": 0, "missed": 0})


async def replayed(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    request = {"request_id": str(uuid.uuid4()), "message": {"channel": "email", "to": ["ops@shop.example"],
                                                             "subject": "s", "text": "t"}}
    assert (await n.http.post("/v1/requests", json={"requests": [request]}, headers=n.as_(Role.service))).status_code == 200
    from services.notifier.ledger import DeliveryRow, delivery_id
    delivery = delivery_id(f"request:{request['request_id']}")
    async with n.app.state.runtime.sessions.begin() as session:  # as if its retries had run out
        row = await session.get(DeliveryRow, delivery)
        assert row is not None
        row.state = "dead"
    await mark()
    return Expected(await n.http.post(f"/v1/deliveries/{delivery}/replay", headers=n.as_(Role.admin)),
                    "delivery.replayed", str(delivery), Role.admin, {"state": "dead"}, {"state": "pending"})


def subscription_body() -> dict[str, Any]:
    return {"event_types": ["exception.created"], "channel": "in_app"}


async def new_subscription(n: Service) -> str:
    created = await n.http.post("/v1/subscriptions", json=subscription_body(), headers=n.as_(Role.operator))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def subscription_created(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    await mark()
    response = await n.http.post("/v1/subscriptions", json=subscription_body(), headers=n.as_(Role.operator))
    return Expected(response, "subscription.created", response.json().get("id", "?"), Role.operator, None,
                    {"owner": "test-operator", "enabled": True})


async def subscription_changed(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    subscription_id = await new_subscription(n)
    await mark()
    response = await n.http.put(f"/v1/subscriptions/{subscription_id}", json={**subscription_body(), "enabled": False},
                                headers=n.as_(Role.operator))
    return Expected(response, "subscription.changed", subscription_id, Role.operator, {"enabled": True},
                    {"enabled": False})


async def subscription_deleted(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    subscription_id = await new_subscription(n)
    await mark()
    return Expected(await n.http.delete(f"/v1/subscriptions/{subscription_id}", headers=n.as_(Role.operator)),
                    "subscription.deleted", subscription_id, Role.operator, {"enabled": True})


async def member_added(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n, team = s["notifier"], f"team-{tag()}"
    await mark()
    return Expected(await n.http.put(f"/v1/subscriptions/teams/{team}/members/ana", headers=n.as_(Role.admin)),
                    "team.member_added", team, Role.admin, None, {"member": "ana"})


async def member_removed(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n, team = s["notifier"], f"team-{tag()}"
    assert (await n.http.put(f"/v1/subscriptions/teams/{team}/members/ana", headers=n.as_(Role.admin))).status_code == 201
    await mark()
    return Expected(await n.http.delete(f"/v1/subscriptions/teams/{team}/members/ana", headers=n.as_(Role.admin)),
                    "team.member_removed", team, Role.admin, {"member": "ana"}, None)


async def my_notification(n: Service) -> str:
    request = {"request_id": str(uuid.uuid4()), "message": {"channel": "in_app", "recipients": ["test-operator"],
                                                             "title": "Big order", "body": "ord-1"}}
    assert (await n.http.post("/v1/requests", json={"requests": [request]}, headers=n.as_(Role.service))).status_code == 200
    mine = (await n.http.get("/v1/notifications", headers=n.as_(Role.operator))).json()["items"]
    return str(mine[0]["id"])


def marking(how: str, action: str) -> Scenario:
    async def scenario(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
        n = s["notifier"]
        notification_id = await my_notification(n)
        await mark()
        return Expected(await n.http.post(f"/v1/notifications/{notification_id}/{how}", headers=n.as_(Role.operator)),
                        action, notification_id, Role.operator)
    return scenario


async def read_all(s: dict[str, Service], mark: Callable[[], Awaitable[None]]) -> Expected:
    n = s["notifier"]
    await my_notification(n)
    await mark()
    return Expected(await n.http.post("/v1/notifications/read-all", headers=n.as_(Role.operator)),
                    "notification.read_all", "test-operator", Role.operator)


SCENARIOS: dict[tuple[str, str, str], Scenario] = {
    ("rules", "POST", "/v1/rules"): rule_created,
    ("rules", "PUT", "/v1/rules/{rule_id}"): rule_edited,
    ("rules", "POST", "/v1/rules/{rule_id}/status"): rule_status,
    ("rules", "POST", "/v1/rules/{rule_id}/mode"): rule_mode,
    ("notifier", "PUT", "/v1/credentials/{name}"): credential_put,
    ("notifier", "DELETE", "/v1/credentials/{name}"): credential_delete,
    ("notifier", "POST", "/v1/webhook-endpoints"): endpoint_created,
    ("notifier", "PATCH", "/v1/webhook-endpoints/{endpoint_id}"): endpoint_changed,
    ("notifier", "DELETE", "/v1/webhook-endpoints/{endpoint_id}"): endpoint_deleted,
    ("notifier", "POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): secret_rotated,
    ("notifier", "POST", "/v1/webhook-endpoints/{endpoint_id}/recover"): recovered,
    ("notifier", "POST", "/v1/deliveries/{delivery_id}/replay"): replayed,
    ("notifier", "POST", "/v1/subscriptions"): subscription_created,
    ("notifier", "PUT", "/v1/subscriptions/{subscription_id}"): subscription_changed,
    ("notifier", "DELETE", "/v1/subscriptions/{subscription_id}"): subscription_deleted,
    ("notifier", "PUT", "/v1/subscriptions/teams/{team}/members/{member}"): member_added,
    ("notifier", "DELETE", "/v1/subscriptions/teams/{team}/members/{member}"): member_removed,
    ("notifier", "POST", "/v1/notifications/{notification_id}/seen"): marking("seen", "notification.seen"),
    ("notifier", "POST", "/v1/notifications/{notification_id}/read"): marking("read", "notification.read"),
    ("notifier", "POST", "/v1/notifications/{notification_id}/archive"): marking("archive", "notification.archived"),
    ("notifier", "POST", "/v1/notifications/read-all"): read_all,
}


def changing_routes(spec: ServiceSpec[Any]) -> set[tuple[str, str, str]]:
    document = build_app(spec).openapi()
    return {(spec.name, method.upper(), path) for path, operations in document["paths"].items()
            for method in operations if method in ("post", "put", "patch", "delete")}


def test_every_changing_route_is_covered() -> None:
    routes = changing_routes(RULES) | changing_routes(NOTIFIER)
    assert routes - set(SCENARIOS) - set(EXEMPT) == set(), "a changing route has no audit scenario (nor a reason to be exempt)"
    assert set(SCENARIOS) | set(EXEMPT) <= routes, "a scenario names a route that no longer exists"


@pytest.mark.parametrize("route", list(SCENARIOS), ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
async def test_a_change_through_the_api_writes_one_audit_entry_naming_the_principal(
        services: dict[str, Service], route: tuple[str, str, str], tokens: dict[Role, str]) -> None:
    service = services[route[0]]
    marked: list[int] = []

    async def mark() -> None:
        marked.append(await service.last_seq())

    expected = await SCENARIOS[route](services, mark)
    assert expected.response.status_code < 300, expected.response.text
    [entry] = await service.entries_after(marked[0])
    data = entry["data"]
    assert (entry["type"], entry["source"], data["action"]) == ("AuditEntryRecorded", f"storeops/{route[0]}", expected.action)
    claims = jwt.decode(tokens[expected.role], options={"verify_signature": False})
    assert data["actor"] == {"kind": "person", "name": claims["sub"], "role": expected.role.value, "token_id": claims["jti"],
                             "rule_id": None, "rule_version": None}
    assert data["entities"][0]["id"] == expected.entity == entry["subject"]
    for side, fields in (("before", expected.before), ("after", expected.after)):
        if fields is not None:
            assert data[side] is not None and {k: data[side].get(k) for k in fields} == fields, (side, data[side])
    assert "s3cret" not in json.dumps(entry) and "whsec_" not in json.dumps(entry)  # no secret in the trail


async def test_a_refused_change_writes_no_entry(services: dict[str, Service]) -> None:
    n = services["notifier"]
    before = await n.last_seq()
    missing = await n.http.delete(f"/v1/webhook-endpoints/{uuid.uuid4()}", headers=n.as_(Role.admin))
    forbidden = await n.http.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/"}, headers=n.as_(Role.viewer))
    assert (missing.status_code, forbidden.status_code) == (404, 403)
    assert await n.entries_after(before) == []


async def test_a_change_answered_right_before_a_kill_9_has_its_entry_after_the_restart(
        broker: RunningBroker, tokens: dict[Role, str], databases: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **broker.env(), "DATABASE_URL": databases["notifier"], "STOREOPS_DATA_DIR": str(tmp_path)}
    env.pop(CREDENTIALS_KEY_ENV, None)
    name = f"erp-{tag()}"

    async def serve(log: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        process = _serve_notifier(env, tmp_path / log, port)
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{url}/readyz")).status_code == 200
            return False
        await eventually(ready, timeout=60)
        return process, url

    first, url = await serve("first.log")
    try:
        async with httpx.AsyncClient(headers=bearer(tokens[Role.admin])) as http:
            answered = await http.put(f"{url}/v1/credentials/{name}", json={"value": "x"})
    finally:
        first.send_signal(signal.SIGKILL)  # right after the answer: whatever was not yet sent is lost with it
        first.wait()
    assert answered.status_code == 201
    second, _ = await serve("second.log")
    try:
        def mine(records: list[Any]) -> list[dict[str, Any]]:
            found = []
            for r in records:
                with contextlib.suppress(ValueError):
                    doc = json.loads(r.value)
                    if doc.get("type") == "AuditEntryRecorded" and doc.get("subject") == name:
                        found.append(doc)
            return found
        records = await read_topic(broker.bootstrap_servers, "storeops.audit.v1", lambda rs: bool(mine(rs)), timeout=60)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    entries = mine(records)
    assert {e["id"] for e in entries} == {entries[0]["id"]}  # one entry (sent twice at most, with its id)
    assert entries[0]["data"]["action"] == "credential.created"


def _serve_notifier(env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "storeops_cli.cli", "serve", "notifier", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
