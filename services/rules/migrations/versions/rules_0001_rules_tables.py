"""rules tables

Revision ID: rules_0001
Revises: 
Create Date: 2026-11-23

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from storeops.db import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = 'rules_0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('rule_runs',
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('rule_id', sa.String(length=200), nullable=False),
    sa.Column('rule_version', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('event_time', UTCDateTime(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('action_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('run_id'),
    sa.UniqueConstraint('event_id', 'rule_id', 'rule_version', name='uq_rule_runs_event_rule_version')
    )
    with op.batch_alter_table('rule_runs', schema=None) as batch_op:
        batch_op.create_index('ix_rule_runs_rule_time', ['rule_id', 'event_time'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('rule_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_rule_runs_rule_time')

    op.drop_table('rule_runs')
