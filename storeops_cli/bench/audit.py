"""``storeops bench audit``: the audit trail at size, on SQLite and on PostgreSQL.

1. **Sink**: ``--entries`` records (default 1,000,000; a realistic mix of every topic: store events,
   rule runs, exception changes, notifications, manual changes) stored by the audit service's own
   recorder in batches of 1,000, hash chain and checkpoints included, in this process. Entries/s over
   the whole fill, and per tenth of it: a store whose rate falls as its table grows shows here.
2. **Search**: the audit service as a real process on that database; ``--queries`` requests per filter
   (an entity, an entity type, an action, an action prefix, an actor, a source, a time window, a topic,
   the newest first, and combinations), p50 and p95 in ms.
3. **Export**: every entry as NDJSON through ``GET /v1/audit/export``; rows/s and the service's peak
   RSS while it streams (sampled every 100 ms), against its RSS before.
4. **Verify**: ``storeops audit verify`` over every chain; seconds.

Prints a table, then one JSON line. Goals (the audit issue): sink ≥ 20,000 entries/s on PostgreSQL,
search p95 ≤ 100 ms per filter at 1,000,000 entries, verify ≤ 10 s for 1,000,000 entries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from aiokafka.structs import ConsumerRecord

from schemas.envelope import Envelope
from schemas.registry import AUDIT, EXCEPTIONS, NOTIFICATIONS, ORDERS, PRICES, RULE_RUNS, Topic
from services.audit.app import SPEC as AUDIT_SPEC
from services.audit.recorder import Recorder
from services.audit.settings import AuditConfig, AuditSettings
from services.audit.signing import public_key_path
from storeops.consumer import Received
from storeops.db import make_engine, make_sessionmaker
from storeops_cli.audit import verify
from storeops_cli.bench.databases import on_each
from storeops_cli.bench.report import emit, percentile, table
from storeops_cli.bench.stack import BenchStack

BATCH = 1000
T0 = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
STEP = timedelta(milliseconds=100)  # 1,000,000 entries span about 28 hours
PEOPLE = [f"operator-{n}" for n in range(20)]
GOALS = {"sink_entries_per_second_postgresql": 20_000, "search_p95_ms": 100, "verify_seconds_per_million": 10}


class Mix:
    """A store's day as records: half order events, then prices, rule runs, exception changes,
    notifications and people's changes; entities repeat as they do in a store (an order has a few
    records, a sku many)."""

    SHARES: tuple[tuple[str, int], ...] = (("order", 50), ("price", 10), ("run", 10), ("exception", 10),
                                           ("notification", 10), ("manual", 10))

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.kinds = [k for k, share in self.SHARES for _ in range(share)]
        self.offsets: dict[tuple[str, int], int] = {}
        self.orders = 0

    def record(self, n: int) -> tuple[Topic, dict[str, Any]]:
        rng, kind = self.rng, self.kinds[n % len(self.kinds)]
        at = (T0 + STEP * n).isoformat()
        order = f"ord-{rng.randrange(max(1, n // 4) + 1)}"
        sku = f"sku-{rng.randrange(5000)}"
        base = {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "time": at, "schema_version": 1, "depth": 0}
        if kind == "order":
            self.orders += 1
            return ORDERS, {**base, "type": rng.choice(["OrderPlaced", "OrderPaid", "OrderCancelled"]),
                            "source": "shop.example/checkout", "subject": order,
                            "data": {"order_id": order, "customer_id": f"cus-{rng.randrange(20000)}",
                                     "total": f"{rng.randrange(10, 3000)}.00", "currency": "EUR", "lines": []}}
        if kind == "price":
            return PRICES, {**base, "type": "PriceChanged", "source": "shop.example/catalog", "subject": sku,
                            "data": {"sku": sku, "old_price": "20.00", "new_price": "18.00", "currency": "EUR"}}
        rule = {"rule_id": f"rule-{rng.randrange(50)}", "rule_version": rng.randrange(1, 5), "mode": "LIVE"}
        exception_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "run":
            return RULE_RUNS, {**base, "type": "RuleRunRecorded", "source": "storeops/rules", "subject": rule["rule_id"],
                               "data": {"run_id": base["id"], "rule": rule, "event_id": base["id"],
                                        "event_type": "OrderPlaced", "subject": order,
                                        "status": rng.choice(["completed"] * 9 + ["failed"]),
                                        "started_at": at, "steps": [], "action_ids": []}}
        if kind == "exception":
            change = rng.choice(["created", "assigned", "resolved", "escalated"])
            state = {"entity_type": "order", "entity_id": order, "severity": "High", "status": "New",
                     "title": f"Order {order} is late", "version": 1}
            actor = ({"kind": "person", "name": rng.choice(PEOPLE), "role": "operator"} if change in ("assigned", "resolved")
                     else {"kind": "system", "name": "rules"})
            return EXCEPTIONS, {**base, "type": f"Exception{change.title()}", "source": "storeops/exceptions",
                                "subject": exception_id,
                                "data": {"exception_id": exception_id, "kind": change, "actor": actor, "cause": base["id"],
                                         "before": None if change == "created" else state,
                                         "after": {**state, "status": "Resolved" if change == "resolved" else "New"}}}
        if kind == "notification":
            return NOTIFICATIONS, {**base, "type": "NotificationCreated", "source": "storeops/notifier",
                                   "subject": "ops-team",
                                   "data": {"notification_id": base["id"], "recipient": "ops-team", "channel": "in_app",
                                            "title": f"Order {order} is late", "body": "", "severity": "High",
                                            "exception_id": exception_id, "created_at": at}}
        person = rng.choice(PEOPLE)
        return AUDIT, {**base, "type": "AuditEntryRecorded", "source": "storeops/notifier", "subject": f"sub-{n % 300}",
                       "data": {"action": rng.choice(["subscription.changed", "notification.read", "credential.replaced"]),
                                "actor": {"kind": "person", "name": person, "role": "operator", "token_id": "t-1"},
                                "entities": [{"type": "subscription", "id": f"sub-{n % 300}"}],
                                "before": {"channels": ["in_app"]}, "after": {"channels": ["in_app", "email"]}}}

    def batch(self, start: int, size: int) -> list[Received]:
        items = []
        for n in range(start, start + size):
            topic, record = self.record(n)
            partition = n % topic.partitions
            offset = self.offsets[(topic.name, partition)] = self.offsets.get((topic.name, partition), -1) + 1
            value = orjson.dumps(record)
            key = record["subject"].encode()
            consumer = ConsumerRecord(topic.name, partition, offset, 0, 0, key, value, None, len(key), len(value), ())
            items.append(Received(consumer, topic, Envelope.model_validate_json(value)))
        return items


def _settings(url: str, data: Path) -> AuditSettings:
    return AuditSettings(database_url=url, data_dir=data, audit=AuditConfig())


async def sink(url: str, data: Path, entries: int) -> dict[str, Any]:
    """Store ``entries`` records through the recorder; the rate over all and per tenth."""
    engine = make_engine(url)
    recorder = Recorder(make_sessionmaker(engine), _settings(url, data))
    mix = Mix()
    spent, tenths, tenth_spent, done = 0.0, [], 0.0, 0
    try:
        while done < entries:
            size = min(BATCH, entries - done)
            batch = mix.batch(done, size)
            t = time.perf_counter()
            stored = await recorder.record(batch)
            elapsed = time.perf_counter() - t
            assert stored == size, f"stored {stored} of {size}"
            spent, tenth_spent, done = spent + elapsed, tenth_spent + elapsed, done + size
            if done % max(entries // 10, BATCH) == 0 or done == entries:
                tenths.append(round(max(entries // 10, BATCH) / tenth_spent) if tenth_spent else None)
                tenth_spent = 0.0
    finally:
        await engine.dispose()
    return {"entries": entries, "seconds": round(spent, 2), "entries_per_second": round(entries / spent),
            "per_tenth_entries_per_second": tenths}


def queries(rng: random.Random, entries: int) -> dict[str, Iterator[dict[str, Any]]]:
    """Each filter's requests: values picked as a person would (an order that exists, a real window)."""
    def window(hours: float) -> dict[str, str]:
        start = T0 + STEP * rng.randrange(entries)
        return {"since": start.isoformat(), "until": (start + timedelta(hours=hours)).isoformat()}

    def forever(make: Any) -> Iterator[dict[str, Any]]:
        while True:
            yield make()

    return {
        "entity (an order)": forever(lambda: {"entity": f"ord-{rng.randrange(max(1, entries // 8))}"}),
        "entity_type=sku": forever(lambda: {"entity_type": "sku"}),
        "action=exception.resolved": forever(lambda: {"action": "exception.resolved"}),
        "action prefix rule_run.": forever(lambda: {"action": "rule_run."}),
        "actor (a person)": forever(lambda: {"actor": rng.choice(PEOPLE)}),
        "actor_kind=person": forever(lambda: {"actor_kind": "person"}),
        "source=storeops/notifier": forever(lambda: {"source": "storeops/notifier"}),
        "time window (1 h)": forever(lambda: window(1)),
        "topic=exceptions": forever(lambda: {"topic": EXCEPTIONS.name}),
        "newest first": forever(lambda: {"order": "newest"}),
        "action failed rule runs, newest": forever(lambda: {"action": "rule_run.failed", "order": "newest"}),
        "entity_type + time window": forever(lambda: {"entity_type": "order", **window(2)}),
        "actor + action prefix": forever(lambda: {"actor": rng.choice(PEOPLE), "action": "exception."}),
    }


