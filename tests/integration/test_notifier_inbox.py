"""The inbox: per-principal states, counts, the cursor (gap-free with two writers at once on
PostgreSQL), the live stream over real HTTP, and the fallback for unseen critical notifications.
On the real database and the suite's broker; the notifier's own handler writes the notifications."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy import select, text

from schemas.common import Severity
from schemas.envelope import Envelope
from schemas.notifications import NotificationCreated, NotificationData
from schemas.registry import EXCEPTIONS
from services.notifier import agents, fallback, stream
from services.notifier.app import SPEC
from services.notifier.credentials import CREDENTIALS_KEY_ENV
from services.notifier.settings import NotifierConfig, NotifierSettings, notifier_config
from services.notifier.store import Audience, NotificationRow, add_notifications, last_seq
from storeops.auth import Role
from storeops.consumer import Received
from storeops.db import make_engine, make_sessionmaker
from storeops.http import encode_cursor
from storeops.service import Runtime, build_app
from storeops.settings import KafkaSettings
from storeops_cli.broker import RunningBroker
from tests.helpers import bearer, eventually
from tests.unit.test_notifier_logic import change

pytestmark = pytest.mark.integration

OPERATOR = "test-operator"  # the name the suite's operator token carries


def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def database(fresh_database: str) -> str:
    SPEC.migrate(fresh_database)
    return fresh_database


def settings_for(database: str, broker: RunningBroker, tmp_path: Path, **notifier: Any) -> NotifierSettings:
    return NotifierSettings(database_url=database, data_dir=tmp_path, notifier=NotifierConfig(**notifier),
                            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor))


@pytest.fixture
def notifier_app(database: str, broker: RunningBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The notifier without its consumer (the handler is called with records made here)."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", CREDENTIALS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    return build_app(replace(SPEC, consumes=()), settings_for(database, broker, tmp_path))


@pytest.fixture
async def rt(notifier_app: FastAPI) -> AsyncIterator[Runtime[Any]]:
    async with notifier_app.router.lifespan_context(notifier_app):
        yield notifier_app.state.runtime


def as_(app: FastAPI, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier", headers=bearer(token))


async def feed_changes(rt: Runtime[Any], *records: Envelope) -> None:
    """Records through the notifier's own handler, as its consumer hands them over."""
    batch = [Received(ConsumerRecord(EXCEPTIONS.name, 0, i, 0, 0, None, b"", None, 0, 0, ()), EXCEPTIONS, r)
             for i, r in enumerate(records)]
    assert await agents.handler(rt)(batch) == []


def assigned(assignee: str, severity: Severity = Severity.MEDIUM, kind: Any = "assigned") -> Envelope:
    """A change of one exception (``kind``) with ``assignee`` as its assignee afterwards."""
    return change(kind, id=uuid.uuid4(), assignee=assignee, severity=severity, before={"assignee": None})


# --- states and counts ------------------------------------------------------------------------


async def test_each_principal_has_their_own_state_and_counts(rt: Runtime[Any], notifier_app: FastAPI,
                                                             tokens: dict[Role, str]) -> None:
    await feed_changes(rt, assigned(OPERATOR), assigned(OPERATOR, Severity.HIGH, "created"),
                       change("created", id=uuid.uuid4(), severity=Severity.LOW))
    async with as_(notifier_app, tokens[Role.operator]) as me, as_(notifier_app, tokens[Role.admin]) as admin:
        items = (await me.get("/v1/notifications")).json()["items"]
        # mine (assigned; created, as the assignee) and the default team's High one; not its Low one
        assert [(i["recipient"], i["kind"], i["state"]) for i in items] == [
            (OPERATOR, "exception.assigned", "unread"), ("ops-team", "exception.created", "unread"),
            (OPERATOR, "exception.created", "unread")]
        assert (await me.get("/v1/notifications/counts")).json() == {
            "unread": 3, "unseen": 3, "unread_by_severity": {"Medium": 1, "High": 2}}
        first, team, last = items
        assert (await me.post(f"/v1/notifications/{first['id']}/seen")).json()["state"] == "seen"
        assert (await me.post(f"/v1/notifications/{team['id']}/read")).json()["state"] == "read"
        assert (await me.post(f"/v1/notifications/{last['id']}/archive")).json()["state"] == "archived"
        assert (await me.get("/v1/notifications/counts")).json() == {
            "unread": 1, "unseen": 0, "unread_by_severity": {"Medium": 1}}
        assert [i["id"] for i in (await me.get("/v1/notifications", params={"state": "read"})).json()["items"]] == [team["id"]]
        assert [i["id"] for i in (await me.get("/v1/notifications", params={"severity": "Medium"})).json()["items"]] \
            == [first["id"]]
        # the team's notification is read for me only: the admin reads the same feed and it is unread for them
        theirs = (await admin.get("/v1/notifications", params={"recipient": "ops-team"})).json()["items"]
        assert [(i["id"], i["state"]) for i in theirs if i["severity"] == "High"] == [(team["id"], "unread")]


