"""Which consuming shape should the rules service's hot loop use?

The hot loop: consume an order event, parse and validate it into the pydantic
contract (``ORDERS.decode``), check a condition (``total >= 1000``, true for
about 10% of the generated events) and, for each match, produce a
``CreateException`` action (``ACTIONS.encode``, acks=all). Three shapes do this
against the embedded broker (Tansu, started once for the whole script):

  (a) a faust-streaming agent reading raw bytes in ``stream.take(500, ...)``
      batches and producing with faust's own producer (``Topic.send``), run by
      a programmatic ``faust.Worker`` in a child process;
  (b) a plain aiokafka ``AIOKafkaConsumer``: ``getmany(max_records=1000)`` in a
      loop, produces for the batch awaited (acked), then a manual commit;
  (c) the ceiling: the same aiokafka consumer counting records, nothing else.

Each run produces N realistic ``OrderPlaced`` events (300-800 bytes) onto a
fresh topic with an aiokafka producer (acks=all, linger 5 ms, 64 KiB batches,
the project's producer settings), then runs every shape against it, each with
its own new consumer group and its own actions topic. The shape order rotates
from run to run. A shape's rate is N divided by the time from its first record
consumed to its last record processed (``time.perf_counter``), so group join
and worker start-up are excluded (reported separately as ``startup_s``).

Run from the repository root:

    python -m storeops_cli.bench.consume_loop [--events N] [--runs R]

Output: a table of medians over the R runs (events/s) with the ratio of (a)
and (b) to (c), then, as the last line, one JSON object with every figure.
Every wait is bounded (``SHAPE_TIMEOUT`` per shape), so a stuck shape is
reported as failed and the script goes on to the next one.

Reading (c): at the default N it lasts about 0.1 s, and the first fetch
response is already in the client when its clock starts (true of every shape,
but only (c) is short enough to notice). Take it as an upper bound and an
order of magnitude. ``cpu_s`` is the consuming process's CPU time in the same
window: close to ``seconds`` means the shape is CPU-bound in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.actions import CreateException, CreateExceptionData, ExceptionSpec, RuleRef
from schemas.common import EntityType, ExceptionType, Severity
from schemas.envelope import Envelope, deterministic_id
from schemas.events import OrderPlaced
from schemas.registry import ACTIONS, ORDERS, Topic
from storeops.kafka import ensure_topics, make_consumer, make_producer
from storeops.settings import KafkaSettings
from storeops_cli.bench.broker import delete_topics
from storeops_cli.broker import start_embedded

SHAPE_TIMEOUT = 120.0  # seconds a shape may take, start-up included
IDLE_TIMEOUT = 15.0  # seconds without a new record before a shape gives up
STOP_TIMEOUT = 15.0  # seconds a client or the faust worker gets to shut down
TAKE_MAX = 500
TAKE_WITHIN = 0.2  # seconds; take() yields a partial batch after this (only the last one at ~4k ev/s)
GETMANY_MAX = 1000
THRESHOLD = Decimal("1000")
HIGH_VALUE_SHARE = 0.10

T = TypeVar("T")

RULE = RuleRef(rule_id="high-value-order", rule_version=1, mode="LIVE")


# --- the work every shape does per record -------------------------------------


def high_value_action(order: Envelope) -> CreateException | None:
    """The rule: an order placed for ``THRESHOLD`` or more raises an exception."""
    if not isinstance(order, OrderPlaced) or order.data.total < THRESHOLD:
        return None
    data = order.data
    spec = ExceptionSpec(
        type=ExceptionType.ORDER,
        severity=Severity.HIGH,
        title=f"High-value order {data.order_id}",
        entity_type=EntityType.ORDER,
        entity_id=data.order_id,
        impact=data.total,
        currency=data.currency,
    )
    return CreateException(
        **order.child(
            id=deterministic_id(RULE.rule_id, RULE.rule_version, order.id),
            type="CreateException",
            source="storeops/rules",
            subject=data.order_id,
            data=CreateExceptionData(rule=RULE, exception=spec, evidence=[order.id]),
        )
    )


def evaluate(value: bytes) -> tuple[bytes, bytes] | None:
    """Parse + validate one record value; the (key, value) of its action, if any."""
    action = high_value_action(ORDERS.decode(value))
    return None if action is None else ACTIONS.encode(action)


# --- test data ------------------------------------------------------------------

SOURCES = ("shop.example/checkout", "shop.example/pos", "marketplace.example/api")
CURRENCIES = ("EUR", "USD", "GBP")
CHANNELS = ("web", "app", "pos", "marketplace", None)
TAGS = ("first-order", "vip", "gift", "express", "b2b", "promo-bf", "subscription")
SKU_FAMILIES = ("CAM", "LENS", "TRIPOD", "BAG", "SD", "BATT", "FILTER", "STRAP")
EPOCH = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def order_lines(rng: random.Random, target: float) -> list[dict[str, Any]]:
    """1-6 lines whose quantities times unit prices add up to about ``target``."""
    weights = [rng.random() + 0.1 for _ in range(rng.randint(1, 6))]
    lines = []
    for weight in weights:
        quantity = rng.randint(1, 3)
        unit_price = round(target * weight / sum(weights) / quantity, 2)
        sku = f"{rng.choice(SKU_FAMILIES)}-{rng.randint(100, 9999)}"
        lines.append({"sku": sku, "quantity": quantity, "unit_price": f"{max(unit_price, 0.01):.2f}"})
    return lines


def make_order(rng: random.Random, tag: str, seq: int) -> OrderPlaced:
    high = rng.random() < HIGH_VALUE_SHARE
    lines = order_lines(rng, rng.uniform(1000.5, 8000) if high else rng.uniform(5, 950))
    total = sum(Decimal(line["unit_price"]) * line["quantity"] for line in lines)
    return OrderPlaced.model_validate({
        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
        "type": "OrderPlaced",
        "source": rng.choice(SOURCES),
        "time": EPOCH + timedelta(seconds=seq * 0.7),
        "data": {
            "order_id": f"ord-{tag}-{seq:07d}",
            "customer_id": f"cus-{rng.randint(1, 60000):06d}",
            "total": f"{total:.2f}",
            "currency": rng.choice(CURRENCIES),
            "lines": lines,
            "channel": rng.choice(CHANNELS),
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
        },
    })


def generate_orders(n: int, tag: str, seed: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """``n`` encoded (key, value) records and how many of them the rule matches."""
    rng = random.Random(seed)
    orders = [make_order(rng, tag, seq) for seq in range(n)]
    matches = sum(1 for order in orders if order.data.total >= THRESHOLD)
    return [ORDERS.encode(order) for order in orders], matches


# --- broker set-up ----------------------------------------------------------------


async def create_topics(bootstrap: str, topics: list[Topic]) -> None:
    """Fresh topics shaped like the registry's (partitions, config)."""
    created = await ensure_topics(bootstrap, topics)
    if sorted(created) != sorted(t.name for t in topics):
        raise RuntimeError(f"topics already existed: {sorted({t.name for t in topics} - set(created))}")



