"""notifier: e-mail digests: notifications held for a recipient's digest window

Revision ID: notifier_0004
Revises: notifier_0003
Create Date: 2026-12-03

"""
from typing import Sequence, Union

revision: str = 'notifier_0004'
down_revision: Union[str, Sequence[str], None] = 'notifier_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
