"""notifier: requests handed over by other services, and encrypted credentials

Revision ID: notifier_0002
Revises: notifier_0001
Create Date: 2026-11-24

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from storeops.db import UTCDateTime

revision: str = 'notifier_0002'
down_revision: Union[str, Sequence[str], None] = 'notifier_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'notify_requests',
        sa.Column('request_id', sa.Uuid(), nullable=False),
        sa.Column('channel', sa.String(length=20), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('message', JSON, nullable=False),
        sa.Column('rule_id', sa.String(length=200), nullable=True),
        sa.Column('rule_version', sa.Integer(), nullable=True),
        sa.Column('rule_mode', sa.String(length=20), nullable=True),
        sa.Column('run_id', sa.Uuid(), nullable=True),
        sa.Column('step_id', sa.String(length=100), nullable=True),
        sa.Column('event_id', sa.Uuid(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('request_id'),
    )
    with op.batch_alter_table('notify_requests', schema=None) as batch_op:
        batch_op.create_index('ix_notify_requests_status_created_at', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_notify_requests_created_at', ['created_at'], unique=False)

    op.create_table(
        'credentials',
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('ciphertext', sa.Text(), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('updated_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('credentials')
    with op.batch_alter_table('notify_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_notify_requests_created_at')
        batch_op.drop_index('ix_notify_requests_status_created_at')
    op.drop_table('notify_requests')
