"""The audit trail's hash chains: what an entry's hash covers, how a batch is linked, what a
checkpoint signs and when one is due. Pure: no I/O; the store and the verifier both use it.

One chain per consumed (topic, partition), named ``<topic>:<partition>``: a partition is read by
one member of the consumer group at a time, so the instance holding it is its chain's only
writer. Entries are numbered 1, 2, 3... within their chain (``chain_seq``); the table's own
``seq`` is the database's and not covered (it is known only after the insert).

The canonical bytes of an entry (format ``storeops-audit/1``), in ``entry_bytes`` and nowhere else:

    ["storeops-audit/1", chain, chain_seq, topic, partition, offset, key, record_id, type,
     subject, time, recorded_at, conflict]        compact JSON (orjson), UTF-8
    a newline (0x0A)
    the payload: the record's value exactly as stored (its bytes on the topic)

``key`` is null for a record without one; ``record_id`` is the lowercase hyphenated UUID;
``time`` and ``recorded_at`` are RFC 3339 in UTC ending in ``Z``, with microseconds after a dot
unless they are zero (orjson's form: ``2026-11-23T09:00:00.250000Z``, ``2026-11-23T09:00:00Z``);
``conflict`` is true for a record stored again because it came back with its id and different
content. The header is JSON, so it holds no raw newline: the first newline ends it.

``hash = SHA-256(bytes of prev_hash ‖ canonical bytes)``, kept as 64 lowercase hex digits;
``prev_hash`` is the previous entry's hash, 64 zeros (``GENESIS``) for a chain's first entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

FORMAT = "storeops-audit/1"
CHECKPOINT_FORMAT = "storeops-audit-checkpoint/1"
PRUNE_FORMAT = "storeops-audit-prune/1"
GENESIS = "0" * 64
_TIMES = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def chain_of(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def entry_bytes(chain: str, chain_seq: int, topic: str, partition: int, offset: int, key: str | None,
                record_id: str, type: str, subject: str, time: datetime, recorded_at: datetime,
                conflict: bool, payload: bytes) -> bytes:
    """The canonical bytes of one entry (the module docstring defines them); times are UTC (a naive
    one is taken as UTC: SQLite's are read so)."""
    header = orjson.dumps([FORMAT, chain, chain_seq, topic, partition, offset, key, record_id, type, subject,
                           _in_utc(time), _in_utc(recorded_at), bool(conflict)], option=_TIMES)
    return header + b"\n" + payload


def _in_utc(time: datetime) -> datetime:
    """``time`` in UTC: orjson writes an aware time in its own zone, and the database gives UTC back."""
    return time if time.tzinfo is None or time.tzinfo is UTC else time.astimezone(UTC)


def entry_hash(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Head:
    """Where a chain stands: its last entry's ``chain_seq`` (0 when empty) and hash."""

    seq: int = 0
    hash: str = GENESIS


def link(head: Head, rows: list[dict[str, Any]], payloads: list[bytes]) -> Head:
    """Number and hash ``rows`` (one chain's new entries, in the order read, as stored) after
    ``head``, in place; returns the chain's new head. ``payloads[i]`` is row i's payload bytes."""
    seq, prev = head.seq, head.hash
    for row, payload in zip(rows, payloads, strict=True):
        seq += 1
        canonical = entry_bytes(row["chain"], seq, row["topic"], row["partition"], row["offset"], row["key"],
                                str(row["record_id"]), row["type"], row["subject"], row["time"], row["recorded_at"],
                                row["conflict"], payload)
        row["chain_seq"], row["prev_hash"] = seq, prev
        prev = row["hash"] = entry_hash(prev, canonical)
    return Head(seq, prev)


# --- checkpoints ---------------------------------------------------------------------------------


def checkpoint_message(chain: str, chain_seq: int, hash: str, time: datetime, key_id: str) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers: the compact JSON array
    ``["storeops-audit-checkpoint/1", chain, chain_seq, hash, time, key_id]`` (time as in entries)."""
    return orjson.dumps([CHECKPOINT_FORMAT, chain, chain_seq, hash, _in_utc(time), key_id], option=_TIMES)


def prune_message(chain: str, up_to_seq: int, hash: str, time: datetime, archive_sha256: str, key_id: str) -> bytes:
    """The bytes a retention prune's signature covers: ``["storeops-audit-prune/1", chain, up_to_seq,
    hash, time, archive_sha256, key_id]``: entries 1..``up_to_seq`` were removed after they were
    written to an archive with that SHA-256; ``hash`` is the last one's (a checkpoint signed it too),
    so the chain verifies from the entry after it."""
    return orjson.dumps([PRUNE_FORMAT, chain, up_to_seq, hash, _in_utc(time), archive_sha256, key_id], option=_TIMES)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A chain's last checkpoint: the entry it signed and when."""

    seq: int
    time: datetime


def checkpoint_due(head: Head, sealed: Sealed | None, now: datetime, every: int, seconds: float) -> bool:
    """A chain is signed again once ``every`` entries are past its last checkpoint, or some are and
    that checkpoint is ``seconds`` old, whichever comes first; a chain never signed is signed at
    once (so every chain is anchored from its first batch)."""
    if head.seq == 0 or (sealed is not None and head.seq <= sealed.seq):
        return False
    if sealed is None:
        return True
    return head.seq - sealed.seq >= every or now - sealed.time >= timedelta(seconds=seconds)
