"""The audit trail's hash chains on the real databases: records stored through the Recorder verify
with ``storeops audit verify``; the tables refuse change; someone with the owner's rights who lifts
that refusal and edits, deletes or swaps entries is found at the right chain, position and record;
redeliveries, conflicting records, checkpoints, the migration of rows kept before the chains, and
two writers of one chain at once.

Each test has a database of its own (``fresh_database``), migrated as the service migrates it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from cryptography.hazmat.primitives import serialization
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Uuid, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.events import OrderPlaced
from schemas.registry import ORDERS
from services.audit import store
from services.audit.app import SPEC
from services.audit.recorder import Recorder
from services.audit.settings import AuditConfig, AuditSettings
from services.audit.signing import public_key_path
from storeops.consumer import Received
from storeops.db import BigIntPK, JSONType, UTCDateTime, make_engine, make_sessionmaker
from storeops_cli import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHAIN0, CHAIN1 = f"{ORDERS.name}:0", f"{ORDERS.name}:1"


@pytest.fixture
def audit_db(fresh_database: str) -> str:
    """A database of the test's own with the audit service's tables, migrated as the service does."""
    SPEC.migrate(fresh_database)
    return fresh_database


def on_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "audit-signing.key"


@pytest.fixture
def no_default_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit service's default signing key is not there: verify finds no public key of its own."""
    monkeypatch.setenv("STOREOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STOREOPS_AUDIT__SIGNING_KEY_FILE", raising=False)


def order(order_id: str, total: str = "12.50", record_id: uuid.UUID | None = None) -> OrderPlaced:
    fields: dict[str, Any] = {"type": "OrderPlaced", "subject": order_id,
                              "data": {"order_id": order_id, "customer_id": "c", "total": total, "currency": "EUR"}}
    if record_id is not None:
        fields["id"] = str(record_id)
    return ORDERS.adapter.validate_python(fields)


def received(event: OrderPlaced, offset: int, partition: int = 0) -> Received:
    """``event`` as the consumer hands it over, read at (partition, offset)."""
    key, value = ORDERS.encode(event)
    return read(key, value, offset, partition)


def read(key: bytes, value: bytes, offset: int, partition: int = 0) -> Received:
    """A record as the audit's consumer hands it over: its envelope parsed, its data left as JSON."""
    record = ConsumerRecord(ORDERS.name, partition, offset, 0, 0, key, value, None, len(key), len(value), ())
    return Received(record, ORDERS, ORDERS.decode_envelope(value))


def orders(count: int, partitions: int = 1, start: int = 0, partition: int | None = None) -> list[Received]:
    """``count`` new orders read at offsets ``start``...: on ``partition``, else spread over ``partitions``."""
    return [received(order(f"ord-{uuid.uuid4().hex[:8]}"), start + n, (start + n) % partitions if partition is None
                     else partition) for n in range(count)]


@asynccontextmanager
async def recorder(url: str, key_file: Path, **config: Any) -> AsyncIterator[Recorder]:
    """The audit service's state on ``url``, signing with ``key_file``."""
    engine = make_engine(url)
    try:
        yield Recorder(make_sessionmaker(engine), AuditSettings(
            database_url=url, audit=AuditConfig(signing_key_file=key_file, **config)))
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Verdict:
    code: int
    summary: dict[str, Any]  # the last stdout line
    stdout: str
    stderr: str

    @property
    def first_bad(self) -> dict[str, Any] | None:
        return self.summary["first_bad"]


async def audit_verify(capsys: pytest.CaptureFixture[str], url: str, *args: str | Path) -> Verdict:
    """``storeops audit verify`` through the CLI's own entry point (in a thread: it runs its own loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["audit", "verify", "--database-url", url, *map(str, args)])
    out, err = capsys.readouterr()
    return Verdict(code, json.loads(out.strip().splitlines()[-1]), out, err)


def where(verdict: Verdict) -> tuple[str, int, str | None, str]:
    """Where ``verdict`` says the chains first go bad: chain, chain_seq, record id, kind."""
    bad = verdict.first_bad
    assert bad is not None, verdict
    return bad["chain"], bad["seq"], bad["id"], bad["kind"]


def public(key_file: Path) -> tuple[str, Path]:
    return "--public-key", public_key_path(key_file)


async def entries_of(url: str, chain: str) -> list[Any]:
    """The chain's entries (chain_seq, record_id, conflict, payload as stored), in chain order."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            query = (select(store.RECORDS.c.chain_seq, store.RECORDS.c.record_id, store.RECORDS.c.conflict,
                            store.RECORDS.c.payload)
                     .where(store.RECORDS.c.chain == chain).order_by(store.RECORDS.c.chain_seq))
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def checkpoint_seqs(url: str, chain: str) -> list[int]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.scalars(select(store.CHECKPOINTS.c.chain_seq).where(store.CHECKPOINTS.c.chain == chain)
                                            .order_by(store.CHECKPOINTS.c.chain_seq))).all())
    finally:
        await engine.dispose()


