"""The notifier delivering, over the real processes: a broker and a database of their own, the
exceptions and notifier services, a real SMTP server (aiosmtpd) and a real webhook receiver that
verifies every Standard Webhooks signature.

An exception raised through the exceptions API reaches the notifier over its topic; a webhook
endpoint that takes ``exception.created`` gets it signed, a person subscribed by e-mail gets the
mail. Then the hard parts: the receiver down for a while (retried on the schedule, received once),
the SMTP server down (queued, sent once when it is back), the notifier killed with SIGKILL in the
middle of deliveries (nothing lost; a resend carries the same ``webhook-id``, so a receiver that
dedupes sees each message once), and a live-stream client that loses its connection and comes back
with ``Last-Event-ID`` (every notification exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from storeops_cli.bench.stack import BenchStack
from tests.helpers import eventually, postgres_database
from tests.receiver import Answer, Receiver
from tests.smtp import SmtpServer, make_certificate

pytestmark = pytest.mark.e2e

ADDRESS = "dana@shop.example"
# fast for a test: the second attempt after 1 s, then 1 s, 2 s...; Svix' schedule is the default
SCHEDULE = [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    server = SmtpServer(make_certificate(tmp_path_factory.mktemp("smtp"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(database_url: str, smtp: SmtpServer) -> Iterator[BenchStack]:
    env = {"STOREOPS_NOTIFIER__SMTP_URL": smtp.url, "STOREOPS_NOTIFIER__MAIL_FROM": "storeops <ops@shop.example>",
           "STOREOPS_NOTIFIER__RETRY_SCHEDULE_SECONDS": json.dumps(SCHEDULE),
           "STOREOPS_NOTIFIER__DELIVERY_POLL_SECONDS": "0.2",
           "STOREOPS_NOTIFIER__CLAIM_SECONDS": "3",  # a killed process's claims are taken over soon
           "STOREOPS_OUTBOUND__ALLOW_NETWORKS": "127.0.0.1/32"}  # the receiver, explicitly
    with contextlib.ExitStack() as cleanup:
        url = cleanup.enter_context(postgres_database(database_url, "storeops_delivery")) \
            if database_url.startswith("postgresql") else None
        running = BenchStack.start(env_extra=env, only=("exceptions", "notifier"), database_url=url, live_seeds=False)
        cleanup.callback(running.stop)
        yield running
        died = [c for c in running.children.values() if c.proc and c.proc.poll() is not None]
        assert not died, "\n".join(f"{c.name} died ({c.proc.returncode}):\n{c.log_tail()}" for c in died if c.proc)


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver.running() as running:
        yield running


@pytest.fixture(scope="module")
async def endpoint(stack: BenchStack, receiver: Receiver) -> dict[str, Any]:
    async with stack.async_client("notifier") as http:
        created = await http.post("/v1/webhook-endpoints", json={"url": receiver.url, "event_types": ["exception.created"],
                                                                 "description": "the store's ticketing"})
        assert created.status_code == 201, created.text
        subscribed = await http.post("/v1/subscriptions", json={"event_types": ["exception.created"],
                                                                "channel": "email", "address": ADDRESS})
        assert subscribed.status_code == 201, subscribed.text
    body: dict[str, Any] = created.json()
    receiver.secrets = [body["secret"]]
    return body


async def raise_exceptions(stack: BenchStack, count: int = 1, severity: str = "High") -> list[str]:
    """``count`` exceptions raised through the exceptions API; their ids."""
    ids = []
    async with stack.async_client("exceptions") as http:
        for _ in range(count):
            created = await http.post("/v1/exceptions", json={
                "type": "address_problem", "severity": severity, "title": f"zip code missing {uuid.uuid4().hex[:8]}",
                "entity_type": "order", "entity_id": f"ord-{uuid.uuid4().hex[:10]}"})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
    return ids


def hooks_for(receiver: Receiver, exception_ids: list[str]) -> dict[str, list[Any]]:
    """The signed requests that carried each exception's creation, by exception id."""
    found: dict[str, list[Any]] = {i: [] for i in exception_ids}
    for hit in receiver.verified():
        payload = json.loads(hit.body)
        key = payload["data"].get("exception_id")
        if payload["type"] == "exception.created" and key in found and 200 <= hit.status < 300:
            found[key].append(hit)
    return found


def mails_for(smtp: SmtpServer, exception_ids: list[str], titles: dict[str, str]) -> dict[str, int]:
    return {i: sum(1 for m in smtp.received() if titles[i] in str(m.message["Subject"])) for i in exception_ids}


async def titles_of(stack: BenchStack, exception_ids: list[str]) -> dict[str, str]:
    async with stack.async_client("exceptions") as http:
        return {i: (await http.get(f"/v1/exceptions/{i}")).json()["title"] for i in exception_ids}


