"""Ingest's refusals that need a running app: a body over the limit, and a broker that does not acknowledge."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from services.ingest.app import SPEC
from services.ingest.settings import IngestConfig, IngestSettings
from storeops.service import build_app
from storeops.settings import KafkaSettings
from storeops_cli.broker import start_embedded

pytestmark = pytest.mark.integration


def order() -> dict:
    return {"id": str(uuid.uuid4()), "type": "OrderPlaced",
            "data": {"order_id": f"ord-{uuid.uuid4().hex[:8]}", "customer_id": "c", "total": "10.00", "currency": "EUR"}}


def ingest(bootstrap: str, flavor: str, **config: int) -> TestClient:
    settings = IngestSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap, flavor=flavor, request_timeout_ms=2000),
                              ingest=IngestConfig(**config))
    return TestClient(build_app(SPEC, settings))


@pytest.fixture(autouse=True)
def _no_broker_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)


def test_body_over_the_limit_gets_413_and_nothing_is_produced(broker) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, max_body_bytes=1024) as client:
        response = client.post("/v1/events/orders", json=[order() for _ in range(20)])
        assert response.status_code == 413
        assert response.json() == {"errors": [{"field": "(body)", "error": f"{len(response.request.content)} bytes; at most 1024"}]}
        assert client.post("/v1/events/orders", json=order()).status_code == 202  # a body under the limit goes through


def test_too_many_events_in_one_request_gets_422(broker) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, max_events_per_request=2) as client:
        response = client.post("/v1/events/orders", json=[order() for _ in range(3)])
    assert response.status_code == 422
    assert response.json() == {"errors": [{"field": "(body)", "error": "3 events in one request; at most 2"}]}


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"}, {}], ids=["text/plain", "no content type"])
def test_a_body_that_is_not_declared_json_gets_415(broker, headers: dict[str, str]) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor) as client:
        response = client.post("/v1/events/orders", content=json.dumps(order()).encode(), headers=headers)
    assert response.status_code == 415
    assert response.json()["errors"][0]["field"] == "content-type"


def test_a_nul_character_in_an_event_gets_422_naming_the_field(broker) -> None:
    bad = order()
    bad["data"]["order_id"] = "ord-nul\u0000x"
    with ingest(broker.bootstrap_servers, broker.flavor) as client:
        single = client.post("/v1/events/orders", json=bad)
        batch = client.post("/v1/events/orders", json=[order(), bad])
    assert single.status_code == 422 and single.json()["errors"] == [
        {"field": "data.order_id", "error": "NUL characters (\\u0000) are not allowed"}]
    assert batch.status_code == 422 and batch.json()["errors"][0]["field"] == "[1].data.order_id"


def test_broker_that_does_not_acknowledge_gets_503_naming_each_event() -> None:
    own = start_embedded()  # a broker of this test's own, to stop under the app
    try:
        with ingest(own.bootstrap_servers, own.flavor) as client:
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
