"""``storeops bench queue``: the exception queue's API over a large backlog of open exceptions.

Targets (the project's issue): the queue's list query answers in p95 < 50 ms with
100,000 open exceptions in PostgreSQL, and one bulk request resolves 1,000 of them
in under 1 s.

Database, said in the output: ``DATABASE_URL`` when set (the rows seeded there are
deleted at the end); else a fresh ``storeops_bench_<random>`` database on the local
PostgreSQL (``postgresql://postgres@127.0.0.1:5432``) if it answers, dropped at the
end (also on Ctrl-C and SIGTERM); else a SQLite file in a temporary folder.

Seeding (once, timed): ``--exceptions`` open exceptions built as ``ExceptionState``
objects with a realistic spread (all ten types with their entity kinds and
titles, four severities weighted toward Medium, ~50 assignees and an
unassigned share, New / In Progress / Snoozed, impacts, created over 30 days),
turned into rows by the store's own ``row_of`` and inserted with a plain
executemany in chunks of ``CHUNK`` through the migrated schema; then ANALYZE.
New exceptions get an SLA deadline beyond the benchmark and snoozes end in the
future, so the service's SLA/wake sweep finds nothing to do (a sweep escalating
thousands of rows mid-measurement would be measured instead of the queue).

Then only the exceptions service runs (``BenchStack``, a real process, with the
launcher's broker: ``KAFKA_BOOTSTRAP_SERVERS``, else Docker, else embedded; its
consumer group is the bench's own, so it never takes partitions from another
deployment on a shared broker). From this process, one keep-alive ``httpx``
client with the stack's admin token (the bulk changes' actor, "bench") sends
requests one at a time; each of ``--runs`` runs measures:

- reads, ``--queries`` each after ``WARMUP`` untimed ones (latency = request
  sent to body read): the default queue page (``limit=50``), a page deep in the
  queue (the cursor after following ``next_cursor`` ``DEEP_PAGES`` pages),
  type+severity, one assignee, a text search with many matches and one with a
  handful, one entity id, and ``/counts``;
- bulk: one ``POST /v1/exceptions/bulk`` resolving ``--bulk`` New exceptions
  never touched before (ids and versions read from the database just before),
  then one reassigning ``--bulk`` other fresh New ones; wall time of the request,
  and ``done`` must equal ``--bulk``.

Figures are medians over the runs with every run's value beside them; the
queue shrinks by ``--bulk`` resolved exceptions per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import delete, func, select, text
from sqlalchemy.engine import make_url

from schemas.actions import CallbackCapture, HealCondition, RuleRef
from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.exceptions import ExceptionState, ExceptionStatus, Snooze
from storeops.settings import normalize_database_url
from storeops_cli.bench.report import emit, median, percentile, table
from storeops_cli.bench.stack import BenchStack

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_P95_MS = 50.0
TARGET_BULK_SECONDS = 1.0
WARMUP = 5  # untimed requests before each read's measured ones
CHUNK = 5000  # rows per executemany while seeding
PAGE = 50  # the UI's page size
DEEP_PAGES = 20  # pages followed by cursor to reach "deep in the queue"

# --- the backlog ------------------------------------------------------------------

TYPE_WEIGHTS = {
    ExceptionType.INVENTORY: 20, ExceptionType.ORDER: 15, ExceptionType.PRICING: 10, ExceptionType.LISTING: 8,
    ExceptionType.FRAUD_RISK: 10, ExceptionType.ADDRESS_PROBLEM: 10, ExceptionType.RETURN_OR_DAMAGE: 10,
    ExceptionType.PAYMENT_MISMATCH: 5, ExceptionType.PAYMENT_CALLBACK_FAILURE: 5, ExceptionType.VIP: 7,
}
SEVERITY_WEIGHTS = {Severity.CRITICAL: 5, Severity.HIGH: 20, Severity.MEDIUM: 45, Severity.LOW: 30}
STATUS_WEIGHTS = {ExceptionStatus.NEW: 60, ExceptionStatus.IN_PROGRESS: 25, ExceptionStatus.SNOOZED: 15}
# share of each status with someone's name on it
ASSIGNED_SHARE = {ExceptionStatus.NEW: 0.3, ExceptionStatus.IN_PROGRESS: 1.0, ExceptionStatus.SNOOZED: 0.7}
PEOPLE = [f"{first}.{last}" for first, last in zip(
    ("ana", "ben", "chloe", "dev", "elif", "farid", "greta", "hugo", "ines", "jonas") * 5,
    [s for s in ("meyer", "okafor", "rossi", "tanaka", "silva") for _ in range(10)], strict=True,
)]
LOCATIONS = ("berlin-dc", "leipzig-dc", "store-hamburg", "store-munich")
GATEWAYS = ("stripe", "adyen", "paypal", "mollie")
COMMON_TEXT = "below cost"  # in every pricing title: a search with many matches
TAG_LEN = 4  # hex characters of the per-seed tag in entity ids


def _weighted(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _money(rng: random.Random, median_eur: float) -> Decimal:
    return Decimal(f"{rng.lognormvariate(0, 0.9) * median_eur:.2f}")


def _title_and_more(kind: ExceptionType, rng: random.Random, ids: Callable[[str], str]) -> dict[str, Any]:
    """Entity, title, impact, heal condition and callback as the rules would raise them."""
    if kind is ExceptionType.PRICING:
        sku, price = ids("SKU"), _money(rng, 30)
        cost = (price * Decimal(f"{1 + rng.random() / 2:.2f}")).quantize(Decimal("0.01"))
        return {"entity_type": EntityType.SKU, "entity_id": sku,
                "title": f"Price of {sku} below cost: sells at {price} EUR, costs {cost} EUR",
                "impact": (cost - price) * rng.randint(5, 200)}
    if kind is ExceptionType.INVENTORY:
        sku, threshold = ids("SKU"), rng.choice((5, 10, 20, 50))
        on_hand = rng.randint(0, threshold - 1)
        return {"entity_type": EntityType.SKU, "entity_id": sku,
                "title": f"Low stock for {sku} at {rng.choice(LOCATIONS)}: {on_hand} on hand, threshold {threshold}",
                "impact": _money(rng, 400) if rng.random() < 0.5 else None,
                "heal": HealCondition(event_type="StockChanged", field="on_hand", at_least=Decimal(threshold))}
    if kind is ExceptionType.LISTING:
        sku = ids("SKU")
        problem = rng.choice(("has no images", "has an empty description", "is missing its GTIN", "shows a broken variant"))
        return {"entity_type": EntityType.SKU, "entity_id": sku, "title": f"Listing for {sku} {problem}",
                "impact": None}
    if kind is ExceptionType.ORDER:
        order = ids("ord")
        return {"entity_type": EntityType.ORDER, "entity_id": order,
                "title": f"Order {order} not shipped {rng.randint(3, 14)} days after payment", "impact": _money(rng, 90)}
    if kind is ExceptionType.PAYMENT_MISMATCH:
        order, total = ids("ord"), _money(rng, 120)
        captured = (total * Decimal(f"{rng.uniform(0.5, 0.99):.2f}")).quantize(Decimal("0.01"))
        return {"entity_type": EntityType.ORDER, "entity_id": order,
                "title": f"Captured {captured} EUR but order {order} totals {total} EUR", "impact": total - captured}
    if kind is ExceptionType.PAYMENT_CALLBACK_FAILURE:
        order, gateway = ids("ord"), rng.choice(GATEWAYS)
        return {"entity_type": EntityType.ORDER, "entity_id": order,
                "title": f"Payment callback from {gateway} failed for order {order}", "impact": _money(rng, 90),
                "heal": HealCondition(event_type="PaymentCaptured"),
                "callback": CallbackCapture(gateway=gateway, error="signature mismatch",
                                            raw_callback=f'{{"order":"{order}","status":"captured"}}')}
    if kind is ExceptionType.FRAUD_RISK:
        order = ids("ord")
        return {"entity_type": EntityType.ORDER, "entity_id": order,
                "title": f"Order {order} flagged: risk score {rng.randint(70, 99)}, billing and shipping countries differ",
                "impact": _money(rng, 250)}
    if kind is ExceptionType.ADDRESS_PROBLEM:
        shipment = ids("shp")
        reason = rng.choice(("unknown street", "postcode does not match city", "no house number"))
        return {"entity_type": EntityType.SHIPMENT, "entity_id": shipment,
                "title": f"Carrier rejected the address of shipment {shipment}: {reason}", "impact": None}
    if kind is ExceptionType.RETURN_OR_DAMAGE:
        order = ids("ord")
        return {"entity_type": EntityType.ORDER, "entity_id": order,
                "title": f"Return for order {order} arrived damaged", "impact": _money(rng, 70)}
    order, total = ids("ord"), _money(rng, 1500) + 1000
    return {"entity_type": EntityType.ORDER, "entity_id": order,
            "title": f"High-value order {order}: {total} EUR", "impact": total}


def build_states(count: int, seed: int = 7, now: datetime | None = None) -> list[ExceptionState]:
    """``count`` open exceptions, distinct per (type, entity) like the queue keeps them."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    tag = uuid.uuid4().hex[:TAG_LEN]  # a second run against the same DATABASE_URL gets new entities
    pool = max(count, 1000)
    used: set[tuple[ExceptionType, str]] = set()
    states: list[ExceptionState] = []
    people = rng.choices(PEOPLE, weights=[1 / (i + 1) ** 0.7 for i in range(len(PEOPLE))], k=count)
    while len(states) < count:
        kind = _weighted(rng, TYPE_WEIGHTS)
        # orders share one pool across types (a fraud flag and a VIP on one order), skus too
        ids = lambda prefix: f"{prefix}-{tag}{rng.randrange(pool):07d}"  # noqa: E731
        spec = _title_and_more(kind, rng, ids)
        if (kind, spec["entity_id"]) in used:
            continue
        used.add((kind, spec["entity_id"]))
        status = _weighted(rng, STATUS_WEIGHTS)
        severity = _weighted(rng, SEVERITY_WEIGHTS)
        created = now - timedelta(seconds=rng.uniform(600, 30 * 86400))
        occurrences = min(1 + int(rng.expovariate(1.5)), 20)
        last_seen = created + (now - created) * rng.random() if occurrences > 1 else created
        by_person = rng.random() < 0.05
        states.append(ExceptionState(
            id=uuid.UUID(int=rng.getrandbits(128), version=4), version=1, type=kind, severity=severity, status=status,
            currency="EUR" if spec.get("impact") is not None else None,
            source=None if by_person else RuleRef(rule_id=f"{kind.value.replace('_', '-')}-check", rule_version=1, mode="LIVE"),
            raised_by=Actor(kind="person", name=rng.choice(PEOPLE)) if by_person else None,
            evidence=[uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(min(occurrences, 3))],
            occurrences=occurrences, first_seen=created, last_seen=last_seen,
            assignee=people[len(states)] if rng.random() < ASSIGNED_SHARE[status] else None,
            created_at=created, updated_at=last_seen,
            # beyond the benchmark: the sweep must not escalate the backlog while it is measured
            sla_due_at=now + timedelta(days=rng.uniform(1, 7)) if status is ExceptionStatus.NEW else None,
            snooze=(Snooze(until=now + timedelta(hours=rng.uniform(2, 14 * 24)) if rng.random() < 0.7 else None,
                           until_event=rng.choice(("PaymentCaptured", "StockChanged", "OrderPaid")))
                    if status is ExceptionStatus.SNOOZED else None),
            **spec,
        ))
    return states


