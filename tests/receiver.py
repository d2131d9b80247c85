"""A real webhook receiver for tests: a small ASGI app served by uvicorn on a free loopback port.

It answers as it is told (``answer(...)``: fail, stall, 410, 429 with Retry-After, a redirect), can
be taken down and brought back on the same port (``down()`` / ``up()``), and verifies every
request's Standard Webhooks signature with the ``standardwebhooks`` package against each secret
it was given (``secrets``). Every request is kept (``hits``); ``delivered`` and ``duplicates``
count by ``webhook-id``, the receiver-side deduplication a real integration does.

    async with Receiver.running() as receiver:
        receiver.secrets = [created["secret"]]
        receiver.answer(Answer(503), Answer(503))   # the next two requests, then 200s
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Answer:
    """What to answer one request with; ``delay`` stalls first (past the sender's timeout: a stall)."""

    status: int = 200
    delay: float = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"


@dataclass
class Hit:
    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (200 for a stall that completed, though nobody waited)
    verified_by: list[int]  # the indexes of ``secrets`` whose signature is in webhook-signature

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class Receiver:
    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.hits: list[Hit] = []
        self.plan: deque[Answer] = deque()
        self.default = Answer()
        self.port = _free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[Receiver]:
        receiver = cls()
        await receiver.up()
        try:
            yield receiver
        finally:
            await receiver.down()

    def answer(self, *answers: Answer, default: Answer | None = None) -> None:
        """Answer the next requests with ``answers``, then with ``default`` (if given) from then on."""
        self.plan.extend(answers)
        if default is not None:
            self.default = default

    # --- what arrived ---------------------------------------------------------------------------

    def verified(self) -> list[Hit]:
        """The hits signed with at least one of ``secrets``."""
        return [h for h in self.hits if h.verified_by]

    def delivered(self) -> Counter[str]:
        """Per webhook-id, how many requests were answered 2xx."""
        return Counter(h.webhook_id for h in self.hits if h.webhook_id and 200 <= h.status < 300)

    def duplicates(self) -> int:
        """Requests answered 2xx beyond the first for the same webhook-id."""
        return sum(n - 1 for n in self.delivered().values())

    # --- serving ----------------------------------------------------------------------------------

    async def up(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                interface="asgi3")  # uvicorn takes a bound method for an ASGI2 app otherwise
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why it did not start
            await asyncio.sleep(0.01)

    async def down(self) -> None:
        """Stop listening: connections are refused until ``up``."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True  # do not wait for a stalled request to finish
        await self._task
        self._server = self._task = None

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        answer = self.plan.popleft() if self.plan else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        self.hits.append(Hit(scope["path"], scope["method"], headers, body, answer.status, self._verify(body, headers)))
        self.arrived.set()
        raw_headers = [(b"content-type", b"text/plain"), *((k.encode(), v.encode()) for k, v in answer.headers.items())]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": answer.body.encode()})

    def _verify(self, body: bytes, headers: dict[str, str]) -> list[int]:
        passed = []
        for i, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            passed.append(i)
        return passed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
