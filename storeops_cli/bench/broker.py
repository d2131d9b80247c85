"""``storeops bench broker``: the ceiling, raw aiokafka rates on the broker the pipeline uses.

The broker comes from the launcher (``KAFKA_BOOTSTRAP_SERVERS``, else Docker,
else the embedded one). Every run uses fresh 6-partition topics, deleted at the
end of the run (the embedded broker keeps every record in memory).

Payloads are the pipeline's own wire bytes: ``Mix`` events (orders and stock
changes) validated and encoded by the ORDERS / STOCK topics' ``encode`` (about
280-530 bytes once wrapped in the envelope), keyed like the services key them.
Per run:

- warm-up: the first few thousand records onto a topic of their own, untimed.
- produce: every record sent with ``AIOKafkaProducer.send`` (acks=all), then
  every ack awaited; once per setting in ``PRODUCER_SETTINGS`` (linger, batch
  bytes), each onto its own topic. The best setting is reported as ``produce``.
- consume: a consumer without a group, assigned every partition, ``getmany``
  until N records were seen. It stops on the count, never on the end offset:
  the embedded broker under-reports end offsets.
- consume→produce: what a pipeline stage does: ``getmany``, send each record
  to another topic (acks=all, the best produce setting), await the batch's
  acks, next batch.

A rate is N over the wall time from the first send (or the assignment) to the
last ack (or the N-th record). Each phase also reports this process's CPU
seconds and, when it runs on this machine, the broker process's, so a reader
sees which side saturates a core.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.registry import ORDERS, STOCK
from storeops.kafka import consumer_options, producer_options
from storeops.settings import KafkaSettings
from storeops_cli.bench.load import Mix
from storeops_cli.bench.report import emit, median, percentile, table
from storeops_cli.bench.stack import listening_pid
from storeops_cli.broker import start_broker

PARTITIONS = 6
GETMANY_MAX = 1000  # the services' max_poll_records
WARMUP_EVENTS = 5000  # produced before each run's timed phases, onto a topic of their own
IDLE_TIMEOUT = 15.0  # seconds without a new record before a consume phase gives up
# (linger ms, max batch bytes): the services' own setting first, then larger batches.
PRODUCER_SETTINGS = ((5, 64 * 1024), (10, 128 * 1024), (20, 256 * 1024))
ENCODERS = {"orders": ORDERS, "stock": STOCK}

Record = tuple[bytes, bytes]


class BenchError(RuntimeError):
    """A phase did not see all its records."""


# --- payloads -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def make_records(events: int, seed: int = 1) -> tuple[Record, ...]:
    """``events`` (key, value) pairs exactly as the pipeline puts them on its topics (kept for the next run)."""
    mix = Mix(exception_share=0.1, seed=seed)
    records = []
    for n in range(events):
        kind, event = mix.event(n)
        topic = ENCODERS[kind]
        records.append(topic.encode(topic.adapter.validate_python(event)))
    return tuple(records)


def payload_stats(records: Sequence[Record]) -> dict[str, float]:
    """Value sizes in bytes; keys are counted in the MB/s figures, not here."""
    sizes = [len(value) for _, value in records]
    return {"min": min(sizes), "p50": percentile(sizes, 50), "mean": round(sum(sizes) / len(sizes), 1),
            "p99": percentile(sizes, 99), "max": max(sizes)}


# --- timing ---------------------------------------------------------------------


@dataclass
class Clock:
    """Wall and CPU time of one phase: this process and, if known, the broker process."""

    broker: psutil.Process | None

    def __enter__(self) -> Clock:
        self.t0, self.cpu0, self.broker0 = time.perf_counter(), time.process_time(), self._broker_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.client_cpu = time.process_time() - self.cpu0
        self.broker_cpu = self._broker_cpu() - self.broker0

    def _broker_cpu(self) -> float:
        if self.broker is None:
            return float("nan")
        try:
            times = self.broker.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return float("nan")

    def figures(self, records: Sequence[Record]) -> dict[str, float]:
        nbytes = sum(len(k) + len(v) for k, v in records)
        return {"eps": round(len(records) / self.seconds, 1), "mb_s": round(nbytes / self.seconds / 1e6, 2),
                "seconds": round(self.seconds, 4), "client_cpu_s": round(self.client_cpu, 3),
                "broker_cpu_s": None if self.broker_cpu != self.broker_cpu else round(self.broker_cpu, 3)}


def broker_process(bootstrap_servers: str) -> psutil.Process | None:
    """The local process listening on the first bootstrap address, if any."""
    pid = listening_pid(int(bootstrap_servers.split(",")[0].rpartition(":")[2]))
    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


# --- topics and clients ---------------------------------------------------------


async def create_topics(bootstrap_servers: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="bench-admin")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


async def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    """Drop a run's topics: the in-memory broker frees their records."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="bench-admin")
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def producer(kafka: KafkaSettings, setting: tuple[int, int]) -> AIOKafkaProducer:
    """The services' producer options (acks=all, idempotence per flavor) with this batching."""
    tuned = kafka.model_copy(update={"linger_ms": setting[0], "max_batch_bytes": setting[1]})
    return AIOKafkaProducer(**producer_options(tuned, "bench-broker"))


