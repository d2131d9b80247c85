"""The audit tables: one row per distinct record per topic, with where it was read, linked into its
partition's hash chain (``services.audit.chain``); signed checkpoints of each chain.

Both tables are append-only: on PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE, on SQLite
UPDATE and DELETE (migration audit_0003).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    Uuid,
    and_,
    any_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.audit import metrics
from services.audit.chain import Head, Sealed, chain_of, checkpoint_due, link
from services.audit.entries import describe
from storeops.consumer import Received
from storeops.db import BigIntPK, RawJSON, UTCDateTime, table_of
from storeops.outbox import Outbox

log = logging.getLogger(__name__)

# Where the chains' PostgreSQL advisory locks live (the two-key form: this, then the chain's key).
LOCK_SPACE = 0x61756474  # "audt"
PAGE = 5000  # entries per page when the chains are read back
_ENTITIES = "_entities"  # a planned row's entities, inserted into audit_entities once its seq is known


class Base(DeclarativeBase):
    metadata = MetaData()


class AuditRow(Base):
    __tablename__ = "audit_records"
    __table_args__ = (
        # A record read again (redelivery) or produced again with the same id and content (a
        # service re-announcing after a crash) is stored once; one that comes back with its id
        # and other content is stored again, flagged ``conflict``. The origin is not unique:
        # offsets start again at 0 when a topic is re-created or the in-memory embedded broker
        # restarts, and those new records must be kept.
        Index("uq_audit_topic_record", "topic", "record_id", unique=True,
              postgresql_where=text("NOT conflict"), sqlite_where=text("NOT conflict")),
        Index("ix_audit_conflicts", "topic", "record_id",
              postgresql_where=text("conflict"), sqlite_where=text("conflict")),
        # One entry per position: a second writer of a chain that read a stale head fails here.
        UniqueConstraint("chain", "chain_seq", name="uq_audit_chain_seq"),
        Index("ix_audit_origin", "topic", "partition", "offset"),
        Index("ix_audit_subject_time", "subject", "time"),
        Index("ix_audit_time", "time"),
        Index("ix_audit_action_seq", "action", "seq"),
        Index("ix_audit_actor_seq", "actor", "seq"),
        Index("ix_audit_entity_type_seq", "entity_type", "seq"),
        Index("ix_audit_source_seq", "source", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str | None] = mapped_column(String(400))
    record_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    type: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(200))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # json, not PostgreSQL's jsonb: json keeps the text exactly as given, so the bytes the chain
    # hashed are the bytes read back (jsonb re-orders keys and re-writes numbers)
    payload: Mapped[dict] = mapped_column(JSON)
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    chain: Mapped[str] = mapped_column(String(220))
    chain_seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # the record read as an audit entry (services.audit.entries; not in the chain: derived from payload)
    action: Mapped[str | None] = mapped_column(String(100))
    actor_kind: Mapped[str | None] = mapped_column(String(10))
    actor: Mapped[str | None] = mapped_column(String(200))
    entity_type: Mapped[str | None] = mapped_column(String(40))  # its first entity's
    source: Mapped[str | None] = mapped_column(String(200))  # the envelope's: who said it (storeops/rules...)

    def fields(self) -> dict[str, Any]:
        """The fields of the record as the API serves it (``schemas.audit.AuditRecord``)."""
        return {
            "topic": self.topic, "partition": self.partition, "offset": self.offset, "key": self.key,
            "record_id": self.record_id, "type": self.type, "subject": self.subject, "time": self.time,
            "recorded_at": self.recorded_at, "payload": self.payload, "conflict": self.conflict,
            "entry": describe(self.topic, self.payload if isinstance(self.payload, dict) else {}).as_json(),
        }


class CheckpointRow(Base):
    """A chain signed up to ``chain_seq``: that entry's hash, when, by which key, the signature
    (``services.audit.chain.checkpoint_message``)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (UniqueConstraint("chain", "chain_seq", name="uq_audit_checkpoint"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(220))
    chain_seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))


