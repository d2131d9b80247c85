"""``storeops chaos``: kill -9 each worker in turn under load, then count lost and doubled effects.

A stream of events is posted to ingest over HTTP, paced to a rate, in batches,
with the stack's admin token (as every request of the tool).
Spaced across the stream, each consuming service (rules, exceptions, notifier,
audit) is killed with SIGKILL and restarted after a short pause. When the load
has ended and every restarted service consumed again, the tool waits for the
pipeline to drain (counts reach what is expected, or stop changing), then reads
the services' databases and counts, restricted to this run's own ids:

- events: accepted (202) ids found in the audit store on the event topics,
  lost ones, and doubled audit rows (same (topic, record id) or same (topic,
  partition, offset) more than once);
- exceptions: one expected per accepted high-value order (its order id is the
  exception's entity id); created, missing, doubled;
- notifications: one expected per exception; stored, missing, doubled.

Exit code 0 only when nothing was lost, missing or doubled and every killed
service resumed. Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from sqlalchemy import Column, MetaData, String, Table, Uuid, delete, exists, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.registry import EVENT_TOPICS
from services.audit.store import AuditRow
from services.exceptions.store import ExceptionRow
from services.notifier.store import NotificationRow
from storeops.db import make_engine
from storeops_cli.bench.load import Mix
from storeops_cli.bench.report import emit, table
from storeops_cli.bench.stack import BenchStack

VICTIMS: tuple[str, ...] = ("rules", "exceptions", "notifier", "audit")
AUDIT = AuditRow.__table__
EXCEPTIONS = ExceptionRow.__table__
NOTIFICATIONS = NotificationRow.__table__


@dataclass(frozen=True)
class Plan:
    """What one chaos run does."""

    events: int = 20_000
    rate: float = 1000.0
    exception_share: float = 0.1
    batch_size: int = 50
    in_flight: int = 8  # concurrent POSTs at most, so a slow answer does not slow the pace
    pause: float = 0.75  # seconds between a kill and the restart
    victims: tuple[str, ...] = VICTIMS
    resume_timeout: float = 60.0
    settle: float = 5.0  # seconds of unchanged counts that end the drain
    drain_timeout: float = 120.0

    def kill_points(self) -> list[int]:
        """Events offered before each kill: evenly spaced, none at the very start or end."""
        return [round(self.events * (i + 1) / (len(self.victims) + 1)) for i in range(len(self.victims))]


# --------------------------------------------------------------------------- load


@dataclass
class Ledger:
    """What ingest was offered and what it acknowledged."""

    offered: int = 0
    accepted: list[str] = field(default_factory=list)  # event ids answered 202 (or accepted in a 207)
    raising: list[str] = field(default_factory=list)  # order ids of accepted high-value orders
    rejected: int = 0
    failed: int = 0
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def record(self, status: int, body: dict[str, Any], raising_orders: dict[str, str]) -> None:
        """Account one answer; ``raising_orders`` maps the request's raising event ids to order ids."""
        self.statuses[str(status)] += 1
        ids = [a["id"] for a in body.get("accepted", [])] if status in (202, 207, 503) else []
        self.accepted += ids
        self.raising += [raising_orders[i] for i in ids if i in raising_orders]
        self.rejected += len(body.get("rejected", []))
        self.failed += len(body.get("failed", []))


async def post_stream(stack: BenchStack, plan: Plan, ledger: Ledger) -> None:
    """Post ``plan.events`` events in batches to the stack's ingest, each batch due at its place in the paced stream."""
    mix = Mix(plan.exception_share)
    slots = asyncio.Semaphore(plan.in_flight)
    t0 = time.monotonic()
    async with stack.async_client("ingest", timeout=30) as client:
        tasks = []
        for start in range(0, plan.events, plan.batch_size):
            await asyncio.sleep(max(0.0, t0 + start / plan.rate - time.monotonic()))
            await slots.acquire()
            batch = [(n, *mix.event(n)) for n in range(start, min(start + plan.batch_size, plan.events))]
            ledger.offered += len(batch)
            tasks.append(asyncio.create_task(_post_batch(client, mix, batch, ledger, slots)))
        await asyncio.gather(*tasks)
    ledger.seconds = time.monotonic() - t0


