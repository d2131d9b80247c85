"""auth: the token list's outbox (token.created / token.revoked audit entries)

Revision ID: auth_0002
Revises: auth_0001
Create Date: 2026-12-04

"""
from collections.abc import Sequence

from alembic import op

from storeops.auth.tokens import OUTBOX

revision: str = "auth_0002"
down_revision: str | Sequence[str] | None = "auth_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    OUTBOX.create(op)


def downgrade() -> None:
    OUTBOX.drop(op)
