"""The live inbox over Server-Sent Events: one reader per process fans new notifications
out to every connected client.

The hub reads the notifications table after its ``head`` (every recipient at once), when
a session of this process that added notifications commits (whoever added them: the
records' handler, a rule's request, a delivery's trouble notice) or every ``poll_seconds``
(for what other notifier processes wrote), and hands each row to the clients whose audience sees it. A client
registers first and catches up from the database up to the head it registered at; the hub
gives it only what comes after that head. Together: every notification once, in cursor
order, with no gap between catch-up and live. The cursor is commit-ordered
(store.add_notifications), so reading "after head" never skips one.

Each client has a bounded queue: one that reads slowly holds nobody else back; once its
queue is full it is told to reconnect with its last event id (and catches up from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.settings import notifier_config
from services.notifier.state import NotifierState, state_of
from services.notifier.store import (
    NOTIFICATIONS_ADDED,
    Audience,
    NotificationRow,
    inbox_after,
    last_seq,
    notifications_between,
)
from storeops.http import encode_cursor
from storeops.service import Runtime

log = logging.getLogger(__name__)

PAGE = 500
_CLOSING: Any = object()  # put on a client's queue: the stream ends


@dataclass(eq=False)
class Client:
    audience: Audience
    queue: asyncio.Queue[NotificationRow]
    overflowed: bool = False


@dataclass(eq=False)
class Hub:
    sessions: async_sessionmaker[AsyncSession]
    poll_seconds: float = 1.0
    heartbeat_seconds: float = 15.0
    # A connection is ended (event reconnect) after this long: the client comes back with its last id, its
    # token is checked again (a revoked one stops streaming), and load balancers can spread clients anew.
    lifetime_seconds: float = 900.0
    queue_size: int = 1000
    head: int | None = None
    clients: set[Client] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        NOTIFICATIONS_ADDED.listen(self)

    def wake(self) -> None:
        """New notifications were committed: read now instead of at the next poll."""
        self._wake.set()

    async def join(self, audience: Audience) -> tuple[Client, int]:
        """Register a client; it receives what comes after the returned head (catch up to it first)."""
        if self.head is None:
            async with self.sessions() as session:
                head = await last_seq(session)
            if self.head is None:  # another client may have set it meanwhile
                self.head = head
        client = Client(audience, asyncio.Queue(self.queue_size))
        self.clients.add(client)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="notifier-stream-reader")
        return client, self.head

    def close(self) -> None:
        """End every client's stream (each is told to reconnect): for a process that is stopping."""
        for client in self.clients:
            client.overflowed = True
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(_CLOSING)

    def leave(self, client: Client) -> None:
        self.clients.discard(client)
        if not self.clients and self._reader is not None:  # nobody listens: stop reading
            self._reader.cancel()
            self._reader = None

    async def _read(self) -> None:
        while self.clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
            try:
                await self._read_new()
            except Exception:  # the database away for a moment: the next poll tries again
                log.warning("the live inbox could not read new notifications", exc_info=True)

    async def _read_new(self) -> None:
        assert self.head is not None  # join sets it before the reader starts
        while True:
            async with self.sessions() as session:
                rows = await notifications_between(session, self.head, None, PAGE)
            for row in rows:
                self._fan_out(row)
            if rows:
                self.head = rows[-1].seq
            if len(rows) < PAGE:
                return

    def _fan_out(self, row: NotificationRow) -> None:
        for client in list(self.clients):
            if client.overflowed or not client.audience.sees(row.recipient, row.severity):
                continue
            try:
                client.queue.put_nowait(row)
            except asyncio.QueueFull:
                client.overflowed = True


def hub_of(rt: Runtime[NotifierState]) -> Hub:
    """The process's hub, made on first use."""
    state = state_of(rt)
    if state.hub is None:
        config = notifier_config(rt.settings)
        state.hub = Hub(rt.sessions, heartbeat_seconds=config.stream_heartbeat_seconds,
                        lifetime_seconds=config.stream_lifetime_seconds, queue_size=config.stream_queue_size)
    hub: Hub = state.hub
    return hub


def sse(event_id: str | None, data: dict[str, Any], event: str | None = None) -> bytes:
    """One Server-Sent Event (data is one JSON line, so it needs no escaping)."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + orjson.dumps(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


async def events(hub: Hub, audience: Audience, after: int, item: Any) -> AsyncIterator[bytes]:
    """The event stream of one client: catch up after ``after``, then live; ``item(row)`` renders a row."""
    client, head = await hub.join(audience)
    try:
        yield b"retry: 2000\n\n"
        last = after
        while last < head:
            async with hub.sessions() as session:
                page = [(r, s) for r, s in await inbox_after(session, audience, last, PAGE) if r.seq <= head]
            for row, state in page:
                yield sse(encode_cursor(row.seq), item(row, state), "notification")
            last = page[-1][0].seq if len(page) == PAGE else head
        loop = asyncio.get_running_loop()
        ends = loop.time() + hub.lifetime_seconds
        while True:
            left = ends - loop.time()
            if (client.overflowed and client.queue.empty()) or left <= 0:
                why = "too far behind" if client.overflowed else "connection age"
                yield sse(None, {"reason": why, "last_event_id": encode_cursor(last)}, "reconnect")
                return
            try:
                row = await asyncio.wait_for(client.queue.get(), min(hub.heartbeat_seconds, left))
            except TimeoutError:
                yield b": heartbeat\n\n"  # a comment: keeps proxies from closing an idle connection
                continue
            if row is _CLOSING:
                yield sse(None, {"reason": "server stopping", "last_event_id": encode_cursor(last)}, "reconnect")
                return
            if row.seq > last:  # a client ahead of this process's head (its cursor came from another one)
                last = row.seq
                yield sse(encode_cursor(row.seq), item(row, None), "notification")
    finally:
        hub.leave(client)
