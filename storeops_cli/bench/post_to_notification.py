"""Ready time of each service and POST → notification-readable latency, one event at a time.

Starts the broker and the five services (``BenchStack``: SQLite files in a
temporary folder unless ``DATABASE_URL`` is set, free ports), reports how long
each took from process start to ``/readyz`` 200, then posts N single
high-value orders one after another and times each from the POST until its
notification is readable in the feed (polled every 2 ms). Every request carries
the stack's admin token.

    python -m storeops_cli.bench.post_to_notification [--events 20] [--runs 3]

Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx

from services import SERVICES
from storeops_cli.bench.load import HIGH_TOTAL
from storeops_cli.bench.report import emit, median, table
from storeops_cli.bench.stack import BenchStack


def resume(cursor: str | None, page: dict) -> str | None:
    """Where a reader of the feed goes on from: the last item it saw (each item carries its cursor)."""
    return page["items"][-1]["cursor"] if page["items"] else cursor


def latencies(stack: BenchStack, events: int) -> list[float]:
    """Milliseconds from each POST until its notification is in the feed."""
    feed = f"{stack.urls['notifier']}/v1/notifications"
    out = []
    with httpx.Client(timeout=10, headers=stack.headers) as client:
        cursor = resume(None, client.get(feed, params={"limit": 1000}).json())
        for _ in range(events):
            order_id = f"ord-{uuid.uuid4().hex[:10]}"
            event = {"type": "OrderPlaced", "data": {"order_id": order_id, "customer_id": "c", "total": HIGH_TOTAL, "currency": "EUR"}}
            t0 = time.perf_counter()
            assert client.post(f"{stack.urls['ingest']}/v1/events/orders", json=event).status_code == 202
            while True:
                page = client.get(feed, params={"cursor": cursor} if cursor else {}).json()
                if any(order_id in n["title"] for n in page["items"]):
                    break
                time.sleep(0.002)
            out.append(round((time.perf_counter() - t0) * 1000, 2))
            cursor = resume(cursor, page)
    return out


def one_run(events: int) -> dict:
    stack = BenchStack.start()
    try:
        return {"ready_seconds": stack.ready_seconds, "latency_ms": latencies(stack, events)}
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.events) for _ in range(args.runs)]
    ready = {n: median([r["ready_seconds"][n] for r in runs]) for n in SERVICES}
    lat_median = median([median(r["latency_ms"]) for r in runs])
    lat_worst = median([max(r["latency_ms"]) for r in runs])
    rows = [(f"{n}: start -> /readyz 200 (s)", ready[n]) for n in SERVICES]
    rows += [(f"POST -> notification readable, median of {args.events} (ms)", lat_median),
             (f"POST -> notification readable, worst of {args.events} (ms)", lat_worst)]
    emit(table(["figure", f"median of {args.runs} runs"], rows),
         {"runs": runs, "ready_seconds_median": ready, "latency_ms_median": lat_median,
          "latency_ms_worst_median": lat_worst, "events": args.events})


if __name__ == "__main__":
    main()
