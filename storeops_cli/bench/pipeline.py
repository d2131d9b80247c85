"""``storeops bench pipeline``: throughput and latency through all five services.

Every run starts a fresh stack, so each run's stores start empty and runs are
comparable; the spread between runs is in the JSON.

Figures, each run against the same broker in the same run:
- the broker's own limit (``storeops bench broker``'s measure) and the ratios to it;
- the rules worker alone (only the rules service running): events/s from the
  first event produced until it has evaluated all of them;
- sustained throughput of the whole pipeline, counted where the work ends
  (audit rows, exceptions, notifications, from the services' own counters),
  with events entering straight on the topics and/or posted to ingest in batches;
- latency at a fixed offered load (default half the sustained maximum, as
  background events on the topics) of probe orders posted one at a time: from
  ingest's 202 to the exception readable and to the notification readable;
- CPU seconds and peak RSS per service, idle and under load.

Every request to a service carries the stack's admin token, as any client's would.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from sqlalchemy.engine import make_url

from services.ingest.api import TOPICS
from storeops.kafka import make_producer
from storeops.settings import KafkaSettings
from storeops_cli.bench.load import HIGH_TOTAL, Mix
from storeops_cli.bench.post_to_notification import resume
from storeops_cli.bench.report import emit, median, percentile, table
from storeops_cli.bench.stack import BenchStack, ProcessSampler, wait_for

# Counters that say where the work ends, per service.
DONE = {
    "audit": "storeops_audit_records_stored_total",
    "exceptions": "storeops_exceptions_created_total",
    "notifier": "storeops_notifier_notifications_stored_total",
    "rules": "storeops_rules_events_evaluated_total",
}


def encoded(mix: Mix, n: int) -> tuple[str, bytes, bytes]:
    kind, event = mix.event(n)
    topic = TOPICS[kind]
    key, value = topic.encode(topic.adapter.validate_python(event))
    return topic.name, key, value


async def produce_all(stack: BenchStack, records: list[tuple[str, bytes, bytes]], rate: float | None = None) -> None:
    """Produce ``records`` as fast as the broker takes them, or paced to ``rate`` per second.

    The services' producer options (acks=all, idempotence per broker flavor),
    batched for throughput like ``bench broker``'s best setting.
    """
    flavor = stack.broker.flavor if stack.broker else "kafka"
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers, flavor=flavor, linger_ms=5, max_batch_bytes=262144)
    producer = make_producer(kafka, "bench-pipeline")
    await producer.start()
    try:
        t0, futures = time.perf_counter(), []
        for i, (topic, key, value) in enumerate(records):
            futures.append(await producer.send(topic, value, key=key))
            if rate and i % 50 == 49:
                await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def counters(stack: BenchStack) -> dict[str, float]:
    return {svc: stack.metrics(svc).get(name, 0.0) for svc, name in DONE.items() if svc in stack.urls}


def expected_work(events: int, raising: int) -> dict[str, float]:
    """What each counter must grow by: audit sees events, actions, runs, changes, notifications."""
    return {"audit": events + 4 * raising, "exceptions": raising, "notifier": raising, "rules": events}


def throughput(stack: BenchStack, events: int, mix: Mix, entry: str) -> dict[str, Any]:
    """Push ``events`` in, wait until every stage has done its part; events/s end to end."""
    before = counters(stack)
    want = {svc: n for svc, n in expected_work(events, sum(mix.raises(n) for n in range(events))).items() if svc in before}
    records = [encoded(mix, n) for n in range(events)] if entry == "topics" else None
    bodies = _http_batches(mix, events) if entry == "http" else None
    pids = {name: stack.pid(name) for name in stack.urls}
    with ProcessSampler(pids) as sampler:
        t0 = time.perf_counter()
        if records is not None:
            asyncio.run(produce_all(stack, records))
        else:
            asyncio.run(_post_batches(stack, bodies))
        entered = time.perf_counter() - t0
        finished: dict[str, float] = {}

        def all_done() -> bool:
            now = counters(stack)
            for svc in want:
                if svc not in finished and now.get(svc, 0) - before.get(svc, 0) >= want[svc]:
                    finished[svc] = time.perf_counter() - t0
            return len(finished) == len(want)

        complete = wait_for(all_done, timeout=600, interval=0.1)
    seconds = max(finished.values()) if complete else float("nan")
    return {"entry": entry, "events": events, "complete": complete, "seconds": round(seconds, 3),
            "eps": round(events / seconds, 1), "entered_seconds": round(entered, 3),
            "stage_done_seconds": {k: round(v, 3) for k, v in finished.items()}, "load": sampler.figures()}


def _http_batches(mix: Mix, events: int, size: int = 500) -> list[tuple[str, list[dict]]]:
    """Batches of one kind each (ingest takes one topic per request)."""
    by_kind: dict[str, list[dict]] = {}
    for n in range(events):
        kind, event = mix.event(n)
        by_kind.setdefault(kind, []).append(event)
    return [(k, evs[i:i + size]) for k, evs in by_kind.items() for i in range(0, len(evs), size)]


async def _post_batches(stack: BenchStack, bodies: list[tuple[str, list[dict]]], concurrency: int = 4) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with stack.async_client("ingest", timeout=60) as client:
        async def worker() -> None:
            while not queue.empty():
                kind, batch = queue.get_nowait()
                response = await client.post(f"/v1/events/{kind}", json=batch)
                if response.status_code != 202:
                    raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:300]}")
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def rules_alone(events: int, mix: Mix) -> dict[str, Any]:
    """Only the rules service, on a broker of its own; the broker's limit measured beside it."""
    from storeops_cli.bench.broker import measure

    stack = BenchStack.start(only=("rules",))
    try:
        limit = measure(stack.bootstrap_servers, events, stack.broker.flavor if stack.broker else "kafka")
        result = throughput(stack, events, mix, "topics")
        rules_eps = events / result["stage_done_seconds"]["rules"] if result["complete"] else float("nan")
        return {"eps": round(rules_eps, 1), "broker": limit, "load": result["load"],
                "ratio_to_consume_produce": round(rules_eps / limit["consume_produce_eps"], 3)}
    finally:
        stack.stop()


