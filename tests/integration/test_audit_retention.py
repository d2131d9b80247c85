"""Retention without losing proof, on each database: entries past the retention are archived, then
removed a checkpoint at a time; the chain still verifies from the signed hash that follows; a removal
nobody signed is still found; a DELETE outside a prune is still refused."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

from services.audit import retention, store
from services.audit.settings import AuditConfig, AuditSettings
from services.audit.signing import Signer
from storeops.db import make_engine, make_sessionmaker
from tests.integration.test_audit_chain import as_owner, audit_db, audit_verify, key_file, orders, public, recorder, where

pytestmark = pytest.mark.integration

__all__ = ["audit_db", "key_file"]  # the chain tests' fixtures, used here
CHAIN = "storeops.events.orders.v1:0"
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


async def keep(url: str, key: Path, when: datetime, count: int, start: int) -> None:
    """``count`` orders on partition 0, stored in batches of 5 as if kept at ``when``; a checkpoint
    every 5 entries."""
    async with recorder(url, key, checkpoint_every=5) as rec:
        items = orders(count, start=start, partition=0)
        for n in range(0, count, 5):
            async with rec.sessions.begin() as session:
                await store.add_records(session, items[n:n + 5], checkpoints=rec.checkpoints, now=when)


def settings(url: str, key: Path, tmp_path: Path, days: float | None = 30) -> AuditSettings:
    return AuditSettings(database_url=url, data_dir=tmp_path,
                         audit=AuditConfig(signing_key_file=key, retention_days=days, checkpoint_every=5))


async def prune(url: str, key: Path, tmp_path: Path, days: float | None = 30) -> dict[str, int]:
    engine = make_engine(url)
    try:
        return await retention.prune(make_sessionmaker(engine), settings(url, key, tmp_path, days), Signer(key), now=NOW)
    finally:
        await engine.dispose()


async def count(url: str, table: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(text(table))) or 0)
    finally:
        await engine.dispose()


async def test_entries_past_the_retention_are_archived_removed_and_the_chain_still_verifies(
        audit_db: str, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await keep(audit_db, key_file, OLD, 25, start=0)
    await keep(audit_db, key_file, NOW, 7, start=25)
    entities_before = await count(audit_db, "audit_entities")

    assert await prune(audit_db, key_file, tmp_path, days=None) == {"chains": 0, "entries": 0}  # the default keeps all
    assert await prune(audit_db, key_file, tmp_path) == {"chains": 1, "entries": 25}
    assert await prune(audit_db, key_file, tmp_path) == {"chains": 0, "entries": 0}  # nothing more is that old
    assert await count(audit_db, "audit_records") == 7
    assert await count(audit_db, "audit_entities") < entities_before

    [archive] = (tmp_path / "audit-archive").iterdir()
    lines = archive.read_bytes().splitlines(keepends=True)
    rows = [json.loads(line) for line in lines]
    assert [r["chain_seq"] for r in rows] == list(range(1, 26)) and {r["chain"] for r in rows} == {CHAIN}
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))  # the archive is the chain
    engine = make_engine(audit_db)
    try:
        async with engine.connect() as conn:
            [pruned] = (await conn.execute(select(store.PRUNES))).all()
    finally:
        await engine.dispose()
    assert (pruned.chain, pruned.up_to_seq, pruned.entries, pruned.hash) == (CHAIN, 25, 25, rows[-1]["hash"])
    assert pruned.archive == str(archive) and pruned.archive_sha256 == hashlib.sha256(b"".join(lines)).hexdigest()

    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"], verdict.first_bad) == (0, 7, None), verdict
    assert f"{CHAIN}: 7 entries from chain_seq 26 verified" in verdict.stdout

    await keep(audit_db, key_file, OLD, 5, start=32)  # kept "long ago" after all: the next pass takes them too
    assert await prune(audit_db, key_file, tmp_path) == {"chains": 1, "entries": 7 + 5}
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert (verdict.code, verdict.summary["checked"]) == (0, 0), verdict


async def test_a_removal_without_a_signed_prune_is_a_deletion(audit_db: str, key_file: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    await keep(audit_db, key_file, OLD, 20, start=0)
    await keep(audit_db, key_file, NOW, 5, start=20)
    async with as_owner(audit_db) as engine, engine.begin() as conn:  # the owner removes 1..10 and says it was retention
        await conn.execute(text("DELETE FROM audit_records WHERE chain_seq <= 10"))
        hash_ = (await conn.execute(select(store.CHECKPOINTS.c.hash).where(store.CHECKPOINTS.c.chain_seq == 10))).scalar()
        forged = Signer(tmp_path / "another.key").sign_prune(CHAIN, 10, str(hash_), NOW, "0" * 64)
        await conn.execute(insert(store.PRUNES).values(chain=CHAIN, up_to_seq=10, hash=hash_, time=NOW, entries=10,
                                                       archive="/dev/null", archive_sha256="0" * 64,
                                                       key_id=forged.key_id, signature=forged.signature))
    verdict = await audit_verify(capsys, audit_db, *public(key_file))
    assert verdict.code == 1 and where(verdict) == (CHAIN, 1, None, "deleted"), verdict
    assert "retention record that says so does not verify" in str(verdict.first_bad)


async def test_a_delete_outside_a_prune_is_still_refused(audit_db: str, key_file: Path, tmp_path: Path) -> None:
    await keep(audit_db, key_file, OLD, 10, start=0)
    assert await prune(audit_db, key_file, tmp_path) == {"chains": 1, "entries": 10}
    await keep(audit_db, key_file, NOW, 5, start=10)
    engine = make_engine(audit_db)
    try:
        for table in ("audit_records", "audit_entities", "audit_prunes"):
            with pytest.raises(DBAPIError, match=f"{table} is append-only"):
                async with engine.begin() as conn:
                    await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()
    assert await count(audit_db, "audit_records") == 5 and await count(audit_db, "audit_prunes") == 1