async def test_read_all_marks_up_to_a_cursor_and_no_further(rt: Runtime[Any], notifier_app: FastAPI,
                                                            tokens: dict[Role, str]) -> None:
    await feed_changes(rt, *(assigned(OPERATOR) for _ in range(3)))
    async with as_(notifier_app, tokens[Role.operator]) as me:
        items = (await me.get("/v1/notifications")).json()["items"]
        assert (await me.post("/v1/notifications/read-all", params={"up_to": items[1]["cursor"]})).json() == {"marked": 2}
        assert [i["state"] for i in (await me.get("/v1/notifications")).json()["items"]] == ["read", "read", "unread"]
        assert (await me.post("/v1/notifications/read-all")).json() == {"marked": 1}
        assert (await me.post("/v1/notifications/read-all")).json() == {"marked": 0}
        assert (await me.get("/v1/notifications/counts")).json()["unread"] == 0


async def test_marking_what_is_not_in_your_inbox_is_404_and_a_bad_cursor_422(
        rt: Runtime[Any], notifier_app: FastAPI, tokens: dict[Role, str]) -> None:
    await feed_changes(rt, assigned("someone-else"))
    async with as_(notifier_app, tokens[Role.admin]) as admin, as_(notifier_app, tokens[Role.operator]) as me:
        [theirs] = (await admin.get("/v1/notifications", params={"recipient": "someone-else"})).json()["items"]
        for target in (theirs["id"], str(uuid.uuid4())):
            response = await me.post(f"/v1/notifications/{target}/read")
            assert response.status_code == 404 and response.json()["errors"][0]["field"] == "notification_id"
        for path, params in (("/v1/notifications", {"cursor": "yesterday"}), ("/v1/notifications/read-all",
                                                                              {"up_to": "yesterday"})):
            response = await me.request("POST" if "read-all" in path else "GET", path, params=params)
            assert response.status_code == 422 and response.json()["errors"][0]["field"] == list(params)[0]
        response = await me.get("/v1/notifications/stream", headers={"Last-Event-ID": "yesterday"})
        assert response.status_code == 422 and response.json()["errors"][0]["field"] == "Last-Event-ID"
        viewer = await me.post(f"/v1/notifications/{theirs['id']}/read", headers=bearer("x"))
        assert viewer.status_code == 401


# --- the cursor with two writers ---------------------------------------------------------------


def note(recipient: str) -> NotificationCreated:
    nid = uuid.uuid4()
    now = datetime.now(UTC)
    return NotificationCreated(id=nid, type="NotificationCreated", source="storeops/notifier", subject=recipient,
                               causation_id=uuid.uuid4(), data=NotificationData(
                                   notification_id=nid, recipient=recipient, channel="in_app", title="t", body="b",
                                   created_at=now))


@pytest.fixture
async def sessions(database: str):
    engine = make_engine(database)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


def needs_postgres(database: str) -> None:
    if not database.startswith("postgresql"):
        pytest.skip("the suite runs on SQLite this time: one writer at a time, nothing to race")