async def _post_batch(client: httpx.AsyncClient, mix: Mix, batch: list, ledger: Ledger, slots: asyncio.Semaphore) -> None:
    """One POST per event kind in the batch."""
    try:
        by_kind: dict[str, list[dict]] = {}
        raising: dict[str, str] = {}
        for n, kind, event in batch:
            by_kind.setdefault(kind, []).append(event)
            if mix.raises(n):
                raising[event["id"]] = event["data"]["order_id"]
        for kind, events in by_kind.items():
            await _post(client, kind, events, ledger, raising)
    finally:
        slots.release()


async def _post(client: httpx.AsyncClient, kind: str, events: list[dict], ledger: Ledger, raising: dict[str, str]) -> None:
    try:
        response = await client.post(f"/v1/events/{kind}", json=events)
    except httpx.HTTPError:
        ledger.statuses["error"] += 1
        ledger.failed += len(events)  # never acknowledged: not counted as accepted
        return
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    ledger.record(response.status_code, body, raising)


# --------------------------------------------------------------------------- kills


@dataclass
class Kill:
    """One kill -9 and the restart after it; times in seconds from the start of the stream."""

    service: str
    at_seconds: float = 0.0
    offered_before: int = 0
    accepted_before: int = 0
    down_seconds: float = 0.0
    resumed_seconds: float | None = None  # restart → consumed counter first above 0 (a batch processed and committed)
    ready_seconds: float | None = None  # restart → /readyz first 200 (None: not seen before it consumed)


async def kill_in_turn(stack: BenchStack, plan: Plan, ledger: Ledger, load: asyncio.Task) -> list[Kill]:
    """Kill each victim when the stream reaches its kill point; restart it; watch it resume.

    Times are measured from now (the start of the stream); a load that ended
    early (it raised) does not leave the schedule waiting.
    """
    t0 = time.monotonic()
    kills, watchers = [], []
    for name, point in zip(plan.victims, plan.kill_points(), strict=True):
        while ledger.offered < point and not load.done():
            await asyncio.sleep(0.02)
        kill = Kill(name, round(time.monotonic() - t0, 2), ledger.offered, len(ledger.accepted))
        await asyncio.to_thread(stack.kill9, name)
        down = time.monotonic()
        await asyncio.sleep(plan.pause)
        await asyncio.to_thread(stack.restart, name)
        restarted = time.monotonic()
        kill.down_seconds = round(restarted - down, 2)
        kills.append(kill)
        watchers.append(asyncio.create_task(watch_resume(stack, kill, restarted, plan.resume_timeout)))
    await asyncio.gather(*watchers)
    return kills


async def watch_resume(stack: BenchStack, kill: Kill, restarted: float, timeout: float) -> None:
    """Poll the restarted service until it is ready and has consumed, or ``timeout`` passed."""
    counter = f"storeops_{kill.service}_records_consumed_total"
    while time.monotonic() - restarted < timeout and kill.resumed_seconds is None:
        if kill.ready_seconds is None and await asyncio.to_thread(stack.ready, kill.service):
            kill.ready_seconds = round(time.monotonic() - restarted, 2)
        metrics = await asyncio.to_thread(stack.metrics, kill.service)
        if metrics.get(counter, 0) > 0:
            kill.resumed_seconds = round(time.monotonic() - restarted, 2)
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- counting

_RUN = MetaData()
RUN_EVENTS = Table("chaos_run_events", _RUN, Column("id", Uuid, primary_key=True), prefixes=["TEMPORARY"])
RUN_ORDERS = Table("chaos_run_orders", _RUN, Column("entity_id", String(200), primary_key=True), prefixes=["TEMPORARY"])
RUN_EXCEPTIONS = Table("chaos_run_exceptions", _RUN, Column("id", Uuid, primary_key=True), prefixes=["TEMPORARY"])


