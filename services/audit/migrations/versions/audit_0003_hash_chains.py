"""audit: hash chains, conflicting records, signed checkpoints, append-only tables

Every record joins its partition's hash chain (chain, chain_seq, prev_hash, hash; see
services/audit/chain.py for what the hash covers). The rows already stored are chained here, each
partition's in the order they were kept (seq), from chain_seq 1: the chains start with the
oldest rows, unsigned until the service's first batch or sweep signs them.

On PostgreSQL the payload column becomes json (from jsonb): json keeps the text as it was given,
so what is hashed is what is read back. A row stored before this migration is chained with the
text jsonb gave back (keys re-ordered, numbers normalised), not the bytes it had on its topic.

A record that comes back with its id and other content is stored again, flagged conflict: the
(topic, record_id) key is unique among the rows not so flagged.

audit_checkpoints holds each chain's signed checkpoints. Both tables refuse change: on
PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE; on SQLite, UPDATE and DELETE.

Revision ID: audit_0003
Revises: audit_0002
Create Date: 2026-12-04
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from services.audit.chain import GENESIS, Head, chain_of, entry_bytes, entry_hash
from storeops.db import UTCDateTime

revision: str = 'audit_0003'
down_revision: Union[str, Sequence[str], None] = 'audit_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("audit_records", "audit_checkpoints")
PAGE = 5000

PG_REFUSE = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING HINT = 'the audit trail is never changed; storeops audit verify reports tampering';
END $$
"""


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    if pg:
        op.alter_column("audit_records", "payload", type_=sa.JSON(), postgresql_using="payload::text::json",
                        existing_type=postgresql.JSONB(astext_type=sa.Text()), existing_nullable=False)
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conflict", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("chain", sa.String(length=220), nullable=True))
        batch_op.add_column(sa.Column("chain_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    _chain_existing_rows(bind)
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        for name in ("conflict", "chain", "chain_seq", "prev_hash", "hash"):
            batch_op.alter_column(name, nullable=False)
        batch_op.drop_constraint("uq_audit_topic_record", type_="unique")
        batch_op.create_unique_constraint("uq_audit_chain_seq", ["chain", "chain_seq"])
    op.create_index("uq_audit_topic_record", "audit_records", ["topic", "record_id"], unique=True,
                    postgresql_where=sa.text("NOT conflict"), sqlite_where=sa.text("NOT conflict"))
    op.create_index("ix_audit_conflicts", "audit_records", ["topic", "record_id"],
                    postgresql_where=sa.text("conflict"), sqlite_where=sa.text("conflict"))
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=220), nullable=False),
        sa.Column("chain_seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain", "chain_seq", name="uq_audit_checkpoint"),
    )
    if pg:
        op.execute(PG_REFUSE)
        for table in TABLES:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")
    else:
        for table in TABLES:
            for what in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{what.lower()} BEFORE {what} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {what} refused'); END")


def _chain_existing_rows(bind: sa.engine.Connection) -> None:
    """Chain the rows stored so far: each partition's in seq order, read a page at a time."""
    t = sa.table("audit_records", sa.column("seq", sa.BigInteger()), sa.column("topic", sa.String()),
                 sa.column("partition", sa.Integer()), sa.column("offset", sa.BigInteger()),
                 sa.column("key", sa.String()), sa.column("record_id", sa.Uuid()), sa.column("type", sa.String()),
                 sa.column("subject", sa.String()), sa.column("time", UTCDateTime()),
                 sa.column("recorded_at", UTCDateTime()), sa.column("payload", sa.JSON()),
                 sa.column("conflict", sa.Boolean()), sa.column("chain", sa.String()),
                 sa.column("chain_seq", sa.BigInteger()), sa.column("prev_hash", sa.String()),
                 sa.column("hash", sa.String()))
    update = (sa.update(t).where(t.c.seq == sa.bindparam("b_seq"))
              .values(conflict=False, chain=sa.bindparam("b_chain"), chain_seq=sa.bindparam("b_chain_seq"),
                      prev_hash=sa.bindparam("b_prev_hash"), hash=sa.bindparam("b_hash")))
    heads: dict[str, Head] = {}
    after = 0
    while True:
        page = bind.execute(sa.select(t.c.seq, t.c.topic, t.c.partition, t.c.offset, t.c.key, t.c.record_id, t.c.type,
                                      t.c.subject, t.c.time, t.c.recorded_at, sa.cast(t.c.payload, sa.String))
                            .where(t.c.seq > after).order_by(t.c.seq).limit(PAGE)).all()
        if not page:
            return
        changes = []
        for seq, topic, partition, offset, key, record_id, type_, subject, time, recorded_at, payload in page:
            chain = chain_of(topic, partition)
            head = heads.get(chain, Head(0, GENESIS))
            digest = entry_hash(head.hash, entry_bytes(chain, head.seq + 1, topic, partition, offset, key, str(record_id),
                                                       type_, subject, time, recorded_at, False, payload.encode()))
            changes.append({"b_seq": seq, "b_chain": chain, "b_chain_seq": head.seq + 1, "b_prev_hash": head.hash,
                            "b_hash": digest})
            heads[chain] = Head(head.seq + 1, digest)
        bind.execute(update, changes)
        after = page[-1][0]


def downgrade() -> None:
    """Fails if a conflicting record was stored by then (the old key keeps one row per id)."""
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    for table in TABLES:
        if pg:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    if pg:
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_conflicts", table_name="audit_records")
    op.drop_index("uq_audit_topic_record", table_name="audit_records")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_constraint("uq_audit_chain_seq", type_="unique")
        batch_op.create_unique_constraint("uq_audit_topic_record", ["topic", "record_id"])
        for name in ("hash", "prev_hash", "chain_seq", "chain", "conflict"):
            batch_op.drop_column(name)
    if pg:
        op.alter_column("audit_records", "payload", type_=postgresql.JSONB(astext_type=sa.Text()),
                        postgresql_using="payload::jsonb", existing_type=sa.JSON(), existing_nullable=False)
