"""auth tokens

Revision ID: auth_0001
Revises:
Create Date: 2026-12-03

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storeops.db import UTCDateTime

revision: str = "auth_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_auth_tokens_name", "auth_tokens", ["name"])


def downgrade() -> None:
    op.drop_index("ix_auth_tokens_name", table_name="auth_tokens")
    op.drop_table("auth_tokens")
