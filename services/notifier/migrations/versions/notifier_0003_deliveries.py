"""notifier: the delivery ledger (e-mail and webhooks), its attempts, and webhook endpoints

Revision ID: notifier_0003
Revises: notifier_0002
Create Date: 2026-12-03

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from storeops.db import BigIntPK, UTCDateTime

revision: str = 'notifier_0003'
down_revision: Union[str, Sequence[str], None] = 'notifier_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'deliveries',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('key', sa.String(length=400), nullable=False),
        sa.Column('channel', sa.String(length=20), nullable=False),
        sa.Column('route', sa.String(length=300), nullable=False),
        sa.Column('endpoint_id', sa.Uuid(), nullable=True),
        sa.Column('recipient', sa.String(length=320), nullable=True),
        sa.Column('payload', JSON, nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('due_at', UTCDateTime(), nullable=False),
        sa.Column('claimed_by', sa.String(length=200), nullable=True),
        sa.Column('claimed_until', UTCDateTime(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('delivered_at', UTCDateTime(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key'),
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_state_due_at', ['state', 'due_at'], unique=False)
        batch_op.create_index('ix_deliveries_endpoint_created_at', ['endpoint_id', 'created_at'], unique=False)
        batch_op.create_index('ix_deliveries_route_state', ['route', 'state'], unique=False)
        batch_op.create_index('ix_deliveries_created_at', ['created_at'], unique=False)

    op.create_table(
        'delivery_attempts',
        sa.Column('seq', BigIntPK, autoincrement=True, nullable=False),
        sa.Column('delivery_id', sa.Uuid(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('latency_ms', sa.Float(), nullable=False),
        sa.Column('response', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('state_before', sa.String(length=20), nullable=False),
        sa.Column('state_after', sa.String(length=20), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_attempts_delivery_id_number', ['delivery_id', 'number'], unique=False)

    op.create_table(
        'delivery_routes',
        sa.Column('route', sa.String(length=300), nullable=False),
        sa.Column('last_success_at', UTCDateTime(), nullable=True),
        sa.Column('last_failure_at', UTCDateTime(), nullable=True),
        sa.Column('failing_since', UTCDateTime(), nullable=True),
        sa.Column('failure_streak', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('route'),
    )

    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('description', sa.String(length=500), nullable=False),
        sa.Column('event_types', JSON, nullable=False),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('previous_secret', sa.Text(), nullable=True),
        sa.Column('previous_secret_until', UTCDateTime(), nullable=True),
        sa.Column('headers_credential', sa.String(length=100), nullable=True),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('disabled_reason', sa.String(length=500), nullable=True),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('failing_since', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('webhook_endpoints')
    op.drop_table('delivery_routes')
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_attempts_delivery_id_number')
    op.drop_table('delivery_attempts')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_created_at')
        batch_op.drop_index('ix_deliveries_route_state')
        batch_op.drop_index('ix_deliveries_endpoint_created_at')
        batch_op.drop_index('ix_deliveries_state_due_at')
    op.drop_table('deliveries')
