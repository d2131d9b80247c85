"""The notifier's request and credential APIs, in process, on the real database and the real broker,
and who may call each (a service hands requests over, only an admin stores or deletes a credential)."""

from __future__ import annotations

import contextlib
import json
import logging
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import func, select

from schemas.envelope import deterministic_id
from schemas.registry import AUDIT, NOTIFICATIONS
from services.notifier import stream
from services.notifier.app import SPEC
from services.notifier.credentials import CREDENTIALS_KEY_ENV, KEY_FILE_NAME, Cipher, credential_value
from services.notifier.errors import CredentialUnreadable
from services.notifier.settings import NotifierSettings
from services.notifier.store import CredentialRow, NotificationRow
from storeops import auth
from storeops.auth import Role
from storeops.auth import tokens as auth_tokens
from storeops.db import make_engine, make_sessionmaker
from storeops.service import build_app
from storeops.settings import KafkaSettings, Settings
from storeops_cli.broker import RunningBroker, start_embedded
from tests.helpers import assert_forbidden, assert_role_matrix, bearer, read_topic

pytestmark = pytest.mark.integration

SECRET = "whsec_9f8e7d6c5b4a3210"


def tag() -> str:
    return uuid.uuid4().hex[:10]


def in_app(*recipients: str, **fields: Any) -> dict[str, Any]:
    return request({"channel": "in_app", "recipients": list(recipients), "title": "Big order", "body": "ord-1 is 1,500 EUR",
                    "severity": "High"}, **fields)


def email(**fields: Any) -> dict[str, Any]:
    return request({"channel": "email", "to": ["ops@shop.example"], "subject": "Big order", "text": "ord-1"}, **fields)


def webhook(credential: str | None, **fields: Any) -> dict[str, Any]:
    return request({"channel": "webhook", "url": "https://hooks.example/orders", "body": "{}", "credential": credential},
                   **fields)


def request(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "message": message,
            "rule": {"rule_id": "high-value-order", "rule_version": 3, "mode": "LIVE"},
            "run_id": str(uuid.uuid4()), "step_id": "notify-ops", "event_id": str(uuid.uuid4()), **fields}


async def hand_over(api: httpx.AsyncClient, *requests: dict[str, Any]) -> list[dict[str, Any]]:
    response = await api.post("/v1/requests", json={"requests": list(requests)})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in results]


def counted(channel: str, result: str) -> float:
    return REGISTRY.get_sample_value("storeops_notifier_requests_total", {"channel": channel, "result": result}) or 0.0


@pytest.fixture
def database(fresh_database: str) -> str:
    """A database of the test's own with the notifier's migrations applied (and no other service's)."""
    SPEC.migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def notifier_app(database: str, broker: RunningBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The notifier's API on its own database and the suite's broker, without its consumer (other tests' exception changes)."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", CREDENTIALS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    settings = NotifierSettings(database_url=database, data_dir=tmp_path,
                                kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor))
    return build_app(replace(SPEC, consumes=()), settings)


class AsTheRouteNeeds(httpx.Auth):
    """Each request with the token of the role its route needs: a service's to hand requests over and to
    look credentials up, an admin's to store or delete one, a viewer's to read the rest. A request that
    brings its own Authorization keeps it."""

    def __init__(self, tokens: dict[Role, str]) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        path = request.url.path
        if path.startswith("/v1/credentials"):
            role = Role.service if request.method == "GET" else Role.admin
        else:
            role = Role.service if request.method == "POST" else Role.viewer
        request.headers.setdefault("Authorization", f"Bearer {self.tokens[role]}")
        yield request