class Census:
    """Exact counts of one run's rows, grouped in SQL, joined to the run's ids held in temporary tables.

    ``urls`` maps audit, exceptions and notifier to their databases; services
    sharing one database share one connection. Each count ends its
    transaction, so the next one sees rows committed in between.
    """

    def __init__(self, urls: dict[str, str], accepted: Sequence[str], raising: Sequence[str]) -> None:
        self.urls = urls
        self.accepted = accepted
        self.raising = raising
        self._engines: dict[str, AsyncEngine] = {}
        self._conns: dict[str, AsyncConnection] = {}
        self._exception_ids: list[uuid.UUID] = []

    async def __aenter__(self) -> Census:
        for url in set(self.urls.values()):
            self._engines[url] = make_engine(url)
            self._conns[url] = await self._engines[url].connect()
            await self._conns[url].run_sync(_RUN.create_all)
        await self._fill(self._conn("audit"), RUN_EVENTS, ({"id": uuid.UUID(i)} for i in self.accepted))
        await self._fill(self._conn("exceptions"), RUN_ORDERS, ({"entity_id": o} for o in self.raising))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self._conns.values():
            await conn.close()
        for engine in self._engines.values():
            await engine.dispose()

    def _conn(self, service: str) -> AsyncConnection:
        return self._conns[self.urls[service]]

    @staticmethod
    async def _fill(conn: AsyncConnection, temp: Table, rows: Iterable[dict]) -> None:
        await conn.execute(delete(temp))
        rows = list(rows)
        for i in range(0, len(rows), 5000):
            await conn.execute(insert(temp), rows[i : i + 5000])
        await conn.commit()

    async def progress(self) -> tuple[int, int, int]:
        """(events in audit, orders with an exception, exceptions with a notification): cheap enough to poll."""
        audit = await self.audit()
        exceptions = await self.exceptions()
        notifications = await self.notifications()
        return audit["audit_events"], exceptions["exceptions_created"], notifications["notifications_stored"]

    async def audit(self) -> dict[str, Any]:
        conn = self._conn("audit")
        on_event_topics = AUDIT.c.topic.in_([t.name for t in EVENT_TOPICS])
        ours = (select(AUDIT.c.topic, AUDIT.c.partition, AUDIT.c.offset, AUDIT.c.record_id)
                .join(RUN_EVENTS, AUDIT.c.record_id == RUN_EVENTS.c.id).where(on_event_topics).subquery())
        in_audit = exists().where(AUDIT.c.record_id == RUN_EVENTS.c.id, on_event_topics)
        figures = {
            "audit_events": await conn.scalar(select(func.count(func.distinct(ours.c.record_id)))),
            "audit_rows": await conn.scalar(select(func.count()).select_from(ours)),
            "events_lost": await conn.scalar(select(func.count()).select_from(RUN_EVENTS).where(~in_audit)),
            "lost_sample": [str(i) for i in await conn.scalars(select(RUN_EVENTS.c.id).where(~in_audit).limit(5))],
        }
        figures |= _prefixed("audit_duplicate_record_ids", await _repeats(conn, ours, ours.c.topic, ours.c.record_id))
        figures |= _prefixed("audit_duplicate_origins",
                             await _repeats(conn, ours, ours.c.topic, ours.c.partition, ours.c.offset))
        await conn.commit()
        return figures

    async def exceptions(self) -> dict[str, Any]:
        conn = self._conn("exceptions")
        ours = (select(EXCEPTIONS.c.id, EXCEPTIONS.c.entity_id)
                .join(RUN_ORDERS, EXCEPTIONS.c.entity_id == RUN_ORDERS.c.entity_id).subquery())
        has_one = exists().where(EXCEPTIONS.c.entity_id == RUN_ORDERS.c.entity_id)
        figures = {
            "exceptions_created": await conn.scalar(select(func.count(func.distinct(ours.c.entity_id)))),
            "exceptions_rows": await conn.scalar(select(func.count()).select_from(ours)),
            "exceptions_missing": await conn.scalar(select(func.count()).select_from(RUN_ORDERS).where(~has_one)),
        }
        figures |= _prefixed("exceptions_duplicated", await _repeats(conn, ours, ours.c.entity_id))
        self._exception_ids = [row.id for row in await conn.execute(select(ours.c.id))]
        await conn.commit()
        return figures

    async def notifications(self) -> dict[str, Any]:
        """Notifications of the exceptions ``exceptions()`` found last."""
        conn = self._conn("notifier")
        await self._fill(conn, RUN_EXCEPTIONS, ({"id": i} for i in self._exception_ids))
        ours = (select(NOTIFICATIONS.c.id, NOTIFICATIONS.c.exception_id)
                .join(RUN_EXCEPTIONS, NOTIFICATIONS.c.exception_id == RUN_EXCEPTIONS.c.id).subquery())
        figures = {
            "notifications_stored": await conn.scalar(select(func.count(func.distinct(ours.c.exception_id)))),
            "notifications_rows": await conn.scalar(select(func.count()).select_from(ours)),
        }
        figures |= _prefixed("notifications_duplicated", await _repeats(conn, ours, ours.c.exception_id))
        await conn.commit()
        return figures


