"""The audit trail's hash chains, pure: what an entry's hash covers, when a chain is signed, and
ChainCheck finding each kind of tampering at the entry where it starts, with the right kind.

Rows are built the way the store builds them (``chain.link``) and laid out as the verifier reads
them (``store.ENTRY_COLUMNS``); a forger's rows are made with ``chain.entry_bytes`` and
``chain.entry_hash``, as anyone who read the format could.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.chain import GENESIS, Head, Sealed, checkpoint_due, checkpoint_message, entry_bytes, entry_hash, link
from services.audit.signing import key_id
from services.audit.verification import (
    CHAIN,
    CONFLICT,
    HASH,
    KEY,
    OFFSET,
    PARTITION,
    PAYLOAD,
    PREV_HASH,
    RECORD_ID,
    RECORDED_AT,
    ROW,
    SEQ,
    SUBJECT,
    TIME,
    TOPIC,
    TYPE,
    ChainCheck,
    Checkpoint,
    Finding,
)

SIGNER = Ed25519PrivateKey.generate()
KEYS = {key_id(SIGNER.public_key()): SIGNER.public_key()}
TOPIC_NAME = "storeops.events.orders.v1"
NAME = f"{TOPIC_NAME}:0"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
N = 12


def stored(count: int = N, head: Head | None = None) -> list[list[Any]]:
    """``count`` entries as the store links them after ``head``, laid out as the verifier reads them."""
    start = head.seq if head else 0
    rows: list[dict[str, Any]] = [
        {"chain": NAME, "topic": TOPIC_NAME, "partition": 0, "offset": 100 + start + i,
         "key": None if start + i == 0 else f"ord-{start + i}", "record_id": uuid.uuid4(), "type": "OrderPlaced",
         "subject": f"ord-{start + i}", "time": T0 + timedelta(seconds=start + i, microseconds=250_000 * (i % 2)),
         "recorded_at": T0 + timedelta(minutes=1, seconds=start + i), "conflict": i == 3}
        for i in range(count)]
    payloads = [orjson.dumps({"type": "OrderPlaced", "data": {"n": start + i, "total": "12.50"}}) for i in range(count)]
    link(head or Head(), rows, payloads)
    return [[1000 + r["chain_seq"], r["chain"], r["chain_seq"], r["topic"], r["partition"], r["offset"], r["key"],
             r["record_id"], r["type"], r["subject"], r["time"], r["recorded_at"], r["conflict"], p.decode(),
             r["prev_hash"], r["hash"]] for r, p in zip(rows, payloads, strict=True)]


def forged_hash(row: Sequence[Any]) -> str:
    """The hash a forger computes for ``row`` as it now stands."""
    return entry_hash(row[PREV_HASH], entry_bytes(
        row[CHAIN], row[SEQ], row[TOPIC], row[PARTITION], row[OFFSET], row[KEY], str(row[RECORD_ID]), row[TYPE],
        row[SUBJECT], row[TIME], row[RECORDED_AT], row[CONFLICT], row[PAYLOAD].encode()))


def relinked(rows: list[list[Any]], start: int) -> list[list[Any]]:
    """The chain rewritten from position ``start`` (0-based) on, every hash recomputed."""
    for i in range(start, len(rows)):
        rows[i][PREV_HASH] = rows[i - 1][HASH] if i else GENESIS
        rows[i][HASH] = forged_hash(rows[i])
    return rows


def signed(row: Sequence[Any], key: Ed25519PrivateKey = SIGNER, at: datetime = T0) -> Checkpoint:
    kid = key_id(key.public_key())
    return Checkpoint(row[SEQ], row[HASH], at, kid, key.sign(checkpoint_message(NAME, row[SEQ], row[HASH], at, kid)).hex())


def check(rows: Sequence[Sequence[Any]], checkpoints: Sequence[Checkpoint] = (), from_seq: int = 1,
          keys: dict[str, Any] | None = None) -> ChainCheck:
    """Run the check as ``storeops audit verify`` does: pages (of 5, to cross their edges), then finish."""
    chain_check = ChainCheck(NAME, checkpoints, KEYS if keys is None else keys, from_seq)
    for start in range(0, len(rows), 5):
        if chain_check.feed(rows[start:start + 5]) is not None:
            return chain_check
    chain_check.finish()
    return chain_check


def found(chain_check: ChainCheck) -> tuple[int, str | None, str]:
    assert chain_check.found is not None, "the tampering was not found"
    return chain_check.found.seq, chain_check.found.id, chain_check.found.kind


# --- what an entry's hash covers -----------------------------------------------------------------


def test_an_entrys_bytes_are_its_header_a_newline_and_the_payload_as_documented() -> None:
    record_id = uuid.UUID("0b5e3c52-7d7c-4d0a-9a8e-1b2c3d4e5f60")
    canonical = entry_bytes("t:0", 1, "t", 0, 5, None, str(record_id), "T", "s",
                            datetime(2026, 11, 23, 9, 0, 0, 250_000, tzinfo=UTC), datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
                            False, b'{"a": 1}')
    assert canonical == (b'["storeops-audit/1","t:0",1,"t",0,5,null,"0b5e3c52-7d7c-4d0a-9a8e-1b2c3d4e5f60","T","s",'
                         b'"2026-11-23T09:00:00.250000Z","2026-11-23T09:00:00Z",false]\n{"a": 1}')
    assert entry_hash(GENESIS, canonical) == hashlib.sha256(bytes(32) + canonical).hexdigest()


def test_a_time_is_hashed_in_utc_whatever_zone_it_comes_in_and_a_naive_one_is_utc() -> None:
    def header(at: datetime) -> bytes:
        return entry_bytes("t:0", 1, "t", 0, 5, "k", str(uuid.UUID(int=1)), "T", "s", at, at, True, b"{}")

    utc = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert header(utc.astimezone(timezone(timedelta(hours=2)))) == header(utc) == header(utc.replace(tzinfo=None))
    assert b'"2026-11-23T09:00:00Z","2026-11-23T09:00:00Z",true]' in header(utc)


def test_link_numbers_a_batch_after_the_chains_head_and_chains_each_entry_to_the_one_before() -> None:
    first = stored(3)
    head = Head(first[-1][SEQ], first[-1][HASH])
    second = stored(2, head)
    assert [r[SEQ] for r in first + second] == [1, 2, 3, 4, 5]
    assert [r[PREV_HASH] for r in first + second] == [GENESIS] + [r[HASH] for r in first + second][:-1]
    assert check(first + second).found is None


# --- an intact chain --------------------------------------------------------------------------------


def test_an_intact_chain_verifies_every_entry_and_checkpoint() -> None:
    rows = stored()
    chain_check = check(rows, [signed(rows[0]), signed(rows[5]), signed(rows[-1])])
    assert (chain_check.found, chain_check.checked, chain_check.signed) == (None, N, 3)


def test_the_rows_as_sqlite_gives_them_verify_too() -> None:
    """SQLite's driver gives the record id as 32 hex digits and the times as UTC text without a zone."""
    rows = stored()
    for row in rows:
        row[RECORD_ID] = row[RECORD_ID].hex
        row[TIME], row[RECORDED_AT] = (t.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
                                       for t in (row[TIME], row[RECORDED_AT]))
        row[CONFLICT] = int(row[CONFLICT])
    assert check(rows, [signed(rows[-1])]).checked == N
    rows[4][PAYLOAD] = rows[4][PAYLOAD].replace("12.50", "1.25")
    assert found(check(rows)) == (5, str(uuid.UUID(rows[4][RECORD_ID])), "edited")  # the id as the record has it