def search(client: httpx.Client, url: str, entries: int, count: int) -> dict[str, Any]:
    rng = random.Random(9)
    figures = {}
    for name, params in queries(rng, entries).items():
        for _ in range(2):  # warm
            client.get(f"{url}/v1/audit", params=next(params)).raise_for_status()
        times, found = [], 0
        for _ in range(count):
            t = time.perf_counter()
            response = client.get(f"{url}/v1/audit", params={**next(params), "limit": 100})
            times.append((time.perf_counter() - t) * 1000)
            response.raise_for_status()
            found += len(response.json()["items"])
        figures[name] = {"p50_ms": round(percentile(times, 50), 1), "p95_ms": round(percentile(times, 95), 1),
                         "items_per_page": round(found / count, 1)}
    return figures


def export(client: httpx.Client, url: str, pid: int) -> dict[str, Any]:
    process = psutil.Process(pid)
    before = process.memory_info().rss
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            with contextlib.suppress(psutil.Error):
                peak.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows = size = 0
    t = time.perf_counter()
    with client.stream("GET", f"{url}/v1/audit/export", params={"format": "ndjson"}, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            rows += chunk.count(b"\n")
            size += len(chunk)
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds),
            "megabytes": round(size / 1e6, 1), "rss_before_mb": round(before / 1e6, 1),
            "rss_peak_mb": round(max(peak) / 1e6, 1)}


