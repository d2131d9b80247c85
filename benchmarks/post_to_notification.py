"""Ready time of each service and POST → notification-readable latency, on the embedded default.

Starts the embedded broker and the five services (SQLite files in a temporary
folder, free ports), measures how long each service takes from process start
to ``/readyz`` 200, then posts N single high-value orders one at a time and
times each from the POST until its notification is readable in the feed.

    python benchmarks/post_to_notification.py [--events 20] [--runs 3]

Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from services import SERVICES
from storeops.broker import free_port, start_embedded
from storeops.db import upgrade
from storeops.runner import Child


def start_stack(data: Path) -> tuple[object, dict[str, Child], dict[str, float]]:
    broker = start_embedded()
    ports = {name: free_port() for name in SERVICES}
    env = {**os.environ, **broker.env(), "STOREOPS_DATA_DIR": str(data)}
    env.pop("DATABASE_URL", None)
    env.update({f"STOREOPS_{n.upper()}__PORT": str(p) for n, p in ports.items()})
    for name in SERVICES[1:]:
        upgrade(name, f"sqlite+aiosqlite:///{data / f'{name}.db'}")
    children = {n: Child(n, ports[n], data / f"{n}.log", env) for n in SERVICES}
    started = {}
    for name, child in children.items():
        started[name] = time.perf_counter()
        child.start()
    ready: dict[str, float] = {}
    with httpx.Client(timeout=2) as client:
        while len(ready) < len(children):
            for name, child in children.items():
                if name not in ready:
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{child.url}/readyz").status_code == 200:
                            ready[name] = time.perf_counter() - started[name]
            time.sleep(0.01)
    return broker, children, ready


def latencies(children: dict[str, Child], events: int) -> list[float]:
    feed = f"{children['notifier'].url}/v1/notifications"
    out = []
    with httpx.Client(timeout=10) as client:
        cursor = client.get(feed, params={"limit": 1000}).json()["next_cursor"]
        for _ in range(events):
            order_id = f"ord-{uuid.uuid4().hex[:10]}"
            event = {"type": "OrderPlaced", "data": {"order_id": order_id, "customer_id": "c", "total": "2500.00", "currency": "EUR"}}
            t0 = time.perf_counter()
            assert client.post(f"{children['ingest'].url}/v1/events/orders", json=event).status_code == 202
            while True:
                page = client.get(feed, params={"after": cursor}).json()
                if any(order_id in n["title"] for n in page["items"]):
                    out.append(time.perf_counter() - t0)
                    cursor = page["next_cursor"]
                    break
                time.sleep(0.002)
    return out


def one_run(events: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        broker, children, ready = start_stack(Path(tmp))
        try:
            lat = latencies(children, events)
        finally:
            for child in children.values():
                child.stop()
            broker.stop()
    return {"ready_seconds": ready, "latency_ms": [round(x * 1000, 2) for x in lat]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.events) for _ in range(args.runs)]
    ready = {n: statistics.median(r["ready_seconds"][n] for r in runs) for n in SERVICES}
    lat_median = statistics.median(statistics.median(r["latency_ms"]) for r in runs)
    lat_worst = statistics.median(max(r["latency_ms"]) for r in runs)
    print(f"{'service':<12}{'ready (s), median of runs':>28}")
    for name in SERVICES:
        print(f"{name:<12}{ready[name]:>28.2f}")
    print(f"\nPOST -> notification readable, {args.events} single events per run, {args.runs} runs:")
    print(f"  median {lat_median:.1f} ms   worst {lat_worst:.1f} ms   (medians over runs)")
    print(json.dumps({"runs": runs, "ready_seconds_median": ready, "latency_ms_median": lat_median,
                      "latency_ms_worst_median": lat_worst, "events": args.events}))


if __name__ == "__main__":
    main()