def test_an_empty_chain_verifies_and_checks_nothing() -> None:
    assert (check([]).found, check([]).checked) == (None, 0)


# --- each kind of tampering ----------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [(PAYLOAD, '{"type":"OrderPlaced","data":{"n":6,"total":"0.01"}}'),
                                          (SUBJECT, "ord-other"), (OFFSET, 9), (CONFLICT, True), (KEY, None),
                                          (TIME, T0 - timedelta(days=1))])
def test_an_edited_entry_is_found_where_it_stands(field: int, value: Any) -> None:
    rows = stored()
    rows[6][field] = value
    chain_check = check(rows)
    assert found(chain_check) == (7, str(rows[6][RECORD_ID]), "edited")
    assert chain_check.checked == 6


def test_an_entry_edited_and_its_hash_recomputed_is_found_by_the_next_one() -> None:
    rows = stored()
    rows[6][PAYLOAD] = rows[6][PAYLOAD].replace("12.50", "0.01")
    rows[6][HASH] = forged_hash(rows[6])
    chain_check = check(rows)
    assert found(chain_check) == (7, str(rows[6][RECORD_ID]), "edited")
    assert chain_check.checked == 6


def test_an_entry_deleted_in_the_middle_is_found_at_the_one_after_the_gap() -> None:
    rows = stored()
    del rows[4]
    chain_check = check(rows)
    assert found(chain_check) == (6, str(rows[4][RECORD_ID]), "deleted")
    assert chain_check.checked == 4
    assert chain_check.found is not None and "5..5" in chain_check.found.reason


def test_the_first_entry_deleted_is_found() -> None:
    rows = stored()
    assert found(check(rows[1:])) == (2, str(rows[1][RECORD_ID]), "deleted")


