"""notifier: the delivery ledger (e-mail and webhooks), its attempts, and webhook endpoints

Revision ID: notifier_0003
Revises: notifier_0002
Create Date: 2026-12-03

"""
from typing import Sequence, Union

revision: str = 'notifier_0003'
down_revision: Union[str, Sequence[str], None] = 'notifier_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
