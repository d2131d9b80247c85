"""Webhooks and e-mails per second from one notifier process, and hand-over → webhook received latency.

For each database (SQLite in a temporary folder; PostgreSQL too when ``DATABASE_URL`` names one or the
server at 127.0.0.1:5432 answers, in a fresh database made here) it starts the broker and the notifier
alone (``BenchStack``), with 127.0.0.1 on its outbound allow-list and its SMTP server pointed at a sink,
and in this process a webhook receiver (uvicorn in a thread of its own, answering 200 at once) and an
SMTP sink (aiosmtpd, in its thread). Then:

- latency: ``--events`` webhook requests handed over one at a time (``POST /v1/requests``, as the
  rules service does), each timed from the POST until the receiver has it: p50 and p99;
- webhooks per second: ``--burst`` requests handed over in batches of 500, timed from the first POST
  until the receiver has them all (each request counted once: duplicates are reported), ``--runs``
  times: the median is the figure;
- e-mails per second: ``--emails`` e-mail requests the same way, until the sink has them all, the
  median of ``--runs``;
- live fan-out: ``--sse-clients`` Server-Sent Event streams (``GET /v1/notifications/stream``, all of
  the bench's principal) connected at once, then ``--sse-rounds`` in-app notifications handed over one
  at a time, each timed from the POST until every client has it (its ``event: notification``): the
  p50 / p99 / max over every client of every round, and the time until the slowest client of a round
  has it (median over the rounds). Each stream is read in this process with aiohttp.

    storeops bench notifier [--events 50] [--burst 2000] [--emails 500] [--runs 3]
                            [--sse-clients 500] [--sse-rounds 10] [--databases sqlite,postgresql]

Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import orjson
import uvicorn
from aiosmtpd.controller import Controller

from storeops_cli.bench.databases import on_each
from storeops_cli.bench.report import emit, percentile, table
from storeops_cli.bench.stack import BenchStack
from storeops_cli.broker import free_port

BATCH = 500
BENCH_PRINCIPAL = "bench"  # whom BenchStack's admin token names


class Arrivals:
    """When each bench id first arrived, and how often."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.seen: Counter[str] = Counter()

    def note(self, bench_id: str) -> None:
        self.seen[bench_id] += 1
        self.arrived.setdefault(bench_id, time.perf_counter())


class Receiver(Arrivals):
    """Counts each request by its ``x-bench-id`` header."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", interface="asgi3"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        self.note(dict(scope["headers"]).get(b"x-bench-id", b"").decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class SmtpSink(Arrivals):
    """Accepts every message and counts it by its Subject (the bench id)."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.note(str(email.message_from_bytes(envelope.original_content or envelope.content)["Subject"]))
        return "250 OK"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


def webhook(receiver: Receiver, bench_id: str) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "message": {
        "channel": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook", "headers": {"x-bench-id": bench_id},
        "body": "{}"}}


def mail(bench_id: str) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "message": {
        "channel": "email", "to": ["bench@shop.example"], "subject": bench_id, "text": "bench"}}


async def wait_for(arrivals: Arrivals, ids: list[str], timeout: float = 300) -> None:
    deadline, missing = time.perf_counter() + timeout, set(ids)
    while missing:
        missing -= arrivals.arrived.keys()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(missing)} of {len(ids)} not received")
        await asyncio.sleep(0.005)


async def latencies(api: httpx.AsyncClient, receiver: Receiver, events: int) -> list[float]:
    out = []
    for _ in range(events):
        bench_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        assert (await api.post("/v1/requests", json={"requests": [webhook(receiver, bench_id)]})).status_code == 200
        await wait_for(receiver, [bench_id])
        out.append(round((receiver.arrived[bench_id] - t0) * 1000, 2))
    return out


async def burst(api: httpx.AsyncClient, arrivals: Arrivals, count: int, make: Callable[[str], dict[str, Any]]
                ) -> dict[str, Any]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    t0 = time.perf_counter()
    for start in range(0, count, BATCH):
        response = await api.post("/v1/requests", json={"requests": [make(i) for i in ids[start:start + BATCH]]})
        assert response.status_code == 200, response.text
    await wait_for(arrivals, ids)
    seconds = max(arrivals.arrived[i] for i in ids) - t0
    return {"count": count, "seconds": round(seconds, 3), "per_second": round(count / seconds, 1),
            "duplicates": sum(arrivals.seen[i] - 1 for i in ids)}