# --- the database -------------------------------------------------------------------


@dataclass
class Database:
    url: str  # async driver URL
    source: str  # "DATABASE_URL" | "created" | "sqlite"
    drop: Callable[[], None] | None = None
    seeded: list[uuid.UUID] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    @property
    def shown(self) -> str:
        return make_url(self.url).set(drivername=self.backend).render_as_string(hide_password=True)

    def describe(self) -> str:
        after = {"DATABASE_URL": "the seeded rows are deleted at the end", "created": "created here, dropped at the end",
                 "sqlite": "a temporary file (no PostgreSQL answered at 127.0.0.1:5432)"}[self.source]
        return f"database: {self.backend} {self.shown} ({'from DATABASE_URL; ' if self.source == 'DATABASE_URL' else ''}{after})"


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def open_database(folder: Path) -> Database:
    given = os.environ.get("DATABASE_URL")
    if given:
        return Database(normalize_database_url(given), "DATABASE_URL")
    if asyncio.run(_answers(LOCAL_POSTGRES)):
        name = f"storeops_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(LOCAL_POSTGRES, f'CREATE DATABASE "{name}"'))
        url = make_url(LOCAL_POSTGRES).set(drivername="postgresql+asyncpg", database=name)
        drop = lambda: asyncio.run(_admin(LOCAL_POSTGRES, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))  # noqa: E731
        return Database(url.render_as_string(hide_password=False), "created", drop)
    return Database(f"sqlite+aiosqlite:///{folder / 'exceptions.db'}", "sqlite")


