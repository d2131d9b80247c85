"""Webhook deliveries per second from one notifier process, and hand-over → webhook received latency.

Starts the broker and the notifier alone (``BenchStack``: SQLite in a temporary folder unless
``DATABASE_URL`` is set), with 127.0.0.1 on its outbound allow-list, and a receiver on a free
loopback port in this process (uvicorn in a thread of its own) that answers 200 at once. Then:

- latency: ``--events`` webhook requests handed over one at a time (``POST /v1/requests``, as the
  rules service does), each timed from the POST until the receiver has it;
- throughput: ``--burst`` requests handed over in batches of 500, timed from the first POST until
  the receiver has them all (every request id counted once: duplicates are reported).

    python -m storeops_cli.bench.notifier [--events 50] [--burst 2000]

Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import uvicorn

from storeops_cli.bench.report import emit, percentile, table
from storeops_cli.bench.stack import BenchStack
from storeops_cli.broker import free_port

BATCH = 500


class Receiver:
    """Counts each request by its ``x-bench-id`` header and notes when the first one arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[str, float] = {}
        self.seen: Counter[str] = Counter()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", interface="asgi3"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        bench_id = dict(scope["headers"]).get(b"x-bench-id", b"").decode()
        self.seen[bench_id] += 1
        self.arrived.setdefault(bench_id, time.perf_counter())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def webhook(receiver: Receiver, bench_id: str) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "message": {
        "channel": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook", "headers": {"x-bench-id": bench_id},
        "body": "{}"}}


async def wait_for(receiver: Receiver, ids: list[str], timeout: float = 120) -> None:
    deadline = time.perf_counter() + timeout
    while any(i not in receiver.arrived for i in ids):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{sum(i not in receiver.arrived for i in ids)} webhooks not received")
        await asyncio.sleep(0.001)


async def latencies(api: httpx.AsyncClient, receiver: Receiver, events: int) -> list[float]:
    out = []
    for _ in range(events):
        bench_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        assert (await api.post("/v1/requests", json={"requests": [webhook(receiver, bench_id)]})).status_code == 200
        await wait_for(receiver, [bench_id])
        out.append(round((receiver.arrived[bench_id] - t0) * 1000, 2))
    return out


async def burst(api: httpx.AsyncClient, receiver: Receiver, count: int) -> dict[str, Any]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    t0 = time.perf_counter()
    for start in range(0, count, BATCH):
        batch = [webhook(receiver, i) for i in ids[start:start + BATCH]]
        assert (await api.post("/v1/requests", json={"requests": batch})).status_code == 200
    await wait_for(receiver, ids)
    seconds = max(receiver.arrived[i] for i in ids) - t0
    return {"deliveries": count, "seconds": round(seconds, 3), "per_second": round(count / seconds, 1),
            "duplicates": sum(receiver.seen[i] - 1 for i in ids)}


async def measure(stack: BenchStack, receiver: Receiver, events: int, count: int) -> dict[str, Any]:
    async with stack.async_client("notifier", timeout=60) as api:
        lat = await latencies(api, receiver, events)
        return {"latency_ms": lat, "burst": await burst(api, receiver, count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--burst", type=int, default=2000)
    args = parser.parse_args()
    receiver = Receiver()
    receiver.start()
    stack = BenchStack.start(env_extra={"STOREOPS_OUTBOUND__ALLOW_NETWORKS": "127.0.0.1/32"}, only=["notifier"],
                             live_seeds=False)
    try:
        figures = asyncio.run(measure(stack, receiver, args.events, args.burst))
    finally:
        stack.stop()
        receiver.stop()
    lat, b = figures["latency_ms"], figures["burst"]
    rows = [(f"hand-over -> webhook received, p50 of {args.events} (ms)", percentile(lat, 50)),
            (f"hand-over -> webhook received, p99 of {args.events} (ms)", percentile(lat, 99)),
            (f"deliveries per second ({b['deliveries']} handed over in batches of {BATCH})", b["per_second"]),
            ("duplicates received", b["duplicates"])]
    emit(table(["figure", "value"], rows), {
        "latency_p50_ms": percentile(lat, 50), "latency_p99_ms": percentile(lat, 99), "latency_ms": lat,
        "deliveries_per_second": b["per_second"], "burst": b})


if __name__ == "__main__":
    main()
