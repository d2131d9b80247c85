"""The rules API and store on the real database and the real broker: who may do what (the
role of each route, a LIVE rule's edit, the principal on the history and the audit record),
versions and history, the lifecycle and its refusals (in the one error shape, each naming
its field), a restore from archived, definition checks with pointers, credentials asked of
a notifier with the service's own token, pages by cursor, runs and their filters,
one-event tests, backtests over the event topics, seeds, and the worker's state tables."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from alembic import command
from fastapi import FastAPI
from sqlalchemy import inspect, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.actions import RuleRef, RuleRunData
from schemas.envelope import Envelope
from schemas.notifications import NotifyRequest
from schemas.registry import AUDIT, ORDERS, PRICES
from services import load_spec
from services.notifier.app import SPEC as NOTIFIER
from services.notifier.settings import NotifierSettings
from services.rules import agents, api, checks, store
from services.rules.compiler import compile_rule
from services.rules.notifier_client import NotifierClient
from services.rules.registry import state_of
from services.rules.settings import RulesSettings
from storeops import auth
from storeops.auth import Authenticator, Role, install_roles
from storeops.auth import tokens as auth_tokens
from storeops.consumer import Emitter
from storeops.db import make_engine, make_sessionmaker
from storeops.http import RequestGuard, encode_cursor, install_error_handlers
from storeops.kafka import make_producer
from storeops.outbox import Publisher
from storeops.service import Runtime, build_app
from storeops.settings import KafkaSettings, OutboundSettings, Settings
from storeops_cli.broker import RunningBroker, free_port
from tests.helpers import bearer, postgres_database, read_topic

pytestmark = pytest.mark.integration

KNOWN_CREDENTIAL = "shop-hook"


def tag() -> str:
    return uuid.uuid4().hex[:8]


def big_orders(threshold: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Big orders", "trigger": {"event_types": ["OrderPlaced"]},
        "conditions": {"all": [{"path": "data.total", "op": "ge", "value": threshold}]},
        "actions": [{"id": "raise", "type": "create_exception", "exception_type": "vip", "severity": "High",
                     "title": "Big order {{ data.order_id }}: {{ data.total }}"}],
        **extra,
    }


def webhook(credential: str) -> dict[str, Any]:
    return {"type": "call_webhook", "url": "https://erp.example.com/orders", "credential": credential}


# --- who asks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """A token and the principal it proves: the name a rule, its history and its audit record show."""

    name: str
    role: Role
    token: str
    token_id: str

    @classmethod
    def of(cls, token: str) -> Caller:
        claims = jwt.decode(token, options={"verify_signature": False})
        return cls(claims["sub"], Role(claims["role"]), token, claims["jti"])

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    @property
    def actor(self) -> dict[str, Any]:
        """The Actor an audit record names for a change this caller made."""
        return {"kind": "person", "name": self.name, "role": self.role.value, "token_id": self.token_id,
                "rule_id": None, "rule_version": None}


@dataclass(frozen=True)
class Callers:
    viewer: Caller
    operator: Caller
    admin: Caller
    other_admin: Caller  # two people changing one rule: each is named for what they did
    service: Caller


@pytest.fixture(scope="module")
async def callers(tokens: dict[Role, str]) -> Callers:
    """The suite's token of each role, and a second admin's, listed in the suite's token list."""
    settings = Settings()
    engine = make_engine(settings.tokens_database_url())
    try:
        other, _ = await auth_tokens.issue(engine, auth.load_key(settings.auth_key_file()), "test-rules-admin",
                                           Role.admin, "tests/integration/test_rules_api.py")
    finally:
        await engine.dispose()
    return Callers(Caller.of(tokens[Role.viewer]), Caller.of(tokens[Role.operator]), Caller.of(tokens[Role.admin]),
                   Caller.of(other), Caller.of(tokens[Role.service]))


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's own database with the rules service's migrations, not the suite's: the e2e stack's
    rules service publishes the suite's rules_outbox too, and a second publisher of one outbox may put
    an audit entry on the topic twice (at least once is the contract; consumers drop the repeat by id),
    which this module's exact lists of entries would misread."""
    with contextlib.ExitStack() as cleanup:
        if database_url.startswith("sqlite"):
            url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('rules') / 'rules.db'}"
        else:
            url = cleanup.enter_context(postgres_database(database_url, "storeops_rules_api"))
        load_spec("rules").migrate(url)
        yield url


@pytest.fixture(scope="module")
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def notifier(database: str, broker: RunningBroker, tmp_path_factory: pytest.TempPathFactory, callers: Callers
                   ) -> AsyncIterator[str]:
    """The real notifier (its API, without its consumer, verifying tokens) over real HTTP, holding one credential."""
    await asyncio.to_thread(load_spec("notifier").migrate, database)
    settings = NotifierSettings(database_url=database, data_dir=tmp_path_factory.mktemp("notifier"),
                                kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor))
    app = build_app(replace(NOTIFIER, consumes=()), settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(headers=callers.admin.headers) as client:  # credentials are an admin's
        put = await client.put(f"{url}/v1/credentials/{KNOWN_CREDENTIAL}", json={"value": "s3cret"})
        assert put.status_code in (200, 201), put.text
    yield url
    server.should_exit = True
    await task


class Api:
    """The rules router in an app of its own, answering errors, guarding requests and verifying
    tokens as the service's app does, with a runtime like the service's.

    ``client`` asks as the operator (ordinary work); ``by=`` asks as another caller;
    ``anonymous`` sends no token."""

    def __init__(self, rt: Runtime, callers: Callers) -> None:
        self.rt = rt
        self.viewer, self.operator, self.admin = callers.viewer, callers.operator, callers.admin
        self.other_admin, self.service = callers.other_admin, callers.service
        self.callers = callers
        self.app = app = FastAPI()
        install_error_handlers(app)
        app.add_middleware(RequestGuard, max_body_bytes=rt.settings.max_body_bytes)
        app.include_router(api.router)
        install_roles(app)  # as build_app does: a route without a role is refused here
        app.state.runtime = rt
        app.state.auth = rt.auth
        transport = httpx.ASGITransport(app=app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://rules", headers=self.operator.headers)
        self.anonymous = httpx.AsyncClient(transport=transport, base_url="http://rules")

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.anonymous.aclose()

    async def create(self, definition: dict[str, Any] | None = None, by: Caller | None = None,
                     **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/rules", json={"definition": definition or big_orders(),
                                                               "id": f"r-{tag()}", **body}, headers=_as(by))
        assert response.status_code == 201, response.text
        return response.json()

    async def post(self, path: str, by: Caller | None = None, **body: Any) -> httpx.Response:
        return await self.client.post(path, json=body, headers=_as(by))

    async def put(self, path: str, by: Caller | None = None, **body: Any) -> httpx.Response:
        return await self.client.put(path, json=body, headers=_as(by))


def _as(caller: Caller | None) -> dict[str, str] | None:
    return caller.headers if caller else None


MakeApi = Callable[..., Awaitable[Api]]


def errors(response: httpx.Response) -> list[dict[str, str]]:
    """The problems of an error answer, each ``{"field", "error"}``."""
    return response.json()["errors"]


def fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in errors(response)]