async def _seed(url: str, states: Sequence[ExceptionState]) -> dict[str, float]:
    from services.exceptions.store import EXCEPTIONS_TABLE, row_of
    from storeops.db import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            before = (await conn.execute(select(func.count()).select_from(EXCEPTIONS_TABLE))).scalar_one()
        built = inserted = 0.0
        for start in range(0, len(states), CHUNK):
            t0 = time.perf_counter()
            rows = [row_of(s) for s in states[start:start + CHUNK]]
            t1 = time.perf_counter()
            async with engine.begin() as conn:
                await conn.execute(EXCEPTIONS_TABLE.insert(), rows)
            built, inserted = built + t1 - t0, inserted + time.perf_counter() - t1
        t0 = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE exceptions"))
        return {"rows_before": before, "columns_seconds": built, "insert_seconds": inserted,
                "analyze_seconds": time.perf_counter() - t0}
    finally:
        await engine.dispose()


async def _fresh_new(url: str, candidates: Sequence[uuid.UUID], want: int) -> list[dict[str, Any]]:
    """``want`` of ``candidates`` still New, with the version the database holds now."""
    from services.exceptions.store import EXCEPTIONS_TABLE as t
    from storeops.db import make_engine

    engine = make_engine(url)
    found: list[dict[str, Any]] = []
    try:
        async with engine.connect() as conn:
            for start in range(0, len(candidates), 500):
                query = select(t.c.id, t.c.version).where(t.c.id.in_(candidates[start:start + 500]),
                                                          t.c.status == ExceptionStatus.NEW.value)
                found += [{"id": str(i), "version": v} for i, v in (await conn.execute(query)).all()]
                if len(found) >= want:
                    break
    finally:
        await engine.dispose()
    return found[:want]