class EntityRow(Base):
    """One entity a record concerns (``services.audit.entries``): a search by any of them finds it."""

    __tablename__ = "audit_entities"
    __table_args__ = (Index("ix_audit_entities_seq", "seq"),)  # retention removes a chain's entities by seq

    entity_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class PruneRow(Base):
    """Retention removed a chain's entries 1..``up_to_seq`` after writing them to ``archive`` (its
    SHA-256): the chain verifies from the entry after it, chained to ``hash``, which a checkpoint
    signed; this row is signed too (``services.audit.chain.prune_message``), so a deletion nobody
    signed is still found."""

    __tablename__ = "audit_prunes"
    __table_args__ = (UniqueConstraint("chain", "up_to_seq", name="uq_audit_prune"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(220))
    up_to_seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    entries: Mapped[int] = mapped_column(BigInteger)
    archive: Mapped[str] = mapped_column(String(1000))
    archive_sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))


class PrunePermitRow(Base):
    """Present only inside a retention prune's transaction: the append-only triggers let that
    transaction's DELETEs through (no other transaction sees the row)."""

    __tablename__ = "audit_prune_permits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


Heads = dict[str, tuple[Head, Sealed | None]]  # each chain's head and last checkpoint

RECORDS, CHECKPOINTS, ENTITIES = table_of(AuditRow), table_of(CheckpointRow), table_of(EntityRow)
PRUNES, PERMITS = table_of(PruneRow), table_of(PrunePermitRow)
# The audit service's own changes (an export is one) reach the audit topic through it, like every service's.
OUTBOX = Outbox("audit", Base.metadata)


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpointing:
    """When chains are signed and what signs them: ``sign(chain, chain_seq, hash, time)`` gives
    ``(key_id, signature)``."""

    sign: Callable[[str, int, str, datetime], tuple[str, str]]
    every: int
    seconds: float


def lock_key(chain: str) -> int:
    return int.from_bytes(hashlib.sha256(chain.encode()).digest()[:4], "big", signed=True)


async def lock_chains(session: AsyncSession, chains: Sequence[str]) -> None:
    """Make this transaction the only writer of ``chains`` until it ends.

    PostgreSQL: a transaction-scoped advisory lock per chain, taken in one order (no deadlock
    between two batches). A rebalance can hand a partition to another instance while the old
    owner is still storing its last batch; the new owner then waits here and reads the head the
    old one committed, instead of failing on uq_audit_chain_seq, which the consumer would take
    for a refusal of the records' content (SQLSTATE class 23) and dead-letter them.
    SQLite: a write that changes nothing takes the database's write lock at once (SQLite has one
    writer at a time); without it the head would be read before the lock and could be stale.
    """
    if session.get_bind().dialect.name == "postgresql":
        keys = sorted({lock_key(c) for c in chains})
        await session.execute(text("SELECT pg_advisory_xact_lock(:space, k) FROM unnest(CAST(:keys AS integer[])) AS k"),
                              {"space": LOCK_SPACE, "keys": keys})
    else:
        await session.execute(text("UPDATE audit_records SET chain = chain WHERE 0"))


def _last(column: Any, table: Any, chain: str) -> Any:
    return select(column).where(table.c.chain == chain).order_by(table.c.chain_seq.desc()).limit(1).scalar_subquery()


async def chain_heads(session: AsyncSession | AsyncConnection, chains: Sequence[str]) -> Heads:
    """Each chain's head and last checkpoint, in one statement (an index lookup each)."""
    parts = [select(literal(c, String).label("chain"), _last(RECORDS.c.chain_seq, RECORDS, c).label("seq"),
                    _last(RECORDS.c.hash, RECORDS, c).label("hash"), _last(CHECKPOINTS.c.chain_seq, CHECKPOINTS, c),
                    _last(CHECKPOINTS.c.time, CHECKPOINTS, c)) for c in chains]
    heads: Heads = {c: (Head(), None) for c in chains}
    for chain, seq, hash_, sealed_seq, sealed_at in (await session.execute(union_all(*parts))).all():
        head = Head(seq, hash_) if seq is not None else Head()
        heads[chain] = (head, Sealed(sealed_seq, sealed_at) if sealed_seq is not None else None)
    return heads


