"""notifier: subscriptions, teams, and the inbox states of notifications

Revision ID: notifier_0005
Revises: notifier_0004
Create Date: 2026-12-03

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from storeops.db import UTCDateTime

revision: str = 'notifier_0005'
down_revision: Union[str, Sequence[str], None] = 'notifier_0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('fallback_state', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('fallback_at', UTCDateTime(), nullable=True))
        batch_op.create_index('ix_notifications_fallback_state_at', ['fallback_state', 'fallback_at'], unique=False)

    op.create_table(
        'notification_states',
        sa.Column('notification_id', sa.Uuid(), nullable=False),
        sa.Column('principal', sa.String(length=200), nullable=False),
        sa.Column('seen_at', UTCDateTime(), nullable=True),
        sa.Column('read_at', UTCDateTime(), nullable=True),
        sa.Column('archived_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('notification_id', 'principal'),
    )
    op.create_table(
        'subscriptions',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('owner', sa.String(length=205), nullable=False),
        sa.Column('spec', JSON, nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('updated_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_subscriptions_owner', ['owner'], unique=False)
    op.create_table(
        'team_members',
        sa.Column('team', sa.String(length=200), nullable=False),
        sa.Column('member', sa.String(length=200), nullable=False),
        sa.Column('added_at', UTCDateTime(), nullable=False),
        sa.Column('added_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('team', 'member'),
    )
    with op.batch_alter_table('team_members', schema=None) as batch_op:
        batch_op.create_index('ix_team_members_member', ['member'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('team_members', schema=None) as batch_op:
        batch_op.drop_index('ix_team_members_member')
    op.drop_table('team_members')
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriptions_owner')
    op.drop_table('subscriptions')
    op.drop_table('notification_states')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_fallback_state_at')
        batch_op.drop_column('fallback_at')
        batch_op.drop_column('fallback_state')
        batch_op.drop_column('kind')
