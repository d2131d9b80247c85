"""rules: rules stored as data (versions, history), full run records, previous values, daily price moves

The first ``rule_runs`` table recorded the built-in rules' runs with their action
ids only. It is dropped and replaced by one that keeps each run's whole record;
the old runs are discarded (they named rules that no longer exist as code, and
the rule-runs topic still holds them). The downgrade brings back the first table
empty.

Revision ID: rules_0002
Revises: rules_0001
Create Date: 2026-11-24
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from storeops.db import BigIntPK, UTCDateTime

revision: str = 'rules_0002'
down_revision: Union[str, Sequence[str], None] = 'rules_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('rule_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_rule_runs_rule_time')
    op.drop_table('rule_runs')

    op.create_table(
        'rules',
        sa.Column('id', sa.String(length=80), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('mode', sa.String(length=10), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('updated_by', sa.String(length=200), nullable=False),
        sa.Column('dry_run_since', UTCDateTime(), nullable=True),
        sa.Column('live_since', UTCDateTime(), nullable=True),
        sa.Column('live_by', sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'rule_versions',
        sa.Column('rule_id', sa.String(length=80), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('definition', JSON, nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('rule_id', 'version'),
    )
    op.create_table(
        'rule_changes',
        sa.Column('seq', BigIntPK, autoincrement=True, nullable=False),
        sa.Column('rule_id', sa.String(length=80), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.Column('before', JSON, nullable=True),
        sa.Column('after', JSON, nullable=True),
        sa.Column('note', sa.String(length=2000), nullable=True),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('rule_changes', schema=None) as batch_op:
        batch_op.create_index('ix_rule_changes_rule', ['rule_id', 'seq'], unique=False)
    op.create_table(
        'rule_runs',
        sa.Column('run_id', sa.Uuid(), nullable=False),
        sa.Column('rule_id', sa.String(length=80), nullable=False),
        sa.Column('rule_version', sa.Integer(), nullable=False),
        sa.Column('mode', sa.String(length=10), nullable=False),
        sa.Column('event_id', sa.Uuid(), nullable=False),
        sa.Column('event_type', sa.String(length=100), nullable=False),
        sa.Column('subject', sa.String(length=200), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('event_time', UTCDateTime(), nullable=False),
        sa.Column('started_at', UTCDateTime(), nullable=False),
        sa.Column('finished_at', UTCDateTime(), nullable=True),
        sa.Column('record', JSON, nullable=False),
        sa.PrimaryKeyConstraint('run_id'),
        sa.UniqueConstraint('event_id', 'rule_id', 'rule_version', name='uq_rule_runs_event_rule_version'),
    )
    with op.batch_alter_table('rule_runs', schema=None) as batch_op:
        batch_op.create_index('ix_rule_runs_rule_time', ['rule_id', 'event_time'], unique=False)
        batch_op.create_index('ix_rule_runs_rule_status_time', ['rule_id', 'status', 'event_time'], unique=False)
    op.create_table(
        'rule_values',
        sa.Column('subject', sa.String(length=200), nullable=False),
        sa.Column('path', sa.String(length=200), nullable=False),
        sa.Column('value', JSON, nullable=False),
        sa.Column('event_time', UTCDateTime(), nullable=False),
        sa.Column('event_id', sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint('subject', 'path'),
    )
    op.create_table(
        'price_moves',
        sa.Column('sku', sa.String(length=200), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('reference_price', sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column('last_price', sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('sku', 'day'),
    )


def downgrade() -> None:
    op.drop_table('price_moves')
    op.drop_table('rule_values')
    with op.batch_alter_table('rule_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_rule_runs_rule_status_time')
        batch_op.drop_index('ix_rule_runs_rule_time')
    op.drop_table('rule_runs')
    with op.batch_alter_table('rule_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_rule_changes_rule')
    op.drop_table('rule_changes')
    op.drop_table('rule_versions')
    op.drop_table('rules')

    op.create_table(
        'rule_runs',
        sa.Column('run_id', sa.Uuid(), nullable=False),
        sa.Column('rule_id', sa.String(length=200), nullable=False),
        sa.Column('rule_version', sa.Integer(), nullable=False),
        sa.Column('mode', sa.String(length=10), nullable=False),
        sa.Column('event_id', sa.Uuid(), nullable=False),
        sa.Column('event_type', sa.String(length=100), nullable=False),
        sa.Column('event_time', UTCDateTime(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('action_ids', JSON, nullable=False),
        sa.PrimaryKeyConstraint('run_id'),
        sa.UniqueConstraint('event_id', 'rule_id', 'rule_version', name='uq_rule_runs_event_rule_version'),
    )
    with op.batch_alter_table('rule_runs', schema=None) as batch_op:
        batch_op.create_index('ix_rule_runs_rule_time', ['rule_id', 'event_time'], unique=False)