def client(app: FastAPI, tokens: dict[Role, str] | None = None) -> httpx.AsyncClient:
    """A client of ``app`` sending the token each route needs (none without ``tokens``)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier",
                             auth=AsTheRouteNeeds(tokens) if tokens else None)


@pytest.fixture
async def api(notifier_app: FastAPI, tokens: dict[Role, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with notifier_app.router.lifespan_context(notifier_app):
        async with client(notifier_app, tokens) as api_client:
            yield api_client


@pytest.fixture
async def sessions(database: str):
    engine = make_engine(database)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def put_credential(api: httpx.AsyncClient, name: str, value: str = SECRET, token: str | None = None) -> httpx.Response:
    """PUT the credential, with ``token`` (else an admin's)."""
    return await api.put(f"/v1/credentials/{name}", json={"value": value}, headers=bearer(token) if token else None)


async def issue(database_url: str, name: str, role: Role) -> str:
    """Another token in the suite's token list."""
    engine = make_engine(database_url)
    try:
        return (await auth_tokens.issue(engine, auth.load_key(Settings().auth_key_file()), name, role, "the test"))[0]
    finally:
        await engine.dispose()


# --- requests --------------------------------------------------------------------------


async def test_each_request_in_a_batch_is_answered_in_order(api: httpx.AsyncClient) -> None:
    stored_before = in_app(f"team-{tag()}")
    assert statuses(await hand_over(api, stored_before)) == ["accepted"]
    missing = f"missing-{tag()}"
    batch = [in_app(f"team-{tag()}"), email(), webhook(missing), stored_before]
    results = await hand_over(api, *batch)
    assert [r["request_id"] for r in results] == [r["request_id"] for r in batch]
    assert statuses(results) == ["accepted", "accepted", "refused", "duplicate"]
    assert results[2]["error"] == f"unknown credential {missing!r}"
    assert results[0]["error"] is None
    refused = await api.get(f"/v1/requests/{batch[2]['request_id']}")
    assert refused.status_code == 404  # a refused request is not stored


async def test_an_email_is_stored_with_what_its_delivery_needs(api: httpx.AsyncClient) -> None:
    sent = email()
    before = counted("email", "accepted")
    await hand_over(api, sent)
    assert counted("email", "accepted") == before + 1
    stored = (await api.get(f"/v1/requests/{sent['request_id']}")).json()
    assert stored["status"] == "accepted" and stored["attempts"] == 0 and stored["channel"] == "email"
    assert stored["message"] == {**sent["message"], "html": None}
    assert stored["rule"] == sent["rule"]
    assert [stored[k] for k in ("run_id", "step_id", "event_id")] == [sent[k] for k in ("run_id", "step_id", "event_id")]
    assert stored["created_at"].endswith(("+00:00", "Z"))
    assert (await api.get(f"/v1/requests/{uuid.uuid4()}")).json()["errors"][0]["error"].startswith("unknown request ")


async def test_a_retried_hand_over_creates_nothing_twice(api: httpx.AsyncClient, sessions) -> None:
    recipient = f"team-{tag()}"
    batch = [in_app(recipient), email()]
    assert statuses(await hand_over(api, *batch)) == ["accepted", "accepted"]
    before = counted("in_app", "duplicate")
    assert statuses(await hand_over(api, *batch)) == ["duplicate", "duplicate"]
    assert counted("in_app", "duplicate") == before + 1
    same_id_twice = in_app(recipient)
    assert statuses(await hand_over(api, same_id_twice, same_id_twice)) == ["accepted", "duplicate"]
    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(NotificationRow).where(NotificationRow.recipient == recipient))
    assert rows == 2  # one per request, however often each was handed over
    feed = (await api.get("/v1/notifications", params={"recipient": recipient})).json()["items"]
    assert len(feed) == 2
    listed = (await api.get("/v1/requests", params={"channel": "email", "limit": 1000})).json()["items"]
    assert [i["request_id"] for i in listed].count(batch[1]["request_id"]) == 1