async def _delete_seeded(url: str, ids: Sequence[uuid.UUID]) -> None:
    from services.exceptions.store import _OUTBOX, EXCEPTIONS_TABLE
    from storeops.db import make_engine

    engine = make_engine(url)
    try:
        for start in range(0, len(ids), 1000):
            async with engine.begin() as conn:
                await conn.execute(delete(_OUTBOX).where(_OUTBOX.c.exception_id.in_(ids[start:start + 1000])))
                await conn.execute(delete(EXCEPTIONS_TABLE).where(EXCEPTIONS_TABLE.c.id.in_(ids[start:start + 1000])))
    finally:
        await engine.dispose()


def seed(db: Database, count: int) -> tuple[list[ExceptionState], dict[str, Any]]:
    from services import load_spec

    load_spec("exceptions").migrate(db.url)
    t0 = time.perf_counter()
    states = build_states(count)
    states_seconds = time.perf_counter() - t0
    db.seeded = [s.id for s in states]
    parts = asyncio.run(_seed(db.url, states))
    total = time.perf_counter() - t0
    figures = {
        "exceptions": count, "rows_before": parts["rows_before"],
        "seconds": round(total, 3), "rows_per_second": round(count / total, 1),
        "states_seconds": round(states_seconds, 3), "columns_seconds": round(parts["columns_seconds"], 3),
        "insert_seconds": round(parts["insert_seconds"], 3), "analyze_seconds": round(parts["analyze_seconds"], 3),
        "chunk": CHUNK,
        "by_status": dict(Counter(s.status.value for s in states)),
        "by_severity": dict(Counter(s.severity.value for s in states)),
        "by_type": dict(Counter(s.type.value for s in states)),
        "assigned": sum(1 for s in states if s.assignee), "assignees": len({s.assignee for s in states if s.assignee}),
    }
    return states, figures


