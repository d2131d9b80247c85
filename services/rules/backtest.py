"""Backtests: what a rule would have done over a past window of the event topics.

Nothing is written and nothing is emitted. ``Replay`` is the pure part: it takes
records in the order read, keeps the previous values the stateful operators
need in memory, and tallies the simulated runs. ``scan`` reads the window.

The window is on the envelope's ``time`` (when it happened). A record reaches
the broker after its event happened, so reading seeks by record timestamp to a
little before the window, and stops on a partition at the end offsets seen at
the start, or at a record written after the backtest started or well after the
window's end (``late``). The embedded broker counts end offsets in batches, not
records, so there a partition ends when the broker has nothing more to give.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.actions import RuleRunData
from schemas.envelope import Envelope
from schemas.registry import EVENT_TOPICS, Topic
from services.rules.compiler import CompiledRule
from services.rules.engine import PreviousValues, simulate
from storeops.kafka import make_consumer
from storeops.settings import KafkaSettings

CLOCK_SKEW = timedelta(minutes=5)  # a record may carry a timestamp a little before its event's time
IDLE_SECONDS = 1.5  # nothing fetched for this long: every partition is read to its end
TAKING = frozenset({"succeeded", "pending"})  # a step in these states hands something on


@dataclass
class Tally:
    events_scanned: int = 0
    events_in_window: int = 0
    matched: int = 0
    runs_by_status: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    skipped_records: int = 0
    sample: list[RuleRunData] = field(default_factory=list)
    truncated: bool = False  # the limit was reached before the window's end

    def answer(self) -> dict[str, Any]:
        return {
            "events_scanned": self.events_scanned, "events_in_window": self.events_in_window, "matched": self.matched,
            "runs_by_status": dict(self.runs_by_status), "actions": dict(self.actions),
            "skipped_records": self.skipped_records, "truncated": self.truncated,
            "sample": [run.model_dump(mode="json") for run in self.sample],
        }


def topics_for(rule: CompiledRule) -> list[Topic]:
    """The event topics that carry one of the rule's trigger types."""
    return [t for t in EVENT_TOPICS if {c.__name__ for c in t.record_types} & rule.event_types]


class Replay:
    """Simulates a rule over records in reading order; per subject, that is the order they happened."""

    def __init__(self, rule: CompiledRule, start: datetime, end: datetime, sample: int) -> None:
        self.rule = rule
        self.start, self.end = start, end
        self.sample_size = sample
        self.tally = Tally()
        self.previous = PreviousValues()  # kept in memory: a backtest writes nothing

    def feed(self, topic: Topic, value: bytes | None) -> None:
        self.tally.events_scanned += 1
        event = self._decode(topic, value)
        if event is None:
            return
        self.tally.events_in_window += 1
        run, _ = simulate(self.rule, event, self.previous.lookup(event), event.time)
        self.previous.remember(event, self.rule.stateful_paths)
        if run is not None:
            self._count(run)

    def _decode(self, topic: Topic, value: bytes | None) -> Envelope | None:
        """The event if it is of a trigger type and in the window; undecodable records are counted."""
        if value is None:
            self.tally.skipped_records += 1
            return None
        try:
            envelope = topic.decode_envelope(value)
            if envelope.type not in self.rule.event_types or not self.start <= envelope.time < self.end:
                return None
            return topic.decode(value)
        except (ValidationError, ValueError):
            self.tally.skipped_records += 1
            return None

    def _count(self, run: RuleRunData) -> None:
        self.tally.matched += 1
        self.tally.runs_by_status[run.status] += 1
        for step in run.steps:
            if step.status in TAKING:
                self.tally.actions[step.action] += 1
        if len(self.tally.sample) < self.sample_size:
            self.tally.sample.append(run)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass
class _Window:
    """Where each partition's reading ends."""

    ends: dict[TopicPartition, int] | None  # None: the broker's end offsets are not to be trusted
    cutoff_ms: int  # a record written after this is past the window
    done: set[TopicPartition] = field(default_factory=set)

    def past(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        return (self.ends is not None and record.offset >= self.ends[tp]) or record.timestamp > self.cutoff_ms


async def scan(kafka: KafkaSettings, replay: Replay, limit: int, late: timedelta) -> Tally:
    """Read the window of every topic the rule listens to into ``replay``, at most ``limit`` records."""
    topics = {t.name: t for t in topics_for(replay.rule)}
    consumer = make_consumer(kafka, None, f"rules-backtest-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        tps = await _assign(consumer, list(topics))
        window = _Window(
            ends=None if kafka.flavor == "embedded" else await consumer.end_offsets(tps),
            cutoff_ms=min(_ms(datetime.now(UTC)), _ms(replay.end + late)))
        await _seek(consumer, tps, replay.start - CLOCK_SKEW, window)
        await _read(consumer, topics, tps, window, replay, limit)
    finally:
        await consumer.stop()
    return replay.tally


async def _assign(consumer: AIOKafkaConsumer, names: Sequence[str]) -> list[TopicPartition]:
    await consumer.topics()  # loads metadata for every topic
    tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
    consumer.assign(tps)
    return tps


async def _seek(consumer: AIOKafkaConsumer, tps: list[TopicPartition], since: datetime, window: _Window) -> None:
    """To the first record written at or after ``since``; a partition with none is done already."""
    found = await consumer.offsets_for_times({tp: _ms(since) for tp in tps}) if tps else {}
    for tp in tps:
        at = found.get(tp)
        if at is None:
            window.done.add(tp)
            continue
        consumer.seek(tp, at.offset)
        if window.ends is not None and at.offset >= window.ends[tp]:
            window.done.add(tp)
    if window.done:
        consumer.pause(*window.done)


async def _read(consumer: AIOKafkaConsumer, topics: dict[str, Topic], tps: list[TopicPartition], window: _Window,
                replay: Replay, limit: int) -> None:
    last_fetch = time.monotonic()
    while len(window.done) < len(tps):
        batch = await consumer.getmany(timeout_ms=200)
        if not any(batch.values()):
            if time.monotonic() - last_fetch > IDLE_SECONDS:
                return
            continue
        last_fetch = time.monotonic()
        for tp, records in batch.items():
            for record in records:
                if tp in window.done:
                    break
                if window.past(tp, record):
                    _finish(consumer, window, tp)
                    break
                replay.feed(topics[tp.topic], record.value)
                if replay.tally.events_scanned >= limit:
                    replay.tally.truncated = True
                    return
                if window.ends is not None and record.offset + 1 >= window.ends[tp]:
                    _finish(consumer, window, tp)


def _finish(consumer: AIOKafkaConsumer, window: _Window, tp: TopicPartition) -> None:
    window.done.add(tp)
    consumer.pause(tp)