@asynccontextmanager
async def as_owner(url: str) -> AsyncIterator[AsyncEngine]:
    """What the tables' owner can do: lift the append-only triggers (PostgreSQL: disable them;
    SQLite: drop them) for what is done inside."""
    engine = make_engine(url)
    pg = on_postgresql(url)
    try:
        async with engine.begin() as conn:
            if pg:
                await conn.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only"))
            else:
                for name in ("no_update", "no_delete"):
                    await conn.execute(text(f"DROP TRIGGER audit_records_{name}"))
        yield engine
        if pg:
            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only"))
    finally:
        await engine.dispose()


# --- stored, then verified ---------------------------------------------------------------------


async def test_records_stored_through_the_recorder_verify(audit_db: str, key_file: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    items = orders(30, partitions=2)
    async with recorder(audit_db, key_file) as rec:
        stored = sum([await rec.record(items[n:n + 7]) for n in range(0, len(items), 7)])
    assert stored == 30
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"], verdict.first_bad) == (0, 30, None), verdict
    assert (verdict.summary["chains"], verdict.summary["checkpoints"]) == (2, 2)  # each chain signed at its first batch
    assert [e.chain_seq for e in await entries_of(audit_db, CHAIN0)] == list(range(1, 16))


async def test_the_command_run_as_a_process_verifies_and_prints_its_summary_last(audit_db: str, key_file: Path) -> None:
    async with recorder(audit_db, key_file) as rec:
        await rec.record(orders(5))
    command = [sys.executable, "-m", "storeops_cli.cli", "audit", "verify", "--database-url", audit_db,
               "--public-key", str(public_key_path(key_file))]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                                   env={**os.environ, "STOREOPS_DATA_DIR": str(key_file.parent / "unused")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"{CHAIN0}: 5 entries")
    summary = json.loads(lines[-1])
    assert (summary["checked"], summary["first_bad"], summary["checkpoints"]) == (5, None, 1)


async def test_the_signing_key_set_in_the_environment_signs_and_verifies(audit_db: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "elsewhere" / "checkpoints.key"
    monkeypatch.setenv("STOREOPS_AUDIT__SIGNING_KEY_FILE", str(key))
    engine = make_engine(audit_db)
    try:
        await Recorder(make_sessionmaker(engine), AuditSettings(database_url=audit_db)).record(orders(3))
    finally:
        await engine.dispose()
    assert key.exists() and public_key_path(key).exists()
    verdict = await audit_verify(capsys, audit_db)  # no --public-key: the service's own, next to its key
    assert (verdict.code, verdict.summary["checked"], verdict.summary["checkpoints"]) == (0, 3, 1), verdict


async def test_verify_cannot_check_checkpoints_without_a_public_key(audit_db: str, key_file: Path, no_default_key: None,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    async with recorder(audit_db, key_file) as rec:
        await rec.record(orders(3))
    verdict = await audit_verify(capsys, audit_db)
    assert verdict.code == 2 and "--public-key" in verdict.stderr, verdict
    assert verdict.first_bad is None and "public key" in verdict.summary["error"]


@pytest.mark.parametrize("since", ["yesterday", "2026-11-23T09:00:00", "-3"])
async def test_verify_cannot_check_from_a_bad_since(audit_db: str, key_file: Path, since: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    verdict = await audit_verify(capsys, audit_db, *public(key_file), "--since", since)
    assert verdict.code == 2 and "--since" in verdict.stderr, verdict


async def test_verify_cannot_check_a_database_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    verdict = await audit_verify(capsys, f"sqlite:///{missing}")
    assert verdict.code == 2 and "no SQLite database" in verdict.stderr, verdict
    assert not missing.exists()  # not created by looking
    nobody = await audit_verify(capsys, "postgresql://postgres@127.0.0.1:1/audit")  # no server listens there
    assert nobody.code == 2 and "cannot read the audit chains" in nobody.summary["error"], nobody


async def test_verify_cannot_check_a_database_without_the_audit_tables(fresh_database: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    if not on_postgresql(fresh_database):
        await asyncio.to_thread(Path(fresh_database.removeprefix("sqlite+aiosqlite:///")).touch)
    verdict = await audit_verify(capsys, fresh_database)
    assert verdict.code == 2 and "migrated" in verdict.stderr, verdict


async def test_verify_from_a_chain_seq_or_a_time(audit_db: str, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with recorder(audit_db, key_file, checkpoint_every=4) as rec:
        for item in orders(10):
            await rec.record([item])
    by_seq = await audit_verify(capsys, audit_db, *public(key_file), "--since", "6")
    assert (by_seq.code, by_seq.summary["checked"]) == (0, 5), by_seq
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    by_time = await audit_verify(capsys, audit_db, *public(key_file), "--since", later)  # from the last checkpoint (9)
    assert (by_time.code, by_time.summary["checked"], by_time.summary["checkpoints"]) == (0, 2, 1), by_time


# --- the tables refuse change --------------------------------------------------------------------


@pytest.mark.parametrize("table", ["audit_records", "audit_checkpoints"])
async def test_the_audit_tables_refuse_update_and_delete(audit_db: str, key_file: Path, table: str) -> None:
    async with recorder(audit_db, key_file) as rec:
        await rec.record(orders(3))
    statements = [f"UPDATE {table} SET chain = 'other'", f"DELETE FROM {table}"]
    if on_postgresql(audit_db):
        statements.append(f"TRUNCATE {table}")
    engine = make_engine(audit_db)
    try:
        for statement in statements:
            with pytest.raises(DBAPIError) as refused:
                async with engine.begin() as conn:
                    await conn.execute(text(statement))
            assert f"{table} is append-only" in str(refused.value), statement
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(text(table))) == (3 if table == "audit_records" else 1)
    finally:
        await engine.dispose()


# --- tampering by the owner is found -----------------------------------------------------------


@pytest.fixture
async def trail(audit_db: str, key_file: Path) -> list[Any]:
    """Twelve records on partition 0 in batches of four (signed at 4 and 12), four on 1; chain 0's entries."""
    async with recorder(audit_db, key_file, checkpoint_every=5) as rec:
        for n in range(0, 12, 4):
            await rec.record(orders(4, start=n))
        await rec.record(orders(4, partition=1))
    return await entries_of(audit_db, CHAIN0)


async def test_an_edited_payload_is_found(audit_db: str, key_file: Path, trail: list[Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    edited = trail[6]
    payload = "CAST(:payload AS json)" if on_postgresql(audit_db) else ":payload"
    async with as_owner(audit_db) as engine, engine.begin() as conn:
        await conn.execute(text(f"UPDATE audit_records SET payload = {payload} WHERE chain = :chain AND chain_seq = 7"),
                           {"payload": json.dumps({**edited.payload, "data": {**edited.payload["data"], "total": "0.01"}}),
                            "chain": CHAIN0})
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert verdict.code == 1, verdict
    assert where(verdict) == (CHAIN0, 7, str(edited.record_id), "edited")
    assert verdict.first_bad is not None and verdict.first_bad.keys() == {"chain", "seq", "id", "kind", "reason"}
    assert verdict.summary["checked"] == 6


async def test_a_deleted_entry_is_found_at_the_one_after_it(audit_db: str, key_file: Path, trail: list[Any],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    async with as_owner(audit_db) as engine, engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_records WHERE chain = :chain AND chain_seq = 5"), {"chain": CHAIN0})
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert verdict.code == 1, verdict
    assert where(verdict) == (CHAIN0, 6, str(trail[5].record_id), "deleted")


async def test_the_last_entry_deleted_is_found_by_the_checkpoint_that_signed_it(audit_db: str, key_file: Path,
                                                                                trail: list[Any],
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert 12 in await checkpoint_seqs(audit_db, CHAIN0)
    async with as_owner(audit_db) as engine, engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_records WHERE chain = :chain AND chain_seq = 12"), {"chain": CHAIN0})
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert verdict.code == 1, verdict
    assert where(verdict) == (CHAIN0, 12, None, "deleted")


@pytest.mark.parametrize("what", ["places", "payloads"])
async def test_two_swapped_entries_are_found(audit_db: str, key_file: Path, trail: list[Any], what: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Two rows' content swapped: all of it but their places in the chain (the entries at 8 and 9 change
    places), or only their payloads."""
    swap = {"chain": CHAIN0}
    async with as_owner(audit_db) as engine, engine.begin() as conn:
        if what == "places":
            for old, new in ((8, -1), (9, 8), (-1, 9)):  # through -1: the chain's positions are unique
                await conn.execute(text("UPDATE audit_records SET chain_seq = :new WHERE chain = :chain AND chain_seq = :old"),
                                   {**swap, "old": old, "new": new})
        else:
            payload = "CAST(:payload AS json)" if on_postgresql(audit_db) else ":payload"
            for at, other in ((8, trail[8]), (9, trail[7])):
                await conn.execute(text(f"UPDATE audit_records SET payload = {payload} WHERE chain = :chain AND chain_seq = :at"),
                                   {**swap, "at": at, "payload": json.dumps(other.payload)})
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert verdict.code == 1, verdict
    moved = trail[8] if what == "places" else trail[7]  # the record now at 8
    assert where(verdict) == (CHAIN0, 8, str(moved.record_id), "reordered" if what == "places" else "edited")


async def test_a_checkpoint_not_signed_by_the_key_given_is_found(audit_db: str, key_file: Path, trail: list[Any],
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with recorder(audit_db, tmp_path / "other" / "k.key", checkpoint_every=5) as other:
        await other.record(orders(6, start=100))  # 6 past chain 0's last checkpoint, signed by another key
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert verdict.code == 1, verdict
    assert where(verdict)[::3] == (CHAIN0, "checkpoint") and where(verdict)[1] == 18
    both = await audit_verify(capsys, audit_db, *public(key_file), *public(tmp_path / "other" / "k.key"))
    assert (both.code, both.summary["checked"]) == (0, 22), both


# --- what is stored ------------------------------------------------------------------------------


async def test_a_redelivered_record_is_stored_once(audit_db: str, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = orders(6)
    async with recorder(audit_db, key_file) as rec:
        assert await rec.record(items[:4]) == 4
        assert await rec.record(items) == 2  # the first four read again
        assert await rec.record([items[5], items[5], items[1]]) == 0
        twice = orders(1, start=50)
        assert await rec.record(twice + twice) == 1  # twice in one batch
    assert [e.chain_seq for e in await entries_of(audit_db, CHAIN0)] == list(range(1, 8))
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"]) == (0, 7), verdict


async def test_a_record_back_with_its_id_and_other_content_is_stored_again_flagged(
        audit_db: str, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = order("ord-conflict")
    again = order("ord-conflict", total="99.00", record_id=first.id)
    async with recorder(audit_db, key_file) as rec:
        assert await rec.record([received(first, 1)]) == 1
        assert await rec.record([received(again, 2)]) == 1
        assert await rec.record([received(again, 2), received(first, 1)]) == 0  # both versions known now
        third = order("ord-conflict", total="1.00", record_id=first.id)
        assert await rec.record([received(third, 3), received(third, 3)]) == 1
    stored = await entries_of(audit_db, CHAIN0)
    assert [(e.record_id, e.conflict, e.payload["data"]["total"]) for e in stored] == \
        [(first.id, False, "12.50"), (first.id, True, "99.00"), (first.id, True, "1.00")]
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"]) == (0, 3), verdict


async def test_a_redelivered_record_holding_numbers_no_double_holds_is_a_repeat(
        audit_db: str, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The envelope lets 1e400 and integers of any length through; a repeat of one is compared exactly."""
    key, value = ORDERS.encode(order("ord-numbers"))
    value = value.replace(b'"data":{', b'"data":{"weight":1e400,"count":123456789012345678901234567890,', 1)
    longer = value.replace(b"567890,", b"567891,")  # differs from it past a double's precision
    async with recorder(audit_db, key_file) as rec:
        assert await rec.record([read(key, value, 1)]) == 1
        assert await rec.record([read(key, value, 1)]) == 0
        assert await rec.record([read(key, longer, 2), read(key, longer, 2)]) == 1
    assert [e.conflict for e in await entries_of(audit_db, CHAIN0)] == [False, True]
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"]) == (0, 2), verdict


# --- checkpoints ---------------------------------------------------------------------------------


async def test_checkpoints_are_signed_every_checkpoint_every_entries_with_a_key_kept_outside(
        audit_db: str, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with recorder(audit_db, key_file, checkpoint_every=3) as rec:
        for item in orders(10):
            await rec.record([item])
        await rec.record(orders(7, start=10))
    assert await checkpoint_seqs(audit_db, CHAIN0) == [1, 4, 7, 10, 17]  # its first batch at once, then every 3 or more
    assert_kept_outside(key_file)
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"], verdict.summary["checkpoints"]) == (0, 17, 5), verdict


def assert_kept_outside(key_file: Path) -> None:
    """The private key only its owner reads (0600); its public half next to it, for anyone (0644)."""
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    pub = public_key_path(key_file)
    assert pub.name == "audit-signing.pub" and stat.S_IMODE(pub.stat().st_mode) == 0o644
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert serialization.load_pem_public_key(pub.read_bytes()).public_bytes(*raw) == private.public_key().public_bytes(*raw)


async def test_the_sweep_signs_a_chain_that_stopped_receiving_records(audit_db: str, key_file: Path) -> None:
    async with recorder(audit_db, key_file, checkpoint_every=100, checkpoint_seconds=60) as rec:
        await rec.record(orders(2))
        await rec.record(orders(2, start=2))
        now = datetime.now(UTC)
        assert await rec.sweep(now) == 0  # its checkpoint is fresh
        assert await rec.sweep(now + timedelta(seconds=61)) == 1
        assert await rec.sweep(now + timedelta(seconds=200)) == 0  # nothing after the last one
    assert await checkpoint_seqs(audit_db, CHAIN0) == [2, 4]


# --- rows kept before the chains -----------------------------------------------------------------


OLD_RECORDS = Table(  # audit_records as audit_0002 left it
    "audit_records", MetaData(),
    Column("seq", BigIntPK, primary_key=True, autoincrement=True), Column("topic", String(200)),
    Column("partition", Integer), Column("offset", BigInteger), Column("key", String(400)), Column("record_id", Uuid),
    Column("type", String(100)), Column("subject", String(200)), Column("time", UTCDateTime),
    Column("recorded_at", UTCDateTime), Column("payload", JSONType))


async def store_the_old_way(url: str, rows: Sequence[dict[str, Any]]) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(OLD_RECORDS), list(rows))
    finally:
        await engine.dispose()


async def test_the_migration_chains_the_rows_kept_before_it(fresh_database: str, key_file: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    await asyncio.to_thread(SPEC.migrate, fresh_database, "audit_0002")
    t0 = datetime(2026, 11, 20, 8, 0, 0, 500_000, tzinfo=UTC)
    old = [{"topic": ORDERS.name, "partition": n % 2, "offset": n, "key": None if n == 3 else f"ord-{n}",
            "record_id": uuid.uuid4(), "type": "OrderPlaced", "subject": f"ord-{n}", "time": t0 + timedelta(seconds=n),
            "recorded_at": t0 + timedelta(minutes=n), "payload": {"type": "OrderPlaced", "data": {"total": "1.50", "n": n}}}
           for n in range(9)]
    await store_the_old_way(fresh_database, old)
    await asyncio.to_thread(SPEC.migrate, fresh_database)
    kept = await entries_of(fresh_database, CHAIN0)
    assert [(e.chain_seq, e.record_id, e.conflict) for e in kept] == [(i + 1, r["record_id"], False)
                                                                       for i, r in enumerate(old[::2])]  # in the order kept
    unsigned = await audit_verify(capsys, fresh_database)
    assert (unsigned.code, unsigned.summary["checked"], unsigned.first_bad) == (0, 9, None), unsigned
    async with recorder(fresh_database, key_file) as rec:
        assert await rec.sweep(datetime.now(UTC), everything=True) == 2  # the service signs them at start
        await rec.record(orders(3, partitions=2, start=9))
    assert [e.chain_seq for e in await entries_of(fresh_database, CHAIN1)] == [1, 2, 3, 4, 5, 6]
    verdict = await audit_verify(capsys, fresh_database, *public(key_file))
    assert (verdict.code, verdict.summary["checked"], verdict.first_bad) == (0, 12, None), verdict


# --- two writers of one chain --------------------------------------------------------------------


async def test_two_recorders_storing_one_chain_at_once_leave_it_intact(audit_db: str, key_file: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """As after a rebalance: the partition's old owner still storing its last batches while the new
    one stores the same records and the next. Each chain is written by one transaction at a time
    (PostgreSQL: its advisory lock; SQLite: the database's write lock, taken before the head is read)."""
    items = orders(120)
    async with recorder(audit_db, key_file, checkpoint_every=10) as old, recorder(audit_db, key_file,
                                                                                checkpoint_every=10) as new:
        async def store_from(rec: Recorder, part: list[Received]) -> int:
            return sum([await rec.record(part[n:n + 6]) for n in range(0, len(part), 6)])

        stored = await asyncio.gather(store_from(old, items[:80]), store_from(new, items[40:]),
                                      store_from(old, items[60:100]), store_from(new, items[:30]))
    assert sum(stored) == 120
    kept = await entries_of(audit_db, CHAIN0)
    assert [e.chain_seq for e in kept] == list(range(1, 121))
    assert sorted(str(e.record_id) for e in kept) == sorted(str(i.event.id) for i in items)
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"], verdict.first_bad) == (0, 120, None), verdict