# --- the measurements ---------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    key: str
    label: str
    path: str
    params: dict[str, Any]


def reads(states: Sequence[ExceptionState], deep_cursor: str | None) -> list[Read]:
    assignees = Counter(s.assignee for s in states if s.assignee)
    # a typical person's queue: the median-sized one
    assignee = sorted(assignees, key=lambda a: assignees[a])[len(assignees) // 2] if assignees else PEOPLE[0]
    orders = [s for s in states if s.entity_type is EntityType.ORDER] or list(states)
    one = orders[len(orders) // 3]
    rare = one.entity_id[-7:]  # the digits of one order id: a handful of matches
    out = [
        Read("queue_page", f"queue page (limit={PAGE})", "/v1/exceptions", {"limit": PAGE}),
        Read("deep_page", f"page {DEEP_PAGES + 1} by cursor", "/v1/exceptions", {"limit": PAGE, "cursor": deep_cursor}),
        Read("type_severity", "type=pricing&severity=High", "/v1/exceptions",
             {"limit": PAGE, "type": "pricing", "severity": "High"}),
        Read("assignee", f"assignee={assignee} ({assignees.get(assignee, 0)} open)", "/v1/exceptions",
             {"limit": PAGE, "assignee": assignee}),
        Read("text_common", f"q={COMMON_TEXT} (many matches)", "/v1/exceptions", {"limit": PAGE, "q": COMMON_TEXT}),
        Read("text_rare", f"q={rare} (few matches)", "/v1/exceptions", {"limit": PAGE, "q": rare}),
        Read("entity_id", f"entity_id={one.entity_id}", "/v1/exceptions", {"limit": PAGE, "entity_id": one.entity_id}),
        Read("counts", "counts (open, by type and severity)", "/v1/exceptions/counts", {}),
    ]
    return [r for r in out if r.key != "deep_page" or deep_cursor]


def deep_cursor(client: httpx.Client) -> tuple[str | None, int]:
    """The cursor after following ``next_cursor`` ``DEEP_PAGES`` pages from the top; (cursor, rows skipped)."""
    cursor, skipped = None, 0
    for _ in range(DEEP_PAGES):
        response = client.get("/v1/exceptions", params={"limit": PAGE, **({"cursor": cursor} if cursor else {})})
        _ok(response)
        page = response.json()
        if not page["next_cursor"]:
            break
        cursor, skipped = page["next_cursor"], skipped + len(page["items"])
    return cursor, skipped


def _ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url} answered {response.status_code}: "
                           f"{response.text[:500]}")


def latency(client: httpx.Client, read: Read, count: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        _ok(client.get(read.path, params=read.params))
    samples: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        response = client.get(read.path, params=read.params)
        samples.append((time.perf_counter() - t0) * 1000)
        _ok(response)
    body = response.json()
    rows = len(body["items"]) if "items" in body else body.get("total")
    return {"p50_ms": round(percentile(samples, 50), 2), "p95_ms": round(percentile(samples, 95), 2),
            "p99_ms": round(percentile(samples, 99), 2), "max_ms": round(max(samples), 2),
            "mean_ms": round(sum(samples) / len(samples), 2), "requests": count, "rows": rows}


def bulk(client: httpx.Client, action: str, items: list[dict[str, Any]], run: int) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action, "items": items}
    if action == "resolve":
        body["resolution"] = {"reason": "fixed", "note": "bench queue"}
    else:
        body["assignee"] = f"bench.reassign-{run}"
    t0 = time.perf_counter()
    response = client.post("/v1/exceptions/bulk", json=body)
    seconds = time.perf_counter() - t0
    _ok(response)
    answer = response.json()
    refusals = Counter(_refusal(r)[:80] for r in answer["results"] if r["outcome"] != "done")
    return {"items": len(items), "seconds": round(seconds, 4), "items_per_second": round(len(items) / seconds, 1),
            "done": answer["done"], "refused": answer["refused"], "refusals": dict(refusals.most_common(3))}


