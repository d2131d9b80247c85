"""notifier: e-mail digests: notifications held for a recipient's digest window

Revision ID: notifier_0004
Revises: notifier_0003
Create Date: 2026-12-03

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from storeops.db import UTCDateTime

revision: str = 'notifier_0004'
down_revision: Union[str, Sequence[str], None] = 'notifier_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'email_digest_items',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('recipient', sa.String(length=200), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('window', sa.String(length=20), nullable=False),
        sa.Column('tz', sa.String(length=64), nullable=False),
        sa.Column('notification_id', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('title', sa.String(length=400), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('severity', sa.String(length=10), nullable=True),
        sa.Column('link', sa.String(length=2000), nullable=True),
        sa.Column('held_at', UTCDateTime(), nullable=False),
        sa.Column('window_end', UTCDateTime(), nullable=False),
        sa.Column('state', sa.String(length=10), nullable=False),
        sa.Column('digest_key', sa.String(length=700), nullable=True),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('notification_id', 'address', name='uq_email_digest_items_notification_address'),
    )
    with op.batch_alter_table('email_digest_items', schema=None) as batch_op:
        batch_op.create_index('ix_email_digest_items_state_window_end', ['state', 'window_end'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('email_digest_items', schema=None) as batch_op:
        batch_op.drop_index('ix_email_digest_items_state_window_end')
    op.drop_table('email_digest_items')