def verify_all(url: str, data: Path) -> dict[str, Any]:
    from services.audit.signing import key_id, load_public_key
    key = load_public_key(public_key_path(_settings(url, data).signing_key_file()))
    out = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = asyncio.run(verify(url, {key_id(key): key}))
    seconds = time.perf_counter() - t
    summary = orjson.loads(out.getvalue().strip().splitlines()[-1])
    return {"exit_status": status, "checked": summary["checked"], "chains": summary["chains"],
            "checkpoints": summary["checkpoints"], "first_bad": summary["first_bad"], "seconds": round(seconds, 2)}


def run_on(kind: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="storeops-bench-audit-") as folder:
        data = Path(folder)
        AUDIT_SPEC.migrate(url)
        print(f"{kind}: storing {args.entries:,} entries...", flush=True)
        stored = asyncio.run(sink(url, data, args.entries))
        print(f"{kind}: sink {stored['entries_per_second']:,} entries/s; searching...", flush=True)
        key_file = _settings(url, data).signing_key_file()
        stack = BenchStack.start(only=["audit"], database_url=url, live_seeds=False,
                                 env_extra={"STOREOPS_AUDIT__SIGNING_KEY_FILE": str(key_file)})
        try:
            audit_url = stack.urls["audit"]
            with stack.client("audit", timeout=60) as client:
                searched = search(client, audit_url, args.entries, args.queries)
                print(f"{kind}: exporting...", flush=True)
                pid = stack.pid("audit")
                assert pid is not None
                exported = export(client, audit_url, pid)
        finally:
            stack.stop()
        print(f"{kind}: verifying...", flush=True)
        verified = verify_all(url, data)
    return {"sink": stored, "search": searched, "export": exported, "verify": verified}


def run(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {"bench": "audit", "settings": {"entries": args.entries, "queries": args.queries,
                                                              "batch": BATCH}, "goals": GOALS}
    def on(kind: str, url: str | None) -> dict[str, Any]:
        if url is not None:
            return run_on(kind, url, args)
        with tempfile.TemporaryDirectory(prefix="storeops-bench-audit-db-") as folder:
            return run_on(kind, f"sqlite+aiosqlite:///{folder}/audit.db", args)

    figures |= on_each(args.databases, args.postgres, on)
    rows: list[tuple[str, Any]] = []
    for kind in ("sqlite", "postgresql"):
        if (f := figures.get(kind)) is None:
            continue
        rows += [(f"{kind}: sink, entries/s over {f['sink']['entries']:,}", f["sink"]["entries_per_second"]),
                 (f"{kind}: sink, entries/s per tenth", " ".join(f"{r:,}" for r in f["sink"]["per_tenth_entries_per_second"])),
                 *((f"{kind}: search p50 / p95 ms, {name}", f"{s['p50_ms']} / {s['p95_ms']}")
                   for name, s in f["search"].items()),
                 (f"{kind}: export rows/s ({f['export']['rows']:,} rows, {f['export']['megabytes']} MB)",
                  f["export"]["rows_per_second"]),
                 (f"{kind}: export RSS before / peak (MB)", f"{f['export']['rss_before_mb']} / {f['export']['rss_peak_mb']}"),
                 (f"{kind}: verify seconds ({f['verify']['checked']:,} entries, {f['verify']['chains']} chains)",
                  f["verify"]["seconds"])]
    emit(table(["figure", "value"], rows), figures)
    bad = [k for k in ("sqlite", "postgresql") if k in figures and figures[k]["verify"]["exit_status"] != 0]
    return 1 if bad else 0
