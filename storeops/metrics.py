"""Prometheus metrics every consuming service shares, named storeops_<service>_<noun>."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ConsumerMetrics:
    consumed: Counter
    dead_lettered: Counter
    skipped: Counter
    produced: Counter
    batch_seconds: Histogram
    batch_size: Histogram
    retries: Counter
    splits: Counter
    last_commit: Gauge

    @classmethod
    def for_service(cls, service: str, registry: CollectorRegistry = REGISTRY) -> ConsumerMetrics:
        """One set per (service, registry): building a service's app again reuses it."""
        key = (service, id(registry))
        if key not in _REGISTERED:
            _REGISTERED[key] = cls._register(service, registry)
        return _REGISTERED[key]

    @classmethod
    def _register(cls, service: str, registry: CollectorRegistry) -> ConsumerMetrics:
        p = f"storeops_{service}"
        r = registry
        return cls(
            consumed=Counter(f"{p}_records_consumed_total", "Records read from topics", ["topic"], registry=r),
            dead_lettered=Counter(f"{p}_records_dead_lettered_total", "Records sent to the dead-letter topic", ["topic", "stage"],
                                  registry=r),
            skipped=Counter(f"{p}_records_skipped_total", "Bad records on watched topics, left to their owner's dead letter",
                            ["topic"], registry=r),
            produced=Counter(f"{p}_records_produced_total", "Records written to topics", ["topic"], registry=r),
            batch_seconds=Histogram(f"{p}_batch_seconds", "Time to process one batch, effect to commit",
                                    buckets=_BATCH_BUCKETS, registry=r),
            batch_size=Histogram(f"{p}_batch_records", "Records per batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000), registry=r),
            retries=Counter(f"{p}_batch_retries_total", "Batches retried after a transient failure", registry=r),
            splits=Counter(f"{p}_batch_splits_total", "Batches split in two to find a record the database refused", registry=r),
            last_commit=Gauge(f"{p}_last_commit_timestamp_seconds", "When offsets were last committed", registry=r),
        )


_REGISTERED: dict[tuple[str, int], ConsumerMetrics] = {}