async def _latency(stack: BenchStack, rate: float, seconds: float, mix: Mix, probe_rate: float = 10.0) -> dict[str, list[float]]:
    """Probe orders posted one at a time over a background load of ``rate`` events/s on the topics."""
    background = [encoded(mix, n) for n in range(int(max(rate - probe_rate, 0) * seconds))]
    pending: dict[str, float] = {}  # order id → time of ingest's 202
    to_exception: list[float] = []
    to_notification: list[float] = []
    stop = asyncio.Event()
    async with stack.async_client(timeout=30) as client:
        async def probe() -> None:
            order_id = f"ord-probe-{uuid.uuid4().hex[:12]}"
            event = {"type": "OrderPlaced", "data": {"order_id": order_id, "customer_id": "probe", "total": HIGH_TOTAL, "currency": "EUR"}}
            response = await client.post(f"{stack.urls['ingest']}/v1/events/orders", json=event)
            acked = time.perf_counter()
            if response.status_code != 202:
                raise RuntimeError(f"ingest answered {response.status_code}")
            pending[order_id] = acked
            while not (await client.get(f"{stack.urls['exceptions']}/v1/exceptions", params={"entity_id": order_id})).json()["items"]:
                await asyncio.sleep(0.01)
            to_exception.append(time.perf_counter() - acked)

        async def feed() -> None:
            url = f"{stack.urls['notifier']}/v1/notifications"
            cursor = resume(None, (await client.get(url, params={"limit": 1000})).json())
            while not (stop.is_set() and not pending):
                page = (await client.get(url, params={"limit": 1000, **({"cursor": cursor} if cursor else {})})).json()
                now = time.perf_counter()
                for item in page["items"]:
                    for order_id in [o for o in pending if o in item["title"]]:
                        to_notification.append(now - pending.pop(order_id))
                cursor = resume(cursor, page)
                await asyncio.sleep(0.01)

        feeder = asyncio.create_task(feed())
        producer = asyncio.create_task(produce_all(stack, background, rate=max(rate - probe_rate, 1)))
        probes = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            probes.append(asyncio.create_task(probe()))
            await asyncio.sleep(1 / probe_rate)
        await asyncio.gather(producer, *probes)
        stop.set()
        await asyncio.wait_for(feeder, 60)
    return {"to_exception_ms": [x * 1000 for x in to_exception], "to_notification_ms": [x * 1000 for x in to_notification]}


def latency(stack: BenchStack, rate: float, seconds: float, mix: Mix) -> dict[str, Any]:
    samples = asyncio.run(_latency(stack, rate, seconds, mix))
    out: dict[str, Any] = {"offered_eps": round(rate, 1), "seconds": seconds, "probes": len(samples["to_exception_ms"])}
    for name, values in samples.items():
        out[name] = {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)}
    return out


def idle(stack: BenchStack, seconds: float = 10.0) -> dict[str, Any]:
    time.sleep(2.0)  # let start-up work settle
    with ProcessSampler({name: stack.pid(name) for name in stack.urls}) as sampler:
        time.sleep(seconds)
    return sampler.figures()


def one_run(stack: BenchStack, args: argparse.Namespace, n: int) -> dict[str, Any]:
    from storeops_cli.bench.broker import measure

    mix = Mix(args.exception_share, seed=n)
    fig: dict[str, Any] = {"rules_alone": rules_alone(args.events, mix)}
    fig["broker"] = measure(stack.bootstrap_servers, args.events, stack.broker.flavor if stack.broker else "kafka")
    entries = ["topics", "http"] if args.entry == "both" else [args.entry]
    fig["throughput"] = {entry: throughput(stack, args.events, mix, entry) for entry in entries}
    best = max(t["eps"] for t in fig["throughput"].values())
    fig["ratio_topics_to_produce"] = (round(fig["throughput"]["topics"]["eps"] / fig["broker"]["produce_eps"], 3)
                                      if "topics" in fig["throughput"] else None)
    fig["latency"] = latency(stack, args.latency_rate or best / 2, args.latency_seconds, mix)
    return fig