async def test_in_app_fan_out_lands_in_each_feed_and_is_announced(api: httpx.AsyncClient, broker: RunningBroker) -> None:
    ana, ben = f"ana-{tag()}", f"ben-{tag()}"
    sent = in_app(ana, ben, ana)  # ana named twice hears it once
    await hand_over(api, sent)
    ids = {r: str(deterministic_id("notification", sent["request_id"], "in_app", r)) for r in (ana, ben)}
    for recipient in (ana, ben):
        [item] = (await api.get("/v1/notifications", params={"recipient": recipient})).json()["items"]
        assert item["id"] == ids[recipient]
        assert (item["title"], item["body"], item["severity"], item["channel"]) == ("Big order", "ord-1 is 1,500 EUR", "High", "in_app")
    stored = (await api.get(f"/v1/requests/{sent['request_id']}")).json()
    assert (stored["status"], stored["attempts"]) == ("delivered", 1)

    def announced(records, times: int = 1) -> bool:
        values = [json.loads(r.value) for r in records]
        return all(sum(v["id"] == i for v in values) >= times for i in ids.values())

    records = await read_topic(broker.bootstrap_servers, NOTIFICATIONS.name, announced)
    mine = [json.loads(r.value) for r in records if json.loads(r.value)["id"] in ids.values()]
    assert {(m["type"], m["subject"], m["causation_id"]) for m in mine} == {
        ("NotificationCreated", r, sent["request_id"]) for r in (ana, ben)}
    assert all(m["correlation_id"] == sent["event_id"] for m in mine)
    assert {r.key.decode() for r in records if json.loads(r.value)["id"] in ids.values()} == {ana, ben}

    assert statuses(await hand_over(api, sent)) == ["duplicate"]  # announced again, identically
    again = await read_topic(broker.bootstrap_servers, NOTIFICATIONS.name, lambda rs: announced(rs, 2))
    copies = [json.loads(r.value) for r in again if json.loads(r.value)["id"] == ids[ana]]
    assert copies[0] == copies[1]


