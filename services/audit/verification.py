"""Checking a chain: each entry against its hash and its predecessor, each checkpoint against its
signature and the entry it signed. Pure: entries and checkpoints come in, the first finding (or
none) comes out; ``storeops audit verify`` streams them from the database.

An entry verifies when its fields give its hash (``chain.entry_bytes``), its ``prev_hash`` is the
previous entry's hash (zeros for the first) and its ``chain_seq`` follows the previous one. At the
first entry that does not, the finding says what was most likely done, from the hashes alone:

- **edited**: its fields no longer give its hash (or an entry was re-hashed after an edit, so the
  next one is no longer chained to it);
- **deleted**: entries are missing before it (a gap in ``chain_seq``; or it was chained at a later
  position and the rest renumbered; or a checkpoint signed an entry past the chain's end);
- **inserted**: a second entry at one position, or one the next entry was not chained after;
- **reordered**: it was chained after the entry that now follows it (two were swapped);
- **checkpoint**: a checkpoint whose signature fails with the keys given, or whose hash is not
  the hash of the entry at its position (the chain was rewritten, hashes and all, up to there).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.audit.chain import GENESIS, entry_bytes, entry_hash
from services.audit.signing import signature_problem

Kind = Literal["edited", "deleted", "inserted", "reordered", "checkpoint"]

# An entry that does not give its hash is tried at the positions this close to where it stands,
# to tell an entry moved by a deletion, an insertion or a swap from an edited one.
MOVE_WINDOW = 16

# Positions in an entry row (``services.audit.store.ENTRY_COLUMNS``).
ROW, CHAIN, SEQ, TOPIC, PARTITION, OFFSET, KEY, RECORD_ID, TYPE, SUBJECT, TIME, RECORDED_AT, CONFLICT, PAYLOAD, \
    PREV_HASH, HASH = range(16)


@dataclass(frozen=True)
class Finding:
    """The first entry (or checkpoint) of a chain that does not verify, and why."""

    chain: str
    seq: int  # the entry's chain_seq (a checkpoint's: the entry it signed)
    id: str | None  # the entry's record id; None where no entry is there
    kind: Kind
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "id": self.id, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_seq: int
    hash: str
    time: datetime
    key_id: str
    signature: str


def digest(row: Sequence[Any], chain_seq: int | None = None) -> str | None:
    """The hash an entry row's fields give (at ``chain_seq``, if given, instead of its own); None when
    they cannot give one (a field rewritten into something no entry holds: a prev_hash that is not hex,
    a time that is not one), which the check reports as an edit instead of stopping on it."""
    try:
        return entry_hash(row[PREV_HASH], entry_bytes(
            row[CHAIN], row[SEQ] if chain_seq is None else chain_seq, row[TOPIC], row[PARTITION], row[OFFSET], row[KEY],
            _uuid(row[RECORD_ID]), row[TYPE], row[SUBJECT], _utc(row[TIME]), _utc(row[RECORDED_AT]), row[CONFLICT],
            row[PAYLOAD].encode()))
    except (ValueError, TypeError, AttributeError, UnicodeError):
        return None


def _uuid(value: Any) -> str:
    """A record id as the driver gives it (a UUID; SQLite: 32 hex digits) as canonical text."""
    if isinstance(value, str) and len(value) == 32:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return str(value)


def _utc(value: Any) -> datetime:
    """A time as the driver gives it (aware, UTC; SQLite: UTC text without a zone) as a datetime in UTC
    (naive: UTC, as ``entry_bytes`` takes it)."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


