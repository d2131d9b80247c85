"""Migrations build exactly the tables the models describe, and re-running them is harmless."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services import SERVICES, load_spec
from storeops.db import make_engine, upgrade

pytestmark = pytest.mark.integration

STATEFUL = [name for name in SERVICES if load_spec(name).metadata is not None]


@pytest.mark.parametrize("service", STATEFUL)
async def test_migrated_schema_matches_the_models(migrated: str, service: str) -> None:
    metadata = load_spec(service).metadata
    engine = make_engine(migrated)
    try:
        async with engine.connect() as conn:
            def diff(sync_conn):
                ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                own = [d for d in compare_metadata(ctx, metadata) if _concerns(d, metadata)]
                return own
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


def _concerns(diff: object, metadata) -> bool:
    """Other services' tables share the database; only this service's own count."""
    text = repr(diff)
    if "remove_table" in text or "remove_index" in text:
        return any(f"'{name}'" in text for name in metadata.tables)
    return True


def test_upgrading_again_changes_nothing(migrated: str) -> None:
    for service in STATEFUL:
        upgrade(service, migrated)  # raises if a migration were not re-runnable