async def test_a_bad_body_gets_422_naming_the_field_and_stores_nothing(api: httpx.AsyncClient) -> None:
    bad_address = email()
    bad_address["message"]["to"] = ["ops@shop.example", "not-an-address"]
    fine = email()
    response = await api.post("/v1/requests", json={"requests": [fine, bad_address]})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "requests[1].message.to[1]" and "pattern" in error["error"]
    assert (await api.get(f"/v1/requests/{fine['request_id']}")).status_code == 404

    cases = {
        "requests[0].message.channel": {"requests": [request({"channel": "sms", "to": "+4912345"})]},
        "requests[0].message": {"requests": [request({"channel": "email", "to": ["a@b.example"], "subject": "s"})]},
        "requests[0].message.url": {"requests": [webhook(None) | {"message": {"channel": "webhook", "url": "not a url"}}]},
        "requests[0].message.credential": {"requests": [webhook("no spaces allowed")]},
        "requests[0].request_id": {"requests": [email(request_id="7")]},
        "requests[0].surprise": {"requests": [email(surprise=True)]},
        # schemathesis found it: a version past 32 bits reached the column and was a 500 on PostgreSQL
        "requests[0].rule.rule_version": {"requests": [email(rule={"rule_id": "r", "rule_version": 2**57, "mode": "LIVE"})]},
        "requests": {"requests": []},
    }
    for field, body in cases.items():
        response = await api.post("/v1/requests", json=body)
        assert response.status_code == 422, field
        assert field in [e["field"] for e in response.json()["errors"]], (field, response.json())
    not_json = await api.post("/v1/requests", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "(body)"
    limit = await api.get("/v1/requests", params={"limit": 0})
    assert limit.status_code == 422 and limit.json()["errors"][0]["field"] == "limit"


async def test_a_webhook_naming_an_unknown_credential_is_refused_and_the_rest_accepted(api: httpx.AsyncClient) -> None:
    known, unknown = f"shop-api-{tag()}", f"gone-{tag()}"
    assert (await put_credential(api, known)).status_code == 201
    before = counted("webhook", "refused")
    batch = [webhook(known), webhook(unknown), webhook(None), email()]
    results = await hand_over(api, *batch)
    assert statuses(results) == ["accepted", "refused", "accepted", "accepted"]
    assert results[1]["error"] == f"unknown credential {unknown!r}"
    assert counted("webhook", "refused") == before + 1
    stored = (await api.get(f"/v1/requests/{batch[0]['request_id']}")).json()
    assert stored["message"]["credential"] == known and SECRET not in json.dumps(stored)

    assert (await api.delete(f"/v1/credentials/{known}")).status_code == 204
    assert statuses(await hand_over(api, batch[0], webhook(known))) == ["duplicate", "refused"]


async def test_a_webhook_that_would_reach_inside_is_refused_and_the_rest_accepted(api: httpx.AsyncClient) -> None:
    def to(url: str) -> dict[str, Any]:
        hook = webhook(None)
        hook["message"]["url"] = url
        return hook

    inside = [to("http://169.254.169.254/latest/meta-data/"), to("http://127.0.0.1:8005/v1/audit"),
              to("http://localhost:8003/"), to("http://10.1.2.3/hook"), to("http://[::ffff:127.0.0.1]/")]
    outside = to("https://hooks.example/orders")
    results = await hand_over(api, *inside, outside)
    assert statuses(results) == ["refused"] * len(inside) + ["accepted"]
    assert all(r["error"].startswith("message.url: ") for r in results[:-1]), results
    assert "link-local" in results[0]["error"] and "loopback" in results[1]["error"]
    for refused in inside:
        assert (await api.get(f"/v1/requests/{refused['request_id']}")).status_code == 404  # nothing stored


async def test_requests_are_listed_newest_first_and_filtered(api: httpx.AsyncClient) -> None:
    older, newer, note = email(), email(), in_app(f"team-{tag()}")
    await hand_over(api, older)
    await hand_over(api, newer, note)
    emails = (await api.get("/v1/requests", params={"channel": "email", "status": "accepted", "limit": 1000})).json()["items"]
    ids = [i["request_id"] for i in emails]
    assert ids.index(newer["request_id"]) < ids.index(older["request_id"])
    assert note["request_id"] not in ids and {i["channel"] for i in emails} == {"email"}
    created = [i["created_at"] for i in emails]
    assert created == sorted(created, reverse=True)
    delivered = (await api.get("/v1/requests", params={"status": "delivered", "limit": 1000})).json()["items"]
    assert note["request_id"] in [i["request_id"] for i in delivered]
    assert len((await api.get("/v1/requests", params={"limit": 1})).json()["items"]) == 1
    assert (await api.get("/v1/requests", params={"status": "lost"})).json()["errors"][0]["field"] == "status"


@pytest.fixture
def own_broker() -> Iterator[RunningBroker]:
    """A broker of the test's own, to stop under the app."""
    own = start_embedded()
    try:
        yield own
    finally:
        own.stop()


async def test_a_broker_that_does_not_acknowledge_gets_503_and_a_retry_finds_the_request_stored(
    database: str, own_broker: RunningBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokens: dict[Role, str]
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    own = own_broker
    settings = NotifierSettings(database_url=database, data_dir=tmp_path, kafka=KafkaSettings(
        bootstrap_servers=own.bootstrap_servers, flavor=own.flavor, request_timeout_ms=2000))
    app = build_app(replace(SPEC, consumes=()), settings)
    async with app.router.lifespan_context(app):
        async with client(app, tokens) as api:
            assert statuses(await hand_over(api, in_app(f"team-{tag()}"))) == ["accepted"]
            own.stop()
            sent = in_app(f"team-{tag()}")
            response = await api.post("/v1/requests", json={"requests": [sent]})
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "hand the same requests over again" in response.json()["errors"][0]["error"]
            assert statuses(response.json()["results"]) == ["accepted"]  # committed before the announcement
            assert (await api.get(f"/v1/requests/{sent['request_id']}")).json()["status"] == "delivered"
            again = await api.post("/v1/requests", json={"requests": [sent]})
            assert again.status_code == 503 and statuses(again.json()["results"]) == ["duplicate"]


# --- credentials -------------------------------------------------------------------------


async def test_a_credential_is_created_replaced_listed_without_its_value_and_deleted(
    api: httpx.AsyncClient, sessions, notifier_app, tmp_path: Path, tokens: dict[Role, str], database_url: str
) -> None:
    name = f"shop-api-{tag()}"
    created = await put_credential(api, name, "first-" + SECRET, tokens[Role.admin])
    assert created.status_code == 201
    first = created.json()
    assert set(first) == {"name", "created_at", "updated_at", "updated_by"}
    assert (first["name"], first["updated_by"], first["created_at"]) == (name, "test-admin", first["updated_at"])

    bob = f"bob-{tag()}"  # another admin: updated_by is whoever replaced it last, from the token
    replaced = await put_credential(api, name, SECRET, await issue(database_url, bob, Role.admin))
    assert replaced.status_code == 200
    second = replaced.json()
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]
    assert second["updated_by"] == bob

    listing = await api.get("/v1/credentials")
    [item] = [i for i in listing.json()["items"] if i["name"] == name]
    assert item == second and SECRET not in listing.text
    assert all(set(i) == {"name", "created_at", "updated_at", "updated_by"} for i in listing.json()["items"])
    assert (await api.get(f"/v1/credentials/{name}")).json() == second

    async with sessions() as session:
        ciphertext = await session.scalar(select(CredentialRow.ciphertext).where(CredentialRow.name == name))
        assert SECRET not in ciphertext and "first-" not in ciphertext
        cipher = notifier_app.state.runtime.state.cipher
        assert await credential_value(session, cipher, name) == SECRET
        assert await credential_value(session, cipher, f"nothing-{tag()}") is None

    key_file = tmp_path / KEY_FILE_NAME  # the setting is unset here
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert (await api.delete(f"/v1/credentials/{name}")).status_code == 204
    for gone in (await api.get(f"/v1/credentials/{name}"), await api.delete(f"/v1/credentials/{name}")):
        assert gone.status_code == 404 and gone.json() == {"errors": [{"field": "name", "error": f"unknown credential {name!r}"}]}
    assert name not in [i["name"] for i in (await api.get("/v1/credentials")).json()["items"]]


async def test_a_credential_body_or_name_that_is_not_valid_gets_422_without_echoing_it(api: httpx.AsyncClient) -> None:
    too_long = "x" * 10001
    response = await put_credential(api, f"big-{tag()}", too_long)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "value"
    assert too_long not in response.text
    empty = await put_credential(api, f"empty-{tag()}", "")
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "value"
    actor = await api.put(f"/v1/credentials/a-{tag()}", json={"value": SECRET, "actor": "alice"})  # the token says who
    assert actor.status_code == 422 and actor.json()["errors"] == [{"field": "actor", "error": "Extra inputs are not permitted"}]
    assert SECRET not in actor.text
    bad_name = await put_credential(api, "-starts-with-a-dash")
    assert bad_name.status_code == 422 and bad_name.json()["errors"][0]["field"] == "name"
    assert (await put_credential(api, "x" * 101)).status_code == 422


async def test_a_credential_stored_under_another_key_gives_a_clear_error(api: httpx.AsyncClient, sessions, tmp_path: Path) -> None:
    name = f"rotated-{tag()}"
    await put_credential(api, name)
    other = Cipher(SecretStr(Fernet.generate_key().decode()), tmp_path / "unused.key")
    async with sessions() as session:
        with pytest.raises(CredentialUnreadable, match=f"credential '{name}' cannot be decrypted with the key from {CREDENTIALS_KEY_ENV}"):
            await credential_value(session, other, name)


async def test_a_key_file_holding_no_key_is_a_clear_503_and_the_service_keeps_answering(
    notifier_app, tmp_path: Path, tokens: dict[Role, str]
) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("garbage\n")
    async with notifier_app.router.lifespan_context(notifier_app):
        async with client(notifier_app, tokens) as api:
            response = await put_credential(api, f"k-{tag()}")
            assert response.status_code == 503 and response.json()["errors"][0]["field"] == "(credentials key)"
            error = response.json()["errors"][0]["error"]
            assert str(tmp_path / KEY_FILE_NAME) in error and "not a Fernet key" in error
            assert (await api.get("/healthz")).status_code == 200
            assert (await api.get("/v1/credentials")).status_code == 200


# --- who may ask ---------------------------------------------------------------------------

ROUTES = {  # every route of the notifier's API, and the role it needs
    ("GET", "/v1/notifications"): Role.viewer,
    ("GET", "/v1/notifications/counts"): Role.viewer,
    ("GET", "/v1/notifications/stream"): Role.viewer,
    ("POST", "/v1/notifications/{notification_id}/seen"): Role.operator,
    ("POST", "/v1/notifications/{notification_id}/read"): Role.operator,
    ("POST", "/v1/notifications/{notification_id}/archive"): Role.operator,
    ("POST", "/v1/notifications/read-all"): Role.operator,
    ("GET", "/v1/subscriptions"): Role.viewer,
    ("POST", "/v1/subscriptions"): Role.operator,
    ("GET", "/v1/subscriptions/{subscription_id}"): Role.viewer,
    ("PUT", "/v1/subscriptions/{subscription_id}"): Role.operator,
    ("DELETE", "/v1/subscriptions/{subscription_id}"): Role.operator,
    ("GET", "/v1/subscriptions/teams/{team}/members"): Role.viewer,
    ("PUT", "/v1/subscriptions/teams/{team}/members/{member}"): Role.admin,
    ("DELETE", "/v1/subscriptions/teams/{team}/members/{member}"): Role.admin,
    ("POST", "/v1/requests"): Role.service,
    ("GET", "/v1/requests"): Role.viewer,
    ("GET", "/v1/requests/{request_id}"): Role.viewer,
    ("GET", "/v1/credentials"): Role.service,
    ("GET", "/v1/credentials/{name}"): Role.service,
    ("PUT", "/v1/credentials/{name}"): Role.admin,
    ("DELETE", "/v1/credentials/{name}"): Role.admin,
    ("POST", "/v1/webhook-endpoints"): Role.admin,
    ("GET", "/v1/webhook-endpoints"): Role.viewer,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): Role.viewer,
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"): Role.admin,
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): Role.admin,
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): Role.admin,
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/recover"): Role.admin,
    ("GET", "/v1/deliveries"): Role.viewer,
    ("GET", "/v1/deliveries/{delivery_id}"): Role.viewer,
    ("POST", "/v1/deliveries/{delivery_id}/replay"): Role.admin,
    ("GET", "/v1/delivery-health"): Role.viewer,
}