class ChainCheck:
    """One chain's check, fed its entries in chain order (``feed`` a page at a time, then ``finish``).

    ``from_seq`` > 1 (``--since``) starts there: the first entry's ``prev_hash`` is taken as given, or
    must be ``anchor`` (after a retention prune: the hash of the last entry it removed, signed).
    ``checked`` counts the entries that verified (those before the finding), ``signed`` the checkpoints;
    ``found`` is the finding.
    """

    def __init__(self, chain: str, checkpoints: Iterable[Checkpoint], keys: dict[str, Ed25519PublicKey],
                 from_seq: int = 1, anchor: str | None = None) -> None:
        self.chain = chain
        self.anchor = anchor  # the hash the entry at from_seq must be chained to (a signed retention prune's)
        self.keys = keys
        self.from_seq = from_seq
        # one before ``from_seq`` signed an entry this check does not read
        self.checkpoints = deque(sorted((c for c in checkpoints if c.chain_seq >= from_seq), key=lambda c: c.chain_seq))
        self.checked = 0
        self.signed = 0
        self.found: Finding | None = None
        self._prev: Sequence[Any] | None = None
        self._before: Sequence[Any] | None = None
        self._pending: Sequence[Any] | None = None

    def feed(self, rows: Iterable[Sequence[Any]]) -> Finding | None:
        for row in rows:
            if self._pending is not None:
                self.found = self._check(self._pending, row)
                if self.found is not None:
                    return self.found
            self._pending = row
        return None

    def finish(self) -> Finding | None:
        """Check the last entry, then the checkpoints past it (entries deleted from the end)."""
        self.found = self._finish()
        return self.found

    def _finish(self) -> Finding | None:
        if self._pending is not None:
            found = self._check(self._pending, None)
            if found is not None:
                return found
        last = self._prev[SEQ] if self._prev is not None else self.from_seq - 1
        if not self.checkpoints:
            return None
        cp = self.checkpoints[0]  # it signed an entry that is not there
        problem = signature_problem(self.keys, self.chain, cp.chain_seq, cp.hash, cp.time, cp.key_id, cp.signature)
        if problem:
            return Finding(self.chain, cp.chain_seq, None, "checkpoint", f"the checkpoint at {cp.chain_seq}: {problem}")
        return Finding(self.chain, last + 1, None, "deleted", f"a checkpoint signed entry {cp.chain_seq}, but the chain "
                                                              f"ends at {last}: entries {last + 1}..{cp.chain_seq} were deleted")

    def _check(self, row: Sequence[Any], after: Sequence[Any] | None) -> Finding | None:
        prev = self._prev
        expected_seq = prev[SEQ] + 1 if prev is not None else self.from_seq
        expected_prev = (prev[HASH] if prev is not None else GENESIS if self.from_seq == 1
                         else self.anchor if self.anchor is not None else row[PREV_HASH])
        consistent = digest(row) == row[HASH]
        if consistent and row[PREV_HASH] == expected_prev and row[SEQ] == expected_seq:
            self._before, self._prev = prev, row
            self.checked += 1
            return self._checkpoints(row)
        return self._diagnose(row, after, consistent, expected_seq, expected_prev)

    def _diagnose(self, row: Sequence[Any], after: Sequence[Any] | None, consistent: bool, expected_seq: int,
                  expected_prev: str) -> Finding:
        prev, before, seq = self._prev, self._before, row[SEQ]
        if prev is not None and seq == prev[SEQ]:
            return self._found(row, "inserted", f"a second entry at chain_seq {seq}")
        if consistent:
            if seq > expected_seq:
                return self._found(row, "deleted", f"entries {expected_seq}..{seq - 1} before it are missing")
            if before is not None and prev is not None and row[PREV_HASH] == before[HASH]:
                return self._found(prev, "inserted", "the entry after it was chained to the one before it")
            if after is not None and row[PREV_HASH] == after[HASH]:
                return self._found(row, "reordered", "it was chained after the entry that now follows it")
            return self._found(prev or row, "edited",
                               "it is not the entry the next one was chained to: rewritten, its hash recomputed")
        moved = next((s for d in range(1, MOVE_WINDOW + 1) for s in (seq - d, seq + d) if s >= 1 and digest(row, s) == row[HASH]),
                     None)
        if moved is None:
            if after is not None and after[PREV_HASH] == expected_prev:
                return self._found(row, "inserted", "the entry after it was chained to the one before it")
            return self._found(row, "edited", "its fields do not give its hash: changed after it was written")
        if moved < seq:
            return self._found(prev or row, "inserted", f"the entry after it was chained at {moved} and is now at {seq}: "
                                                        f"{seq - moved} entries were inserted before it")
        if after is not None and row[PREV_HASH] == after[HASH]:
            return self._found(row, "reordered", f"it was chained at {moved}, after the entry that now follows it")
        return self._found(row, "deleted", f"it was chained at {moved} and is now at {seq}: entries before it were "
                                           "deleted and the rest renumbered")

    def _checkpoints(self, row: Sequence[Any]) -> Finding | None:
        while self.checkpoints and self.checkpoints[0].chain_seq <= row[SEQ]:
            cp = self.checkpoints.popleft()
            if cp.chain_seq < row[SEQ]:  # its entry is not there: a gap would have been found first
                return Finding(self.chain, cp.chain_seq, None, "deleted", f"a checkpoint signed entry {cp.chain_seq}, "
                                                                          "which is not there")
            problem = signature_problem(self.keys, self.chain, cp.chain_seq, cp.hash, cp.time, cp.key_id, cp.signature)
            if problem:
                return self._found(row, "checkpoint", f"the checkpoint at {cp.chain_seq}: {problem}")
            if cp.hash != row[HASH]:
                return self._found(row, "checkpoint", f"the checkpoint at {cp.chain_seq} signed hash {cp.hash}, the entry "
                                                      f"there has {row[HASH]}: the chain was rewritten up to here")
            self.signed += 1
        return None

    def _found(self, row: Sequence[Any], kind: Kind, reason: str) -> Finding:
        if row is self._prev:  # counted before the entry after it (or its checkpoint) gave it away
            self.checked -= 1
        return Finding(self.chain, row[SEQ], str(_uuid(row[RECORD_ID])), kind, reason)
