"""audit: every record read as an audit entry (action, actor, entities) for search

audit_records gains action, actor_kind, actor, entity_type (its first entity's) and source, and
audit_entities lists every entity of every record (type, id), so a search by an order finds the
exception raised about it, the rule run and the command too. All of it is derived from the payload
(services/audit/entries.py) and is not part of the hash chain: the chain covers the record itself.
The audit service's own outbox (audit_outbox) carries its changes, an export for one. The rows kept
so far are described here; audit_records' append-only triggers are lifted for that
update only, inside this migration's transaction.

Revision ID: audit_0004
Revises: audit_0003
Create Date: 2026-12-04
"""
from typing import Sequence, Union

import orjson
import sqlalchemy as sa
from alembic import op

from services.audit.entries import describe
from services.audit.store import OUTBOX

revision: str = 'audit_0004'
down_revision: Union[str, Sequence[str], None] = 'audit_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PAGE = 5000


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    for column in (sa.Column("action", sa.String(length=100), nullable=True),
                   sa.Column("actor_kind", sa.String(length=10), nullable=True),
                   sa.Column("actor", sa.String(length=200), nullable=True),
                   sa.Column("entity_type", sa.String(length=40), nullable=True),
                   sa.Column("source", sa.String(length=200), nullable=True)):
        op.add_column("audit_records", column)
    op.create_table(
        "audit_entities",
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entity_type", sa.String(length=40), nullable=False),
        sa.Column("entity_id", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("entity_id", "entity_type", "seq", name="pk_audit_entities"),
    )
    if pg:
        op.execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
    _describe_existing_rows(bind)
    if pg:
        op.execute("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only")
        op.execute("CREATE TRIGGER audit_entities_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_entities "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")
    else:
        op.execute("CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records "
                   "BEGIN SELECT RAISE(ABORT, 'audit_records is append-only: UPDATE refused'); END")
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_entities_no_{what.lower()} BEFORE {what} ON audit_entities "
                       f"BEGIN SELECT RAISE(ABORT, 'audit_entities is append-only: {what} refused'); END")
    op.create_index("ix_audit_action_seq", "audit_records", ["action", "seq"])
    op.create_index("ix_audit_actor_seq", "audit_records", ["actor", "seq"])
    op.create_index("ix_audit_entity_type_seq", "audit_records", ["entity_type", "seq"])
    op.create_index("ix_audit_source_seq", "audit_records", ["source", "seq"])
    OUTBOX.create(op)


def _describe_existing_rows(bind: sa.engine.Connection) -> None:
    t = sa.table("audit_records", sa.column("seq", sa.BigInteger()), sa.column("topic", sa.String()),
                 sa.column("payload", sa.JSON()), sa.column("action", sa.String()), sa.column("actor_kind", sa.String()),
                 sa.column("actor", sa.String()), sa.column("entity_type", sa.String()), sa.column("source", sa.String()))
    entities = sa.table("audit_entities", sa.column("seq", sa.BigInteger()), sa.column("entity_type", sa.String()),
                        sa.column("entity_id", sa.String()))
    update = (sa.update(t).where(t.c.seq == sa.bindparam("b_seq"))
              .values(action=sa.bindparam("b_action"), actor_kind=sa.bindparam("b_actor_kind"),
                      actor=sa.bindparam("b_actor"), entity_type=sa.bindparam("b_entity_type"),
                      source=sa.bindparam("b_source")))
    after = 0
    while True:
        page = bind.execute(sa.select(t.c.seq, t.c.topic, sa.cast(t.c.payload, sa.String))
                            .where(t.c.seq > after).order_by(t.c.seq).limit(PAGE)).all()
        if not page:
            return
        changes, refs = [], []
        for seq, topic, payload in page:
            parsed = orjson.loads(payload)
            entry = describe(topic, parsed if isinstance(parsed, dict) else {})
            changes.append({"b_seq": seq, "b_action": entry.action, "b_actor_kind": entry.actor_kind,
                            "b_actor": entry.actor, "b_entity_type": entry.entities[0][0] if entry.entities else None,
                            "b_source": str(parsed.get("source") or "")[:200] or None if isinstance(parsed, dict) else None})
            refs += [{"seq": seq, "entity_type": kind, "entity_id": key} for kind, key in entry.entities]
        bind.execute(update, changes)
        if refs:
            bind.execute(sa.insert(entities), refs)
        after = page[-1][0]


def downgrade() -> None:
    bind = op.get_bind()
    OUTBOX.drop(op)
    for name in ("ix_audit_source_seq", "ix_audit_entity_type_seq", "ix_audit_actor_seq", "ix_audit_action_seq"):
        op.drop_index(name, table_name="audit_records")
    if bind.dialect.name != "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_entities_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_entities_no_delete")
    op.drop_table("audit_entities")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:  # SQLite: a new table, without triggers
        for name in ("source", "entity_type", "actor", "actor_kind", "action"):
            batch_op.drop_column(name)
    if bind.dialect.name != "postgresql":
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER IF NOT EXISTS audit_records_no_{what.lower()} BEFORE {what} ON audit_records "
                       f"BEGIN SELECT RAISE(ABORT, 'audit_records is append-only: {what} refused'); END")