def _refusal(result: dict[str, Any]) -> str:
    """One refused item's reason: its first error, as "field: error"."""
    errors = result.get("errors") or [{"field": "?", "error": f"status {result.get('status_code')}"}]
    return f"{errors[0]['field']}: {errors[0]['error']}"


def one_run(client: httpx.Client, db: Database, states: Sequence[ExceptionState], fresh: list[uuid.UUID],
            args: argparse.Namespace, run: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    cursor, skipped = deep_cursor(client)
    walk = time.perf_counter() - t0
    out: dict[str, Any] = {"deep_cursor_rows_skipped": skipped, "deep_walk_seconds": round(walk, 3),
                           "reads": {r.key: {"label": r.label, **latency(client, r, args.queries)} for r in reads(states, cursor)}}
    for action in ("resolve", "reassign"):
        items = asyncio.run(_fresh_new(db.url, fresh, args.bulk))
        taken = {uuid.UUID(i["id"]) for i in items}
        fresh[:] = [i for i in fresh if i not in taken]
        if len(items) < args.bulk:
            raise RuntimeError(f"only {len(items)} untouched New exceptions left for a bulk {action} of {args.bulk}; "
                               "seed more (--exceptions) or run fewer/smaller bulks")
        out[f"bulk_{action}"] = bulk(client, action, items, run)
    return out


# --- the report ---------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(runs[0]["reads"])
    med_reads = {k: {f: round(median([r["reads"][k][f] for r in runs if k in r["reads"]]), 2)
                     for f in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")} for k in keys}
    med_bulk = {a: {"seconds": round(median([r[f"bulk_{a}"]["seconds"] for r in runs]), 4),
                    "items_per_second": round(median([r[f"bulk_{a}"]["items_per_second"] for r in runs]), 1),
                    "done": min(r[f"bulk_{a}"]["done"] for r in runs)}
                for a in ("resolve", "reassign")}
    met = {"reads": {k: v["p95_ms"] < TARGET_P95_MS for k, v in med_reads.items()},
           "bulk_resolve": med_bulk["resolve"]["seconds"] < TARGET_BULK_SECONDS,
           "bulk_reassign": med_bulk["reassign"]["seconds"] < TARGET_BULK_SECONDS}
    met["all"] = all(met["reads"].values()) and met["bulk_resolve"] and met["bulk_reassign"]
    return {"reads": med_reads, "bulk_resolve": med_bulk["resolve"], "bulk_reassign": med_bulk["reassign"]}, met


def render(fig: dict[str, Any]) -> str:
    runs, med, met = fig["runs"], fig["median"], fig["met"]
    seed = fig["seed"]
    yes = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    head = (f"{fig['database']['described']}\n"
            f"broker: {fig['broker']}; exceptions service ready in {fig['service_ready_seconds']} s\n"
            f"seeded {seed['exceptions']:,} open exceptions in {seed['seconds']:.1f} s ({seed['rows_per_second']:,.0f} rows/s: "
            f"states {seed['states_seconds']:.1f} s, row_of {seed['columns_seconds']:.1f} s, "
            f"insert {seed['insert_seconds']:.1f} s, ANALYZE {seed['analyze_seconds']:.1f} s); "
            f"{', '.join(f'{k} {v:,}' for k, v in seed['by_status'].items())}; "
            f"{seed['assigned']:,} assigned to {seed['assignees']} people")
    reads_rows = []
    for key, m in med["reads"].items():
        label = runs[0]["reads"][key]["label"]
        per_run = "/".join(f"{r['reads'][key]['p95_ms']:.1f}" for r in runs if key in r["reads"])
        reads_rows.append((label, m["p50_ms"], m["p95_ms"], m["p99_ms"], m["max_ms"], per_run,
                           f"< {TARGET_P95_MS:g}", yes(met["reads"][key])))
    reads_table = table(["GET (median of runs)", "p50 ms", "p95 ms", "p99 ms", "max ms", "p95 per run",
                         "p95 target", ""], reads_rows)
    bulk_rows = []
    for action in ("resolve", "reassign"):
        m = med[f"bulk_{action}"]
        per_run = "/".join(f"{r[f'bulk_{action}']['seconds']:.3f}" for r in runs)
        done = "/".join(str(r[f"bulk_{action}"]["done"]) for r in runs)
        bulk_rows.append((f"bulk {action} of {fig['settings']['bulk']:,}", m["seconds"], m["items_per_second"], per_run,
                          done, f"< {TARGET_BULK_SECONDS:g}", yes(met[f"bulk_{action}"])))
    bulk_table = table(["POST /v1/exceptions/bulk (median)", "seconds", "items/s", "per run", "done per run",
                        "target s", ""], bulk_rows)
    s = fig["settings"]
    note = (f"{s['queries']} requests per read after {s['warmup']} warm-up, one at a time on one keep-alive connection, "
            f"{s['runs']} run(s); deep page = cursor after {DEEP_PAGES} pages of {PAGE}. "
            f"All targets: {'met' if met['all'] else 'NOT all met'}. Wall time {fig['wall_seconds']:.0f} s.")
    return f"{head}\n\n{reads_table}\n\n{bulk_table}\n\n{note}"


def run(args: argparse.Namespace) -> int:
    if args.bulk > 1000:
        raise SystemExit("--bulk: the API takes at most 1,000 items per request")
    if args.exceptions < 2 * args.bulk * args.runs:
        raise SystemExit("--exceptions: too few for the bulk requests (each run takes 2 x --bulk untouched New ones)")
    started = time.perf_counter()
    folder = tempfile.TemporaryDirectory(prefix="storeops-bench-queue-")
    db = open_database(Path(folder.name))
    stack: BenchStack | None = None
    print(db.describe(), flush=True)
    try:
        states, seeded = seed(db, args.exceptions)
        print(f"seeded {args.exceptions:,} exceptions in {seeded['seconds']:.1f} s", flush=True)
        stack = BenchStack.start(only=("exceptions",), database_url=db.url,
                                 env_extra={"STOREOPS_KAFKA__CLIENT_ID_PREFIX": f"storeops-bench-queue-{uuid.uuid4().hex[:8]}"})
        broker = f"{stack.broker.kind} at {stack.bootstrap_servers}" if stack.broker else stack.bootstrap_servers
        print(f"exceptions service ready at {stack.urls['exceptions']}; broker {broker}", flush=True)
        fresh = [s.id for s in states if s.status is ExceptionStatus.NEW]
        random.Random(11).shuffle(fresh)
        runs = []
        with stack.client("exceptions", timeout=60) as client:
            for n in range(args.runs):
                runs.append(one_run(client, db, states, fresh, args, n))
                r = runs[-1]
                print(f"run {n + 1}/{args.runs} done: queue page p95 {r['reads']['queue_page']['p95_ms']} ms, "
                      f"bulk resolve {r['bulk_resolve']['seconds']} s", flush=True)
        ready = round(stack.ready_seconds.get("exceptions", float("nan")), 2)
    finally:
        if stack is not None:
            stack.stop()
        cleanup = _cleanup(db)
        folder.cleanup()
    med, met = summarize(runs)
    figures = {
        "bench": "queue",
        "database": {"backend": db.backend, "url": db.shown, "source": db.source, "cleanup": cleanup,
                     "described": db.describe()},
        "broker": broker,
        "settings": {"exceptions": args.exceptions, "queries": args.queries, "runs": args.runs, "bulk": args.bulk,
                     "warmup": WARMUP, "page": PAGE, "deep_pages": DEEP_PAGES, "chunk": CHUNK},
        "targets": {"read_p95_ms": TARGET_P95_MS, "bulk_seconds": TARGET_BULK_SECONDS},
        "seed": seeded,
        "service_ready_seconds": ready,
        "median": med,
        "met": met,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    emit(render(figures), figures)
    return 0


def _cleanup(db: Database) -> str:
    """Leave the server as found: drop the database made here, or delete the rows seeded into a given one."""
    if db.drop is not None:
        db.drop()
        return "dropped"
    if db.source == "DATABASE_URL" and db.seeded:
        asyncio.run(_delete_seeded(db.url, db.seeded))
        return "seeded rows deleted"
    return "temporary file removed" if db.source == "sqlite" else "nothing to clean"