def _any_of(column: Any, values: list[Any], postgresql: bool) -> Any:
    # PostgreSQL: one array parameter, so the statement (and asyncpg's prepared plan) is the same for
    # every batch; an IN list of 1,000 parameters took 10-15 ms a batch, this 4-7 ms (measured)
    if postgresql:
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def _content(value: str | bytes) -> Any:
    """A version's content, to compare with another's: parsed exactly (any integer, any number as a
    Decimal), where orjson fails on 1e400 and rounds a long integer to a float, both of which the
    envelope lets through; NaN and Infinity as markers."""
    return json.loads(value, parse_float=Decimal, parse_constant=lambda name: (name,))


async def _versions(session: AsyncSession, items: Sequence[Received]) -> dict[tuple[str, uuid.UUID], list[Any]]:
    """The content (parsed) of every version stored of the batch's (topic, record id)s; usually none."""
    pg = session.get_bind().dialect.name == "postgresql"
    ids: dict[str, set[uuid.UUID]] = {}
    for i in items:
        ids.setdefault(i.record.topic, set()).add(i.event.id)
    payload = cast(RECORDS.c.payload, String)  # the stored text, not a parsed copy
    versions: dict[tuple[str, uuid.UUID], list[Any]] = {}
    for topic, record_ids in ids.items():
        query = select(RECORDS.c.record_id, payload).where(
            text("NOT audit_records.conflict"), RECORDS.c.topic == topic, _any_of(RECORDS.c.record_id, sorted(record_ids), pg))
        for record_id, value in (await session.execute(query)).all():
            versions[(topic, record_id)] = [_content(value)]
    if versions:  # a repeat: the versions stored again with other content too (a few rows, a small index)
        again = or_(*(and_(RECORDS.c.topic == t, RECORDS.c.record_id == r) for t, r in versions))
        for topic, record_id, value in (await session.execute(
                select(RECORDS.c.topic, RECORDS.c.record_id, payload).where(text("audit_records.conflict"), again))).all():
            versions[(topic, record_id)].append(_content(value))
    return versions


def _row(item: Received, now: datetime, conflict: bool) -> dict[str, Any]:
    r, e = item.record, item.event
    # the consumer decodes the envelope only (its data a dict); a typed record's data is read off its bytes
    data = e.data if isinstance(e.data, dict) else json.loads(r.value).get("data")
    entry = describe(r.topic, {"type": e.type, "subject": e.subject, "source": e.source, "data": data,
                               "causation_id": str(e.causation_id) if e.causation_id else None})
    return {
        "action": entry.action, "actor_kind": entry.actor_kind, "actor": entry.actor,
        "entity_type": entry.entities[0][0] if entry.entities else None, _ENTITIES: entry.entities,
        "source": e.source[:200],
        "topic": r.topic, "partition": r.partition, "offset": r.offset,
        "key": r.key.decode("utf-8", errors="replace") if r.key else None,
        "record_id": e.id, "type": e.type, "subject": e.subject, "time": e.time.astimezone(UTC), "recorded_at": now,
        "payload": RawJSON(r.value.decode()),  # the record exactly as it was on the topic
        "conflict": conflict, "chain": chain_of(r.topic, r.partition),
    }


def new_entries(items: Sequence[Received], versions: dict[tuple[str, uuid.UUID], list[Any]],
                now: datetime) -> dict[str, tuple[list[dict[str, Any]], list[bytes]]]:
    """The batch's records still to store, per chain in the order read, with their payload bytes:
    a record whose (topic, id) is stored with the same content (equal JSON) is a repeat and left
    out; with other content it is stored again, flagged ``conflict``. ``versions``: the stored
    content of the batch's ids (``_versions``); it gains what is planned here."""
    chains: dict[str, tuple[list[dict[str, Any]], list[bytes]]] = {}
    planned: dict[tuple[str, uuid.UUID], bytes] = {}  # parsed only if the id comes again in the batch
    for item in items:
        key = (item.record.topic, item.event.id)
        if key in planned:
            versions.setdefault(key, []).append(_content(planned.pop(key)))
        if key in versions:
            content = _content(item.record.value)
            if content in versions[key]:
                continue
            versions[key].append(content)
        else:
            planned[key] = item.record.value
        row = _row(item, now, conflict=key in versions)
        rows, payloads = chains.setdefault(row["chain"], ([], []))
        rows.append(row)
        payloads.append(item.record.value)
    return chains