async def _repeats(conn: AsyncConnection, rows: Any, *key: Any) -> tuple[int, int]:
    """(keys seen more than once, rows beyond the first for those keys)."""
    groups = select(func.count().label("n")).select_from(rows).group_by(*key).having(func.count() > 1).subquery()
    found = (await conn.execute(select(func.count(), func.coalesce(func.sum(groups.c.n - 1), 0)))).one()
    return int(found[0]), int(found[1])


def _prefixed(name: str, repeats: tuple[int, int]) -> dict[str, int]:
    return {name: repeats[0], f"{name}_extra_rows": repeats[1]}


async def drain(census: Census, expected: tuple[int, int, int], plan: Plan) -> tuple[bool, float]:
    """Poll until the counts reach ``expected`` (and hold 1 s) or stop changing for ``plan.settle`` s.

    Returns (whether expected was reached, seconds waited). Bounded by ``plan.drain_timeout``.
    """
    t0 = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - t0 < plan.drain_timeout:
        now = await census.progress()
        if now != last:
            last, since = now, time.monotonic()
        held = time.monotonic() - since
        if (now == expected and held >= 1.0) or held >= plan.settle:
            break
        await asyncio.sleep(0.5)
    return last == expected, round(time.monotonic() - t0, 2)


# --------------------------------------------------------------------------- the run


def chaos(events: int = 20_000, rate: float = 1000.0, exception_share: float = 0.1,
          database_url: str | None = None, **plan: Any) -> dict[str, Any]:
    """Start a stack, run the chaos plan against it, count; returns every figure.

    ``database_url`` (else ``DATABASE_URL``) puts every service in that database
    (migrated here first); without either, each service has a SQLite file in
    the stack's folder. Counts are restricted to this run's ids, so a shared
    database may hold other rows.
    """
    config = Plan(events=events, rate=rate, exception_share=exception_share, **plan)
    stack = BenchStack.start(database_url=database_url)
    try:
        urls = {svc: stack.database_url_for(svc) for svc in ("audit", "exceptions", "notifier")}
        figures = asyncio.run(_run(stack, config, urls))
        figures["database"] = make_url(urls["audit"]).get_backend_name()
        figures["broker"] = stack.broker.kind if stack.broker else "attached"
        return _judge(figures)
    finally:
        stack.stop()


async def _run(stack: BenchStack, plan: Plan, urls: dict[str, str]) -> dict[str, Any]:
    ledger = Ledger()
    load = asyncio.create_task(post_stream(stack, plan, ledger))
    kills = await kill_in_turn(stack, plan, ledger, load)
    await load
    expected = (len(ledger.accepted), len(ledger.raising), len(ledger.raising))
    async with Census(urls, ledger.accepted, ledger.raising) as census:
        drained, drain_seconds = await drain(census, expected, plan)
        counts = await census.audit() | await census.exceptions() | await census.notifications()
    alive = {name: bool(c.proc and c.proc.poll() is None) for name, c in stack.children.items()}
    return _figures(plan, ledger, kills, counts) | {
        "drained": drained, "drain_seconds": drain_seconds, "services_alive": alive,
    }


def _figures(plan: Plan, ledger: Ledger, kills: list[Kill], counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "events": plan.events, "rate_offered": plan.rate, "exception_share": plan.exception_share,
        "events_offered": ledger.offered, "events_accepted": len(ledger.accepted),
        "events_rejected": ledger.rejected, "events_failed": ledger.failed, "http_statuses": dict(ledger.statuses),
        "load_seconds": round(ledger.seconds, 2),
        "rate_achieved": round(ledger.offered / ledger.seconds, 1) if ledger.seconds else 0.0,
        **counts,
        "exceptions_expected": len(ledger.raising), "notifications_expected": len(ledger.raising),
        "notifications_missing": len(ledger.raising) - counts["notifications_stored"],
        "kills": [asdict(k) for k in kills],
    }