def test_an_entry_deleted_and_the_rest_renumbered_is_found_where_the_gap_was() -> None:
    rows = stored()
    del rows[4]
    for row in rows[4:]:
        row[SEQ] -= 1
    assert found(check(rows)) == (5, str(rows[4][RECORD_ID]), "deleted")


def test_entries_deleted_from_the_end_are_found_by_a_checkpoint_signed_past_it() -> None:
    rows = stored()
    checkpoints = [signed(rows[3]), signed(rows[-1])]
    chain_check = check(rows[:-2], checkpoints)
    assert found(chain_check) == (N - 1, None, "deleted")
    assert (chain_check.checked, chain_check.signed) == (N - 2, 1)


def test_entries_deleted_from_the_end_past_the_last_checkpoint_are_not_seen() -> None:
    """The limit of a hash chain: its end is only as safe as its last checkpoint."""
    rows = stored()
    assert check(rows[:-2], [signed(rows[5])]).found is None


def test_a_chain_whose_every_entry_was_deleted_is_found_by_its_checkpoint() -> None:
    rows = stored()
    assert found(check([], [signed(rows[-1])])) == (1, None, "deleted")


def test_an_entry_inserted_and_the_rest_renumbered_is_found_at_the_inserted_one() -> None:
    rows = stored()
    intruder = [*rows[4]]
    intruder[RECORD_ID], intruder[SUBJECT], intruder[SEQ] = uuid.uuid4(), "ord-forged", 6
    intruder[PREV_HASH] = rows[4][HASH]
    intruder[HASH] = forged_hash(intruder)
    for row in rows[5:]:
        row[SEQ] += 1
    rows.insert(5, intruder)
    chain_check = check(rows)
    assert found(chain_check) == (6, str(intruder[RECORD_ID]), "inserted")
    assert chain_check.checked == 5


def test_an_entry_inserted_at_a_position_taken_is_found() -> None:
    rows = stored()
    intruder = [*rows[4]]
    intruder[ROW], intruder[RECORD_ID] = 5000, uuid.uuid4()
    intruder[HASH] = forged_hash(intruder)  # a second entry at 5, chained as the first is
    rows.insert(5, intruder)
    assert found(check(rows)) == (5, str(intruder[RECORD_ID]), "inserted")


def test_an_entry_inserted_without_its_hash_chained_is_found() -> None:
    rows = stored()
    intruder = [*rows[4]]
    intruder[RECORD_ID], intruder[SEQ], intruder[HASH] = uuid.uuid4(), 6, "f" * 64
    for row in rows[5:]:
        row[SEQ] += 1
    rows.insert(5, intruder)
    assert found(check(rows)) == (6, str(intruder[RECORD_ID]), "inserted")


def test_two_entries_swapped_are_found_as_reordered() -> None:
    rows = stored()
    rows[5], rows[6] = rows[6], rows[5]
    rows[5][SEQ], rows[6][SEQ] = 6, 7
    chain_check = check(rows)
    assert found(chain_check) == (6, str(rows[5][RECORD_ID]), "reordered")
    assert chain_check.checked == 5


def test_the_last_two_entries_swapped_are_found_as_reordered() -> None:
    rows = stored()
    rows[-2], rows[-1] = rows[-1], rows[-2]
    rows[-2][SEQ], rows[-1][SEQ] = N - 1, N
    assert found(check(rows)) == (N - 1, str(rows[-2][RECORD_ID]), "reordered")


def test_a_chain_rewritten_hashes_and_all_is_found_by_the_checkpoint_past_the_change() -> None:
    rows = stored()
    checkpoints = [signed(rows[2]), signed(rows[8])]
    rows[5][PAYLOAD] = rows[5][PAYLOAD].replace("12.50", "0.01")
    relinked(rows, 5)
    chain_check = check(rows, checkpoints)
    assert found(chain_check) == (9, str(rows[8][RECORD_ID]), "checkpoint")
    assert chain_check.found is not None and "rewritten" in chain_check.found.reason
    assert (chain_check.checked, chain_check.signed) == (8, 1)  # those before the entry the checkpoint gave away
    assert check(rows, checkpoints[:1]).found is None  # no checkpoint past the change: nothing tells


def test_a_checkpoint_signed_by_a_key_not_given_is_found() -> None:
    rows = stored()
    chain_check = check(rows, [signed(rows[3]), signed(rows[7], Ed25519PrivateKey.generate())])
    assert found(chain_check) == (8, str(rows[7][RECORD_ID]), "checkpoint")
    assert chain_check.found is not None and "not one of the public keys given" in chain_check.found.reason
    assert (chain_check.checked, chain_check.signed) == (7, 1)
    assert found(check(rows, [signed(rows[3])], keys={})) == (4, str(rows[3][RECORD_ID]), "checkpoint")


