"""Ingest's refusals that need a running app: a body over the limit, a broker that does not acknowledge,
and a token that may not post events (only a store's connector, a ``service`` token, or an admin may)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from schemas.registry import ORDERS
from services.ingest.app import SPEC
from services.ingest.settings import IngestConfig, IngestSettings
from storeops.auth import Role
from storeops.service import build_app
from storeops.settings import KafkaSettings
from storeops_cli.broker import start_embedded
from tests.helpers import assert_forbidden, assert_unauthenticated, bearer, read_topic

pytestmark = pytest.mark.integration


def order() -> dict:
    return {"id": str(uuid.uuid4()), "type": "OrderPlaced",
            "data": {"order_id": f"ord-{uuid.uuid4().hex[:8]}", "customer_id": "c", "total": "10.00", "currency": "EUR"}}


def ingest(bootstrap: str, flavor: str, token: str | None, **config: int) -> TestClient:
    """Ingest as it is built, sending ``token`` with every request (none if None)."""
    settings = IngestSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap, flavor=flavor, request_timeout_ms=2000),
                              ingest=IngestConfig(**config))
    return TestClient(build_app(SPEC, settings), headers=bearer(token) if token else None)


@pytest.fixture(autouse=True)
def _no_broker_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)


def test_body_over_the_limit_gets_413_and_nothing_is_produced(broker, tokens: dict[Role, str]) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, tokens[Role.service], max_body_bytes=1024) as client:
        response = client.post("/v1/events/orders", json=[order() for _ in range(20)])
        assert response.status_code == 413
        assert response.json() == {"errors": [{"field": "(body)", "error": f"{len(response.request.content)} bytes; at most 1024"}]}
        assert client.post("/v1/events/orders", json=order()).status_code == 202  # a body under the limit goes through


def test_too_many_events_in_one_request_gets_422(broker, tokens: dict[Role, str]) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, tokens[Role.service], max_events_per_request=2) as client:
        response = client.post("/v1/events/orders", json=[order() for _ in range(3)])
    assert response.status_code == 422
    assert response.json() == {"errors": [{"field": "(body)", "error": "3 events in one request; at most 2"}]}


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"}, {}], ids=["text/plain", "no content type"])
def test_a_body_that_is_not_declared_json_gets_415(broker, headers: dict[str, str], tokens: dict[Role, str]) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, tokens[Role.service]) as client:
        response = client.post("/v1/events/orders", content=json.dumps(order()).encode(), headers=headers)
    assert response.status_code == 415
    assert response.json()["errors"][0]["field"] == "content-type"


def test_a_nul_character_in_an_event_gets_422_naming_the_field(broker, tokens: dict[Role, str]) -> None:
    bad = order()
    bad["data"]["order_id"] = "ord-nul\u0000x"
    with ingest(broker.bootstrap_servers, broker.flavor, tokens[Role.service]) as client:
        single = client.post("/v1/events/orders", json=bad)
        batch = client.post("/v1/events/orders", json=[order(), bad])
    assert single.status_code == 422 and single.json()["errors"] == [
        {"field": "data.order_id", "error": "NUL characters (\\u0000) are not allowed"}]
    assert batch.status_code == 422 and batch.json()["errors"][0]["field"] == "[1].data.order_id"


def test_broker_that_does_not_acknowledge_gets_503_naming_each_event(tokens: dict[Role, str]) -> None:
    own = start_embedded()  # a broker of this test's own, to stop under the app
    try:
        with ingest(own.bootstrap_servers, own.flavor, tokens[Role.service]) as client:
            assert client.post("/v1/events/orders", json=order()).status_code == 202
            own.stop()
            events = [order(), order()]
            response = client.post("/v1/events/orders", json=events)
    finally:
        own.stop()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["accepted"] == [] and body["errors"][0]["field"] == "(broker)"
    assert [f["id"] for f in body["failed"]] == [e["id"] for e in events]
    assert all("broker did not acknowledge" in f["error"] for f in body["failed"])


# --- who may post events -----------------------------------------------------------------

KINDS = ("orders", "prices", "stock", "payments")


def test_every_route_declares_its_role_and_refuses_a_token_without_it(broker, tokens: dict[Role, str]) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, None) as client:
        document = client.app.openapi()
        declared = {(method.upper(), path): requirement["bearer"][0] for path, operations in document["paths"].items()
                    for method, operation in operations.items() for requirement in operation.get("security", [])}
        assert declared == {("POST", "/v1/events/{kind}"): "service"}  # a new route too
        for kind in KINDS:
            assert_unauthenticated(client.post(f"/v1/events/{kind}", json={}))
            for held in (Role.viewer, Role.operator):
                assert_forbidden(client.post(f"/v1/events/{kind}", json={}, headers=bearer(tokens[held])), Role.service, held)
            for held in (Role.service, Role.admin):  # past the door: the empty event is refused for what it is
                response = client.post(f"/v1/events/{kind}", json={}, headers=bearer(tokens[held]))
                assert response.status_code == 422, (kind, held, response.text)
        for path in ("/healthz", "/readyz", "/metrics"):  # the probes stay open
            assert client.get(path).status_code in (200, 503), path


def record_id(value: bytes) -> str | None:
    """A record's envelope id; None for the bad records other tests put on the suite's topics."""
    try:
        return json.loads(value)["id"]
    except (ValueError, KeyError, TypeError):
        return None


def test_a_viewer_is_refused_and_nothing_is_produced_while_a_service_token_is_accepted(
    broker, tokens: dict[Role, str]
) -> None:
    refused, posted, by_admin = order(), order(), order()
    posted["data"]["order_id"] = by_admin["data"]["order_id"] = refused["data"]["order_id"]  # one key, one partition
    with ingest(broker.bootstrap_servers, broker.flavor, None) as client:
        for held in (Role.viewer, Role.operator):
            assert_forbidden(client.post("/v1/events/orders", json=refused, headers=bearer(tokens[held])), Role.service, held)
        accepted = client.post("/v1/events/orders", json=posted, headers=bearer(tokens[Role.service]))
        assert accepted.status_code == 202, accepted.text
        assert [a["id"] for a in accepted.json()["accepted"]] == [posted["id"]]
        assert client.post("/v1/events/orders", json=by_admin, headers=bearer(tokens[Role.admin])).status_code == 202
    records = asyncio.run(read_topic(broker.bootstrap_servers, ORDERS.name, lambda rs: by_admin["id"] in {
        record_id(r.value) for r in rs}))
    ids = [record_id(r.value) for r in records]
    assert posted["id"] in ids and refused["id"] not in ids  # the refused one would have come first on its partition
