"""Webhook endpoints and the delivery ledger, end to end in process: the notifier's app on its own
real database and the suite's broker, its delivery loop running, delivering to a real HTTP receiver
(tests/receiver.py) that verifies every signature with ``standardwebhooks``. The kill -9 test runs
the notifier as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import select, update

from schemas.registry import NOTIFICATIONS
from services.notifier import ledger, webhooks
from services.notifier.app import SPEC
from services.notifier.credentials import CREDENTIALS_KEY_ENV, Cipher
from services.notifier.events import Occurrence
from services.notifier.ledger import DeliveryRow, Trouble
from services.notifier.settings import NotifierConfig, NotifierSettings
from services.notifier.state import state_of
from services.notifier.webhooks import EndpointRow
from storeops.auth import Role
from storeops.db import make_engine, make_sessionmaker
from storeops.service import Runtime, build_app
from storeops.settings import KafkaSettings, OutboundSettings
from storeops_cli.broker import RunningBroker
from tests.helpers import assert_forbidden, bearer, eventually, read_topic
from tests.receiver import Answer, Receiver

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {"retry_schedule_seconds": [0, 0.1, 0.1, 0.1], "delivery_poll_seconds": 0.05,
                        "webhook_timeout_seconds": 5, "claim_seconds": 30}


@pytest.fixture
def database(fresh_database: str) -> str:
    SPEC.migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver.running() as running:
        yield running


@pytest.fixture
def troubles() -> Iterator[list[Trouble]]:
    """What ``ledger.on_trouble`` is told during the test."""
    told: list[Trouble] = []

    async def hear(_session: Any, trouble: Trouble) -> None:
        told.append(trouble)

    ledger.on_trouble.append(hear)
    try:
        yield told
    finally:
        ledger.on_trouble.remove(hear)


class Notifier:
    """The app, its runtime and a client sending an admin's token (admin may do everything)."""

    def __init__(self, app: FastAPI, api: httpx.AsyncClient) -> None:
        self.app, self.api = app, api

    @property
    def rt(self) -> Runtime[Any]:
        return self.app.state.runtime

    async def endpoint(self, receiver: Receiver, **body: Any) -> dict[str, Any]:
        response = await self.api.post("/v1/webhook-endpoints", json={"url": receiver.url, **body})
        assert response.status_code == 201, response.text
        created = response.json()
        receiver.secrets.append(created["secret"])
        return created

    async def occur(self, *types: str, payload: dict[str, Any] | None = None) -> list[Occurrence]:
        occurrences = [Occurrence(t, uuid.uuid4(), payload or {"exception_id": str(uuid.uuid4())}) for t in types]
        async with self.rt.sessions.begin() as session:
            await webhooks.enqueue_occurrences(session, occurrences, datetime.now(UTC))
        state_of(self.rt).deliveries_due.set()
        return occurrences

    async def delivery(self, delivery_id: uuid.UUID | str) -> dict[str, Any]:
        response = await self.api.get(f"/v1/deliveries/{delivery_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def reaches(self, delivery_id: uuid.UUID | str, *states: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            found = await self.delivery(delivery_id)
            return found if found["state"] in states else None
        return await eventually(probe)


def delivery_of(endpoint: dict[str, Any], occurrence: Occurrence) -> uuid.UUID:
    return ledger.delivery_id(f"endpoint:{endpoint['id']}:{occurrence.type}:{occurrence.id}")


@pytest.fixture
def start(database: str, broker: RunningBroker, tmp_path: Path, tokens: dict[Role, str], monkeypatch: pytest.MonkeyPatch):
    """``async with start(**config) as notifier``: the notifier with ``config`` over FAST, 127.0.0.1 allowed."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", CREDENTIALS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)

    @contextlib.asynccontextmanager
    async def started(allow: str = "127.0.0.1/32", **config: Any) -> AsyncIterator[Notifier]:
        settings = NotifierSettings(database_url=database, data_dir=tmp_path, outbound=OutboundSettings(allow_networks=allow),
                                    notifier=NotifierConfig(**{**FAST, **config}),
                                    kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor))
        app = build_app(replace(SPEC, consumes=()), settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier",
                                         headers=bearer(tokens[Role.admin])) as api:
                yield Notifier(app, api)

    return started


@pytest.fixture
async def notifier(start) -> AsyncIterator[Notifier]:
    async with start() as running:
        yield running


# --- endpoints ---------------------------------------------------------------------------------


async def test_an_endpoint_answers_its_secret_once(notifier: Notifier, receiver: Receiver) -> None:
    created = await notifier.endpoint(receiver, event_types=["exception.created"], description="ERP")
    assert created["secret"].startswith("whsec_") and created["enabled"] is True
    assert created["created_by"] == "test-admin"
    one = (await notifier.api.get(f"/v1/webhook-endpoints/{created['id']}")).json()
    listed = (await notifier.api.get("/v1/webhook-endpoints")).json()
    assert [e["id"] for e in listed["items"]] == [created["id"]] and listed["next_cursor"] is None
    for answer in (one, listed):
        assert created["secret"] not in str(answer) and "secret" not in (answer if answer is one else answer["items"][0])
    async with notifier.rt.sessions() as session:
        stored = await session.get(EndpointRow, uuid.UUID(created["id"]))
    assert stored is not None and created["secret"] not in stored.secret  # encrypted at rest


async def test_endpoints_are_paged_by_an_opaque_cursor(notifier: Notifier, receiver: Receiver) -> None:
    made = [(await notifier.endpoint(receiver))["id"] for _ in range(3)]
    first = (await notifier.api.get("/v1/webhook-endpoints", params={"limit": 2})).json()
    rest = (await notifier.api.get("/v1/webhook-endpoints", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [e["id"] for e in first["items"] + rest["items"]] == made and rest["next_cursor"] is None
    garbage = await notifier.api.get("/v1/webhook-endpoints", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert garbage.status_code == 422 and garbage.json()["errors"][0]["field"] == "cursor"


async def test_unknown_event_types_inside_urls_and_unknown_credentials_are_422_naming_the_field(start) -> None:
    async with start(allow="") as notifier:
        response = await notifier.api.post("/v1/webhook-endpoints", json={
            "url": "http://127.0.0.1:9/hook", "event_types": ["exception.created", "order.shipped"],
            "headers_credential": "nope"})
        assert response.status_code == 422
        errors = {e["field"]: e["error"] for e in response.json()["errors"]}
        assert set(errors) == {"event_types[1]", "url", "headers_credential"}
        assert "loopback" in errors["url"] and "order.shipped" in errors["event_types[1]"]
        missing = await notifier.api.patch(f"/v1/webhook-endpoints/{uuid.uuid4()}", json={"enabled": True})
        assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "endpoint_id"


async def test_writes_need_an_admin_and_reads_a_viewer(notifier: Notifier, receiver: Receiver, tokens: dict[Role, str]) -> None:
    viewer = bearer(tokens[Role.viewer])
    refused = await notifier.api.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=viewer)
    assert_forbidden(refused, Role.admin, Role.viewer)
    assert (await notifier.api.get("/v1/delivery-health", headers=viewer)).status_code == 200
    assert (await notifier.api.get("/v1/deliveries", headers=viewer)).status_code == 200


async def test_patch_changes_what_is_given_and_delete_cancels_what_waits(start, receiver: Receiver) -> None:
    async with start(retry_schedule_seconds=[0, 3600]) as notifier:
        created = await notifier.endpoint(receiver)
        changed = (await notifier.api.patch(f"/v1/webhook-endpoints/{created['id']}",
                                            json={"event_types": ["rule_run.failed"], "description": "on call"})).json()
        assert (changed["event_types"], changed["description"], changed["url"]) == (["rule_run.failed"], "on call", receiver.url)
        disabled = (await notifier.api.patch(f"/v1/webhook-endpoints/{created['id']}", json={"enabled": False})).json()
        assert disabled["enabled"] is False and disabled["disabled_reason"] == "disabled by test-admin"
        await notifier.api.patch(f"/v1/webhook-endpoints/{created['id']}", json={"enabled": True})
        await receiver.down()
        [occurrence] = await notifier.occur("rule_run.failed")
        await eventually(lambda: _attempts_at_least(notifier, delivery_of(created, occurrence), 1))
        assert (await notifier.api.delete(f"/v1/webhook-endpoints/{created['id']}")).status_code == 204
        assert (await notifier.api.get(f"/v1/webhook-endpoints/{created['id']}")).status_code == 404
        gone = await notifier.reaches(delivery_of(created, occurrence), "cancelled")
        assert gone["last_error"] == "endpoint deleted by test-admin"


# --- delivering ---------------------------------------------------------------------------------


async def test_an_occurrence_reaches_each_endpoint_that_takes_it_signed(notifier: Notifier, receiver: Receiver) -> None:
    every = await notifier.endpoint(receiver)
    created_only = await notifier.endpoint(receiver, event_types=["exception.created"])
    escalated_only = await notifier.endpoint(receiver, event_types=["exception.escalated"])
    [occurrence] = await notifier.occur("exception.created", payload={"exception_id": "exc-1"})
    for endpoint in (every, created_only):
        done = await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
        [attempt] = done["attempt_log"]
        assert (attempt["outcome"], attempt["status_code"], attempt["response"]) == ("delivered", 200, "ok")
        assert (attempt["state_before"], attempt["state_after"]) == ("delivering", "delivered")
    async with notifier.rt.sessions() as session:
        assert await session.get(DeliveryRow, delivery_of(escalated_only, occurrence)) is None
    assert len(receiver.hits) == 2 and all(h.verified_by for h in receiver.hits)
    hit = receiver.hits[0]
    assert hit.headers["content-type"] == "application/json"
    assert {"type": "exception.created", "data": {"exception_id": "exc-1"}}.items() <= json.loads(hit.body).items()
    async with notifier.rt.sessions.begin() as session:  # the same occurrence again (a redelivered record)
        assert await webhooks.enqueue_occurrences(session, [occurrence], datetime.now(UTC)) == 0


async def test_a_receiver_down_for_a_while_is_retried_on_schedule_and_gets_it_once(notifier: Notifier, receiver: Receiver) -> None:
    endpoint = await notifier.endpoint(receiver)
    await receiver.down()
    [occurrence] = await notifier.occur("exception.created")
    delivery_id = delivery_of(endpoint, occurrence)
    await eventually(lambda: _attempts_at_least(notifier, delivery_id, 2))  # refused connections, retried
    await receiver.up()
    receiver.answer(Answer(503))  # and one more failure once it is back
    done = await notifier.reaches(delivery_id, "delivered")
    log = done["attempt_log"]
    assert [a["outcome"] for a in log[-2:]] == ["retry", "delivered"] and log[-2]["status_code"] == 503
    assert all(a["outcome"] == "retry" and a["status_code"] is None for a in log[:-2])
    assert [a["number"] for a in log] == list(range(1, len(log) + 1)) and len(log) <= len(FAST["retry_schedule_seconds"])
    assert receiver.delivered() == {str(delivery_id): 1} and all(h.webhook_id == str(delivery_id) for h in receiver.hits)
    assert done["delivered_at"] is not None and done["last_error"] is None


async def _attempts_at_least(notifier: Notifier, delivery_id: uuid.UUID, n: int) -> bool:
    return len((await notifier.delivery(delivery_id))["attempt_log"]) >= n


async def test_429_waits_for_its_retry_after(start, receiver: Receiver) -> None:
    async with start(retry_schedule_seconds=[0, 0.1]) as notifier:
        endpoint = await notifier.endpoint(receiver)
        receiver.answer(Answer(429, headers={"Retry-After": "3600"}))
        [occurrence] = await notifier.occur("exception.created")
        waiting = await notifier.reaches(delivery_of(endpoint, occurrence), "pending")
        await eventually(lambda: _attempts_at_least(notifier, delivery_of(endpoint, occurrence), 1))
        waiting = await notifier.delivery(delivery_of(endpoint, occurrence))
        [attempt] = waiting["attempt_log"]
        assert attempt["status_code"] == 429 and attempt["outcome"] == "retry"
        due, at = datetime.fromisoformat(waiting["due_at"]), datetime.fromisoformat(attempt["at"])
        assert due - at >= timedelta(seconds=3600)  # the schedule said 0.1 s; the receiver asked for an hour


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert webhooks.retry_after_seconds("120") == 120
    assert webhooks.retry_after_seconds("Thu, 03 Dec 2026 12:01:00 GMT", now) == 60
    assert webhooks.retry_after_seconds("soon") is None and webhooks.retry_after_seconds(None) is None
    assert ledger.next_wait([0, 5, 300], 1, None) == 5 and ledger.next_wait([0, 5, 300], 1, 30) == 30
    assert ledger.next_wait([0, 5, 300], 3, None) is None


async def test_410_disables_the_endpoint_cancels_what_waits_and_tells(notifier: Notifier, receiver: Receiver,
                                                                    troubles: list[Trouble]) -> None:
    endpoint = await notifier.endpoint(receiver)
    receiver.answer(Answer(410), default=Answer(410, delay=1))
    first, second = await notifier.occur("exception.created", "exception.escalated")
    await notifier.reaches(delivery_of(endpoint, first), "dead", "cancelled")
    await notifier.reaches(delivery_of(endpoint, second), "dead", "cancelled")
    after = (await notifier.api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert after["enabled"] is False and after["disabled_reason"] == "the endpoint answered 410 Gone"
    [disabled] = [t for t in troubles if t.kind == "endpoint_disabled"]
    assert disabled.endpoint_id == uuid.UUID(endpoint["id"]) and disabled.owner == "test-admin"
    health = {i["route"]: i for i in (await notifier.api.get("/v1/delivery-health")).json()["items"]}
    assert health[f"endpoint:{endpoint['id']}"]["state"] == "disabled"
    replay = await notifier.api.post(f"/v1/deliveries/{delivery_of(endpoint, first)}/replay")
    assert replay.status_code == 409 and replay.json()["errors"][0]["field"] == "delivery_id"
    recover = await notifier.api.post(f"/v1/webhook-endpoints/{endpoint['id']}/recover",
                                      json={"since": "2020-01-01T00:00:00Z"})
    assert recover.status_code == 409

    def told(records: list[Any]) -> list[dict[str, Any]]:  # this endpoint's notices on the topic, as downstream reads them
        found = [json.loads(r.value) for r in records]
        return [n for n in found if n["data"]["title"] == f"[High] Webhook endpoint disabled: endpoint:{endpoint['id']}"]
    records = await read_topic(notifier.rt.settings.kafka.bootstrap_servers, NOTIFICATIONS.name, lambda rs: len(told(rs)) >= 2)
    assert sorted(n["data"]["recipient"] for n in told(records)) == ["role:admin", "test-admin"]


async def test_a_stall_times_out_and_is_retried(start, receiver: Receiver) -> None:
    async with start(webhook_timeout_seconds=0.5) as notifier:
        endpoint = await notifier.endpoint(receiver)
        receiver.answer(Answer(200, delay=3))
        [occurrence] = await notifier.occur("exception.created")
        done = await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
        stalled, delivered = done["attempt_log"]
        assert stalled["outcome"] == "retry" and stalled["error"] == "no answer within 0.5 s" and stalled["status_code"] is None
        assert delivered["status_code"] == 200


async def test_a_redirect_is_a_failure_and_is_not_followed(notifier: Notifier, receiver: Receiver) -> None:
    endpoint = await notifier.endpoint(receiver)
    receiver.answer(Answer(302, headers={"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}))
    [occurrence] = await notifier.occur("exception.created")
    done = await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
    assert done["attempt_log"][0]["status_code"] == 302 and done["attempt_log"][0]["outcome"] == "retry"
    assert [h.path for h in receiver.hits] == ["/hook", "/hook"]


async def test_exhausted_deliveries_die_tell_and_replay_with_the_same_webhook_id(start, receiver: Receiver,
                                                                               troubles: list[Trouble]) -> None:
    async with start(retry_schedule_seconds=[0, 0.1]) as notifier:
        endpoint = await notifier.endpoint(receiver)
        receiver.answer(default=Answer(500, body="x" * 5000))
        [occurrence] = await notifier.occur("exception.created")
        delivery_id = delivery_of(endpoint, occurrence)
        dead = await notifier.reaches(delivery_id, "dead")
        assert [a["outcome"] for a in dead["attempt_log"]] == ["retry", "retry"] and dead["last_error"] == "answered 500"
        assert len(dead["attempt_log"][0]["response"].encode()) == 1024  # the first KiB of the answer
        assert [t.delivery_id for t in troubles if t.kind == "delivery_dead"] == [delivery_id]
        listed = (await notifier.api.get("/v1/deliveries", params={"state": "dead", "endpoint_id": endpoint["id"]})).json()
        assert [d["id"] for d in listed["items"]] == [str(delivery_id)]

        receiver.answer(default=Answer(200))
        replayed = await notifier.api.post(f"/v1/deliveries/{delivery_id}/replay")
        assert replayed.status_code == 202 and replayed.json()["state"] == "pending"
        done = await notifier.reaches(delivery_id, "delivered")
        assert [a["number"] for a in done["attempt_log"]] == [1, 2, 3]
        assert {h.webhook_id for h in receiver.hits} == {str(delivery_id)}
        again = await notifier.api.post(f"/v1/deliveries/{uuid.uuid4()}/replay")
        assert again.status_code == 404


async def test_recover_sends_an_endpoints_dead_deliveries_of_a_range_again(start, receiver: Receiver) -> None:
    async with start(retry_schedule_seconds=[0]) as notifier:
        endpoint = await notifier.endpoint(receiver)
        receiver.answer(default=Answer(500))
        occurrences = await notifier.occur("exception.created", "exception.woke")
        for occurrence in occurrences:
            await notifier.reaches(delivery_of(endpoint, occurrence), "dead")
        receiver.answer(default=Answer(200))
        path = f"/v1/webhook-endpoints/{endpoint['id']}/recover"
        none = await notifier.api.post(path, json={"since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"})
        assert none.json() == {"recovered": 0, "missed": 0}
        backwards = await notifier.api.post(path, json={"since": "2030-01-01T00:00:00Z", "until": "2020-01-02T00:00:00Z"})
        assert backwards.status_code == 422 and backwards.json()["errors"][0]["field"] == "until"
        again = await notifier.api.post(path, json={"since": "2020-01-01T00:00:00Z"})
        assert again.json() == {"recovered": 2, "missed": 0}  # each had a delivery: resent, none missed
        for occurrence in occurrences:
            await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")


async def test_recover_sends_what_an_endpoint_never_had_a_delivery_of_once(notifier: Notifier, receiver: Receiver) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    created, escalated = await notifier.occur("exception.created", "exception.escalated",
                                              payload={"exception_id": "exc-7"})  # no endpoint exists yet
    late = await notifier.endpoint(receiver, event_types=["exception.created"])  # added afterwards
    path = f"/v1/webhook-endpoints/{late['id']}/recover"
    without = await notifier.api.post(path, json={"since": before.isoformat(), "missed": False})
    assert without.json() == {"recovered": 0, "missed": 0}
    answer = await notifier.api.post(path, json={"since": before.isoformat()})
    assert answer.status_code == 200 and answer.json() == {"recovered": 0, "missed": 1}  # its type only
    done = await notifier.reaches(delivery_of(late, created), "delivered")
    async with notifier.rt.sessions() as session:
        assert await session.get(DeliveryRow, delivery_of(late, escalated)) is None
    [hit] = receiver.hits
    assert hit.verified_by == [0] and hit.webhook_id == done["id"]
    body = json.loads(hit.body)
    assert (body["type"], body["data"]) == ("exception.created", {"exception_id": "exc-7"})
    assert datetime.fromisoformat(body["timestamp"]) < datetime.fromisoformat(done["created_at"])  # as it happened
    again = await notifier.api.post(path, json={"since": before.isoformat()})
    assert again.json() == {"recovered": 0, "missed": 0}  # it has a delivery now
    outside = await notifier.api.post(path, json={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
                                                  "until": (datetime.now(UTC) + timedelta(hours=2)).isoformat()})
    assert outside.json() == {"recovered": 0, "missed": 0}
    assert len(receiver.hits) == 1


async def test_messages_past_their_retention_are_forgotten_and_none_kept_at_zero(start, receiver: Receiver) -> None:
    async with start(message_retention_days=1) as notifier:
        [old, recent] = await notifier.occur("exception.created", "exception.woke")
        async with notifier.rt.sessions.begin() as session:
            await session.execute(update(webhooks.MessageRow).where(webhooks.MessageRow.occurrence_id == old.id)
                                  .values(created_at=datetime.now(UTC) - timedelta(days=2)))
        await webhooks.purge_messages(notifier.rt)
        async with notifier.rt.sessions() as session:
            kept = (await session.scalars(select(webhooks.MessageRow.occurrence_id))).all()
        assert kept == [recent.id]
    async with start(message_retention_days=0) as notifier:
        occurrence = Occurrence("exception.created", uuid.uuid4(), {})
        async with notifier.rt.sessions.begin() as session:
            await webhooks.enqueue_occurrences(session, [occurrence], datetime.now(UTC), keep_messages=False)
        await webhooks.purge_messages(notifier.rt)  # retention 0: nothing to purge, and no error
        async with notifier.rt.sessions() as session:
            kept = (await session.scalars(select(webhooks.MessageRow.occurrence_id))).all()
        assert occurrence.id not in kept and kept == [recent.id]


async def test_an_endpoint_failing_for_the_configured_time_is_disabled(start, receiver: Receiver,
                                                                      troubles: list[Trouble]) -> None:
    async with start(endpoint_disable_after_seconds=0.001, retry_schedule_seconds=[0, 0.1, 0.1]) as notifier:
        endpoint = await notifier.endpoint(receiver)
        receiver.answer(default=Answer(500))
        [occurrence] = await notifier.occur("exception.created")
        await notifier.reaches(delivery_of(endpoint, occurrence), "cancelled", "dead")
        after = (await notifier.api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
        assert after["enabled"] is False and after["disabled_reason"].startswith("failing since ")
        assert [t.kind for t in troubles].count("endpoint_disabled") == 1
        enabled = (await notifier.api.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": True})).json()
        assert enabled["enabled"] is True and enabled["failing_since"] is None and enabled["disabled_reason"] is None


async def test_during_a_rotation_both_secrets_sign(notifier: Notifier, receiver: Receiver) -> None:
    endpoint = await notifier.endpoint(receiver)
    rotated = (await notifier.api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
    receiver.secrets.append(rotated["secret"])
    [occurrence] = await notifier.occur("exception.created")
    await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
    [hit] = receiver.hits
    assert hit.verified_by == [0, 1]  # the old secret's signature and the new one's, each verified alone
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert rotated["secret"] not in str((await notifier.api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json())


async def test_a_rotation_without_grace_signs_with_the_new_secret_only(start, receiver: Receiver) -> None:
    async with start(secret_rotation_grace_seconds=0) as notifier:
        endpoint = await notifier.endpoint(receiver)
        rotated = (await notifier.api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")).json()
        receiver.secrets.append(rotated["secret"])
        [occurrence] = await notifier.occur("exception.created")
        await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
        assert receiver.hits[0].verified_by == [1]


async def test_an_address_refused_at_send_time_fails_with_the_reason(notifier: Notifier, receiver: Receiver) -> None:
    # Saved when it was allowed (or a name that resolved elsewhere then): 127.0.0.2 is outside the allow-list now.
    endpoint = await notifier.endpoint(receiver)
    async with notifier.rt.sessions.begin() as session:
        row = await session.get(EndpointRow, uuid.UUID(endpoint["id"]))
        assert row is not None
        row.url = f"http://127.0.0.2:{receiver.port}/hook"
    [occurrence] = await notifier.occur("exception.created")
    dead = await notifier.reaches(delivery_of(endpoint, occurrence), "dead")
    assert dead["attempt_log"][0]["outcome"] == "failed" and "loopback" in dead["last_error"]
    assert receiver.hits == []


async def test_extra_headers_come_from_a_credential_and_a_bad_one_fails(notifier: Notifier, receiver: Receiver) -> None:
    put = await notifier.api.put("/v1/credentials/erp-headers", json={"value": '{"X-Api-Key": "k-123", "webhook-id": "x"}'})
    assert put.status_code == 201, put.text
    endpoint = await notifier.endpoint(receiver, headers_credential="erp-headers")
    [occurrence] = await notifier.occur("exception.created")
    await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
    assert receiver.hits[0].headers["x-api-key"] == "k-123"
    assert receiver.hits[0].headers["webhook-id"] == str(delivery_of(endpoint, occurrence))  # never overridden
    await notifier.api.put("/v1/credentials/erp-headers", json={"value": "not json"})
    [broken] = await notifier.occur("exception.created")
    dead = await notifier.reaches(delivery_of(endpoint, broken), "dead")
    assert "not a JSON object" in dead["last_error"]


async def test_a_rules_webhook_request_goes_out_through_the_ledger_with_its_credential(notifier: Notifier,
                                                                                      receiver: Receiver) -> None:
    assert (await notifier.api.put("/v1/credentials/shop-api", json={"value": "Bearer s3cret"})).status_code == 201
    request_id = str(uuid.uuid4())
    handed = await notifier.api.post("/v1/requests", json={"requests": [{"request_id": request_id, "message": {
        "channel": "webhook", "method": "PUT", "url": receiver.url, "headers": {"X-Rule": "vip"}, "body": "{\"a\": 1}",
        "credential": "shop-api"}}]})
    assert handed.json()["results"][0]["status"] == "accepted"
    delivery_id = ledger.delivery_id(f"request:{request_id}")
    done = await notifier.reaches(delivery_id, "delivered")
    assert done["route"] == "url:127.0.0.1" and done["payload"]["kind"] == "request"
    [hit] = receiver.hits
    assert (hit.method, hit.body, hit.headers["authorization"], hit.headers["x-rule"]) == ("PUT", b'{"a": 1}', "Bearer s3cret", "vip")
    assert hit.headers["webhook-id"] == str(delivery_id)
    stored = (await notifier.api.get(f"/v1/requests/{request_id}")).json()
    assert (stored["status"], stored["attempts"]) == ("delivered", 1)
    assert "s3cret" not in str(done)


async def test_an_email_request_waits_in_the_ledger_for_its_sender(notifier: Notifier) -> None:
    request_id = str(uuid.uuid4())
    await notifier.api.post("/v1/requests", json={"requests": [{"request_id": request_id, "message": {
        "channel": "email", "to": ["ops@shop.example"], "subject": "Big order", "text": "ord-1"}}]})
    waiting = await notifier.delivery(ledger.delivery_id(f"request:{request_id}"))
    assert (waiting["channel"], waiting["route"], waiting["recipient"]) == ("email", "smtp:unset", "ops@shop.example")
    assert (waiting["payload"]["subject"], waiting["payload"]["to"]) == ("Big order", ["ops@shop.example"])
    async with notifier.rt.sessions.begin() as session:
        assert await ledger.cancel(session, [f"request:{request_id}"]) == 1
    assert (await notifier.delivery(waiting["id"]))["state"] == "cancelled"


async def test_delivery_health_per_route_as_an_api_and_as_metrics(notifier: Notifier, receiver: Receiver) -> None:
    good, bad = await notifier.endpoint(receiver), await notifier.endpoint(receiver)
    await notifier.api.patch(f"/v1/webhook-endpoints/{bad['id']}", json={"url": f"http://127.0.0.1:{_free_port()}/x"})
    [occurrence] = await notifier.occur("exception.created")
    await notifier.reaches(delivery_of(good, occurrence), "delivered")
    await eventually(lambda: _attempts_at_least(notifier, delivery_of(bad, occurrence), 2))
    items = {i["route"]: i for i in (await notifier.api.get("/v1/delivery-health")).json()["items"]}
    healthy, failing = items[f"endpoint:{good['id']}"], items[f"endpoint:{bad['id']}"]
    assert (healthy["state"], healthy["failure_streak"], healthy["queue_depth"]) == ("healthy", 0, 0)
    assert healthy["last_success_at"] is not None
    assert failing["state"] == "failing" and failing["failure_streak"] >= 2 and failing["last_success_at"] is None
    route = f"endpoint:{bad['id']}"
    assert REGISTRY.get_sample_value("storeops_notifier_route_state", {"route": route, "state": "failing"}) == 1
    assert (REGISTRY.get_sample_value("storeops_notifier_route_failure_streak", {"route": route}) or 0) >= 2
    assert (REGISTRY.get_sample_value("storeops_notifier_delivery_attempts_total",
                                      {"channel": "webhook", "outcome": "delivered"}) or 0) >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_deliveries_are_listed_newest_first_by_cursor(notifier: Notifier, receiver: Receiver) -> None:
    endpoint = await notifier.endpoint(receiver)
    occurrences = []
    for _ in range(3):
        occurrences += await notifier.occur("exception.created")
    ids = [str(delivery_of(endpoint, o)) for o in occurrences][::-1]
    first = (await notifier.api.get("/v1/deliveries", params={"limit": 2, "channel": "webhook"})).json()
    rest = (await notifier.api.get("/v1/deliveries", params={"limit": 2, "channel": "webhook",
                                                             "cursor": first["next_cursor"]})).json()
    assert [d["id"] for d in first["items"] + rest["items"]] == ids and rest["next_cursor"] is None
    assert (await notifier.api.get(f"/v1/deliveries/{uuid.uuid4()}")).status_code == 404


# --- sharing, crashes ---------------------------------------------------------------------------


async def test_two_loops_share_the_work_and_send_nothing_twice(start, receiver: Receiver) -> None:
    async with start(delivery_batch=5, delivery_concurrency=5) as notifier:
        endpoint = await notifier.endpoint(receiver)
        occurrences = await notifier.occur(*["exception.created"] * 40)
        second = ledger.Loop(notifier.rt)  # another process's loop: its own worker name, its own claims
        racing = asyncio.create_task(_drive(second))
        try:
            for occurrence in occurrences:
                await notifier.reaches(delivery_of(endpoint, occurrence), "delivered")
        finally:
            racing.cancel()
        delivered = receiver.delivered()
        assert len(delivered) == 40 and receiver.duplicates() == 0


async def _drive(loop: ledger.Loop) -> None:
    while True:
        await loop.claim_some()
        await asyncio.sleep(0.01)


async def test_a_claim_left_by_a_dead_process_is_taken_over_with_the_same_id(start, receiver: Receiver) -> None:
    async with start(claim_seconds=0.5) as notifier:
        endpoint = await notifier.endpoint(receiver)
        occurrence = Occurrence("exception.created", uuid.uuid4(), {})
        delivery_id = delivery_of(endpoint, occurrence)
        # a process that claimed it and died before recording anything (committed with the enqueue, so
        # this process's loop never saw it pending)
        async with notifier.rt.sessions.begin() as session:
            await webhooks.enqueue_occurrences(session, [occurrence], datetime.now(UTC))
            row = await session.get(DeliveryRow, delivery_id)
            assert row is not None
            row.state, row.claimed_by = "delivering", "dead-process"
            row.claimed_until = datetime.now(UTC) + timedelta(seconds=0.5)
        done = await notifier.reaches(delivery_id, "delivered")
        assert receiver.delivered() == {str(delivery_id): 1} and len(done["attempt_log"]) >= 1


async def test_kill_9_mid_delivery_loses_nothing_and_resends_only_with_the_same_id(
        database: str, broker: RunningBroker, tmp_path: Path, receiver: Receiver) -> None:
    key = Fernet.generate_key().decode()
    env = {**os.environ, **broker.env(), "DATABASE_URL": database, "STOREOPS_DATA_DIR": str(tmp_path),
           CREDENTIALS_KEY_ENV: key, "STOREOPS_OUTBOUND__ALLOW_NETWORKS": "127.0.0.1/32",
           "STOREOPS_NOTIFIER__RETRY_SCHEDULE_SECONDS": "[0, 0.2, 0.2, 0.2, 0.2, 0.2]",
           "STOREOPS_NOTIFIER__DELIVERY_POLL_SECONDS": "0.05", "STOREOPS_NOTIFIER__CLAIM_SECONDS": "1",
           "STOREOPS_NOTIFIER__DELIVERY_CONCURRENCY": "5"}
    cipher = Cipher(SecretStr(key), tmp_path / "unused.key")
    endpoint_id, secret = uuid.uuid4(), webhooks.new_secret()
    receiver.secrets.append(secret)
    now = datetime.now(UTC)
    engine = make_engine(database)
    try:
        sessions = make_sessionmaker(engine)
        async with sessions.begin() as session:
            session.add(EndpointRow(id=endpoint_id, url=receiver.url, description="", event_types=[],
                                    secret=cipher.encrypt(secret), enabled=True, created_by="test", created_at=now,
                                    updated_at=now))
            occurrences = [Occurrence("exception.created", uuid.uuid4(), {"n": i}) for i in range(20)]
            await webhooks.enqueue_occurrences(session, occurrences, now)
        receiver.answer(default=Answer(200, delay=0.3))  # slow answers: the kill lands mid-delivery
        first = _serve_notifier(env, tmp_path / "first.log")
        try:
            await eventually(lambda: _some_arrived(receiver, 3), timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        second = _serve_notifier(env, tmp_path / "second.log")
        try:
            async def all_delivered() -> bool:
                async with sessions() as session:
                    states = (await session.scalars(select(DeliveryRow.state))).all()
                return len(states) == 20 and set(states) == {"delivered"}
            await eventually(all_delivered, timeout=90)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        await engine.dispose()
    ids = {str(ledger.delivery_id(f"endpoint:{endpoint_id}:exception.created:{o.id}")) for o in occurrences}
    delivered = receiver.delivered()
    assert set(delivered) == ids  # every message, and no message that is not one
    assert all(h.verified_by for h in receiver.hits)
    resent = receiver.duplicates()
    print(f"\nkill -9: {len(ids)} messages, {len(receiver.hits)} requests, {resent} resent with the same webhook-id "
          f"(0 once the receiver dedupes by webhook-id)")
    assert resent <= 5  # at most what was in flight when it died (delivery_concurrency)


def _serve_notifier(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "storeops_cli.cli", "serve", "notifier", "--port", str(_free_port())],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def _some_arrived(receiver: Receiver, n: int) -> bool:
    return len(receiver.hits) >= n


# --- the batched recorder ---------------------------------------------------------------------------


async def _claimed(notifier: Notifier, key: str, route: str, *, by: str, attempts: int = 0,
                   state: str = "delivering", numbers: int = 0) -> DeliveryRow:
    """A row as a claim leaves it (held by ``by`` for an hour: the running loop leaves it alone), with
    ``numbers`` attempts already logged."""
    now = datetime.now(UTC)
    async with notifier.rt.sessions.begin() as session:
        await ledger.enqueue(session, channel="webhook", key=key, route=route, payload={"url": "http://x.example/"}, now=now,
                             due_at=now + timedelta(hours=1))
        row = await session.get(DeliveryRow, ledger.delivery_id(key))
        assert row is not None
        row.state, row.attempts, row.claimed_by, row.claimed_until = state, attempts, by, now + timedelta(hours=1)
        for number in range(1, numbers + 1):
            session.add(ledger.AttemptRow(delivery_id=row.id, number=number, at=now, outcome="retry", status_code=503,
                                          latency_ms=1, response=None, error="answered 503", state_before="delivering",
                                          state_after="pending"))
    async with notifier.rt.sessions() as session:
        claimed = await session.get(DeliveryRow, row.id)
    assert claimed is not None
    return claimed


async def test_a_batch_mixing_outcomes_on_one_route_records_each_and_sums_the_health(
        notifier: Notifier, troubles: list[Trouble]) -> None:
    route, worker = f"url:batch-{uuid.uuid4().hex[:8]}.example", "this-worker"
    delivered = await _claimed(notifier, f"b:{uuid.uuid4()}", route, by=worker)
    retried = await _claimed(notifier, f"b:{uuid.uuid4()}", route, by=worker, attempts=1, numbers=2)  # a replay's 2nd round
    exhausted = await _claimed(notifier, f"b:{uuid.uuid4()}", route, by=worker, attempts=3, numbers=3)
    failed = await _claimed(notifier, f"b:{uuid.uuid4()}", route, by=worker)
    config = NotifierConfig(**FAST)
    batch = [(delivered, ledger.Attempt("delivered", 200, 5, response="ok")),
             (retried, ledger.Attempt("retry", 429, 5, "answered 429", retry_after=3600)),
             (exhausted, ledger.Attempt("retry", 500, 5, "answered 500")),
             (failed, ledger.Attempt("failed", None, 5, "refused: loopback"))]
    async with notifier.rt.sessions.begin() as session:
        states = await ledger.record_batch(session, batch, datetime.now(UTC), worker, config)
    assert states == ["delivered", "pending", "dead", "dead"]
    after = {row.id: await notifier.delivery(row.id) for row, _ in batch}
    assert [after[r.id]["state"] for r, _ in batch] == states
    assert [[a["number"] for a in after[r.id]["attempt_log"]] for r, _ in batch] == [[1], [1, 2, 3], [1, 2, 3, 4], [1]]
    waiting = after[retried.id]
    assert datetime.fromisoformat(waiting["due_at"]) - datetime.fromisoformat(waiting["attempt_log"][-1]["at"]) >= timedelta(hours=1)
    assert waiting["last_error"] == "answered 429" and after[delivered.id]["delivered_at"] is not None
    async with notifier.rt.sessions() as session:
        rows = {r.id: await session.get(DeliveryRow, r.id) for r, _ in batch}
    assert [(rows[r.id].attempts, rows[r.id].claimed_by) for r, _ in batch] == [(1, None), (2, None), (4, None), (1, None)]
    assert {t.delivery_id for t in troubles if t.kind == "delivery_dead"} == {exhausted.id, failed.id}
    health = {i["route"]: i for i in (await notifier.api.get("/v1/delivery-health")).json()["items"]}[route]
    # finished in this order: a success, then three failures: the streak counts those after the success
    assert (health["state"], health["failure_streak"]) == ("failing", 3)
    assert health["last_success_at"] is not None and health["failing_since"] is not None
    again = await _claimed(notifier, f"b:{uuid.uuid4()}", route, by=worker)
    async with notifier.rt.sessions.begin() as session:
        await ledger.record_batch(session, [(again, ledger.Attempt("delivered", 200, 5))], datetime.now(UTC), worker, config)
    health = {i["route"]: i for i in (await notifier.api.get("/v1/delivery-health")).json()["items"]}[route]
    assert (health["state"], health["failure_streak"], health["failing_since"]) == ("healthy", 0, None)


async def test_a_batch_leaves_a_row_whose_claim_was_lost_meanwhile_as_it_is(notifier: Notifier) -> None:
    route, worker = f"url:lost-{uuid.uuid4().hex[:8]}.example", "this-worker"
    kept = await _claimed(notifier, f"l:{uuid.uuid4()}", route, by=worker)
    taken = await _claimed(notifier, f"l:{uuid.uuid4()}", route, by="another-process", numbers=1)  # taken over
    cancelled = await _claimed(notifier, f"l:{uuid.uuid4()}", route, by=worker, state="cancelled")
    batch = [(row, ledger.Attempt("delivered", 200, 5)) for row in (kept, taken, cancelled)]
    async with notifier.rt.sessions.begin() as session:
        states = await ledger.record_batch(session, batch, datetime.now(UTC), worker, NotifierConfig(**FAST))
    assert states == ["delivered", None, None]
    async with notifier.rt.sessions() as session:
        rows = [await session.get(DeliveryRow, row.id) for row in (kept, taken, cancelled)]
    assert [(r.state, r.claimed_by, r.attempts) for r in rows if r is not None] == [
        ("delivered", None, 1), ("delivering", "another-process", 0), ("cancelled", worker, 0)]
    logs = [(await notifier.delivery(row.id))["attempt_log"] for row in (kept, taken, cancelled)]
    # every attempt is on record, the lost ones with the state the row was found in
    assert [[(a["number"], a["state_after"]) for a in log] for log in logs] == [
        [(1, "delivered")], [(1, "pending"), (2, "delivering")], [(1, "cancelled")]]