class Repeated(Exception):
    """An optimistic ``add_records`` met a record stored already: roll back and store it again
    without ``optimistic``."""


HEADS = "storeops.audit_heads"  # in a session's info: the heads add_records left, for the caller once it commits


async def add_records(session: AsyncSession, items: Sequence[Received], *, checkpoints: Checkpointing | None = None,
                      now: datetime | None = None, optimistic: bool = False, known: Heads | None = None) -> int:
    """Store the records not stored yet, each linked into its partition's chain, in the caller's
    transaction; sign the chains that are due (``checkpoints``). Returns the rows stored.

    ``optimistic``: do not look for the batch's records first; if one is stored already the
    insert skips it (a hole in its chain), and ``Repeated`` says to roll back and call again
    without. A repeat is rare (a redelivery after a rebalance or a crash), and looking first cost
    a batch 10-80 ms more on PostgreSQL when the table's statistics were behind its size (the
    planner then scans the topic's rows instead of probing the key).

    ``known``: heads this process committed (``session.info[HEADS]`` after an earlier call), used
    instead of reading them. One that is stale (another instance wrote the chain since: a rebalance)
    makes the insert fail on uq_audit_chain_seq; the caller forgets them and calls again.
    """
    if not items:
        return 0
    now = now or datetime.now(UTC)
    chains = sorted({chain_of(i.record.topic, i.record.partition) for i in items})
    await lock_chains(session, chains)  # before any read: what follows sees the chains' last commits
    planned = new_entries(items, {} if optimistic else await _versions(session, items), now)
    known = known or {}
    heads = {c: known[c] for c in chains if c in known}
    if missing := [c for c in chains if c not in known]:
        heads.update(await chain_heads(session, missing))
    rows: list[dict[str, Any]] = []
    for chain, (entries, payloads) in planned.items():
        head, sealed = heads[chain]
        heads[chain] = (link(head, entries, payloads), sealed)
        rows += entries
    if rows:
        refs = [row.pop(_ENTITIES) for row in rows]
        seqs = await _insert(session, rows, skip_stored=optimistic)
        if len(seqs) < len(rows):
            raise Repeated
        entities = [{"seq": seq, "entity_type": kind, "entity_id": key}
                    for seq, pairs in zip(seqs, refs, strict=True) for kind, key in pairs]
        if entities:
            await session.execute(insert(ENTITIES), entities)
        _tell_conflicts(rows)
    if checkpoints is not None:
        await sign_due(session, heads, now, checkpoints)
    session.info[HEADS] = heads
    return len(rows)


async def _insert(session: AsyncSession, rows: list[dict[str, Any]], *, skip_stored: bool) -> list[int]:
    """Insert the entries; with ``skip_stored``, those whose record is stored already are left out.
    Returns the seqs of the rows inserted, in the order of ``rows``."""
    stmt: Any = insert(RECORDS)
    if skip_stored:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(RECORDS).on_conflict_do_nothing(index_elements=["topic", "record_id"],
                                                               index_where=text("NOT conflict"))
    # RETURNING makes SQLAlchemy send the rows as multi-row INSERTs (insertmanyvalues): on asyncpg
    # 35-40 ms per 1,000 rows against 55-65 ms for executemany (measured)
    return list((await session.scalars(stmt.returning(RECORDS.c.seq, sort_by_parameter_order=True), rows)).all())


def _tell_conflicts(rows: list[dict[str, Any]]) -> None:
    conflicts = [r for r in rows if r["conflict"]]
    for row in conflicts:
        log.warning("record came back with its id and other content; stored again, flagged conflict",
                    extra={"topic": row["topic"], "partition": row["partition"], "offset": row["offset"],
                           "record_id": str(row["record_id"])})
    metrics.CONFLICTS.inc(len(conflicts))


async def sign_due(session: AsyncSession, heads: Heads, now: datetime,
                   checkpoints: Checkpointing) -> int:
    """Write a checkpoint of each chain in ``heads`` that is due; returns how many."""
    due = [(chain, head) for chain, (head, sealed) in heads.items()
           if checkpoint_due(head, sealed, now, checkpoints.every, checkpoints.seconds)]
    rows = []
    for chain, head in due:
        heads[chain] = (head, Sealed(head.seq, now))
        signer, signature = checkpoints.sign(chain, head.seq, head.hash, now)
        rows.append({"chain": chain, "chain_seq": head.seq, "hash": head.hash, "time": now, "key_id": signer,
                     "signature": signature})
    if rows:
        await session.execute(insert(CHECKPOINTS), rows)
    return len(rows)