async def test_every_route_declares_its_role_and_refuses_a_token_without_it(
    api: httpx.AsyncClient, notifier_app: FastAPI, tokens: dict[Role, str]
) -> None:
    # the live stream ends at once (event reconnect), so each probe of it gets a whole answer
    stream.hub_of(notifier_app.state.runtime).lifetime_seconds = 0
    async with client(notifier_app) as anonymous:
        await assert_role_matrix(notifier_app, anonymous, ROUTES, tokens, request_id=uuid.uuid4(),
                                 endpoint_id=uuid.uuid4(), delivery_id=uuid.uuid4(), name=f"nothing-{tag()}",
                                 notification_id=uuid.uuid4(), subscription_id=uuid.uuid4(), team=f"team-{tag()}",
                                 member="ana")


async def test_only_an_admin_may_store_or_delete_a_credential(api: httpx.AsyncClient, tokens: dict[Role, str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    name = f"shop-api-{tag()}"
    for held in (Role.operator, Role.viewer, Role.service):
        assert_forbidden(await put_credential(api, name, token=tokens[held]), Role.admin, held)
    assert (await api.get(f"/v1/credentials/{name}")).status_code == 404  # nothing was stored
    stored = await put_credential(api, name, token=tokens[Role.admin])
    assert stored.status_code == 201 and stored.json()["updated_by"] == "test-admin"
    for held in (Role.operator, Role.viewer, Role.service):
        response = await put_credential(api, name, "replaced-" + SECRET, token=tokens[held])
        assert_forbidden(response, Role.admin, held)
        assert_forbidden(await api.delete(f"/v1/credentials/{name}", headers=bearer(tokens[held])), Role.admin, held)
    assert (await api.get(f"/v1/credentials/{name}")).json() == stored.json()  # neither replaced nor deleted
    with caplog.at_level(logging.INFO, logger="services.notifier.credentials_api"):
        deleted = await api.delete(f"/v1/credentials/{name}", params={"actor": "mallory"}, headers=bearer(tokens[Role.admin]))
    assert deleted.status_code == 204 and (await api.get(f"/v1/credentials/{name}")).status_code == 404
    [logged] = [r for r in caplog.records if r.getMessage() == "credential deleted" and getattr(r, "credential", "") == name]
    assert logged.actor == "test-admin"  # the token says who, not the old actor parameter


async def test_each_credential_change_is_on_the_audit_topic_naming_the_admin_and_never_the_value(
    api: httpx.AsyncClient, broker: RunningBroker, tokens: dict[Role, str]
) -> None:
    name = f"shop-api-{tag()}"
    assert (await put_credential(api, name)).status_code == 201
    assert (await put_credential(api, name, "replaced-" + SECRET)).status_code == 200
    assert (await api.delete(f"/v1/credentials/{name}")).status_code == 204

    def changes(records: list) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}  # by id: another publisher of the suite's outbox may send one twice
        for r in records:
            with contextlib.suppress(ValueError):  # other tests' bad records on the suite's topics
                doc = json.loads(r.value)
                if doc.get("type") == "AuditEntryRecorded" and doc.get("subject") == name:
                    found.setdefault(doc["id"], doc)
        return list(found.values())

    records = await read_topic(broker.bootstrap_servers, AUDIT.name, lambda rs: len(changes(rs)) == 3)
    recorded = changes(records)
    assert [c["data"]["action"] for c in recorded] == ["credential.created", "credential.replaced", "credential.deleted"]
    admin_id = jwt.decode(tokens[Role.admin], options={"verify_signature": False})["jti"]
    for change in recorded:
        assert change["data"]["entities"] == [{"type": "credential", "id": name}]
        assert change["data"]["actor"] == {"kind": "person", "name": "test-admin", "role": "admin", "token_id": admin_id,
                                           "rule_id": None, "rule_version": None}
    assert SECRET not in json.dumps(recorded)


async def test_a_viewer_reads_the_feed_and_the_requests_but_no_credential(api: httpx.AsyncClient,
                                                                       tokens: dict[Role, str]) -> None:
    recipient = f"team-{tag()}"
    sent = in_app(recipient)
    assert_forbidden(await api.post("/v1/requests", json={"requests": [sent]}, headers=bearer(tokens[Role.viewer])),
                     Role.service, Role.viewer)
    assert_forbidden(await api.post("/v1/requests", json={"requests": [sent]}, headers=bearer(tokens[Role.operator])),
                     Role.service, Role.operator)
    assert (await api.get(f"/v1/requests/{sent['request_id']}")).status_code == 404  # not stored
    assert statuses(await hand_over(api, sent)) == ["accepted"]  # a service's token
    viewer = bearer(tokens[Role.viewer])
    [item] = (await api.get("/v1/notifications", params={"recipient": recipient}, headers=viewer)).json()["items"]
    assert item["title"] == "Big order"
    assert (await api.get(f"/v1/requests/{sent['request_id']}", headers=viewer)).json()["status"] == "delivered"
    assert_forbidden(await api.get("/v1/credentials", headers=viewer), Role.service, Role.viewer)
