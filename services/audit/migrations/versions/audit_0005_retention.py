"""audit: retention that keeps the proof

audit_prunes records each retention prune (a chain's entries 1..up_to_seq written to an archive
file, then removed), signed with the checkpoint key. The append-only triggers let DELETE through
on audit_records and audit_entities only in a transaction holding a row of audit_prune_permits
(the prune's own, inserted and removed in it; no other transaction sees it). UPDATE, TRUNCATE and
any other DELETE are still refused; audit_prunes is append-only itself.

Revision ID: audit_0005
Revises: audit_0004
Create Date: 2026-12-04
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from storeops.db import UTCDateTime

revision: str = 'audit_0005'
down_revision: Union[str, Sequence[str], None] = 'audit_0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PRUNABLE = ("audit_records", "audit_entities")

PG_REFUSE = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME IN ('audit_records', 'audit_entities')
       AND EXISTS (SELECT 1 FROM audit_prune_permits) THEN
        RETURN NULL;  -- a retention prune (statement-level: the value is not used)
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING HINT = 'the audit trail is never changed; storeops audit verify reports tampering';
END $$
"""

PG_REFUSE_BEFORE = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING HINT = 'the audit trail is never changed; storeops audit verify reports tampering';
END $$
"""


def _sqlite_delete_trigger(table: str, permitted: bool) -> str:
    when = " WHEN NOT EXISTS (SELECT 1 FROM audit_prune_permits)" if permitted else ""
    return (f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}{when} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: DELETE refused'); END")


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.create_table("audit_prune_permits", sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint("id"))
    op.create_table(
        "audit_prunes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("chain", sa.String(length=220), nullable=False),
        sa.Column("up_to_seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("archive", sa.String(length=1000), nullable=False),
        sa.Column("archive_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain", "up_to_seq", name="uq_audit_prune"),
    )
    op.create_index("ix_audit_entities_seq", "audit_entities", ["seq"])
    if pg:
        op.execute(PG_REFUSE)
        op.execute("CREATE TRIGGER audit_prunes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_prunes "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")
        return
    for table in PRUNABLE:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        op.execute(_sqlite_delete_trigger(table, permitted=True))
    for what in ("UPDATE", "DELETE"):
        op.execute(f"CREATE TRIGGER audit_prunes_no_{what.lower()} BEFORE {what} ON audit_prunes "
                   f"BEGIN SELECT RAISE(ABORT, 'audit_prunes is append-only: {what} refused'); END")


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    if pg:
        op.execute("DROP TRIGGER IF EXISTS audit_prunes_append_only ON audit_prunes")
        op.execute(PG_REFUSE_BEFORE)
    else:
        for what in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS audit_prunes_no_{what}")
        for table in PRUNABLE:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(_sqlite_delete_trigger(table, permitted=False))
    op.drop_index("ix_audit_entities_seq", table_name="audit_entities")
    op.drop_table("audit_prunes")
    op.drop_table("audit_prune_permits")