CHECKS: tuple[tuple[str, str], ...] = (
    ("events_lost", "accepted events missing from the audit store"),
    ("audit_duplicate_record_ids", "audit rows repeating a (topic, record id)"),
    ("audit_duplicate_origins", "audit rows repeating a (topic, partition, offset)"),
    ("exceptions_missing", "high-value orders without an exception"),
    ("exceptions_duplicated", "orders with more than one exception"),
    ("notifications_missing", "exceptions without a notification"),
    ("notifications_duplicated", "exceptions with more than one notification"),
)


def _judge(figures: dict[str, Any]) -> dict[str, Any]:
    """Add ``failures`` (what went wrong, in words) and ``ok``."""
    failures = [f"{figures[key]} {words}" for key, words in CHECKS if figures[key]]
    if not figures["events_accepted"]:
        failures.append("no event was accepted: nothing was tested")
    refused = {s: n for s, n in figures["http_statuses"].items() if s in ("401", "403")}
    if refused:
        failures.append(f"ingest refused the stack's token ({refused})")
    if figures["exceptions_created"] > figures["exceptions_expected"]:
        failures.append("more exceptions than expected")
    failures += [f"{k['service']} did not resume within the timeout"
                 for k in figures["kills"] if k["resumed_seconds"] is None]
    failures += [f"{name} died on its own" for name, alive in figures["services_alive"].items() if not alive]
    return figures | {"failures": failures, "ok": not failures}


# --------------------------------------------------------------------------- output


def render(f: dict[str, Any]) -> str:
    """The figures as two plain tables and a verdict."""
    def row(label: str, value: Any, expected: Any = "", bad: bool = False) -> list[Any]:
        return [label, value, expected, "FAIL" if bad else "ok"]

    counts = table(["figure", "value", "expected", ""], [
        row("events offered / accepted (202)", f"{f['events_offered']} / {f['events_accepted']}", f["events_offered"],
            not f["events_accepted"]),
        row("events rejected / failed", f"{f['events_rejected']} / {f['events_failed']}"),
        row("load rate achieved (events/s)", f["rate_achieved"], f["rate_offered"]),
        row("events in audit", f["audit_events"], f["events_accepted"], f["audit_events"] != f["events_accepted"]),
        row("events lost", f["events_lost"], 0, bool(f["events_lost"])),
        row("audit duplicate (topic, record id)", f["audit_duplicate_record_ids"], 0,
            bool(f["audit_duplicate_record_ids"])),
        row("audit duplicate (topic, partition, offset)", f["audit_duplicate_origins"], 0,
            bool(f["audit_duplicate_origins"])),
        row("exceptions created", f["exceptions_created"], f["exceptions_expected"],
            f["exceptions_created"] != f["exceptions_expected"]),
        row("exceptions missing / duplicated", f"{f['exceptions_missing']} / {f['exceptions_duplicated']}", "0 / 0",
            bool(f["exceptions_missing"] or f["exceptions_duplicated"])),
        row("notifications stored", f["notifications_stored"], f["notifications_expected"],
            f["notifications_stored"] != f["notifications_expected"]),
        row("notifications missing / duplicated", f"{f['notifications_missing']} / {f['notifications_duplicated']}",
            "0 / 0", bool(f["notifications_missing"] or f["notifications_duplicated"])),
        row("drained (seconds waited)", f"{f['drained']} ({f['drain_seconds']})", True, not f["drained"]),
    ])
    kills = table(["killed", "at s", "accepted before", "down s", "ready after s", "resumed after s"], [
        [k["service"], k["at_seconds"], k["accepted_before"], k["down_seconds"],
         _or(k["ready_seconds"], "not seen"), _or(k["resumed_seconds"], "never")]
        for k in f["kills"]
    ])
    verdict = "OK: nothing lost, missing or doubled" if f["ok"] else "FAILED: " + "; ".join(f["failures"])
    note = ("resumed = seconds from the restart until the service's records_consumed_total counter first rose "
            "above 0 (a batch processed and committed); ready = /readyz first answered 200")
    return "\n\n".join([counts, kills, note, verdict])


def _or(value: float | None, instead: str) -> Any:
    return instead if value is None else value


def run(args: argparse.Namespace) -> int:
    figures = chaos(args.events, args.rate, args.exception_share)
    emit(render(figures), figures)
    return 0 if figures["ok"] else 1