def run(args: argparse.Namespace) -> int:
    """Each run on a fresh stack (runs stay comparable: the stores start empty);
    idle figures from the first. ``--attach`` measures the running services instead."""
    from storeops.settings import Settings

    runs: list[dict[str, Any]] = []
    idle_figures: dict[str, Any] = {}
    database = "attached"
    for n in range(args.runs):
        stack = BenchStack.attach(Settings().kafka.bootstrap_servers) if args.attach else BenchStack.start()
        try:
            if stack.owned:
                database = make_url(stack.database_url_for("audit")).get_backend_name()
            idle_figures = idle_figures or idle(stack)
            runs.append(one_run(stack, args, n))
        finally:
            stack.stop()
        print(f"run {n + 1}/{args.runs} done", flush=True)
    figures = summarize(runs, args)
    figures["idle"] = idle_figures
    figures["database"] = database
    emit(render(figures), figures)
    return 0


def _med(runs: list[dict], *path: str) -> float:
    values = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            values.append(float(v))
    return round(median(values), 3) if values else float("nan")


def summarize(runs: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    lat = {f"{k}_{q}": _med(runs, "latency", k, q) for k in ("to_exception_ms", "to_notification_ms") for q in ("p50", "p95", "p99")}
    services = sorted({s for r in runs for t in r["throughput"].values() for s in t["load"]})
    load_entry = "topics" if "topics" in runs[0]["throughput"] else "http"
    return {
        "events": args.events, "runs": len(runs), "exception_share": args.exception_share, "entry": args.entry,
        "median": {
            "broker_produce_eps": _med(runs, "broker", "produce_eps"),
            "broker_consume_eps": _med(runs, "broker", "consume_eps"),
            "broker_consume_produce_eps": _med(runs, "broker", "consume_produce_eps"),
            "rules_alone_eps": _med(runs, "rules_alone", "eps"),
            "rules_alone_ratio_to_its_broker_consume_produce": _med(runs, "rules_alone", "ratio_to_consume_produce"),
            "pipeline_topics_eps": _med(runs, "throughput", "topics", "eps"),
            "pipeline_http_eps": _med(runs, "throughput", "http", "eps"),
            "pipeline_topics_ratio_to_produce": _med(runs, "ratio_topics_to_produce"),
            "latency_offered_eps": _med(runs, "latency", "offered_eps"),
            **lat,
            "load_entry": load_entry,
            "load": {s: {k: _med(runs, "throughput", load_entry, "load", s, k) for k in ("cpu_seconds", "cpu_percent", "peak_rss_mb")}
                     for s in services},
        },
        "per_run": runs,
    }


def render(fig: dict[str, Any]) -> str:
    m = fig["median"]
    rows = [
        ("broker: produce, acks=all (ev/s)", m["broker_produce_eps"], ""),
        ("broker: consume (ev/s)", m["broker_consume_eps"], ""),
        ("broker: consume -> produce (ev/s)", m["broker_consume_produce_eps"], ""),
        ("rules worker alone (ev/s)", m["rules_alone_eps"],
         f"x{m['rules_alone_ratio_to_its_broker_consume_produce']} of consume->produce; target x0.25"),
        ("pipeline, events on topics (ev/s)", m["pipeline_topics_eps"],
         f"x{m['pipeline_topics_ratio_to_produce']} of produce; target x0.10"),
        ("pipeline, events via ingest HTTP batches (ev/s)", m["pipeline_http_eps"], ""),
        (f"POST -> exception readable p50/p95/p99 (ms) at {m['latency_offered_eps']:.0f} ev/s",
         f"{m['to_exception_ms_p50']}/{m['to_exception_ms_p95']}/{m['to_exception_ms_p99']}", "target p99 <= 150"),
        ("POST -> notification readable p50/p95/p99 (ms)",
         f"{m['to_notification_ms_p50']}/{m['to_notification_ms_p95']}/{m['to_notification_ms_p99']}", "target p99 <= 250"),
    ]
    head = f"services' database: {fig['database']}\n" + table(["figure", f"median of {fig['runs']}", "against"], rows)
    services = sorted(set(fig["idle"]) | set(m["load"]))
    per_service = table(
        ["service", "idle cpu %", "idle rss MB", f"load cpu s ({m['load_entry']})", "load cpu %", "load peak rss MB"],
        [(s, fig["idle"].get(s, {}).get("cpu_percent", float("nan")), fig["idle"].get(s, {}).get("peak_rss_mb", float("nan")),
          m["load"].get(s, {}).get("cpu_seconds", float("nan")), m["load"].get(s, {}).get("cpu_percent", float("nan")),
          m["load"].get(s, {}).get("peak_rss_mb", float("nan"))) for s in services],
    )
    note = ("Latency probes are single POSTs to ingest, polled every 10 ms; the background load at half the sustained maximum "
            "goes straight onto the event topics. Idle: 10 s after start-up settled; idle target < 1% CPU per service.")
    return f"{head}\n\n{per_service}\n\n{note}"