async def every_page(client: httpx.AsyncClient, url: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Each page of a list, following next_cursor until it is null."""
    pages, cursor = [], None
    while True:
        response = await client.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 10_000, "next_cursor never came back null"


@pytest.fixture
async def make_api(engine: AsyncEngine, broker: RunningBroker, notifier: str, callers: Callers) -> AsyncIterator[MakeApi]:
    made: list[tuple[Api, Any]] = []

    async def make(**rules: Any) -> Api:
        settings = RulesSettings(kafka={"bootstrap_servers": broker.bootstrap_servers, "flavor": broker.flavor},
                                 rules={"notifier_url": notifier, **rules})
        producer = make_producer(settings.kafka, f"test-rules-api-{tag()}")
        await producer.start()
        rt = Runtime("rules", settings, producer, Emitter(producer), None, engine, make_sessionmaker(engine))  # type: ignore[arg-type]
        rt.auth = Authenticator(settings, "rules")  # as the service's start does: the suite's key and token list
        await rt.auth.refresh()
        rt._state = agents.state(rt)
        rt.outbox = Publisher(store.OUTBOX, rt.sessions, producer)  # as the service's start does: audit entries go out
        publishing.append(asyncio.create_task(rt.outbox.run()))
        made.append((Api(rt, callers), producer))
        return made[-1][0]

    publishing: list[asyncio.Task[None]] = []
    yield make
    for task in publishing:
        task.cancel()
    await asyncio.gather(*publishing, return_exceptions=True)
    for made_api, producer in made:
        await made_api.aclose()
        await state_of(made_api.rt).notifier.close()
        assert made_api.rt.auth is not None
        await made_api.rt.auth.close()
        await producer.stop()


@pytest.fixture
async def rules_api(make_api: MakeApi) -> Api:
    return await make_api()


# --- who may ask ----------------------------------------------------------------------------

# Every operation of the rules API and the role it declares.
ROLES = {
    ("get", "/v1/rules"): "viewer", ("post", "/v1/rules"): "operator",
    ("get", "/v1/rules/runs"): "viewer", ("get", "/v1/rules/runs/{run_id}"): "viewer",
    ("post", "/v1/rules/test"): "operator", ("post", "/v1/rules/backtest"): "operator",
    ("get", "/v1/rules/{rule_id}"): "viewer", ("put", "/v1/rules/{rule_id}"): "operator",
    ("get", "/v1/rules/{rule_id}/versions"): "viewer", ("get", "/v1/rules/{rule_id}/versions/{version}"): "viewer",
    ("get", "/v1/rules/{rule_id}/history"): "viewer", ("get", "/v1/rules/{rule_id}/runs"): "viewer",
    ("post", "/v1/rules/{rule_id}/status"): "admin", ("post", "/v1/rules/{rule_id}/mode"): "admin",
}


def refused(response: httpx.Response, status: int, needed: str | None = None) -> str:
    """The refusal's message, after checking its shape: one error naming Authorization (a 403 names the role)."""
    assert response.status_code == status, response.text
    [problem] = errors(response)
    assert problem["field"] == "Authorization", response.text
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer") and set(response.json()) == {"errors"}
    else:
        assert response.json()["needed_role"] == needed and set(response.json()) == {"errors", "needed_role"}
    return problem["error"]


def test_every_route_declares_the_role_it_needs(rules_api: Api) -> None:
    document = rules_api.app.openapi()
    declared = {(method, path): [r for req in operation.get("security", []) for r in req.get("bearer", [])]
                for path, operations in document["paths"].items() for method, operation in operations.items()}
    assert declared == {key: [role] for key, role in ROLES.items()}


async def test_without_a_valid_token_every_route_is_401_and_nothing_changes(rules_api: Api) -> None:
    rule = await rules_api.create()
    url = f"/v1/rules/{rule['id']}"
    concrete = {"{rule_id}": rule["id"], "{run_id}": str(uuid.uuid4()), "{version}": "1"}
    for method, template in ROLES:
        path = template.format_map({k.strip("{}"): v for k, v in concrete.items()})
        body = None if method == "get" else {"status": "archived", "mode": "LIVE", "version": 1, "definition": big_orders()}
        for headers in ({}, bearer("not-a-token"), {"Authorization": "Basic ZGFuYTpzM2NyZXQ="}):
            response = await rules_api.anonymous.request(method.upper(), path, json=body, headers=headers)
            refused(response, 401)
    rule_id = f"r-{tag()}"
    created = await rules_api.anonymous.post("/v1/rules", json={"id": rule_id, "definition": big_orders()})
    assert "Bearer" in refused(created, 401)
    assert (await rules_api.client.get(f"/v1/rules/{rule_id}")).status_code == 404
    current = (await rules_api.client.get(url)).json()
    assert (current["version"], current["status"], current["mode"]) == (1, "draft", "DRY_RUN")
    assert len((await rules_api.client.get(f"{url}/history")).json()["items"]) == 1


async def test_a_viewer_reads_rules_but_may_not_write_or_try_them(rules_api: Api) -> None:
    rule = await rules_api.create()
    url = f"/v1/rules/{rule['id']}"
    viewer = rules_api.viewer.headers
    for path in ("/v1/rules", url, f"{url}/versions", f"{url}/versions/1", f"{url}/history", f"{url}/runs", "/v1/rules/runs"):
        assert (await rules_api.client.get(path, headers=viewer)).status_code == 200, path
    rule_id = f"r-{tag()}"
    create = await rules_api.post("/v1/rules", by=rules_api.viewer, id=rule_id, definition=big_orders())
    assert "operator" in refused(create, 403, "operator")
    assert (await rules_api.client.get(f"/v1/rules/{rule_id}")).status_code == 404
    refused(await rules_api.put(url, by=rules_api.viewer, version=1, definition=big_orders(5)), 403, "operator")
    refused(await rules_api.post("/v1/rules/test", by=rules_api.viewer, definition=big_orders(),
                                 event=order_event("5")), 403, "operator")
    refused(await rules_api.post("/v1/rules/backtest", by=rules_api.viewer, definition=big_orders(),
                                 **{"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}), 403, "operator")
    assert (await rules_api.client.get(url)).json()["version"] == 1


async def test_mode_and_status_are_an_admins_an_operator_is_refused_and_nothing_changes(rules_api: Api) -> None:
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    for by in (rules_api.operator, rules_api.service):
        refused(await rules_api.post(f"{url}/mode", by=by, mode="LIVE"), 403, "admin")
        refused(await rules_api.post(f"{url}/status", by=by, status="paused"), 403, "admin")
    unchanged = (await rules_api.client.get(url)).json()
    assert (unchanged["status"], unchanged["mode"], unchanged["updated_by"]) == ("active", "DRY_RUN", rules_api.operator.name)
    assert len((await rules_api.client.get(f"{url}/history")).json()["items"]) == 1

    live = await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE")
    assert live.status_code == 200, live.text
    assert (live.json()["mode"], live.json()["live_by"], live.json()["updated_by"]) == (
        "LIVE", rules_api.admin.name, rules_api.admin.name)
    paused = await rules_api.post(f"{url}/status", by=rules_api.admin, status="paused")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"


async def test_a_live_rule_is_edited_by_an_admin_only(rules_api: Api) -> None:
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    assert (await rules_api.put(url, version=1, definition=big_orders(2))).status_code == 200  # DRY_RUN: an operator may
    assert (await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE")).status_code == 200
    history = (await rules_api.client.get(f"{url}/history")).json()["items"]

    edit = await rules_api.put(url, version=2, definition=big_orders(3))
    message = refused(edit, 403, "admin")
    assert "LIVE" in message and rule["id"] in message and "operator" in message
    assert (await rules_api.client.get(url)).json()["version"] == 2  # nothing saved
    assert len((await rules_api.client.get(f"{url}/versions")).json()["items"]) == 2
    assert (await rules_api.client.get(f"{url}/history")).json()["items"] == history
    # a LIVE rule's edit with a bad definition is refused for its definition first, by anyone
    bad = big_orders()
    bad["actions"][0]["title"] = "{{ oops "
    assert fields(await rules_api.put(url, version=2, definition=bad)) == ["definition.actions[0].title"]

    edited = await rules_api.put(url, by=rules_api.admin, version=2, definition=big_orders(3))
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.json()["mode"], edited.json()["updated_by"]) == (3, "LIVE", rules_api.admin.name)
    # back to DRY_RUN, the operator may edit it again
    assert (await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="DRY_RUN")).status_code == 200
    again = await rules_api.put(url, version=3, definition=big_orders(4))
    assert again.status_code == 200 and again.json()["updated_by"] == rules_api.operator.name


async def test_a_body_cannot_name_who_makes_the_change(rules_api: Api) -> None:
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    rule_id = f"r-{tag()}"
    for response in [
        await rules_api.post("/v1/rules", id=rule_id, definition=big_orders(), actor="dana"),
        await rules_api.put(url, version=1, definition=big_orders(5), actor="dana"),
        await rules_api.post(f"{url}/status", by=rules_api.admin, status="paused", actor="dana"),
        await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE", actor={"kind": "person", "name": "dana"}),
    ]:
        assert response.status_code == 422 and fields(response) == ["actor"], response.text
    assert (await rules_api.client.get(f"/v1/rules/{rule_id}")).status_code == 404
    current = (await rules_api.client.get(url)).json()
    assert (current["version"], current["status"], current["mode"]) == (1, "active", "DRY_RUN")
    assert len((await rules_api.client.get(f"{url}/history")).json()["items"]) == 1


async def test_the_history_and_the_audit_record_name_the_principal(rules_api: Api) -> None:
    operator, admin = rules_api.operator, rules_api.admin
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    assert (await rules_api.post(f"{url}/mode", by=admin, mode="LIVE")).status_code == 200
    history = (await rules_api.client.get(f"{url}/history")).json()["items"]
    assert [(h["kind"], h["actor"]) for h in history] == [("mode", admin.name), ("created", operator.name)]
    assert history[0]["after"]["live_by"] == admin.name
    versions = (await rules_api.client.get(f"{url}/versions")).json()["items"]
    assert [v["created_by"] for v in versions] == [operator.name]

    def changes(records: list) -> list[dict]:
        values = [json.loads(r.value) for r in records]
        return [v for v in values if v["subject"] == rule["id"]]

    audit = changes(await read_topic(rules_api.rt.settings.kafka.bootstrap_servers, AUDIT.name,
                                     lambda rs: len(changes(rs)) >= 2))
    assert [(a["type"], a["data"]["action"], a["data"]["actor"]) for a in audit] == [
        ("AuditEntryRecorded", "rule.created", operator.actor), ("AuditEntryRecorded", "rule.mode", admin.actor)]
    assert all(a["data"]["entities"] == [{"type": "rule", "id": rule["id"]}] for a in audit)
    assert (audit[1]["data"]["before"]["mode"], audit[1]["data"]["after"]["mode"]) == ("DRY_RUN", "LIVE")


async def test_the_notifier_is_asked_with_the_services_own_token_and_a_refusal_says_so(
    rules_api: Api, notifier: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    email = NotifyRequest.model_validate({"request_id": str(uuid.uuid4()), "message": {
        "channel": "email", "to": ["ops@example.com"], "subject": "s", "text": "t"}})
    # the service's state hands requests over with its own token, which the notifier takes
    answers, attempts, error = await state_of(rules_api.rt).notifier.send([email])
    assert (answers[email.request_id].status, attempts, error) == ("accepted", 1, None)

    for token, status, reason in [("not-a-token", 401, "not a token"), (rules_api.viewer.token, 403, "role service")]:
        client = NotifierClient(notifier, lambda token=token: token, backoff=0)
        try:
            answers, attempts, error = await client.send([email])
        finally:
            await client.close()
        assert answers == {} and attempts == 1, error  # refused whole: not retried
        assert error is not None and f"refused the rules service's token ({status}: " in error and reason in error
        definition = checks.parse(big_orders(actions=[webhook(KNOWN_CREDENTIAL)]))
        with pytest.raises(checks.NotifierUnavailable) as caught:
            await checks.unknown_credentials(notifier, definition, lambda token=token: token)
        [problem] = caught.value.errors
        assert problem["field"] == "definition.actions[0].credential"
        assert f"refused the rules service's token ({status}: " in problem["error"] and reason in problem["error"]

    # through the API: the rule is not saved and the answer says why, naming the step
    monkeypatch.setattr(state_of(rules_api.rt).notifier, "token", lambda: "not-a-token")
    rule_id = f"r-{tag()}"
    response = await rules_api.post("/v1/rules", id=rule_id, definition=big_orders(actions=[webhook(KNOWN_CREDENTIAL)]))
    assert response.status_code == 503 and response.headers["retry-after"]
    [problem] = errors(response)
    assert problem["field"] == "definition.actions[0].credential" and "refused the rules service's token (401" in problem["error"]
    assert (await rules_api.client.get(f"/v1/rules/{rule_id}")).status_code == 404



# --- creating, editing, versions, history ---------------------------------------------------


async def test_a_rule_is_created_dry_running_then_edited_into_a_new_version(rules_api: Api) -> None:
    operator, admin = rules_api.operator.name, rules_api.admin.name
    before = datetime.now(UTC)
    created = await rules_api.create(status="active")
    assert (created["version"], created["status"], created["mode"], created["updated_by"]) == (
        1, "active", "DRY_RUN", operator)
    assert before <= datetime.fromisoformat(created["dry_run_since"]) <= datetime.now(UTC)
    assert created["live_since"] is None and created["definition"]["name"] == "Big orders"
    url = f"/v1/rules/{created['id']}"
    assert (await rules_api.client.get(url)).json() == created

    edited = await rules_api.put(url, by=rules_api.admin, version=1, definition=big_orders(2000))
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.json()["updated_by"], edited.json()["mode"]) == (2, admin, "DRY_RUN")
    assert edited.json()["definition"]["conditions"]["all"][0]["value"] == 2000

    versions = (await rules_api.client.get(f"{url}/versions")).json()
    assert versions["next_cursor"] is None
    assert [(v["version"], v["created_by"]) for v in versions["items"]] == [(2, admin), (1, operator)]
    first = (await rules_api.client.get(f"{url}/versions/1")).json()
    assert first["definition"]["conditions"]["all"][0]["value"] == 1000
    missing = await rules_api.client.get(f"{url}/versions/3")
    assert missing.status_code == 404 and fields(missing) == ["version"]

    history = (await rules_api.client.get(f"{url}/history")).json()["items"]
    assert [(h["kind"], h["actor"], h["version"]) for h in history] == [("edited", admin, 2), ("created", operator, 1)]
    assert history[0]["before"] == {"version": 1} and history[0]["after"] == {"version": 2}
    assert history[1]["after"] == {"version": 1, "status": "active", "mode": "DRY_RUN"}


async def test_an_edit_from_a_stale_version_is_refused_and_nothing_is_saved(rules_api: Api) -> None:
    created = await rules_api.create()
    url = f"/v1/rules/{created['id']}"
    assert (await rules_api.put(url, version=1, definition=big_orders(5))).status_code == 200  # an operator's edit
    stale = await rules_api.put(url, by=rules_api.admin, version=1, definition=big_orders(7))
    assert stale.status_code == 409 and fields(stale) == ["version"]
    assert "version 2" in errors(stale)[0]["error"] and stale.json()["version"] == 2
    current = (await rules_api.client.get(url)).json()
    assert current["version"] == 2 and current["definition"]["conditions"]["all"][0]["value"] == 5
    assert len((await rules_api.client.get(f"{url}/versions")).json()["items"]) == 2


async def test_an_id_is_made_from_the_name_and_a_taken_id_is_refused(rules_api: Api) -> None:
    response = await rules_api.client.post("/v1/rules", json={"definition": big_orders(
        name="Großer Auftrag: über 1.000 €!")})
    assert response.status_code == 201, response.text
    rule_id = response.json()["id"]
    assert rule_id.startswith("groer-auftrag-uber-1-000-") and len(rule_id) == len("groer-auftrag-uber-1-000-") + 6
    assert response.json()["status"] == "draft"
    taken = await rules_api.post("/v1/rules", by=rules_api.admin, id=rule_id, definition=big_orders())
    assert taken.status_code == 409 and fields(taken) == ["id"] and rule_id in errors(taken)[0]["error"]
    assert (await rules_api.client.get(f"/v1/rules/{rule_id}")).json()["updated_by"] == rules_api.operator.name


async def test_bodies_are_checked_and_each_problem_names_its_field(rules_api: Api) -> None:
    cases = [
        ({"actor": "dana", "definition": big_orders()}, "actor"),  # who creates it is the token's principal
        ({"actor": "  ", "definition": big_orders()}, "actor"),
        ({"definition": big_orders(), "status": "paused"}, "status"),
        ({"definition": big_orders(), "id": "Not An Id"}, "id"),
        ({"definition": big_orders(), "owner": "x"}, "owner"),
    ]
    for body, field in cases:
        response = await rules_api.client.post("/v1/rules", json=body)
        assert response.status_code == 422, body
        assert fields(response) == [field], response.json()
    not_json = await rules_api.client.post("/v1/rules", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and fields(not_json) == ["(body)"]
    listing = await rules_api.client.get("/v1/rules", params={"status": "sleeping"})
    assert listing.status_code == 422 and fields(listing) == ["status"]


async def test_unknown_rules_are_404_naming_the_id(rules_api: Api) -> None:
    missing = f"/v1/rules/no-such-{tag()}"
    for response in [
        await rules_api.client.get(missing), await rules_api.client.get(f"{missing}/versions"),
        await rules_api.client.get(f"{missing}/versions/1"),
        await rules_api.client.get(f"{missing}/history"), await rules_api.client.get(f"{missing}/runs"),
        await rules_api.put(missing, version=1, definition=big_orders()),
        await rules_api.post(f"{missing}/status", by=rules_api.admin, status="active"),
        await rules_api.post(f"{missing}/mode", by=rules_api.admin, mode="LIVE"),
    ]:
        assert response.status_code == 404 and fields(response) == ["rule_id"], response.text
    run = await rules_api.client.get(f"/v1/rules/runs/{uuid.uuid4()}")
    assert run.status_code == 404 and fields(run) == ["run_id"]


async def test_integers_out_of_range_are_422_naming_the_parameter(rules_api: Api) -> None:
    rule = await rules_api.create()
    url = f"/v1/rules/{rule['id']}"
    for version in ("99999999999999999999", str(2**31), "0", "-1", "one"):
        response = await rules_api.client.get(f"{url}/versions/{version}")
        assert response.status_code == 422 and fields(response) == ["version"], (version, response.text)
    assert (await rules_api.client.get(f"{url}/versions/1")).status_code == 200
    huge = 99999999999999999999
    edit = await rules_api.put(url, version=huge, definition=big_orders())
    assert edit.status_code == 422 and fields(edit) == ["version"], edit.text
    for path in ("/v1/rules", "/v1/rules/runs", f"{url}/runs", f"{url}/versions", f"{url}/history"):
        for limit in (huge, 0, 1001):
            response = await rules_api.client.get(path, params={"limit": limit})
            assert response.status_code == 422 and fields(response) == ["limit"], (path, limit, response.text)
    backtest = await rules_api.post("/v1/rules/backtest", definition=big_orders(), sample=huge, **{
        "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"})
    assert backtest.status_code == 422 and fields(backtest) == ["sample"]


async def test_listing_filters_on_status_and_mode(rules_api: Api) -> None:
    draft, active = await rules_api.create(), await rules_api.create(status="active")
    assert (await rules_api.post(f"/v1/rules/{active['id']}/mode", by=rules_api.admin, mode="LIVE")).status_code == 200

    async def ids(**params: str) -> set[str]:
        response = await rules_api.client.get("/v1/rules", params=params)
        assert response.status_code == 200
        return {r["id"] for r in response.json()["items"]}

    assert {draft["id"], active["id"]} <= await ids()
    assert draft["id"] in await ids(status="draft") and active["id"] not in await ids(status="draft")
    assert active["id"] in await ids(status="active", mode="LIVE") and draft["id"] not in await ids(mode="LIVE")


async def test_the_rules_list_is_paged_by_id_until_next_cursor_is_null(rules_api: Api) -> None:
    made = {(await rules_api.create())["id"] for _ in range(3)}
    [everything] = await every_page(rules_api.client, "/v1/rules", limit=1000)
    pages = await every_page(rules_api.client, "/v1/rules", limit=2)
    assert len(pages) >= 2 and all(1 <= len(page) <= 2 for page in pages)
    ids = [r["id"] for page in pages for r in page]
    assert ids == sorted(ids) == [r["id"] for r in everything] and made <= set(ids)
    drafts = [r for page in await every_page(rules_api.client, "/v1/rules", limit=1, status="draft") for r in page]
    assert made <= {r["id"] for r in drafts} and {r["status"] for r in drafts} == {"draft"}


async def test_versions_and_history_are_paged_newest_first(rules_api: Api) -> None:
    rule = await rules_api.create()
    url = f"/v1/rules/{rule['id']}"
    for version in (1, 2, 3):
        edited = await rules_api.put(url, version=version, definition=big_orders(version))
        assert edited.status_code == 200, edited.text
    versions = await every_page(rules_api.client, f"{url}/versions", limit=3)
    assert [[v["version"] for v in page] for page in versions] == [[4, 3, 2], [1]]
    history = await every_page(rules_api.client, f"{url}/history", limit=2)
    assert [[(h["kind"], h["version"]) for h in page] for page in history] == [
        [("edited", 4), ("edited", 3)], [("edited", 2), ("created", 1)]]


async def test_a_cursor_this_service_did_not_give_is_422_naming_it(rules_api: Api) -> None:
    rule = await rules_api.create()
    url = f"/v1/rules/{rule['id']}"
    def opaque(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    garbage = {
        "/v1/rules": ["not-ours", "%%%", encode_cursor(5), encode_cursor(["x"]), "x" * 2001],
        "/v1/rules/runs": ["not-ours", encode_cursor("x"), encode_cursor(["yesterday", str(uuid.uuid4())]),
                           encode_cursor(["2026-01-01T00:00:00", str(uuid.uuid4())]),
                           encode_cursor(["2026-01-01T00:00:00Z", "not-a-uuid"]), encode_cursor([1, 2, 3])],
        f"{url}/runs": ["not-ours", encode_cursor({"a": 1})],
        f"{url}/versions": ["not-ours", encode_cursor("1"), encode_cursor(-1), encode_cursor(2**31), opaque(b"18446744073709551616")],
        f"{url}/history": ["not-ours", encode_cursor(1.5), encode_cursor(True), opaque(b"18446744073709551616"), opaque(b"{")],
    }
    for path, cursors in garbage.items():
        for cursor in cursors:
            response = await rules_api.client.get(path, params={"cursor": cursor})
            assert response.status_code == 422 and fields(response) == ["cursor"], (path, cursor, response.text)


# --- the lifecycle ------------------------------------------------------------------------------


async def test_status_moves_follow_the_lifecycle_and_a_wrong_one_names_the_allowed_moves(rules_api: Api) -> None:
    rule = await rules_api.create()
    url = f"/v1/rules/{rule['id']}"
    paused_draft = await rules_api.post(f"{url}/status", by=rules_api.admin, status="paused")
    assert paused_draft.status_code == 409 and paused_draft.json()["allowed"] == ["active", "archived"]
    for status in ("active", "paused", "active"):
        response = await rules_api.post(f"{url}/status", by=rules_api.admin, status=status)
        assert response.status_code == 200 and response.json()["status"] == status
    back = await rules_api.post(f"{url}/status", by=rules_api.admin, status="draft")
    assert back.status_code == 409 and back.json()["allowed"] == ["paused", "archived"]
    assert fields(back) == ["status"] and "paused, archived" in errors(back)[0]["error"]
    assert fields(paused_draft) == ["status"]
    assert (await rules_api.post(f"{url}/status", by=rules_api.admin, status="archived")).status_code == 200

    final = await rules_api.post(f"{url}/status", by=rules_api.admin, status="active")
    assert final.status_code == 409 and final.json()["allowed"] == ["draft"] and fields(final) == ["status"]
    edit = await rules_api.put(url, version=1, definition=big_orders())
    assert edit.status_code == 409 and fields(edit) == ["status"] and "archived" in errors(edit)[0]["error"]
    live = await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE")
    assert live.status_code == 409 and fields(live) == ["status"] and "archived" in errors(live)[0]["error"]

    history = (await rules_api.client.get(f"{url}/history")).json()["items"]
    assert [(h["kind"], h["after"]) for h in history[:4]] == [
        ("status", {"status": "archived"}), ("status", {"status": "active"}), ("status", {"status": "paused"}),
        ("status", {"status": "active"})]


async def test_an_archived_rule_is_restored_to_draft_on_record_and_its_id_is_never_reused(rules_api: Api) -> None:
    admin, other = rules_api.admin, rules_api.other_admin  # one archives it, the other restores it
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    live = (await rules_api.post(f"{url}/mode", by=admin, mode="LIVE")).json()
    assert live["mode"] == "LIVE"
    assert (await rules_api.post(f"{url}/status", by=admin, status="archived")).status_code == 200
    again = await rules_api.post("/v1/rules", id=rule["id"], definition=big_orders(5))
    assert again.status_code == 409 and fields(again) == ["id"]

    restored = await rules_api.post(f"{url}/status", by=other, status="draft")
    assert restored.status_code == 200, restored.text
    body = restored.json()
    assert (body["status"], body["mode"], body["updated_by"], body["version"]) == ("draft", "DRY_RUN", other.name, 1)
    assert body["live_since"] is None and body["dry_run_since"]
    assert body["definition"] == rule["definition"]  # the same rule, its versions kept
    history = (await rules_api.client.get(f"{url}/history")).json()["items"]
    assert [(h["kind"], h["actor"], h["before"], h["after"]) for h in history[1:3]] == [
        ("status", other.name, {"status": "archived"}, {"status": "draft"}),
        ("status", admin.name, {"status": "active"}, {"status": "archived"})]
    mode = history[0]  # a LIVE rule restored dry-runs again before it acts
    assert (mode["kind"], mode["actor"], mode["note"]) == ("mode", other.name, "restored from archived: dry-runs first")
    assert (mode["before"]["mode"], mode["before"]["live_by"], mode["after"]["mode"]) == ("LIVE", admin.name, "DRY_RUN")
    assert datetime.fromisoformat(mode["before"]["live_since"]) == datetime.fromisoformat(live["live_since"])
    assert datetime.fromisoformat(mode["after"]["dry_run_since"]) == datetime.fromisoformat(body["dry_run_since"])

    broker = rules_api.rt.settings.kafka.bootstrap_servers

    def restore_records(records: list) -> list[dict]:
        values = [json.loads(r.value) for r in records]
        return [v for v in values if v["subject"] == rule["id"] and v["data"]["actor"]["name"] == other.name]

    audit = restore_records(await read_topic(broker, AUDIT.name, lambda rs: len(restore_records(rs)) >= 2))
    assert [(a["type"], a["data"]["action"], a["data"]["before"], a["data"]["after"]) for a in audit] == [
        ("AuditEntryRecorded", "rule.status", {"status": "archived"}, {"status": "draft"}),
        ("AuditEntryRecorded", "rule.mode", history[0]["before"], history[0]["after"])]
    assert audit[0]["data"]["entities"] == [{"type": "rule", "id": rule["id"]}]
    assert [a["data"]["actor"] for a in audit] == [other.actor, other.actor]  # name, role and token id

    # a draft again: edited (by an operator: it is not LIVE), activated, and still not a new rule
    edited = await rules_api.put(url, version=1, definition=big_orders(7))
    assert edited.status_code == 200 and edited.json()["version"] == 2
    assert (await rules_api.post(f"{url}/status", by=other, status="active")).json()["status"] == "active"
    taken = await rules_api.post("/v1/rules", id=rule["id"], definition=big_orders())
    assert taken.status_code == 409 and fields(taken) == ["id"]


async def test_live_is_refused_until_the_minimum_dry_run_has_passed(make_api: MakeApi, engine: AsyncEngine) -> None:
    rules_api = await make_api(min_dry_run_hours=48)
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    admin = rules_api.admin
    refused = await rules_api.post(f"{url}/mode", by=admin, mode="LIVE")
    assert refused.status_code == 409
    allowed_at = datetime.fromisoformat(refused.json()["live_allowed_at"])
    assert allowed_at == datetime.fromisoformat(rule["dry_run_since"]) + timedelta(hours=48)
    assert fields(refused) == ["mode"] and "48 hours" in errors(refused)[0]["error"]
    assert (await rules_api.client.get(url)).json()["mode"] == "DRY_RUN"

    await _dry_running_since(engine, rule["id"], datetime.now(UTC) - timedelta(hours=49))
    live = await rules_api.post(f"{url}/mode", by=admin, mode="LIVE", note="checked the dry runs")
    assert live.status_code == 200, live.text
    body = live.json()
    assert (body["mode"], body["live_by"], body["dry_run_since"]) == ("LIVE", admin.name, None)
    again = await rules_api.post(f"{url}/mode", by=admin, mode="LIVE")
    assert again.status_code == 409 and fields(again) == ["mode"] and "already LIVE" in errors(again)[0]["error"]

    [change] = (await rules_api.client.get(f"{url}/history")).json()["items"][:1]
    assert (change["kind"], change["actor"], change["note"], change["after"]["live_by"]) == (
        "mode", admin.name, "checked the dry runs", admin.name)
    assert change["before"]["mode"] == "DRY_RUN"
    broker = rules_api.rt.settings.kafka.bootstrap_servers

    def mode_record(records: list) -> list[dict]:
        values = [json.loads(r.value) for r in records]
        return [v for v in values if v["subject"] == rule["id"] and v["data"]["action"] == "rule.mode"]

    [audit] = mode_record(await read_topic(broker, AUDIT.name, lambda rs: bool(mode_record(rs))))
    assert audit["type"] == "AuditEntryRecorded" and audit["data"]["actor"] == admin.actor
    assert audit["data"]["entities"] == [{"type": "rule", "id": rule["id"]}]
    assert audit["data"]["before"]["mode"] == "DRY_RUN" and audit["data"]["after"]["mode"] == "LIVE"


async def test_an_edit_of_a_live_rule_dry_runs_first_when_the_store_says_so(make_api: MakeApi, engine: AsyncEngine) -> None:
    rules_api = await make_api(min_dry_run_hours=1)
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    await _dry_running_since(engine, rule["id"], datetime.now(UTC) - timedelta(hours=2))
    assert (await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE")).json()["mode"] == "LIVE"

    editor = rules_api.other_admin.name  # a LIVE rule's edit is an admin's
    edited = await rules_api.put(url, by=rules_api.other_admin, version=1, definition=big_orders(3000))
    assert edited.status_code == 200
    assert (edited.json()["version"], edited.json()["mode"], edited.json()["live_since"]) == (2, "DRY_RUN", None)
    history = (await rules_api.client.get(f"{url}/history")).json()["items"]
    assert [(h["kind"], h["actor"], h["note"]) for h in history[:2]] == [
        ("mode", editor, "edited: a new version dry-runs first"), ("edited", editor, None)]
    refused = await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE")
    assert refused.status_code == 409 and "live_allowed_at" in refused.json()


async def test_without_a_minimum_period_an_edit_keeps_the_rule_live_and_dry_run_can_be_chosen_again(
    rules_api: Api,
) -> None:
    rule = await rules_api.create(status="active")
    url = f"/v1/rules/{rule['id']}"
    assert (await rules_api.post(f"{url}/mode", by=rules_api.admin, mode="LIVE")).status_code == 200
    edited = await rules_api.put(url, by=rules_api.other_admin, version=1, definition=big_orders(10))
    assert (edited.json()["version"], edited.json()["mode"], edited.json()["live_by"]) == (
        2, "LIVE", rules_api.admin.name)
    assert edited.json()["updated_by"] == rules_api.other_admin.name
    back = await rules_api.post(f"{url}/mode", by=rules_api.other_admin, mode="DRY_RUN")
    assert back.status_code == 200
    assert (back.json()["mode"], back.json()["live_since"]) == ("DRY_RUN", None) and back.json()["dry_run_since"]


async def test_every_change_reloads_the_rules_this_process_runs(rules_api: Api) -> None:
    rule = await rules_api.create()

    def running() -> dict[str, tuple[int, str]]:
        return {r.id: (r.version, r.mode) for r in state_of(rules_api.rt).ruleset.rules}

    assert rule["id"] not in running()  # a draft does not run
    admin = rules_api.admin
    assert (await rules_api.post(f"/v1/rules/{rule['id']}/status", by=admin, status="active")).status_code == 200
    assert running()[rule["id"]] == (1, "DRY_RUN")
    assert (await rules_api.post(f"/v1/rules/{rule['id']}/mode", by=admin, mode="LIVE")).status_code == 200
    assert running()[rule["id"]] == (1, "LIVE")
    assert (await rules_api.put(f"/v1/rules/{rule['id']}", by=admin, version=1, definition=big_orders(9))).status_code == 200
    assert running()[rule["id"]] == (2, "LIVE")
    assert (await rules_api.post(f"/v1/rules/{rule['id']}/status", by=admin, status="paused")).status_code == 200
    assert rule["id"] not in running()


async def _dry_running_since(engine: AsyncEngine, rule_id: str, since: datetime) -> None:
    """Time passing: the rule has been dry-running since ``since``."""
    async with make_sessionmaker(engine).begin() as session:
        await session.execute(update(store.RULES).where(store.RULES.c.id == rule_id).values(dry_run_since=since))


# --- definition checks ------------------------------------------------------------------------------


async def _refused(rules_api: Api, definition: dict[str, Any]) -> list[dict[str, str]]:
    response = await rules_api.client.post("/v1/rules", json={"definition": definition})
    assert response.status_code == 422, response.text
    return errors(response)


async def test_a_definition_that_cannot_run_is_answered_with_a_pointer_to_each_problem(rules_api: Api) -> None:
    unknown_path = big_orders()
    unknown_path["conditions"] = {"all": [{"path": "data.totl", "op": "gt", "value": 1}]}
    [problem] = await _refused(rules_api, unknown_path)
    assert problem["field"] == "definition.conditions.all[0].path" and "totl" in problem["error"]

    misfit = big_orders()
    misfit["conditions"]["all"].append({"path": "data.currency", "op": "gt", "value": 5})
    [problem] = await _refused(rules_api, misfit)
    assert problem["field"] == "definition.conditions.all[1].op" and "data.currency" in problem["error"]

    bad_template = big_orders()
    bad_template["actions"][0]["title"] = "Order {{ data.total "
    [problem] = await _refused(rules_api, bad_template)
    assert problem["field"] == "definition.actions[0].title" and "template" in problem["error"]

    bad_operator = big_orders()
    bad_operator["conditions"]["all"][0]["op"] = "approx"
    [problem] = await _refused(rules_api, bad_operator)
    assert problem["field"] == "definition.conditions.all[0].op"

    two = big_orders()
    two["conditions"] = {"all": [{"path": "data.nope", "op": "eq", "value": 1}]}
    two["actions"][0]["title"] = "{{ oops "
    assert [p["field"] for p in await _refused(rules_api, two)] == [
        "definition.conditions.all[0].path", "definition.actions[0].title"]

    no_actions = big_orders(actions=[])
    assert [p["field"] for p in await _refused(rules_api, no_actions)] == ["definition.actions"]


async def test_an_edit_is_checked_like_a_new_rule(rules_api: Api) -> None:
    rule = await rules_api.create()
    bad = big_orders()
    bad["actions"][0]["title"] = "{{ data.total "
    response = await rules_api.put(f"/v1/rules/{rule['id']}", version=1, definition=bad)
    assert response.status_code == 422 and fields(response) == ["definition.actions[0].title"]
    assert (await rules_api.client.get(f"/v1/rules/{rule['id']}")).json()["version"] == 1


async def test_webhook_credentials_are_checked_with_the_notifier(rules_api: Api) -> None:
    known = big_orders(actions=[big_orders()["actions"][0], webhook(KNOWN_CREDENTIAL)])
    assert (await rules_api.client.post("/v1/rules", json={"definition": known})).status_code == 201

    unknown = big_orders(actions=[webhook("nope"), big_orders()["actions"][0], webhook("nope"), webhook(KNOWN_CREDENTIAL)])
    assert await _refused(rules_api, unknown) == [
        {"field": "definition.actions[0].credential", "error": "unknown credential 'nope'"},
        {"field": "definition.actions[2].credential", "error": "unknown credential 'nope'"},
    ]
    both = big_orders(actions=[webhook("nope")])
    both["conditions"]["all"][0]["path"] = "data.totl"
    assert [p["field"] for p in await _refused(rules_api, both)] == [
        "definition.conditions.all[0].path", "definition.actions[0].credential"]


async def test_a_webhook_that_would_reach_inside_is_refused_naming_its_url(rules_api: Api) -> None:
    def to(url: str) -> dict[str, Any]:
        return {"type": "call_webhook", "url": url}

    inside = ["http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://127.0.0.1:8005/v1/audit",
              "file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "http://localhost:8003/v1/exceptions",
              "http://[::1]/", "http://10.0.0.7/hook", "{{ data.callback_url }}", "https://{{ data.host }}/x"]
    refused = await _refused(rules_api, big_orders(actions=[big_orders()["actions"][0], *map(to, inside)]))
    assert [p["field"] for p in refused] == [f"definition.actions[{i}].url" for i in range(1, len(inside) + 1)]
    assert "link-local" in refused[0]["error"] and "loopback" in refused[1]["error"]
    assert "scheme" in refused[2]["error"] and "scheme" in refused[3]["error"] and "template" in refused[7]["error"]
    rule_id = f"r-{tag()}"
    saved = await rules_api.client.post("/v1/rules", json={"id": rule_id, "definition": big_orders(
        actions=[to("https://erp.example.com/orders/{{ data.order_id }}")])})
    assert saved.status_code == 201, saved.text  # a templated path is fine; the address is checked again at send time

    rules_api.rt.settings.outbound = OutboundSettings(allow_networks="127.0.0.1/32")  # a receiver on this machine
    allowed = await rules_api.client.post("/v1/rules", json={"definition": big_orders(
        actions=[to("http://127.0.0.1:8005/hook")])})
    assert allowed.status_code == 201, allowed.text
    still = await _refused(rules_api, big_orders(actions=[to("http://127.0.0.2:8005/hook")]))
    assert [p["field"] for p in still] == ["definition.actions[0].url"]


async def test_an_unreachable_notifier_is_503_and_nothing_is_saved(make_api: MakeApi) -> None:
    rules_api = await make_api(notifier_url=f"http://127.0.0.1:{free_port()}")
    rule_id = f"r-{tag()}"
    response = await rules_api.client.post("/v1/rules", json={
        "id": rule_id, "definition": big_orders(actions=[webhook(KNOWN_CREDENTIAL)])})
    assert response.status_code == 503 and response.headers["retry-after"]
    [problem] = errors(response)
    assert problem["field"] == "definition.actions[0].credential"
    assert "notifier" in problem["error"] and "unreachable" in problem["error"]
    assert (await rules_api.client.get(f"/v1/rules/{rule_id}")).status_code == 404
    # a definition with other problems gets them, not a 503
    bad = big_orders(actions=[webhook(KNOWN_CREDENTIAL)])
    bad["conditions"]["all"][0]["path"] = "data.totl"
    assert [p["field"] for p in await _refused(rules_api, bad)] == ["definition.conditions.all[0].path"]
    # without webhook credentials the notifier is not asked
    assert (await rules_api.client.post("/v1/rules", json={"definition": big_orders()})).status_code == 201


# --- runs ----------------------------------------------------------------------------------------


def _run(rule_id: str, mode: str, minutes_ago: int, base: datetime) -> tuple[RuleRunData, datetime]:
    run = RuleRunData(
        run_id=uuid.uuid4(), rule=RuleRef(rule_id=rule_id, rule_version=1, mode=mode), event_id=uuid.uuid4(),
        event_type="OrderPlaced", subject=f"ord-{tag()}", status="running", started_at=base)
    return run, base - timedelta(minutes=minutes_ago)


async def test_runs_are_recorded_once_and_listed_newest_event_first_with_filters_and_pages(
    rules_api: Api, engine: AsyncEngine,
) -> None:
    rule = await rules_api.create(status="active")
    other = await rules_api.create(status="active")
    base = datetime.now(UTC).replace(microsecond=0)
    made = [_run(rule["id"], mode, minutes, base) for mode, minutes in
            [("DRY_RUN", 50), ("DRY_RUN", 40), ("LIVE", 30), ("LIVE", 20), ("LIVE", 10)]]
    runs, times = [r for r, _ in made], [t for _, t in made]
    theirs = _run(other["id"], "LIVE", 5, base)
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as session:
        await store.start_runs(session, [*runs, theirs[0]], [*times, theirs[1]])
        await store.start_runs(session, runs, times)  # a redelivery: nothing new
        finished = [r.model_copy(update={"status": "failed" if i == 3 else "completed", "finished_at": base,
                                         "reason": "step raise failed: boom" if i == 3 else None})
                    for i, r in enumerate(runs[:4])]
        await store.record_runs(session, finished, times[:4])  # running ones brought up to date
        fresh, fresh_time = _run(other["id"], "LIVE", 1, base)
        await store.record_runs(session, [fresh.model_copy(update={"status": "cancelled", "finished_at": base,
                                                                    "reason": "rate limit"})], [fresh_time])
    async with sessions() as session:
        assert (await store.get_run(session, fresh.run_id)).status == "cancelled"  # a new one inserted finished
        keys = [(r.event_id, r.rule.rule_id, 1) for r in runs] + [(runs[0].event_id, rule["id"], 2)]
        statuses = await store.run_statuses(session, keys)
    assert statuses == {(r.event_id, rule["id"], 1): s for r, s in
                        zip(runs, ["completed", "completed", "completed", "failed", "running"], strict=True)}

    url = f"/v1/rules/{rule['id']}/runs"

    async def listed(**params: Any) -> list[uuid.UUID]:
        response = await rules_api.client.get(url, params=params)
        assert response.status_code == 200, response.text
        return [uuid.UUID(r["run_id"]) for r in response.json()["items"]]

    newest_first = [r.run_id for r in reversed(runs)]
    assert await listed() == newest_first
    assert await listed(status="failed") == [runs[3].run_id]
    assert await listed(mode="DRY_RUN") == [runs[1].run_id, runs[0].run_id]
    assert await listed(since=times[1].isoformat(), until=times[3].isoformat()) == [runs[2].run_id, runs[1].run_id]

    pages = [[uuid.UUID(r["run_id"]) for r in page] for page in await every_page(rules_api.client, url, limit=2)]
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    dry = await every_page(rules_api.client, url, limit=1, mode="DRY_RUN")  # filters hold on every page
    assert [[uuid.UUID(r["run_id"]) for r in page] for page in dry] == [[runs[1].run_id], [runs[0].run_id]]

    one = (await rules_api.client.get(f"/v1/rules/runs/{runs[3].run_id}")).json()
    assert (one["status"], one["reason"], one["rule"]["mode"]) == ("failed", "step raise failed: boom", "LIVE")
    across = (await rules_api.client.get("/v1/rules/runs", params={"rule_id": other["id"], "limit": 10})).json()
    assert [r["run_id"] for r in across["items"]] == [str(fresh.run_id), str(theirs[0].run_id)]  # newest event first
    assert across["next_cursor"] is None
    three = (await rules_api.client.get("/v1/rules/runs", params={"limit": 3})).json()
    assert len(three["items"]) == 3 and three["next_cursor"] is not None
    paged = await every_page(rules_api.client, "/v1/rules/runs", rule_id=rule["id"], limit=2)
    assert [[uuid.UUID(r["run_id"]) for r in page] for page in paged] == [
        newest_first[:2], newest_first[2:4], newest_first[4:]]
    mine = await every_page(rules_api.client, "/v1/rules/runs", rule_id=rule["id"], limit=5)
    assert len(mine) == 1 and len(mine[0]) == 5  # exactly one page's worth: no empty page after it

    for params, field in [({"cursor": "not-ours"}, "cursor"), ({"status": "done"}, "status"),
                          ({"since": "2026-01-01T00:00:00"}, "since"), ({"limit": 0}, "limit")]:
        for where in (url, "/v1/rules/runs"):
            response = await rules_api.client.get(where, params=params)
            assert response.status_code == 422 and fields(response) == [field], response.text


# --- trying a rule on one event ----------------------------------------------------------------------


def order_event(total: str, customer: str = "c-1", order_id: str | None = None, **envelope: Any) -> dict[str, Any]:
    return {"type": "OrderPlaced", **envelope, "data": {
        "order_id": order_id or f"ord-{tag()}", "customer_id": customer, "total": total, "currency": "EUR"}}


def price_event(sku: str, price: str, at: datetime) -> dict[str, Any]:
    return {"type": "PriceChanged", "time": at.isoformat(), "data": {"sku": sku, "new_price": price, "currency": "EUR"}}


PRICE_JUMP = {
    "name": "Price jumps", "trigger": {"event_types": ["PriceChanged"]},
    "conditions": {"path": "data.new_price", "op": "changed_by_more_than_pct", "value": 20},
    "actions": [{"type": "flag_for_review", "reason": "{{ data.sku }} moved to {{ data.new_price }}"}],
}


async def test_a_draft_is_tried_on_one_event_without_saving_anything(rules_api: Api) -> None:
    matched = (await rules_api.post("/v1/rules/test", definition=big_orders(), event=order_event("1500.00"))).json()
    assert matched["matched"] is True and matched["reason"] is None
    run = matched["run"]
    assert (run["rule"], run["status"]) == ({"rule_id": "draft", "rule_version": 1, "mode": "DRY_RUN"}, "completed")
    [step] = run["steps"]
    assert (step["action"], step["status"], step["simulated"]) == ("create_exception", "succeeded", True)
    assert "1500.00" in json.dumps(step["inputs"])
    missed = (await rules_api.post("/v1/rules/test", definition=big_orders(), event=order_event("10.00"))).json()
    assert missed == {"matched": False, "reason": "conditions: not met", "run": None}
    async with rules_api.rt.sessions() as session:
        assert await store.get_run(session, uuid.UUID(run["run_id"])) is None


async def test_a_stored_rule_is_tried_at_its_current_version_and_stateful_operators_take_previous_values(
    rules_api: Api,
) -> None:
    rule = await rules_api.create(definition=PRICE_JUMP)
    event = price_event(f"sku-{tag()}", "130.00", datetime.now(UTC))
    jumped = (await rules_api.post("/v1/rules/test", rule_id=rule["id"], event=event,
                                   previous={"data.new_price": 100})).json()
    assert jumped["matched"] is True and jumped["run"]["rule"] == {
        "rule_id": rule["id"], "rule_version": 1, "mode": "DRY_RUN"}
    small = await rules_api.post("/v1/rules/test", rule_id=rule["id"], event=event, previous={"data.new_price": 120.5})
    assert small.json()["matched"] is False
    first = await rules_api.post("/v1/rules/test", rule_id=rule["id"], event=event)
    assert first.json()["matched"] is False  # nothing to compare with
    wrong_type = await rules_api.post("/v1/rules/test", rule_id=rule["id"], event=order_event("5.00"))
    assert wrong_type.json()["matched"] is False and "trigger" in wrong_type.json()["reason"]


async def test_trying_a_rule_refuses_bad_input_naming_the_field(rules_api: Api) -> None:
    event = order_event("-5.00")
    for body, status, field in [
        ({"definition": big_orders(), "event": event}, 422, "event.data.total"),
        ({"definition": big_orders(), "event": {"type": "OrderShipped", "data": {}}}, 422, "event.type"),
        ({"definition": big_orders(), "event": {**order_event("5"), "time": "yesterday"}}, 422, "event.time"),
        ({"event": order_event("5")}, 422, "(body)"),
        ({"rule_id": "x", "definition": big_orders(), "event": order_event("5")}, 422, "(body)"),
        ({"definition": {**big_orders(), "trigger": {"event_types": ["OrderShipped"]}}, "event": order_event("5")}, 422,
         "definition.trigger.event_types"),
    ]:
        response = await rules_api.client.post("/v1/rules/test", json=body)
        assert response.status_code == status, response.text
        assert fields(response)[0] == field, response.json()
    unknown = await rules_api.post("/v1/rules/test", rule_id=f"nope-{tag()}", event=order_event("5"))
    assert unknown.status_code == 404 and fields(unknown) == ["rule_id"]


# --- backtests ----------------------------------------------------------------------------------------------


async def produce(rt: Runtime, topic: Any, events: list[Envelope], garbage: int = 0) -> None:
    """Onto the topic as ingest writes them (keyed by subject), record timestamps at the events' times."""
    futures = []
    for event in events:
        key, value = topic.encode(event)
        futures.append(await rt.producer.send(topic.name, value=value, key=key,
                                              timestamp_ms=int(event.time.timestamp() * 1000)))
    for _ in range(garbage):
        futures.append(await rt.producer.send(topic.name, value=b"{not json", key=b"garbage"))
    await asyncio.gather(*futures)


async def test_a_backtest_replays_the_window_without_writing_or_emitting_anything(rules_api: Api) -> None:
    customer = f"cust-{tag()}"
    definition = big_orders(500)
    definition["conditions"]["all"].append({"path": "data.customer_id", "op": "eq", "value": customer})
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(minutes=10), now - timedelta(minutes=2)
    at = {  # minutes before now: total
        "before": (11, "900.00"), "at_start": (10, "600.00"), "in": (6, "700.00"), "small": (5, "20.00"),
        "in_too": (3, "800.00"), "at_end": (2, "950.00"), "after": (1, "990.00"),
    }
    order_id = f"ord-{tag()}"  # one key, one partition: read in the order produced
    events = {name: ORDERS.adapter.validate_python(
        {**order_event(total, customer, order_id), "time": now - timedelta(minutes=m)}) for name, (m, total) in at.items()}
    await produce(rules_api.rt, ORDERS, list(events.values()), garbage=1)
    rule = await rules_api.create(definition=definition)
    async with rules_api.rt.sessions() as session:
        runs_before = len(await store.list_runs(session, store.RunFilters(rule_id=rule["id"]), 1000))

    response = await rules_api.post("/v1/rules/backtest", rule_id=rule["id"], sample=2,
                                    **{"from": start.isoformat(), "to": end.isoformat()})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["matched"] == 3 and result["runs_by_status"] == {"completed": 3}
    assert result["actions"] == {"create_exception": 3}
    assert result["events_in_window"] >= 4 and result["events_scanned"] >= result["events_in_window"] + 3
    assert result["skipped_records"] >= 1 and result["truncated"] is False
    expected = [str(events[n].id) for n in ("at_start", "in", "in_too")]
    assert [r["event_id"] for r in result["sample"]] == expected[:2]
    assert all(r["rule"]["mode"] == "DRY_RUN" and r["steps"][0]["simulated"] for r in result["sample"])

    draft = await rules_api.post("/v1/rules/backtest", definition=definition,
                                 **{"from": start.isoformat(), "to": end.isoformat()})
    assert draft.json()["matched"] == 3 and len(draft.json()["sample"]) == 3
    assert {r["event_id"] for r in draft.json()["sample"]} == set(expected)
    async with rules_api.rt.sessions() as session:
        assert len(await store.list_runs(session, store.RunFilters(rule_id=rule["id"]), 1000)) == runs_before

    cut = await rules_api.post("/v1/rules/backtest", definition=definition, limit=1,
                               **{"from": start.isoformat(), "to": end.isoformat()})
    assert cut.json()["truncated"] is True and cut.json()["events_scanned"] == 1


async def test_a_backtest_keeps_previous_values_for_stateful_operators(rules_api: Api) -> None:
    sku = f"sku-{tag()}"
    now = datetime.now(UTC).replace(microsecond=0)
    prices = [("100.00", 9), ("110.00", 8), ("150.00", 7), ("151.00", 6), ("90.00", 5)]  # +10%, +36%, +0.7%, -40%
    events = [PRICES.adapter.validate_python(price_event(sku, p, now - timedelta(minutes=m))) for p, m in prices]
    await produce(rules_api.rt, PRICES, events)
    definition = {**PRICE_JUMP, "trigger": {"event_types": ["PriceChanged"]},
                  "conditions": {"all": [PRICE_JUMP["conditions"], {"path": "data.sku", "op": "eq", "value": sku}]}}
    response = await rules_api.post("/v1/rules/backtest", definition=definition, **{
        "from": (now - timedelta(minutes=10)).isoformat(), "to": now.isoformat()})
    result = response.json()
    assert result["matched"] == 2 and result["actions"] == {"flag_for_review": 2}
    assert [r["event_id"] for r in result["sample"]] == [str(events[2].id), str(events[4].id)]


async def test_a_backtest_refuses_a_bad_window_or_rule(rules_api: Api) -> None:
    now = datetime.now(UTC)
    window = {"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()}
    for body, field in [
        ({"definition": big_orders(), **window}, "to"),
        ({"definition": big_orders(), "from": "2026-01-01T00:00:00", "to": now.isoformat()}, "from"),
        ({"definition": big_orders(), "from": now.isoformat(), "to": now.isoformat(), "limit": 1_000_001}, "limit"),
        ({"definition": {**big_orders(), "conditions": {"path": "data.x", "op": "eq", "value": 1}},
          "from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()}, "definition.conditions.path"),
    ]:
        response = await rules_api.client.post("/v1/rules/backtest", json=body)
        assert response.status_code == 422 and fields(response)[0] == field, response.text
    unknown = await rules_api.post("/v1/rules/backtest", rule_id=f"nope-{tag()}", **{
        "from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()})
    assert unknown.status_code == 404 and fields(unknown) == ["rule_id"]


async def test_a_backtest_without_a_broker_is_503(rules_api: Api) -> None:
    settings = rules_api.rt.settings.model_copy(update={"kafka": rules_api.rt.settings.kafka.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})})
    away = Api(Runtime("rules", settings, rules_api.rt.producer, rules_api.rt.emitter, None, rules_api.rt.engine,  # type: ignore[arg-type]
                       rules_api.rt.sessions, auth=rules_api.rt.auth, _state=rules_api.rt.state), rules_api.callers)
    now = datetime.now(UTC)
    try:
        response = await away.post("/v1/rules/backtest", definition=big_orders(), **{
            "from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()})
    finally:
        await away.aclose()
    assert response.status_code == 503 and response.headers["retry-after"]
    [problem] = errors(response)
    assert problem["field"] == "(body)" and "broker" in problem["error"]


# --- seeds ----------------------------------------------------------------------------------------------------


async def test_seeds_load_once_and_never_overwrite_a_stored_rule(fresh_database: str) -> None:
    await asyncio.to_thread(load_spec("rules").migrate, fresh_database)
    engine = make_engine(fresh_database)
    sessions = make_sessionmaker(engine)
    shipped = [s.id for s in store.read_seeds()]
    assert shipped, "no seed rules shipped"
    try:
        async with sessions.begin() as session:
            assert sorted(await store.load_seeds(session)) == sorted(shipped)
        first = shipped[0]
        async with sessions.begin() as session:
            await session.execute(update(store.RULES).where(store.RULES.c.id == first).values(status="paused"))
        async with sessions.begin() as session:
            assert await store.load_seeds(session) == []
        async with sessions() as session:
            rules = {r.id: r for r in await store.list_rules(session)}
            assert set(rules) == set(shipped)
            assert rules[first].status == "paused"
            assert all((r.version, r.mode) == (1, "DRY_RUN") for r in rules.values())
            assert all(r.status == "active" for i, r in rules.items() if i != first)
            [created] = await store.history(session, first)
            assert (created.kind, created.actor, created.note) == ("created", "storeops", "seed")
    finally:
        await engine.dispose()


def test_every_seed_rule_compiles() -> None:
    seeds = store.read_seeds(check=lambda rule_id, d: compile_rule(rule_id, 1, "DRY_RUN", d))
    assert len({s.id for s in seeds}) == len(seeds)


def test_a_bad_seed_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text(json.dumps({"id": "broken", "definition": {"name": "x"}}))
    with pytest.raises(ValueError, match="broken.json"):
        store.read_seeds(tmp_path)


# --- the worker's state tables ------------------------------------------------------------------------------------


async def test_previous_values_keep_their_types_and_only_a_later_event_replaces_them(engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(engine)
    subject, t0 = f"sku-{tag()}", datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    moment = datetime(2026, 11, 19, 8, 30, tzinfo=UTC)
    async with sessions.begin() as session:
        await store.remember_values(session, [
            (subject, "data.new_price", Decimal("19.90"), t0, uuid.uuid4()),
            (subject, "data.new_price", Decimal("18.00"), t0 - timedelta(minutes=1), uuid.uuid4()),  # older, same batch
            (subject, "time", moment, t0, uuid.uuid4()),
            (subject, "data.tags", ["a", "b"], t0, uuid.uuid4()),
            (subject, "data.on_hand", 4, t0, uuid.uuid4()),
        ])
    async with sessions.begin() as session:
        await store.remember_values(session, [
            (subject, "data.new_price", Decimal("5.00"), t0 - timedelta(hours=1), uuid.uuid4()),  # older: ignored
            (subject, "data.on_hand", 7, t0 + timedelta(minutes=1), uuid.uuid4()),  # newer: kept
        ])
    pairs = [(subject, p) for p in ("data.new_price", "time", "data.tags", "data.on_hand", "data.cost")]
    async with sessions() as session:
        found = await store.previous_values(session, pairs)
    assert found == {
        (subject, "data.new_price"): (Decimal("19.90"), t0), (subject, "time"): (moment, t0),
        (subject, "data.tags"): (["a", "b"], t0), (subject, "data.on_hand"): (7, t0 + timedelta(minutes=1)),
    }
    assert isinstance(found[(subject, "data.new_price")][0], Decimal)
    assert found[(subject, "time")][0].tzinfo is not None


async def test_price_days_keep_the_first_price_of_the_day_as_reference(engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(engine)
    sku, day = f"sku-{tag()}", date(2026, 11, 23)
    async with sessions.begin() as session:
        await store.record_prices(session, [(sku, day, Decimal("100"), Decimal("95")),
                                            (sku, day, Decimal("95"), Decimal("92"))])
    async with sessions.begin() as session:
        await store.record_prices(session, [(sku, day, Decimal("92"), Decimal("90")),
                                            (sku, day + timedelta(days=1), Decimal("90"), Decimal("90"))])
    async with sessions() as session:
        found = await store.price_days(session, [(sku, day), (sku, day + timedelta(days=1)), (sku, date(2026, 1, 1))])
    assert found == {(sku, day): (Decimal("100"), Decimal("90")),
                     (sku, day + timedelta(days=1)): (Decimal("90"), Decimal("90"))}


async def test_active_definitions_and_the_latest_change_follow_the_rules(rules_api: Api) -> None:
    rule = await rules_api.create(status="active")
    async with rules_api.rt.sessions() as session:
        active = {row.id: (row.version, d.name) for row, d in await store.active_definitions(session)}
        latest = await store.latest_change(session)
    assert active[rule["id"]] == (1, "Big orders")
    assert latest is not None and latest >= datetime.fromisoformat(rule["updated_at"])


async def test_a_change_applies_only_to_the_state_it_was_worked_out_from(rules_api: Api) -> None:
    """Two people changing one rule at once: the second write finds the row moved on and writes nothing."""
    rule = await rules_api.create()
    now = datetime.now(UTC)
    async with rules_api.rt.sessions.begin() as session:
        row = await store.get_rule(session, rule["id"])
        read = {"version": row.version, "status": row.status, "mode": row.mode}
        assert await store.update_rule(session, rule["id"], read, {"status": "active", "updated_at": now})
        assert not await store.update_rule(session, rule["id"], read, {"status": "archived", "updated_at": now})
    assert (await rules_api.client.get(f"/v1/rules/{rule['id']}")).json()["status"] == "active"


async def test_a_change_stands_when_the_broker_is_away_and_its_audit_entry_goes_out_when_it_is_back(
    rules_api: Api, broker: RunningBroker,
) -> None:
    rule = await rules_api.create()
    assert rules_api.rt.outbox is not None
    await rules_api.rt.outbox.flush()  # rule.created is out (its publication races the stop below otherwise)
    await rules_api.rt.producer.stop()  # the broker is away
    response = await rules_api.post(f"/v1/rules/{rule['id']}/status", by=rules_api.admin, status="active")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert (await rules_api.client.get(f"/v1/rules/{rule['id']}/history")).json()["items"][0]["after"] == {"status": "active"}
    waiting = [json.loads(r["value"]) for r in await store.OUTBOX.unpublished(rules_api.rt.sessions, 10_000)]
    assert [w["data"]["action"] for w in waiting if w["subject"] == rule["id"]] == ["rule.status"]  # committed with it

    producer = make_producer(rules_api.rt.settings.kafka, f"test-rules-back-{tag()}")  # the broker is back
    await producer.start()
    try:
        assert await Publisher(store.OUTBOX, rules_api.rt.sessions, producer).flush() >= 1
    finally:
        await producer.stop()

    def status_entries(records: list) -> list[dict]:
        values = [json.loads(r.value) for r in records]
        return [v for v in values if v["subject"] == rule["id"] and v["data"]["action"] == "rule.status"]
    [entry] = status_entries(await read_topic(broker.bootstrap_servers, AUDIT.name, lambda rs: len(status_entries(rs)) >= 1))
    assert entry["data"]["after"] == {"status": "active"} and entry["data"]["actor"]["name"] == rules_api.admin.name


# --- migrations ---------------------------------------------------------------------------------------------------


def test_the_first_rule_runs_table_is_replaced_and_its_runs_discarded(fresh_database: str) -> None:
    load_spec("rules").migrate(fresh_database, "rules_0001")

    async def old_run() -> None:
        engine = make_engine(fresh_database)
        async with engine.begin() as conn:
            run_id = uuid.uuid4() if conn.dialect.name == "postgresql" else uuid.uuid4().hex
            event_id = uuid.uuid4() if conn.dialect.name == "postgresql" else uuid.uuid4().hex
            await conn.execute(text(
                "INSERT INTO rule_runs (run_id, rule_id, rule_version, mode, event_id, event_type, event_time, status,"
                " action_ids) VALUES (:run_id, 'high-value-order', 1, 'LIVE', :event_id, 'OrderPlaced', :t,"
                " 'completed', '[]')"), {"run_id": run_id, "event_id": event_id, "t": datetime.now(UTC)})
        await engine.dispose()

    async def columns_and_count() -> tuple[set[str], int]:
        engine = make_engine(fresh_database)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("rule_runs")})
            count = (await conn.execute(text("SELECT count(*) FROM rule_runs"))).scalar_one()
        await engine.dispose()
        return names, count

    asyncio.run(old_run())
    load_spec("rules").migrate(fresh_database)
    names, count = asyncio.run(columns_and_count())
    assert {"record", "subject", "reason", "started_at"} <= names and "action_ids" not in names and count == 0
    command.downgrade(load_spec("rules").alembic_config(fresh_database), "rules_0001")
    names, count = asyncio.run(columns_and_count())
    assert "action_ids" in names and count == 0
    load_spec("rules").migrate(fresh_database)