def group_free_consumer(kafka: KafkaSettings) -> AIOKafkaConsumer:
    """The services' consumer options without a group (no join to wait for)."""
    return AIOKafkaConsumer(**{**consumer_options(kafka, None, "bench-broker"), "max_poll_records": GETMANY_MAX})


async def read_all(kafka: KafkaSettings, topic: str, n: int, clock: Clock,
                   handle: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Assign every partition of ``topic`` from the start and read ``n`` records, timed by ``clock``."""
    consumer = group_free_consumer(kafka)
    await consumer.start()
    try:
        with clock:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            await read_n(consumer, n, handle)
    finally:
        await consumer.stop()


# --- phases ---------------------------------------------------------------------


async def produce(kafka: KafkaSettings, setting: tuple[int, int], topic: str, records: Sequence[Record],
                  clock: Clock) -> dict[str, float]:
    client = producer(kafka, setting)
    await client.start()
    try:
        with clock:
            futures = [await client.send(topic, key=key, value=value) for key, value in records]
            await asyncio.gather(*futures)
    finally:
        await client.stop()
    return {"linger_ms": setting[0], "max_batch_bytes": setting[1], **clock.figures(records)}


async def read_n(consumer: AIOKafkaConsumer, n: int, handle: Callable[[list[Any]], Awaitable[None]]) -> None:
    """``getmany`` until ``n`` records were seen, handing each batch to ``handle``."""
    seen, idle_since = 0, time.monotonic()
    while seen < n:
        batch = await consumer.getmany(timeout_ms=200, max_records=GETMANY_MAX)
        records = [r for rs in batch.values() for r in rs]
        if not records:
            if time.monotonic() - idle_since > IDLE_TIMEOUT:
                raise BenchError(f"idle for {IDLE_TIMEOUT:.0f} s after {seen} of {n} records")
            continue
        await handle(records)
        seen, idle_since = seen + len(records), time.monotonic()


async def consume(kafka: KafkaSettings, topic: str, records: Sequence[Record], clock: Clock) -> dict[str, float]:
    async def nothing(batch: list[Any]) -> None:
        return None

    await read_all(kafka, topic, len(records), clock, nothing)
    return clock.figures(records)


async def consume_produce(kafka: KafkaSettings, setting: tuple[int, int], source: str, target: str,
                          records: Sequence[Record], clock: Clock) -> dict[str, float]:
    client = producer(kafka, setting)
    await client.start()

    async def forward(batch: list[Any]) -> None:
        futures = [await client.send(target, key=r.key, value=r.value) for r in batch]
        await asyncio.gather(*futures)

    try:
        await read_all(kafka, source, len(records), clock, forward)
    finally:
        await client.stop()
    return {"linger_ms": setting[0], "max_batch_bytes": setting[1], **clock.figures(records)}


# --- one run --------------------------------------------------------------------


async def measure_async(bootstrap_servers: str, events: int, flavor: str) -> dict[str, Any]:
    """One run's figures on fresh topics, deleted before returning."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers, flavor=flavor)
    records, broker = make_records(events), broker_process(bootstrap_servers)
    run_id = uuid.uuid4().hex[:8]
    names = [f"bench-broker-{run_id}-p{i}" for i in range(len(PRODUCER_SETTINGS))] + [f"bench-broker-{run_id}-out"]
    warmup = f"bench-broker-{run_id}-warmup"
    await create_topics(bootstrap_servers, [*names, warmup])
    try:
        await produce(kafka, PRODUCER_SETTINGS[0], warmup, records[:WARMUP_EVENTS], Clock(None))
        tries = [await produce(kafka, s, t, records, Clock(broker)) for s, t in zip(PRODUCER_SETTINGS, names[:-1], strict=True)]
        best = max(range(len(tries)), key=lambda i: tries[i]["eps"])
        setting = PRODUCER_SETTINGS[best]
        consumed = await consume(kafka, names[best], records, Clock(broker))
        piped = await consume_produce(kafka, setting, names[best], names[-1], records, Clock(broker))
        rss = _rss_mb(broker)
    finally:
        await delete_topics(bootstrap_servers, [*names, warmup])
    return {"events": events, "payload_bytes": payload_stats(records), "produce_tries": tries,
            "produce": tries[best], "consume": consumed, "consume_produce": piped,
            "produce_eps": tries[best]["eps"], "consume_eps": consumed["eps"],
            "consume_produce_eps": piped["eps"], "broker_rss_mb_before_delete": rss}


def measure(bootstrap_servers: str, events: int, flavor: str) -> dict[str, Any]:
    """One run (see ``measure_async``); for callers without a running event loop."""
    return asyncio.run(measure_async(bootstrap_servers, events, flavor))


def _rss_mb(proc: psutil.Process | None) -> float | None:
    try:
        return round(proc.memory_info().rss / 2**20, 1) if proc else None
    except psutil.Error:
        return None


# --- the command ----------------------------------------------------------------

PHASES = ("produce", "consume", "consume_produce")
MEDIAN_KEYS = ("eps", "mb_s", "client_cpu_s", "broker_cpu_s")


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in PHASES:
        out[phase] = {k: known_median([r[phase][k] for r in runs]) for k in MEDIAN_KEYS}
    for i, (linger, size) in enumerate(PRODUCER_SETTINGS):
        out[f"produce_linger{linger}_batch{size // 1024}k_eps"] = median([r["produce_tries"][i]["eps"] for r in runs])
    out.update({f"{p}_eps": out[p]["eps"] for p in PHASES})
    return out


def render(runs: list[dict[str, Any]], mid: dict[str, Any]) -> str:
    rows = []
    for i, (linger, size) in enumerate(PRODUCER_SETTINGS):
        tries = [r["produce_tries"][i] for r in runs]
        rows.append([f"produce linger {linger} ms, batch {size // 1024} KiB", *_row(tries)])
    for phase, label in (("consume", "consume (getmany)"), ("consume_produce", "consume -> produce (acks=all)")):
        rows.append([label, *_row([r[phase] for r in runs])])
    headers = ["phase (median of runs)", "events/s", "MB/s", "seconds", "client CPU s", "broker CPU s"]
    sizes = runs[0]["payload_bytes"]
    note = (f"payload value bytes: min {sizes['min']}, p50 {sizes['p50']:.0f}, mean {sizes['mean']:.0f}, "
            f"p99 {sizes['p99']:.0f}, max {sizes['max']}\n"
            f"produce (each run's best setting): {mid['produce_eps']:,.0f} events/s median; "
            f"best setting per run: {', '.join(best_settings(runs))}; consume -> produce uses it")
    return table(headers, rows) + "\n" + note


def best_settings(runs: list[dict[str, Any]]) -> list[str]:
    return [f"{r['produce']['linger_ms']} ms/{r['produce']['max_batch_bytes'] // 1024} KiB" for r in runs]


def known_median(values: list[float | None]) -> float | None:
    """The median of the known values (None when there are none, e.g. a remote broker's CPU)."""
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _row(phases: list[dict[str, float]]) -> list[float]:
    keys = ("eps", "mb_s", "seconds", "client_cpu_s", "broker_cpu_s")
    return [float("nan") if m is None else m for m in (known_median([p[k] for p in phases]) for k in keys)]


def run(args: argparse.Namespace) -> int:
    broker = start_broker()
    try:
        print(f"broker: {broker.kind} at {broker.bootstrap_servers}; {args.events:,} events x {args.runs} runs",
              flush=True)
        runs = [measure(broker.bootstrap_servers, args.events, broker.flavor) for _ in range(args.runs)]
    finally:
        broker.stop()
    mid = medians(runs)
    settings = {"events": args.events, "runs": args.runs, "partitions": PARTITIONS, "acks": "all",
                "getmany_max_records": GETMANY_MAX,
                "producer_settings": [{"linger_ms": li, "max_batch_bytes": b} for li, b in PRODUCER_SETTINGS]}
    figures = {"bench": "broker", "broker": broker.kind, "flavor": broker.flavor, "settings": settings,
               "median": mid, "runs": runs}
    emit(render(runs, mid), figures)
    return 0