class Listener:
    """One live stream: when each notification (by title) arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.joined = asyncio.Event()

    async def listen(self, http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(url) as response:
            assert response.status == 200, await response.text()
            while True:
                frame = await response.content.readuntil(b"\n\n")
                if not frame:
                    return
                if frame.startswith(b"retry:"):  # the stream's first frame: the hub has this client
                    self.joined.set()
                    continue
                if b"event: notification" in frame:
                    at = time.perf_counter()
                    data = orjson.loads(frame.split(b"data: ", 1)[1])
                    self.arrived.setdefault(data["title"], at)


def in_app(title: str) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "message": {
        "channel": "in_app", "recipients": [BENCH_PRINCIPAL], "title": title, "body": "bench"}}


async def fan_out(stack: BenchStack, api: httpx.AsyncClient, clients: int, rounds: int) -> dict[str, Any]:
    """``clients`` streams at once; each of ``rounds`` notifications timed until every stream has it."""
    listeners = [Listener() for _ in range(clients)]
    connector = aiohttp.TCPConnector(limit=0)  # every stream its own connection, as browsers have
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(headers=stack.headers, connector=connector, timeout=timeout) as http:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one.listen(http, stack.urls["notifier"] + "/v1/notifications/stream"))
                 for one in listeners]
        try:
            await asyncio.wait_for(asyncio.gather(*(one.joined.wait() for one in listeners)), 120)
            connected = time.perf_counter() - t0
            every, slowest = [], []
            for _ in range(rounds):
                title = uuid.uuid4().hex
                sent = time.perf_counter()
                assert (await api.post("/v1/requests", json={"requests": [in_app(title)]})).status_code == 200
                deadline = sent + 60
                while any(title not in one.arrived for one in listeners):
                    if time.perf_counter() > deadline or any(t.done() for t in tasks):
                        raise TimeoutError(f"{sum(title not in one.arrived for one in listeners)} of {clients} streams "
                                           "did not receive the notification")
                    await asyncio.sleep(0.002)
                took = [(one.arrived[title] - sent) * 1000 for one in listeners]
                every += took
                slowest.append(max(took))
                await asyncio.sleep(0.2)  # rounds apart: each measures one notification alone
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"clients": clients, "rounds": rounds, "connect_all_seconds": round(connected, 3),
            "p50_ms": round(percentile(every, 50), 2), "p99_ms": round(percentile(every, 99), 2),
            "max_ms": round(max(every), 2), "all_received_ms_median": round(statistics.median(slowest), 2),
            "all_received_ms": [round(s, 2) for s in slowest]}


async def measure(stack: BenchStack, receiver: Receiver, sink: SmtpSink, args: argparse.Namespace) -> dict[str, Any]:
    async with stack.async_client("notifier", timeout=120) as api:
        lat = await latencies(api, receiver, args.events)
        hooks = [await burst(api, receiver, args.burst, lambda i: webhook(receiver, i)) for _ in range(args.runs)]
        mails = [await burst(api, sink, args.emails, mail) for _ in range(args.runs)] if args.emails else []
        live = await fan_out(stack, api, args.sse_clients, args.sse_rounds) if args.sse_clients else None
    return {"sse": live,
        "latency_p50_ms": percentile(lat, 50), "latency_p99_ms": percentile(lat, 99), "latency_ms": lat,
        "webhooks_per_second": statistics.median(r["per_second"] for r in hooks), "webhook_runs": hooks,
        "emails_per_second": statistics.median(r["per_second"] for r in mails) if mails else None, "email_runs": mails,
        "duplicates": sum(r["duplicates"] for r in hooks + mails),
    }


def run_on(database_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    receiver, sink = Receiver(), SmtpSink()
    receiver.start()
    sink.controller.start()
    env = {"STOREOPS_OUTBOUND__ALLOW_NETWORKS": "127.0.0.1/32", "STOREOPS_NOTIFIER__SMTP_URL": sink.url}
    stack = BenchStack.start(env_extra=env, only=["notifier"], live_seeds=False, database_url=database_url)
    try:
        return asyncio.run(measure(stack, receiver, sink, args))
    finally:
        stack.stop()
        sink.controller.stop()
        receiver.stop()


def run(args: argparse.Namespace) -> int:
    def on(kind: str, url: str | None) -> dict[str, Any]:
        if url is not None:
            return run_on(url, args)
        saved = os.environ.pop("DATABASE_URL", None)  # BenchStack's own SQLite files, whatever it says
        try:
            return run_on(None, args)
        finally:
            if saved is not None:
                os.environ["DATABASE_URL"] = saved

    figures: dict[str, Any] = {"bench": "notifier", **on_each(args.databases, args.postgres, on)}
    rows = []
    for kind, f in ((k, v) for k, v in figures.items() if k != "bench"):
        rows += [(f"{kind}: hand-over -> webhook received, p50 of {args.events} (ms)", f["latency_p50_ms"]),
                 (f"{kind}: hand-over -> webhook received, p99 of {args.events} (ms)", f["latency_p99_ms"]),
                 (f"{kind}: webhooks per second, median of {args.runs} x {args.burst}", f["webhooks_per_second"]),
                 (f"{kind}: e-mails per second, median of {args.runs} x {args.emails}", f["emails_per_second"]),
                 (f"{kind}: duplicates received", f["duplicates"])]
        if sse := f["sse"]:
            each = f"{sse['clients']} streams x {sse['rounds']} rounds"
            rows += [(f"{kind}: SSE, {sse['clients']} streams connected (s)", sse["connect_all_seconds"]),
                     (f"{kind}: SSE hand-over -> received, p50 of {each} (ms)", sse["p50_ms"]),
                     (f"{kind}: SSE hand-over -> received, p99 of {each} (ms)", sse["p99_ms"]),
                     (f"{kind}: SSE hand-over -> every stream has it, median of {sse['rounds']} (ms)",
                      sse["all_received_ms_median"])]
    emit(table(["figure", "value"], rows), figures)
    return 0


if __name__ == "__main__":
    from storeops_cli.cli import main

    raise SystemExit(main(["bench", "notifier", *sys.argv[1:]]))
