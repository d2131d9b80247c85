"""Ingest's refusals that need a running app: a body over the limit, and a broker that does not acknowledge."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from services.ingest.app import SPEC
from services.ingest.settings import IngestConfig, IngestSettings
from storeops_cli.broker import start_embedded
from storeops.service import build_app
from storeops.settings import KafkaSettings

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
        assert response.json()["rejected"][0]["errors"][0] == {"field": "(body)", "error": f"{len(response.request.content)} bytes; at most 1024"}
        assert client.post("/v1/events/orders", json=order()).status_code == 202  # a body under the limit goes through


def test_too_many_events_in_one_request_gets_422(broker) -> None:
    with ingest(broker.bootstrap_servers, broker.flavor, max_events_per_request=2) as client:
        response = client.post("/v1/events/orders", json=[order() for _ in range(3)])
    assert response.status_code == 422
    assert response.json()["rejected"][0]["errors"][0]["error"] == "3 events in one request; at most 2"


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
    assert body["accepted"] == []
    assert [f["id"] for f in body["failed"]] == [e["id"] for e in events]
    assert all("broker did not acknowledge" in f["error"] for f in body["failed"])