@pytest.mark.parametrize("spoil", ["other entry", "flipped", "not hex", "other time"])
def test_a_checkpoint_whose_signature_does_not_verify_is_found(spoil: str) -> None:
    rows = stored()
    good = signed(rows[7])
    bad = {"other entry": Checkpoint(good.chain_seq, good.hash, good.time, good.key_id, signed(rows[6]).signature),
           "flipped": Checkpoint(good.chain_seq, good.hash, good.time, good.key_id, f"{good.signature[:-1]}0"
                                 if good.signature[-1] != "0" else f"{good.signature[:-1]}1"),
           "not hex": Checkpoint(good.chain_seq, good.hash, good.time, good.key_id, "zz" * 64),
           "other time": Checkpoint(good.chain_seq, good.hash, good.time + timedelta(seconds=1), good.key_id,
                                    good.signature)}[spoil]
    chain_check = check(rows, [bad])
    assert found(chain_check) == (8, str(rows[7][RECORD_ID]), "checkpoint")
    assert chain_check.found is not None and "does not verify" in chain_check.found.reason


def test_a_bad_checkpoint_past_the_chains_end_is_found_as_a_checkpoint() -> None:
    rows = stored()
    forged = signed(rows[-1], Ed25519PrivateKey.generate())
    assert found(check(rows[:-1], [forged])) == (N, None, "checkpoint")


def test_a_prev_hash_rewritten_into_no_hash_at_all_is_an_edit_not_a_crash() -> None:
    rows = stored()
    rows[6][PREV_HASH] = "not a hash"
    assert found(check(rows)) == (7, str(rows[6][RECORD_ID]), "edited")


# --- from a later entry on (--since) ---------------------------------------------------------------


def test_a_check_from_a_later_entry_takes_its_prev_hash_as_given() -> None:
    rows = stored()
    checkpoints = [signed(rows[2]), signed(rows[6]), signed(rows[-1])]
    chain_check = check(rows[6:], checkpoints, from_seq=7)  # a checkpoint before the start is not this check's
    assert (chain_check.found, chain_check.checked, chain_check.signed) == (None, N - 6, 2)


def test_a_check_from_a_later_entry_finds_what_was_done_after_it_and_not_before() -> None:
    rows = stored()
    rows[2][PAYLOAD] = rows[2][PAYLOAD].replace("12.50", "0.01")
    rows[9][SUBJECT] = "ord-other"
    assert found(check(rows)) == (3, str(rows[2][RECORD_ID]), "edited")
    chain_check = check(rows[6:], from_seq=7)
    assert found(chain_check) == (10, str(rows[9][RECORD_ID]), "edited")
    assert chain_check.checked == 3


def test_a_check_from_a_later_entry_finds_the_entries_missing_at_its_start() -> None:
    rows = stored()
    assert found(check(rows[8:], from_seq=7)) == (9, str(rows[8][RECORD_ID]), "deleted")


def test_a_finding_is_reported_with_the_fields_the_cli_contract_names() -> None:
    finding = Finding(NAME, 3, "x", "edited", "why")
    assert finding.as_json() == {"chain": NAME, "seq": 3, "id": "x", "kind": "edited", "reason": "why"}


# --- when a chain is signed ------------------------------------------------------------------------


NOW = T0 + timedelta(hours=5)


@pytest.mark.parametrize("head, sealed, now, due", [
    (Head(), None, NOW, False),  # nothing to sign
    (Head(1, "a" * 64), None, NOW, True),  # never signed: at once
    (Head(10, "a" * 64), Sealed(10, NOW), NOW, False),  # signed up to its head
    (Head(10, "a" * 64), Sealed(12, NOW - timedelta(days=1)), NOW, False),  # signed past it (another writer)
    (Head(12, "a" * 64), Sealed(10, NOW), NOW, False),  # 2 past the checkpoint, signed just now
    (Head(13, "a" * 64), Sealed(10, NOW), NOW, True),  # 3 past it: every=3
    (Head(40, "a" * 64), Sealed(10, NOW), NOW, True),
    (Head(11, "a" * 64), Sealed(10, NOW - timedelta(seconds=59)), NOW, False),
    (Head(11, "a" * 64), Sealed(10, NOW - timedelta(seconds=60)), NOW, True),  # 60 s old, entries after it
    (Head(10, "a" * 64), Sealed(10, NOW - timedelta(days=9)), NOW, False),  # old, but nothing after it
])
def test_checkpoint_due(head: Head, sealed: Sealed | None, now: datetime, due: bool) -> None:
    assert checkpoint_due(head, sealed, now, every=3, seconds=60) is due