async def read_after(sessions: Any, recipient: str, after: int) -> list[NotificationRow]:
    async with sessions() as session:
        query = select(NotificationRow).where(NotificationRow.seq > after, NotificationRow.recipient == recipient)
        return list((await session.scalars(query.order_by(NotificationRow.seq))).all())


async def test_a_writer_that_took_a_lower_seq_cannot_commit_behind_a_reader(database: str, sessions: Any) -> None:
    """Writer A inserts and has not committed; writer B's insert waits for A (the advisory lock), so
    B's seq is above A's and a reader polling in between never passes A's row."""
    needs_postgres(database)
    recipient = f"race-{tag()}"
    a_inserted, a_may_commit = asyncio.Event(), asyncio.Event()

    async def writer_a() -> None:
        async with sessions.begin() as session:
            await add_notifications(session, [note(recipient)])
            a_inserted.set()
            await a_may_commit.wait()

    async def writer_b() -> None:
        async with sessions.begin() as session:
            await add_notifications(session, [note(recipient)])

    task_a = asyncio.create_task(writer_a())
    await a_inserted.wait()
    task_b = asyncio.create_task(writer_b())

    async def b_waits_for_the_lock() -> bool:
        async with sessions() as session:
            return bool(await session.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")))

    await eventually(b_waits_for_the_lock)
    assert await read_after(sessions, recipient, 0) == []  # nothing committed: a reader's cursor stays put
    a_may_commit.set()
    await asyncio.gather(task_a, task_b)
    rows = await read_after(sessions, recipient, 0)
    assert len(rows) == 2 and rows[0].seq < rows[1].seq


async def test_two_concurrent_writers_and_a_polling_reader_miss_nothing(database: str, sessions: Any) -> None:
    needs_postgres(database)
    recipient = f"race-{tag()}"
    written: list[uuid.UUID] = []
    done = asyncio.Event()

    async def writer() -> None:
        for _ in range(40):
            batch = [note(recipient) for _ in range(3)]
            async with sessions.begin() as session:
                await add_notifications(session, batch)
                await asyncio.sleep(0)  # let the other writer and the reader in while this one is open
            written.extend(n.data.notification_id for n in batch)

    async def reader() -> list[uuid.UUID]:
        cursor, seen = 0, []
        while True:
            finished = done.is_set()
            rows = await read_after(sessions, recipient, cursor)
            seen += [r.id for r in rows]
            cursor = rows[-1].seq if rows else cursor
            if finished and not rows:
                return seen
            await asyncio.sleep(0)

    reading = asyncio.create_task(reader())
    await asyncio.gather(writer(), writer())
    done.set()
    seen = await reading
    assert len(seen) == len(set(seen)) == 240 and set(seen) == set(written)


# --- the live stream over HTTP -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(notifier_app: FastAPI) -> AsyncIterator[str]:
    """The notifier over real HTTP (uvicorn on a free port, running its lifespan)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(notifier_app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    stream.hub_of(notifier_app.state.runtime).close()  # streams whose client left end here
    server.should_exit = True
    await task


class Events:
    """A Server-Sent Events reader over an httpx stream."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        """The next event (comments and the retry field skipped)."""
        event: dict[str, Any] = {}
        async for line in self.lines:
            if line == "":
                if "data" in event:
                    return event
                event = {}
            elif not line.startswith(":") and not line.startswith("retry:"):
                name, _, value = line.partition(": ")
                event[name] = json.loads(value) if name == "data" else value
        raise AssertionError("the stream ended")

    async def take(self, n: int) -> list[dict[str, Any]]:
        return [await self.next() for _ in range(n)]


@contextlib.asynccontextmanager
async def connected(http: httpx.AsyncClient, url: str, last_event_id: str | None = None) -> AsyncIterator[Events]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with http.stream("GET", f"{url}/v1/notifications/stream", headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        async for line in events.lines:  # the first chunk: the client is registered with the hub
            if line.startswith("retry:"):
                break
        yield events


async def test_a_client_that_reconnects_with_last_event_id_gets_every_notification_once(
        served: str, notifier_app: FastAPI, tokens: dict[Role, str]) -> None:
    rt = notifier_app.state.runtime
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(60), httpx.AsyncClient(headers=bearer(tokens[Role.operator]), timeout=30) as http:
        async with connected(http, served) as events:
            await feed_changes(rt, *(assigned(OPERATOR) for _ in range(3)))
            got += await events.take(3)
        await feed_changes(rt, *(assigned(OPERATOR) for _ in range(3)))  # while away
        async with connected(http, served, got[-1]["id"]) as events:
            got += await events.take(3)  # caught up from the database
            await feed_changes(rt, *(assigned(OPERATOR) for _ in range(2)))
            got += await events.take(2)  # live again
        async with as_(notifier_app, tokens[Role.operator]) as me:
            everything = (await me.get("/v1/notifications")).json()["items"]
    assert [e["event"] for e in got] == ["notification"] * 8
    assert [e["id"] for e in got] == [e["data"]["cursor"] for e in got] == [i["cursor"] for i in everything]
    assert len({e["data"]["id"] for e in got}) == 8


async def test_a_slow_client_is_told_to_reconnect_and_holds_nobody_back(rt: Runtime[Any], tokens: dict[Role, str]) -> None:
    hub = stream.hub_of(rt)
    me = Audience(OPERATOR, frozenset({OPERATOR}))
    async with rt.sessions() as session:
        start = await last_seq(session)
    slow = stream.events(hub, me, start, lambda row, state: {"id": str(row.id)})
    fast = stream.events(hub, me, start, lambda row, state: {"id": str(row.id)})
    hub.queue_size = 2
    assert await anext(slow) == b"retry: 2000\n\n"  # registered, with room for two
    hub.queue_size = 1000
    assert await anext(fast) == b"retry: 2000\n\n"
    fast_got = asyncio.create_task(_collect(fast, 5))
    await feed_changes(rt, *(assigned(OPERATOR) for _ in range(5)))
    assert len(await fast_got) == 5  # the fast one got everything while the slow one read nothing
    slow_got = [await anext(slow) for _ in range(3)]
    assert [b"event: notification" in e for e in slow_got] == [True, True, False]
    assert b"event: reconnect" in slow_got[2] and encode_cursor(start + 2).encode() in slow_got[2]
    await slow.aclose()
    await fast.aclose()
    assert not hub.clients


async def test_a_rules_in_app_request_reaches_live_clients_when_it_commits_not_at_the_next_poll(
        rt: Runtime[Any], notifier_app: FastAPI, tokens: dict[Role, str]) -> None:
    hub = stream.hub_of(rt)
    hub.poll_seconds = 3600  # no poll during this test: only the commit can wake the hub
    me = Audience(OPERATOR, frozenset({OPERATOR}))
    async with rt.sessions() as session:
        start = await last_seq(session)
    events = stream.events(hub, me, start, lambda row, state: {"title": row.title})
    assert await anext(events) == b"retry: 2000\n\n"
    title = f"handed over {tag()}"
    request = {"request_id": str(uuid.uuid4()),
               "message": {"channel": "in_app", "recipients": [OPERATOR], "title": title, "body": "from a rule"}}
    async with as_(notifier_app, tokens[Role.service]) as rules:
        assert (await rules.post("/v1/requests", json={"requests": [request]})).status_code == 200
    async with asyncio.timeout(30):
        live = await anext(events)
    assert b"event: notification" in live and title.encode() in live
    await events.aclose()


async def _collect(events: AsyncIterator[bytes], n: int) -> list[bytes]:
    got = []
    async for chunk in events:
        if chunk.startswith(b"id: "):
            got.append(chunk)
        if len(got) == n:
            return got
    return got


async def test_a_stream_past_its_lifetime_says_reconnect_with_the_last_id(rt: Runtime[Any]) -> None:
    hub = stream.hub_of(rt)
    hub.lifetime_seconds = 0
    me = Audience(OPERATOR, frozenset({OPERATOR}))
    await feed_changes(rt, assigned(OPERATOR))
    chunks = [c async for c in stream.events(hub, me, 0, lambda row, state: {"id": str(row.id)})]
    assert chunks[0] == b"retry: 2000\n\n" and b"event: notification" in chunks[1]
    assert b"event: reconnect" in chunks[2] and b"connection age" in chunks[2] and len(chunks) == 3
    assert not hub.clients


# --- the fallback ------------------------------------------------------------------------------


async def test_an_unseen_critical_notification_falls_back_once_or_is_recorded_impossible(
        rt: Runtime[Any], notifier_app: FastAPI, tokens: dict[Role, str]) -> None:
    with_address, without, seen = f"ana-{tag()}", f"ben-{tag()}", OPERATOR
    async with as_(notifier_app, tokens[Role.admin]) as admin:
        created = await admin.post("/v1/subscriptions", json={
            "owner": with_address, "event_types": ["stock.low"], "channel": "email", "address": "ana@shop.example"})
        assert created.status_code == 201, created.text
    await feed_changes(rt, *(assigned(who, Severity.CRITICAL) for who in (with_address, without, seen)))
    async with as_(notifier_app, tokens[Role.operator]) as me:
        [mine] = [i for i in (await me.get("/v1/notifications")).json()["items"] if i["recipient"] == OPERATOR]
        assert (await me.post(f"/v1/notifications/{mine['id']}/seen")).status_code == 200
    later = datetime.now(UTC) + timedelta(seconds=notifier_config_of(rt).fallback_after_seconds + 1)
    assert await fallback.fall_back(rt, datetime.now(UTC)) == 0  # not yet due
    assert await fallback.fall_back(rt, later) == 1
    assert await fallback.fall_back(rt, later) == 0  # once
    async with rt.sessions() as session:
        rows = (await session.scalars(select(NotificationRow).where(
            NotificationRow.recipient.in_([with_address, without, seen])))).all()
    # the default team's critical copies: nobody has an address for ops-team here either
    assert {r.recipient: r.fallback_state for r in rows} == {with_address: "sent", without: "impossible", seen: "seen"}


def notifier_config_of(rt: Runtime[Any]) -> NotifierConfig:
    from services.notifier.settings import notifier_config

    return notifier_config(rt.settings)


async def test_an_idle_stream_sends_heartbeats(rt: Runtime[Any]) -> None:
    hub = stream.hub_of(rt)
    hub.heartbeat_seconds = 0
    me = Audience(OPERATOR, frozenset({OPERATOR}))
    events = stream.events(hub, me, 0, lambda row, state: {"id": str(row.id)})
    assert [await anext(events) for _ in range(3)] == [b"retry: 2000\n\n", b": heartbeat\n\n", b": heartbeat\n\n"]
    await events.aclose()
    assert not hub.clients


async def test_the_fallback_loop_waits_out_a_database_away_and_a_bug_ends_it(rt: Runtime[Any],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    rounds = 0

    async def away(rt: Runtime[Any], now: datetime) -> int:
        nonlocal rounds
        rounds += 1
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database does not answer"))

    monkeypatch.setattr(fallback, "fall_back", away)
    monkeypatch.setattr(notifier_config(rt.settings), "fallback_after_seconds", 10)  # a round a second
    loop = asyncio.create_task(fallback.run(rt))
    try:
        await eventually(lambda: asyncio.sleep(0, rounds >= 2), timeout=10)
        assert not loop.done()  # waited out, round after round
    finally:
        loop.cancel()

    async def buggy(rt: Runtime[Any], now: datetime) -> int:
        raise ProgrammingError("SELECT nonsense", {}, Exception("syntax error"))

    monkeypatch.setattr(fallback, "fall_back", buggy)
    with pytest.raises(ProgrammingError):  # not waited out: the process ends and its supervisor restarts it
        await fallback.run(rt)
