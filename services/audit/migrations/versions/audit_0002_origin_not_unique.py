"""audit: a record's origin is not unique across broker lifetimes

Offsets start again at 0 when a topic is re-created or the in-memory embedded
broker restarts, so (topic, partition, offset) can name a new record: keeping
it unique made the audit drop every such record as "already stored". Records
are deduplicated by (topic, record_id) alone; the origin keeps a plain index.

Revision ID: audit_0002
Revises: audit_0001
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op

revision: str = 'audit_0002'
down_revision: Union[str, Sequence[str], None] = 'audit_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_origin', type_='unique')
        batch_op.create_index('ix_audit_origin', ['topic', 'partition', 'offset'], unique=False)


def downgrade() -> None:
    """Fails if two records share an origin by then."""
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_origin')
        batch_op.create_unique_constraint('uq_audit_origin', ['topic', 'partition', 'offset'])