async def chains_to_seal(session: AsyncSession, older_than: datetime, *, everything: bool) -> list[str]:
    """Chains whose last checkpoint was written before ``older_than`` (from the small checkpoints
    table); with ``everything``, also every chain never signed (a scan of the chain index, once)."""
    sealed = select(CHECKPOINTS.c.chain).group_by(CHECKPOINTS.c.chain).having(func.max(CHECKPOINTS.c.time) < older_than)
    found = set((await session.scalars(sealed)).all())
    if everything:
        never = select(RECORDS.c.chain).distinct().except_(select(CHECKPOINTS.c.chain))
        found |= set((await session.scalars(never)).all())
    return sorted(found)


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What a search asks for; every filter given must hold. ``actions``: exact names, or prefixes
    ending in ``.`` (``rule.``, every rule action). ``entity`` (with ``entity_type``, that type only) finds every
    record that concerns the entity, not only those keyed by it."""

    entity: str | None = None
    entity_type: str | None = None
    actions: tuple[str, ...] = ()
    actor: str | None = None
    actor_kind: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    topic: str | None = None


def _where(query: Any, f: Filters) -> Any:
    """The filters but ``entity`` (``_concerning`` reads an entity's records a page of seqs at a time)."""
    if f.entity_type:
        query = query.where(AuditRow.entity_type == f.entity_type)
    if f.actions:
        exact = [a for a in f.actions if not a.endswith(".")]
        prefixes = [a for a in f.actions if a.endswith(".")]
        query = query.where(or_(*([AuditRow.action.in_(exact)] if exact else []),
                                *(AuditRow.action.startswith(p, autoescape=True) for p in prefixes)))
    if f.actor:
        query = query.where(AuditRow.actor == f.actor)
    if f.actor_kind:
        query = query.where(AuditRow.actor_kind == f.actor_kind)
    if f.source:
        query = query.where(AuditRow.source == f.source)
    if f.since:
        query = query.where(AuditRow.time >= f.since)
    if f.until:
        query = query.where(AuditRow.time < f.until)
    if f.topic:
        query = query.where(AuditRow.topic == f.topic)
    return query


async def search(session: AsyncSession, filters: Filters, *, after: int | None, limit: int,
                 newest_first: bool = False) -> Sequence[AuditRow]:
    """Up to ``limit`` records matching ``filters`` past position ``after`` (the ``seq`` of the last
    one read; None for the start), in the order they were kept, or the newest first."""
    if filters.entity:
        return await _concerning(session, filters, after=after, limit=limit, newest_first=newest_first)
    query = _where(select(AuditRow), filters)
    return (await session.scalars(_paged(query, AuditRow.seq, after, newest_first).limit(limit))).all()


def _paged(query: Any, seq: Any, after: int | None, newest_first: bool) -> Any:
    if newest_first:
        return (query.where(seq < after) if after is not None else query).order_by(seq.desc())
    return (query.where(seq > after) if after is not None else query).order_by(seq)


async def _concerning(session: AsyncSession, f: Filters, *, after: int | None, limit: int,
                      newest_first: bool) -> Sequence[AuditRow]:
    """The records that concern ``f.entity``: those naming it, and those naming an exception raised
    about it (a notification or an assignment names the exception only).

    In steps that each stay on an index whatever the planner knows of the tables: the exceptions
    first, then the entity's seqs a page at a time (pk_audit_entities), then those records with the
    other filters (the primary key), until the page is full. One statement with the entities as a
    subquery let PostgreSQL walk the whole records table when its statistics were behind (a bulk
    load): 62 ms p50 / 114 ms p95 at 1,000,000 entries, measured.
    """
    if session.get_bind().dialect.name == "postgresql":
        # a plan for these values: the generic plan asyncpg's prepared statements get after five runs
        # guesses an entity's share of the table and scans by seq instead (2.5 -> 45 ms, measured)
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    named = ENTITIES.c.entity_id == f.entity
    if f.entity_type:
        named = and_(named, ENTITIES.c.entity_type == f.entity_type)
    # the exceptions raised about it, from its first records (an exception comes early in an entity's life)
    first = list((await session.scalars(select(ENTITIES.c.seq).where(named).order_by(ENTITIES.c.seq).limit(1000))).all())
    raised = list(await session.scalars(select(ENTITIES.c.entity_id).distinct().where(
        ENTITIES.c.entity_type == "exception", ENTITIES.c.seq.in_(first)))) if first else []
    concerns = or_(named, and_(ENTITIES.c.entity_type == "exception", ENTITIES.c.entity_id.in_(raised))) \
        if raised else named
    rest = Filters(**{**vars(f), "entity": None, "entity_type": None})
    found: list[AuditRow] = []
    chunk = max(limit, 100)
    while len(found) < limit:
        seqs = list((await session.scalars(_paged(select(ENTITIES.c.seq).distinct().where(concerns), ENTITIES.c.seq,
                                                  after, newest_first).limit(chunk))).all())
        if not seqs:
            break
        query = _where(select(AuditRow).where(AuditRow.seq.in_(seqs)), rest)
        found += (await session.scalars(_paged(query, AuditRow.seq, None, newest_first))).all()
        if len(seqs) < chunk:
            break
        after = seqs[-1]
    return found[:limit]


# What the verifier reads of an entry, in this order: the payload as its stored text; the record id
# and the times as the driver gives them (``verification.digest`` reads both forms). SQLAlchemy's
# own conversions of these three cost 12 of the 25 us an entry took on SQLite (profiled).
ENTRY_COLUMNS = (RECORDS.c.seq, RECORDS.c.chain, RECORDS.c.chain_seq, RECORDS.c.topic, RECORDS.c.partition,
                 RECORDS.c.offset, RECORDS.c.key, type_coerce(RECORDS.c.record_id, String), RECORDS.c.type,
                 RECORDS.c.subject, type_coerce(RECORDS.c.time, String), type_coerce(RECORDS.c.recorded_at, String),
                 RECORDS.c.conflict, cast(RECORDS.c.payload, String), RECORDS.c.prev_hash, RECORDS.c.hash)


async def chains(conn: AsyncConnection) -> list[str]:
    """Every chain with an entry or a checkpoint, by name."""
    names = select(RECORDS.c.chain).distinct().union(select(CHECKPOINTS.c.chain))
    return sorted((await conn.scalars(names)).all())


async def entries(conn: AsyncConnection, chain: str, from_seq: int = 1) -> AsyncIterator[Sequence[Any]]:
    """The chain's entries from ``from_seq`` on, in chain order (ties, which only tampering makes, by
    row), a page at a time from one streamed query (a server-side cursor on PostgreSQL): never the
    whole chain in memory."""
    query = (select(*ENTRY_COLUMNS).where(RECORDS.c.chain == chain, RECORDS.c.chain_seq >= from_seq)
             .order_by(RECORDS.c.chain_seq, RECORDS.c.seq).execution_options(yield_per=PAGE))
    result = await conn.stream(query)
    async for page in result.partitions():
        yield page


async def checkpoints_of(conn: AsyncConnection, chain: str, from_seq: int = 1) -> list[Any]:
    """The chain's checkpoints from ``from_seq`` on, in chain order (a few per thousand entries)."""
    query = (select(CHECKPOINTS.c.chain_seq, CHECKPOINTS.c.hash, CHECKPOINTS.c.time, CHECKPOINTS.c.key_id,
                    CHECKPOINTS.c.signature)
             .where(CHECKPOINTS.c.chain == chain, CHECKPOINTS.c.chain_seq >= from_seq).order_by(CHECKPOINTS.c.chain_seq))
    return list((await conn.execute(query)).all())


async def checkpoint_before(conn: AsyncConnection, chain: str, time: datetime) -> int:
    """The entry the chain's last checkpoint signed at or before ``time`` (1 when there is none)."""
    query = select(func.max(CHECKPOINTS.c.chain_seq)).where(CHECKPOINTS.c.chain == chain, CHECKPOINTS.c.time <= time)
    return int(await conn.scalar(query) or 1)
