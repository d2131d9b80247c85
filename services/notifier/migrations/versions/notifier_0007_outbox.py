"""notifier: the outbox (audit entries written in the transaction of the change they record)

Revision ID: notifier_0007
Revises: notifier_0006
Create Date: 2026-12-03
"""
from typing import Sequence, Union

from alembic import op

from services.notifier.store import OUTBOX

revision: str = 'notifier_0007'
down_revision: Union[str, Sequence[str], None] = 'notifier_0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    OUTBOX.create(op)


def downgrade() -> None:
    OUTBOX.drop(op)
