"""Retention that keeps the proof (``STOREOPS_AUDIT__RETENTION_DAYS``; default: keep everything).

For each chain, the entries kept longer than the retention are removed a checkpoint at a time: up
to the last checkpoint whose entry is that old, so what stays begins right after a signed hash.
They are first written to an archive file (NDJSON, one entry per line with its chain fields and its
payload as stored, fsynced, its SHA-256 noted), then removed in one transaction that records the
prune (``audit_prunes``: chain, last entry removed, its hash, the archive and its SHA-256) signed
with the checkpoint key. ``storeops audit verify`` starts such a chain at the entry after the prune,
chained to the prune's hash, and refuses a prune nobody signed: a deletion is still a deletion.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import CursorResult, and_, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.audit import store
from services.audit.settings import AuditSettings
from services.audit.signing import Signer
from storeops.consumer import transient

log = logging.getLogger(__name__)

COLUMNS = ("seq", "chain", "chain_seq", "topic", "partition", "offset", "key", "record_id", "type", "subject", "time",
           "recorded_at", "conflict", "payload", "prev_hash", "hash")


async def last_pruned(session: AsyncSession, chain: str) -> int:
    return int(await session.scalar(select(func.max(store.PRUNES.c.up_to_seq)).where(store.PRUNES.c.chain == chain)) or 0)


async def prunable(session: AsyncSession, chain: str, cutoff: datetime) -> tuple[int, str, int] | None:
    """(up_to_seq, its hash, the last prune's up_to_seq): the last checkpoint whose entry was kept
    before ``cutoff``, past the chain's last prune; None when there is none."""
    after = await last_pruned(session, chain)
    r, c = store.RECORDS, store.CHECKPOINTS
    row = (await session.execute(
        select(c.c.chain_seq, c.c.hash).join(r, and_(r.c.chain == c.c.chain, r.c.chain_seq == c.c.chain_seq))
        .where(c.c.chain == chain, c.c.chain_seq > after, r.c.recorded_at < cutoff, r.c.hash == c.c.hash)
        .order_by(c.c.chain_seq.desc()).limit(1))).first()
    return (int(row[0]), str(row[1]), after) if row else None


def _archive_name(chain: str, first: int, last: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', chain)}.{first}-{last}.ndjson"


async def write_archive(sessions: async_sessionmaker[AsyncSession], folder: Path, chain: str, first: int,
                        last: int) -> tuple[Path, str, int]:
    """Entries ``first``..``last`` of ``chain`` to a file in ``folder``: (path, SHA-256, entries)."""
    path = folder / _archive_name(chain, first, last)
    tmp = path.with_suffix(".partial")
    digest, count = hashlib.sha256(), 0
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    out = await asyncio.to_thread(open, tmp, "wb")
    try:
        async with sessions() as session:
            conn = await session.connection()
            async for page in store.entries(conn, chain, first):
                lines = b"".join(orjson.dumps(dict(zip(COLUMNS, row, strict=True)), default=str) + b"\n"
                                 for row in page if row[2] <= last)
                digest.update(lines)
                count += lines.count(b"\n")
                await asyncio.to_thread(out.write, lines)
                if page and page[-1][2] >= last:
                    break
        await asyncio.to_thread(_sync, out)
    finally:
        out.close()
    await asyncio.to_thread(_publish, tmp, path)
    return path, digest.hexdigest(), count


def _sync(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())


def _publish(tmp: Path, path: Path) -> None:
    """Rename into place, durably, before anything is removed."""
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def prune_chain(sessions: async_sessionmaker[AsyncSession], signer: Signer, folder: Path, chain: str,
                      cutoff: datetime, now: datetime) -> int:
    """Archive and remove what retention allows of ``chain``; the entries removed."""
    async with sessions() as session:
        found = await prunable(session, chain, cutoff)
    if found is None:
        return 0
    up_to, hash_, after = found
    path, sha256, count = await write_archive(sessions, folder, chain, after + 1, up_to)
    async with sessions.begin() as session:
        await store.lock_chains(session, [chain])
        if await last_pruned(session, chain) != after:  # another instance pruned it meanwhile
            return 0
        permit = random.randrange(1, 2**31)
        await session.execute(insert(store.PERMITS).values(id=permit))
        removed = select(store.RECORDS.c.seq).where(store.RECORDS.c.chain == chain, store.RECORDS.c.chain_seq <= up_to)
        await session.execute(delete(store.ENTITIES).where(store.ENTITIES.c.seq.in_(removed)))
        result = await session.execute(delete(store.RECORDS).where(store.RECORDS.c.chain == chain,
                                                                    store.RECORDS.c.chain_seq <= up_to))
        deleted = cast(CursorResult[Any], result).rowcount
        await session.execute(delete(store.PERMITS).where(store.PERMITS.c.id == permit))
        signed = signer.sign_prune(chain, up_to, hash_, now, sha256)
        await session.execute(insert(store.PRUNES).values(
            chain=chain, up_to_seq=up_to, hash=hash_, time=now, entries=deleted, archive=str(path),
            archive_sha256=sha256, key_id=signed.key_id, signature=signed.signature))
    if deleted != count:
        log.warning("retention removed another number of entries than it archived",
                    extra={"chain": chain, "archived": count, "removed": deleted})
    log.info("retention: entries archived and removed", extra={"chain": chain, "up_to_seq": up_to, "entries": deleted,
                                                               "archive": str(path)})
    return int(deleted)


async def prune(sessions: async_sessionmaker[AsyncSession], settings: AuditSettings, signer: Signer,
                now: datetime | None = None) -> dict[str, Any]:
    """One pass over every chain; what was removed."""
    days = settings.audit.retention_days
    if days is None:
        return {"chains": 0, "entries": 0}
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    async with sessions() as session:
        chains = sorted((await session.scalars(select(store.RECORDS.c.chain).distinct()
                                              .where(store.RECORDS.c.recorded_at < cutoff))).all())
    removed, pruned = 0, 0
    for chain in chains:
        n = await prune_chain(sessions, signer, settings.archive_dir(), chain, cutoff, now)
        removed, pruned = removed + n, pruned + (n > 0)
    return {"chains": pruned, "entries": removed}


async def run(sessions: async_sessionmaker[AsyncSession], settings: AuditSettings, signer: Signer) -> None:
    """For the life of the service, when a retention is set: a pass at start, then every
    ``retention_check_seconds``; a database away waits for the next pass."""
    if settings.audit.retention_days is None:
        return
    while True:
        try:
            await prune(sessions, settings, signer)
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("retention pass failed; trying at the next one", extra={"error": repr(exc)})
        await asyncio.sleep(settings.audit.retention_check_seconds)
