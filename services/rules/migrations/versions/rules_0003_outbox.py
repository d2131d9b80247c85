"""rules: the outbox (audit entries written in the transaction of the change they record)

Revision ID: rules_0003
Revises: rules_0002
Create Date: 2026-12-03
"""
from typing import Sequence, Union

from alembic import op

from services.rules.store import OUTBOX

revision: str = 'rules_0003'
down_revision: Union[str, Sequence[str], None] = 'rules_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    OUTBOX.create(op)


def downgrade() -> None:
    OUTBOX.drop(op)
