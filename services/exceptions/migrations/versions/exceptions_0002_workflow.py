"""exceptions: the full workflow (state as JSON, rank key, dedup, SLA, snooze), applied
actions and the change outbox

Rows of the first table are carried over: each becomes a version-1 state with the
fields the first version did not know filled in (one occurrence, first and last
seen at creation, the SLA clock starting now).

Revision ID: exceptions_0002
Revises: exceptions_0001
Create Date: 2026-11-23
"""
import json
from datetime import UTC, datetime
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from storeops.db import BigIntPK, UTCDateTime

revision: str = 'exceptions_0002'
down_revision: Union[str, Sequence[str], None] = 'exceptions_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OPEN = sa.text("status IN ('In Progress', 'New', 'Snoozed')")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.rename_table('exceptions', 'exceptions_0001')
    with op.batch_alter_table('exceptions_0001', schema=None) as batch_op:
        batch_op.drop_index('ix_exceptions_rank')
        batch_op.drop_index('ix_exceptions_entity_id')
    op.create_table(
        'exceptions',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('severity', sa.String(length=10), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('entity_type', sa.String(length=20), nullable=False),
        sa.Column('entity_id', sa.String(length=200), nullable=False),
        sa.Column('title', sa.String(length=300), nullable=False),
        sa.Column('assignee', sa.String(length=200), nullable=True),
        sa.Column('impact', sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column('rank_key', sa.String(length=100), nullable=False),
        sa.Column('dedup_key', sa.String(length=300), nullable=False),
        sa.Column('open_key', sa.String(length=300), nullable=True),
        sa.Column('reopenable', sa.Boolean(), nullable=False),
        sa.Column('watch_event', sa.String(length=100), nullable=True),
        sa.Column('sla_due_at', UTCDateTime(), nullable=True),
        sa.Column('snooze_until', UTCDateTime(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('last_seen', UTCDateTime(), nullable=False),
        sa.Column('state', JSON, nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('open_key'),
    )
    with op.batch_alter_table('exceptions', schema=None) as batch_op:
        batch_op.create_index('ix_exceptions_entity_id', ['entity_id'], unique=False)
        batch_op.create_index('ix_exceptions_dedup_key', ['dedup_key'], unique=False)
        batch_op.create_index('ix_exceptions_last_seen', ['last_seen'], unique=False)
        batch_op.create_index('ix_exceptions_open_rank', ['rank_key'], unique=False,
                              postgresql_where=OPEN, sqlite_where=OPEN)
        batch_op.create_index('ix_exceptions_open_type_rank', ['type', 'rank_key'], unique=False,
                              postgresql_where=OPEN, sqlite_where=OPEN)
        batch_op.create_index('ix_exceptions_open_counts', ['type', 'severity'], unique=False,
                              postgresql_where=OPEN, sqlite_where=OPEN)
        batch_op.create_index('ix_exceptions_queue', ['status', 'rank_key'], unique=False)
        batch_op.create_index('ix_exceptions_assignee_queue', ['assignee', 'status', 'rank_key'], unique=False)
        batch_op.create_index('ix_exceptions_due', ['status', 'sla_due_at'], unique=False)
        batch_op.create_index('ix_exceptions_wake', ['status', 'snooze_until'], unique=False)
    op.create_table(
        'exception_actions',
        sa.Column('action_id', sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint('action_id'),
    )
    op.create_table(
        'exception_outbox',
        sa.Column('seq', BigIntPK, autoincrement=True, nullable=False),
        sa.Column('record_id', sa.Uuid(), nullable=False),
        sa.Column('exception_id', sa.Uuid(), nullable=False),
        sa.Column('topic', sa.String(length=200), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
        sa.Column('published', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('record_id'),
    )
    with op.batch_alter_table('exception_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_exception_outbox_history', ['exception_id', 'seq'], unique=False)
        batch_op.create_index('ix_exception_outbox_published', ['published'], unique=False)
    _carry_over()
    op.drop_table('exceptions_0001')


def _carry_over() -> None:
    # the application's own mapping from state to columns, as it stands at this revision
    from schemas.exceptions import ExceptionState
    from services.exceptions.settings import ExceptionsConfig
    from services.exceptions.store import ExceptionRow, row_of
    from services.exceptions.workflow import sla_due

    bind = op.get_bind()
    old = sa.table(
        'exceptions_0001', *(sa.column(c) for c in (
            'id', 'type', 'severity', 'status', 'title', 'entity_type', 'entity_id', 'impact', 'currency',
            'rule_id', 'rule_version', 'rule_mode', 'evidence', 'assignee', 'created_at',
        ))
    )
    sla = ExceptionsConfig().sla
    now = datetime.now(UTC)
    rows = []
    for r in bind.execute(sa.select(old)).mappings():
        created = r['created_at'] if isinstance(r['created_at'], datetime) else datetime.fromisoformat(r['created_at'])
        created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
        evidence = json.loads(r['evidence']) if isinstance(r['evidence'], str) else r['evidence']  # SQLite: text
        source = {'rule_id': r['rule_id'], 'rule_version': r['rule_version'], 'mode': r['rule_mode']} if r['rule_id'] else None
        state = ExceptionState.model_validate({
            'id': r['id'], 'type': r['type'], 'severity': r['severity'], 'status': r['status'], 'title': r['title'],
            'entity_type': r['entity_type'], 'entity_id': r['entity_id'], 'impact': r['impact'],
            'currency': r['currency'], 'source': source, 'evidence': evidence, 'assignee': r['assignee'],
            'first_seen': created, 'last_seen': created, 'created_at': created, 'updated_at': now,
        })
        if state.status.value == 'New':
            state = state.model_copy(update={'sla_due_at': sla_due(state.severity, now, sla)})
        rows.append({**row_of(state), 'state': json.loads(state.model_dump_json())})
    if rows:
        bind.execute(ExceptionRow.__table__.insert(), rows)


def downgrade() -> None:
    raise NotImplementedError("exceptions_0002 cannot be undone: the first table cannot hold the workflow's state")
