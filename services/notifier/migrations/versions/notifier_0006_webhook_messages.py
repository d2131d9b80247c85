"""notifier: webhook messages, kept so a recover can send what an endpoint never got

Revision ID: notifier_0006
Revises: notifier_0005
Create Date: 2026-12-03

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from storeops.db import UTCDateTime

revision: str = 'notifier_0006'
down_revision: Union[str, Sequence[str], None] = 'notifier_0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'webhook_messages',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('occurrence_id', sa.Uuid(), nullable=False),
        sa.Column('type', sa.String(length=100), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('body', JSON, nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_webhook_messages_created_at'), 'webhook_messages', ['created_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_webhook_messages_created_at'), table_name='webhook_messages')
    op.drop_table('webhook_messages')
