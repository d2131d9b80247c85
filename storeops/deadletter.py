"""Building the dead-letter envelope for a record a consumer could not process."""

from __future__ import annotations

import hashlib

from aiokafka.structs import ConsumerRecord

from schemas.deadletter import DeadLetter, RecordDeadLettered, Stage
from schemas.envelope import deterministic_id, utcnow


def dead_letter(record: ConsumerRecord, stage: Stage, error: str, service: str) -> RecordDeadLettered:
    """The envelope that keeps ``record`` whole, with its origin and why it failed.

    Its id is derived from (service, origin, the record's timestamp and bytes),
    so dead-lettering the same record again after a restart is recognised
    downstream as the same dead letter, while a different record at a reused
    origin (offsets restart when a topic is re-created) gets an id of its own.
    """
    origin = f"{record.topic}:{record.partition}:{record.offset}"
    digest = hashlib.sha256((record.key or b"") + b"\0" + (record.value or b"")).hexdigest()
    key = record.key.decode("utf-8", errors="replace").strip() if record.key else ""
    return RecordDeadLettered(
        id=deterministic_id("deadletter", service, origin, record.timestamp, digest),
        type="RecordDeadLettered",
        source=f"storeops/{service}",
        subject=(key or origin)[:200],
        data=DeadLetter(
            original_value=record.value,
            original_key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            stage=stage,
            error=error[:4000],
            service=service,
            failed_at=utcnow(),
        ),
    )
