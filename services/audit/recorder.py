"""The audit service's state: stores batches into the chains, and signs the chains that are due.

A batch's chains are signed when it stores them and they are due (``checkpoint_every`` entries
since the last checkpoint, or ``checkpoint_seconds`` since it). A chain that stops receiving
records is signed by the sweep: every ``checkpoint_seconds`` / 10 (at most every 5 minutes) it
signs each chain whose last checkpoint is older than ``checkpoint_seconds`` and has entries after
it; at start it also signs every chain never signed (rows chained by the migration, say).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.audit import metrics, store
from services.audit.settings import AuditSettings
from services.audit.signing import Signer
from storeops.consumer import Received, transient

log = logging.getLogger(__name__)

# A unique key hit by another writer (a chain written meanwhile on SQLite, the same record id
# stored from another partition at the same moment): the batch is read and linked again.
ATTEMPTS = 3


class Recorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: AuditSettings) -> None:
        self.sessions = sessions
        self.config = settings.audit
        self.signer = Signer(settings.signing_key_file())
        self.checkpoints = store.Checkpointing(self._sign, self.config.checkpoint_every, self.config.checkpoint_seconds)
        # the heads of the chains this process wrote, as committed: a batch reads only those it does not know
        self._heads: store.Heads = {}

    def _sign(self, chain: str, chain_seq: int, hash: str, time: datetime) -> tuple[str, str]:
        signature = self.signer.sign(chain, chain_seq, hash, time)
        metrics.CHECKPOINTS.inc()
        return signature.key_id, signature.signature

    async def record(self, batch: Sequence[Received]) -> int:
        """Store ``batch`` in one transaction; returns the rows stored."""
        optimistic, failures = True, 0
        while True:
            try:
                async with self.sessions.begin() as session:
                    stored = await store.add_records(session, batch, checkpoints=self.checkpoints, optimistic=optimistic,
                                                     known=self._heads)
                    heads = session.info.get(store.HEADS, {})
                self._heads.update(heads)  # committed
                return stored
            except store.Repeated:
                optimistic = False  # some were stored before: look the batch's records up this time
            except IntegrityError:
                self._heads.clear()  # another writer (a rebalance): read every head again
                failures += 1
                if failures == ATTEMPTS:
                    raise  # not another writer after all: the consumer splits the batch to find the record
                metrics.RETRIES.inc()
                log.info("a chain or record was written meanwhile; linking the batch again", extra={"attempt": failures})

    async def sweep(self, now: datetime, *, everything: bool = False) -> int:
        """Sign every chain due by time (and, with ``everything``, every chain never signed); returns how many."""
        older_than = now - timedelta(seconds=self.config.checkpoint_seconds)
        async with self.sessions() as session:
            candidates = await store.chains_to_seal(session, older_than, everything=everything)
        signed = 0
        for chain in candidates:  # one transaction each: a chain's lock is held only while it is signed
            async with self.sessions.begin() as session:
                await store.lock_chains(session, [chain])
                signed += await store.sign_due(session, await store.chain_heads(session, [chain]), now, self.checkpoints)
        return signed

    async def run_sweeps(self) -> None:
        """Sweep at start (everything) and then periodically; a database blip waits for the next one."""
        everything = True
        while True:
            try:
                await self.sweep(datetime.now(UTC), everything=everything)
                everything = False
            except Exception as exc:
                if not transient(exc):  # as the consumer judges it: asyncpg's server errors are no OperationalError
                    raise
                log.warning("checkpoint sweep failed; retrying at the next one", extra={"error": repr(exc)})
            await asyncio.sleep(min(self.config.checkpoint_seconds / 10, 300))