async def preproduce(kafka: KafkaSettings, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Produce every record (acks=all) and return the rate in records/s."""
    producer = make_producer(kafka, "bench-seed")
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*futures)
        return len(records) / (time.perf_counter() - t0)
    finally:
        await producer.stop()


# --- measurement ----------------------------------------------------------------


class ShapeFailed(RuntimeError):
    """A shape did not finish its N events in time."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What one shape consumes and produces in one run (picklable for the faust child)."""

    events: int
    orders_topic: str
    actions_topic: str
    group: str
    datadir: str = ""


@dataclasses.dataclass
class Tally:
    """Counts one shape's progress; times it from first record to last processed."""

    target: int
    started: float = dataclasses.field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    cpu_first: float = 0.0
    cpu_last: float = 0.0
    seen: int = 0
    matches: int = 0

    @property
    def done(self) -> bool:
        return self.seen >= self.target

    def record_consumed(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()

    def add(self, events: int, matches: int) -> None:
        self.seen += events
        self.matches += matches
        self.last = time.perf_counter()
        self.cpu_last = time.process_time()

    def result(self) -> dict[str, Any]:
        assert self.first is not None and self.last is not None
        seconds = self.last - self.first
        return {
            "eps": round(self.seen / seconds, 1),
            "seconds": round(seconds, 4),
            "events": self.seen,
            "matches": self.matches,
            "startup_s": round(self.first - self.started, 3),  # join included
            "cpu_s": round(self.cpu_last - self.cpu_first, 4),  # this process, same window
        }


BatchHandler = Callable[[dict[TopicPartition, list[ConsumerRecord]]], Awaitable[int]]


async def consume(consumer: AIOKafkaConsumer, tally: Tally, handle: BatchHandler) -> None:
    """Call ``handle`` on ``getmany`` batches until ``tally.target`` records were seen.

    Stops on a count, never on the end offset: Tansu under-reports end offsets
    (ListOffsets "latest" answers the start of the newest batch + 1), so a loop
    reading "until the end offset" stops early there.
    """
    idle_since = time.monotonic()
    while not tally.done:
        batch = await consumer.getmany(timeout_ms=200, max_records=GETMANY_MAX)
        if not batch:
            if time.monotonic() - idle_since > IDLE_TIMEOUT:
                raise ShapeFailed(f"idle for {IDLE_TIMEOUT:.0f} s after {tally.seen} of {tally.target} records")
            continue
        tally.record_consumed()
        matches = await handle(batch)
        tally.add(sum(len(records) for records in batch.values()), matches)
        idle_since = time.monotonic()


def rules_batch(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, actions_topic: str) -> BatchHandler:
    """Shape (b)'s batch: evaluate, produce, wait for every ack, then commit."""

    async def handle(batch: dict[TopicPartition, list[ConsumerRecord]]) -> int:
        futures = []
        for records in batch.values():
            for record in records:
                action = evaluate(record.value)
                if action is not None:
                    futures.append(await producer.send(actions_topic, key=action[0], value=action[1]))
        await asyncio.gather(*futures)
        await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        return len(futures)

    return handle


async def count_only(batch: dict[TopicPartition, list[ConsumerRecord]]) -> int:
    """Shape (c)'s batch: the records are consumed, nothing else."""
    return 0


@contextlib.asynccontextmanager
async def started(client: AIOKafkaConsumer | AIOKafkaProducer) -> AsyncIterator[Any]:
    await client.start()
    try:
        yield client
    finally:
        await asyncio.wait_for(client.stop(), STOP_TIMEOUT)


async def aiokafka_shape(kafka: KafkaSettings, job: Job, produce: bool) -> dict[str, Any]:
    """Shape (b) when ``produce``, else shape (c). The producer starts before the consumer joins."""
    tally = Tally(job.events)
    consumer = make_consumer(kafka, job.group, f"bench-{job.group}")
    consumer.subscribe([job.orders_topic])
    if not produce:
        async with started(consumer):
            await consume(consumer, tally, count_only)
        return tally.result()
    async with started(make_producer(kafka, f"bench-{job.group}")) as producer, started(consumer):
        await consume(consumer, tally, rules_batch(consumer, producer, job.actions_topic))
    return tally.result()


def run_bounded(coro: Awaitable[T], what: str) -> T:
    """``asyncio.run`` with the per-shape time limit."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, SHAPE_TIMEOUT)
        except TimeoutError:
            raise ShapeFailed(f"{what} not done within {SHAPE_TIMEOUT:.0f} s") from None

    return asyncio.run(bounded())


# --- shape (a): faust ---------------------------------------------------------------


class FirstRecordClock(faust.Sensor):
    """Marks the first record the faust consumer hands to the app."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.tally.record_consumed()


def faust_app(kafka: KafkaSettings, job: Job) -> faust.App:
    """A faust app configured like the services' aiokafka clients, for the embedded broker."""
    return faust.App(
        job.group,  # the app id is the consumer group
        broker=f"kafka://{kafka.bootstrap_servers}",
        datadir=job.datadir,
        # Tansu holds every JoinGroup reply until half the session timeout has
        # passed: faust's default 60 s session means a ~30 s join.
        broker_session_timeout=kafka.session_timeout / 1000,
        broker_heartbeat_interval=kafka.heartbeat_interval / 1000,
        # faust's default stream_wait_empty=True can hang a worker in wait_empty
        # at the next rebalance (seen on Tansu, ignoring SIGTERM).
        stream_wait_empty=False,
        # The Worker is built here, not by the `faust worker` CLI, whose
        # --with-web default overwrites web_enabled and binds port 6066.
        web_enabled=False,
        # at_least_once: aiokafka's InitProducerId (needed by exactly_once and
        # idempotence) is refused by Tansu with UNKNOWN_SERVER_ERROR.
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger=kafka.linger_ms / 1000,
        producer_max_batch_size=kafka.max_batch_bytes,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )


def add_rules_agent(app: faust.App, job: Job, tally: Tally, report: Callable[[dict[str, Any]], None]) -> None:
    """Shape (a)'s agent: take batches, evaluate, send the actions with faust's producer.

    The usual faust way: ``Topic.send`` without waiting for each ack. faust's
    consumer flushes the producer before every offset commit, which gives the
    same guarantee as (b)'s ack-then-commit. The last batch waits for its acks
    (``producer.flush``), so the clock stops when every action is durable.
    """
    orders = app.topic(job.orders_topic, key_type=bytes, value_type=bytes)
    actions = app.topic(job.actions_topic, key_type=bytes, value_type=bytes)

    @app.agent(orders, name="rules")
    async def rules(stream: faust.StreamT[bytes]) -> None:
        try:
            async for values in stream.take(TAKE_MAX, within=TAKE_WITHIN):
                matches = 0
                for value in values:
                    action = evaluate(value)
                    if action is not None:
                        await actions.send(key=action[0], value=action[1])
                        matches += 1
                if tally.seen + len(values) >= tally.target:
                    await app.producer.flush()
                tally.add(len(values), matches)
                if tally.done:
                    report({"ok": True, **tally.result()})
        except Exception as exc:
            report({"ok": False, "error": repr(exc)})
            raise


def faust_worker_main(conn: multiprocessing.connection.Connection, kafka: KafkaSettings, job: Job) -> None:
    """Child process: run a faust Worker until the parent terminates it (SIGTERM)."""
    tally = Tally(job.events)
    sent = False

    def report(message: dict[str, Any]) -> None:
        nonlocal sent
        if not sent:
            conn.send(message)
            sent = True

    app = faust_app(kafka, job)
    add_rules_agent(app, job, tally, report)
    worker = faust.Worker(app, sensors=[FirstRecordClock(tally)], loglevel="WARNING", quiet=True)
    # faust.Worker always builds a terminal Spinner on stdout: it writes cursor
    # escape codes there even with quiet=True, and at log level WARN or above
    # it adds a SpinnerHandler and lowers the root logger to DEBUG. No spinner.
    worker.spinner = None
    worker.execute_from_commandline()  # ends with SystemExit


def run_faust_shape(kafka: KafkaSettings, job: Job) -> dict[str, Any]:
    """Start the faust child, wait (bounded) for its figures, then stop it with SIGTERM."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    with tempfile.TemporaryDirectory(prefix="consume-loop-faust-") as datadir:
        child = ctx.Process(
            target=faust_worker_main, args=(sender, kafka, dataclasses.replace(job, datadir=datadir)), daemon=True
        )
        child.start()
        sender.close()  # so the pipe reports EOF if the child dies
        try:
            return receive_result(receiver, child)
        finally:
            stop_child(child)


def receive_result(receiver: multiprocessing.connection.Connection, child: BaseProcess) -> dict[str, Any]:
    if not receiver.poll(SHAPE_TIMEOUT):
        raise ShapeFailed(f"faust worker not done within {SHAPE_TIMEOUT:.0f} s")
    try:
        message = receiver.recv()
    except EOFError:
        child.join(1)
        raise ShapeFailed(f"faust worker exited early (exit code {child.exitcode})") from None
    if not message.pop("ok"):
        raise ShapeFailed(f"faust agent failed: {message['error']}")
    return message


def stop_child(child: BaseProcess) -> None:
    """SIGTERM runs faust's graceful shutdown; kill it if that takes too long."""
    if child.is_alive():
        child.terminate()
        child.join(STOP_TIMEOUT)
    if child.is_alive():
        print(f"  faust worker ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it", file=sys.stderr, flush=True)
        child.kill()
        child.join()
    elif child.exitcode:
        print(f"  faust worker exited with code {child.exitcode}", file=sys.stderr, flush=True)


# --- one run ------------------------------------------------------------------------

SHAPES = {
    "a_faust_take": "(a) faust agent, take(500), faust producer",
    "b_aiokafka_getmany": "(b) aiokafka getmany(1000), produce, commit",
    "c_aiokafka_raw": "(c) aiokafka consume only (ceiling)",
}


def run_shape(shape: str, kafka: KafkaSettings, job: Job) -> dict[str, Any]:
    if shape == "a_faust_take":
        return run_faust_shape(kafka, job)
    return run_bounded(aiokafka_shape(kafka, job, produce=shape == "b_aiokafka_getmany"), shape)


def rotated(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def run_once(kafka: KafkaSettings, events: int, run: int) -> dict[str, Any]:
    """Seed a fresh topic, measure every shape on it (rotating their order), clean up."""
    tag = f"r{run}-{uuid.uuid4().hex[:8]}"
    orders_topic = f"bench.consume-loop.orders.{tag}"
    jobs = {
        shape: Job(events, orders_topic, f"bench.consume-loop.actions.{shape}.{tag}", f"bench-consume-loop-{shape}-{tag}")
        for shape in SHAPES
    }
    topics = [dataclasses.replace(ORDERS, name=orders_topic)]
    topics += [dataclasses.replace(ACTIONS, name=job.actions_topic) for job in jobs.values()]
    records, expected = generate_orders(events, tag, seed=run)
    run_bounded(create_topics(kafka.bootstrap_servers, topics), "creating topics")
    outcome: dict[str, Any] = {"expected_matches": expected, "shapes": {}}
    try:
        outcome["seed_eps"] = round(run_bounded(preproduce(kafka, orders_topic, records), "seeding"), 1)
        for shape in rotated(list(SHAPES), run):
            outcome["shapes"][shape] = measured(shape, kafka, jobs[shape], expected)
    finally:
        with contextlib.suppress(Exception):  # best effort: the broker stops at the end anyway
            run_bounded(delete_topics(kafka.bootstrap_servers, [t.name for t in topics]), "deleting topics")
    return outcome


def measured(shape: str, kafka: KafkaSettings, job: Job, expected: int) -> dict[str, Any]:
    """One shape's figures, or the reason it failed; progress goes to stderr."""
    try:
        result = run_shape(shape, kafka, job)
    except Exception as exc:  # noqa: BLE001 - one failed shape must not stop the others
        print(f"  {shape}: FAILED {exc!r}", file=sys.stderr, flush=True)
        return {"error": str(exc) or repr(exc)}
    if shape != "c_aiokafka_raw" and result["matches"] != expected:
        result["warning"] = f"{result['matches']} actions for {expected} matching events"
    print(f"  {shape}: {result['eps']:,.0f} ev/s", file=sys.stderr, flush=True)
    return result


# --- report ---------------------------------------------------------------------------


def payload_sizes(events: int) -> dict[str, float]:
    records, _ = generate_orders(min(events, 2000), "size", seed=0)
    sizes = [len(value) for _, value in records]
    return {"min": min(sizes), "mean": round(statistics.fmean(sizes), 1), "max": max(sizes)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run values, medians, and each shape's ratio to the raw ceiling."""
    shapes: dict[str, Any] = {}
    for shape in SHAPES:
        per_run = [run["shapes"].get(shape, {"error": "not run"}) for run in runs]
        rates = [r["eps"] for r in per_run if "eps" in r]
        shapes[shape] = {
            "label": SHAPES[shape],
            "per_run_eps": [r.get("eps") for r in per_run],
            "median_eps": round(statistics.median(rates), 1) if rates else None,
            "per_run": per_run,
        }
    ceiling = shapes["c_aiokafka_raw"]["median_eps"]
    for shape, summary in shapes.items():
        summary["ratio_to_raw"] = round(summary["median_eps"] / ceiling, 4) if ceiling and summary["median_eps"] else None
        summary["per_run_ratio_to_raw"] = [per_run_ratio(run, shape) for run in runs]
    return shapes


def per_run_ratio(run: dict[str, Any], shape: str) -> float | None:
    this, raw = run["shapes"].get(shape, {}), run["shapes"].get("c_aiokafka_raw", {})
    return round(this["eps"] / raw["eps"], 4) if "eps" in this and "eps" in raw else None


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(shapes: dict[str, Any], runs: int) -> None:
    header = f"{'shape':<46} {'median ev/s':>12}  {'per run (ev/s)':<30} {'vs (c)':>7}"
    print(header)
    print("-" * len(header))
    for summary in shapes.values():
        per_run = " / ".join(fmt(v) for v in summary["per_run_eps"])
        print(f"{summary['label']:<46} {fmt(summary['median_eps']):>12}  {per_run:<30} "
              f"{fmt(summary['ratio_to_raw'], '.3f'):>7}")
    a, b = shapes["a_faust_take"]["median_eps"], shapes["b_aiokafka_getmany"]["median_eps"]
    if a and b:
        print(f"\n(b) / (a) = {b / a:.1f}x  ({'b' if b > a else 'a'} is faster; medians of {runs} runs)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are taken over them (default 3)")
    args = parser.parse_args()
    if args.events < 1 or args.runs < 1:
        parser.error("--events and --runs must be positive")
    return args


@contextlib.contextmanager
def embedded_broker() -> Iterator[KafkaSettings]:
    broker = start_embedded()
    try:
        yield KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor="embedded")
    finally:
        broker.stop()


def main() -> None:
    args = parse_args()
    sizes = payload_sizes(args.events)
    runs = []
    with embedded_broker() as kafka:
        print(f"embedded broker at {kafka.bootstrap_servers}; {args.events} events/run, {args.runs} runs; "
              f"payload {sizes['min']}-{sizes['max']} B (mean {sizes['mean']})", file=sys.stderr, flush=True)
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
            runs.append(run_once(kafka, args.events, run))
    shapes = summarize(runs)
    print_table(shapes, args.runs)
    print(json.dumps({
        "events": args.events,
        "runs": args.runs,
        "broker": "embedded (Tansu)",
        "rate": "events / (last record processed - first record consumed), perf_counter",
        "versions": {p: version(p) for p in ("faust-streaming", "aiokafka", "pydantic")},
        "payload_bytes": sizes,
        "take": {"max": TAKE_MAX, "within_s": TAKE_WITHIN},
        "getmany_max_records": GETMANY_MAX,
        "expected_matches": [run["expected_matches"] for run in runs],
        "seed_eps": [run.get("seed_eps") for run in runs],
        "shapes": shapes,
    }))


if __name__ == "__main__":
    main()