async def test_an_exception_reaches_the_receiver_signed_and_the_subscriber_by_e_mail(
        stack: BenchStack, receiver: Receiver, smtp: SmtpServer, endpoint: dict[str, Any]) -> None:
    [exception_id] = await raise_exceptions(stack)
    titles = await titles_of(stack, [exception_id])
    [hit] = (await eventually(lambda: _all_there(hooks_for(receiver, [exception_id])), timeout=60))[exception_id]
    assert hit.verified_by == [0] and hit.headers["webhook-id"] and hit.headers["webhook-signature"].startswith("v1,")
    await eventually(lambda: _async(all(mails_for(smtp, [exception_id], titles).values())), timeout=60)
    [message] = [m for m in smtp.received() if titles[exception_id] in str(m.message["Subject"])]
    assert message.rcpt_tos == [ADDRESS] and message.message["From"] == "storeops <ops@shop.example>"
    assert message.message["Message-ID"] and message.message.get_body(("plain",)) is not None
    async with stack.async_client("notifier") as http:
        routes = {r["route"]: r for r in (await http.get("/v1/delivery-health")).json()["items"]}
    assert routes[f"endpoint:{endpoint['id']}"]["state"] == "healthy"
    assert routes[f"smtp:127.0.0.1:{smtp.port}"]["state"] == "healthy"


async def test_a_receiver_down_for_a_while_is_retried_on_schedule_and_gets_each_message_once(
        stack: BenchStack, receiver: Receiver, endpoint: dict[str, Any]) -> None:
    await receiver.down()
    ids = await raise_exceptions(stack, 3)
    async with stack.async_client("notifier") as http:
        async def retried() -> bool:
            page = (await http.get("/v1/deliveries", params={"endpoint_id": endpoint["id"], "state": "pending"})).json()
            return sum(1 for d in page["items"] if d["attempts"] >= 2) >= 3
        await eventually(retried, timeout=60)
    await receiver.up()
    found = await eventually(lambda: _all_there(hooks_for(receiver, ids)), timeout=60)
    assert {i: len(h) for i, h in found.items()} == dict.fromkeys(ids, 1)


async def test_smtp_down_queues_the_mail_and_sends_it_once_when_it_is_back(
        stack: BenchStack, smtp: SmtpServer, endpoint: dict[str, Any]) -> None:
    smtp.stop()
    ids = await raise_exceptions(stack, 2)
    titles = await titles_of(stack, ids)
    async with stack.async_client("notifier") as http:
        async def waiting() -> bool:
            page = (await http.get("/v1/deliveries", params={"channel": "email", "state": "pending"})).json()
            return sum(1 for d in page["items"] if d["attempts"] >= 1) >= 2
        await eventually(waiting, timeout=60)
    smtp.start()
    await eventually(lambda: _async(all(mails_for(smtp, ids, titles).values())), timeout=60)
    await asyncio.sleep(3)  # time for a second copy to arrive, if one were going to
    assert mails_for(smtp, ids, titles) == dict.fromkeys(ids, 1)


async def test_kill_9_of_the_notifier_mid_delivery_loses_nothing_and_a_resend_keeps_its_webhook_id(
        stack: BenchStack, receiver: Receiver, endpoint: dict[str, Any]) -> None:
    receiver.answer(default=Answer(200, delay=0.2))  # slow enough that the kill lands among sends
    try:
        ids = await raise_exceptions(stack, 30)
        await eventually(lambda: _async(sum(len(h) > 0 for h in hooks_for(receiver, ids).values()) >= 3), timeout=60)
        stack.kill9("notifier")
        stack.restart("notifier")
        found = await eventually(lambda: _all_there(hooks_for(receiver, ids)), timeout=120)
    finally:
        receiver.answer(default=Answer())
    lost = [i for i, hits in found.items() if not hits]
    assert lost == []
    # every copy of one message carries one webhook-id: a receiver that dedupes by it sees each once
    assert all(len({h.webhook_id for h in hits}) == 1 for hits in found.values())
    resent = sum(len(hits) - 1 for hits in found.values())
    print(f"kill -9 mid-delivery: {len(ids)} messages, 0 lost, {resent} resent with the same webhook-id")


async def test_a_stream_client_that_reconnects_with_last_event_id_gets_every_notification_once(
        stack: BenchStack, endpoint: dict[str, Any]) -> None:
    url = f"{stack.urls['notifier']}/v1/notifications/stream"
    seen: list[str] = []  # the exception of each notification event, in order
    async with httpx.AsyncClient(timeout=30, headers=stack.headers) as http:
        async with http.stream("GET", url) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            first = await raise_exceptions(stack, 3)
            last = await _read(response, seen, set(first))
        second = await raise_exceptions(stack, 4)  # while it is away
        async with http.stream("GET", url, headers={"Last-Event-ID": last}) as response:
            await _read(response, seen, set(first + second))
    mine = [i for i in seen if i in set(first + second)]
    assert sorted(mine) == sorted(first + second)
    assert len(seen) == len(set(seen))  # nothing twice, not even what others raised meanwhile


async def _read(response: httpx.Response, seen: list[str], wanted: set[str]) -> str:
    """Read ``notification`` events into ``seen`` until every exception in ``wanted`` is there; the last event id."""
    event, data, last = None, None, ""
    async with asyncio.timeout(60):
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                last = line[4:]
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and event == "notification" and data is not None:
                if data.get("exception_id"):
                    seen.append(data["exception_id"])
                event, data = None, None
                if wanted <= set(seen):
                    return last
    raise AssertionError(f"the stream ended with {len(wanted - set(seen))} notifications missing")


async def _all_there(found: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
    return found if all(found.values()) else None


async def _async(value: bool) -> bool:
    return value
