"""notifier: subscriptions, teams, and the inbox states of notifications

Revision ID: notifier_0005
Revises: notifier_0004
Create Date: 2026-12-03

"""
from typing import Sequence, Union

revision: str = 'notifier_0005'
down_revision: Union[str, Sequence[str], None] = 'notifier_0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
