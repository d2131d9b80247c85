"""Migrations build exactly the tables the models describe, and re-running them is harmless."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services import SERVICES, load_spec
from storeops.db import make_engine

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
        load_spec(service).migrate(migrated)  # raises if a migration were not re-runnable


def test_exceptions_of_the_first_schema_are_carried_into_the_workflow(fresh_database: str) -> None:
    """exceptions_0002 turns each row of the first table into a version-1 state."""
    import asyncio
    import uuid
    from datetime import UTC, datetime

    from sqlalchemy import text

    from services.exceptions.store import get_state
    from storeops.db import make_sessionmaker

    load_spec("exceptions").migrate(fresh_database, "exceptions_0001")
    exception_id, evidence = uuid.uuid4(), uuid.uuid4()
    created = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)

    async def insert_old() -> None:
        engine = make_engine(fresh_database)
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO exceptions (id, type, severity, severity_rank, status, title, entity_type, entity_id,"
                     " impact, currency, rule_id, rule_version, rule_mode, evidence, assignee, created_at, version)"
                     " VALUES (:id, 'vip', 'High', 1, 'New', 'big order', 'order', 'ord-1', 1500, 'EUR',"
                     " 'high-value-order', 1, 'LIVE', :evidence, NULL, :created, 1)"),
                {"id": exception_id if conn.dialect.name == "postgresql" else exception_id.hex,
                 "evidence": f'["{evidence}"]', "created": created},
            )
        await engine.dispose()

    async def read_new():
        engine = make_engine(fresh_database)
        try:
            async with make_sessionmaker(engine)() as session:
                return await get_state(session, exception_id)
        finally:
            await engine.dispose()

    asyncio.run(insert_old())
    load_spec("exceptions").migrate(fresh_database)
    state = asyncio.run(read_new())
    assert state is not None
    assert (state.version, state.status.value, state.severity.value, state.entity_id) == (1, "New", "High", "ord-1")
    assert (state.first_seen, state.last_seen, state.created_at) == (created, created, created)
    assert state.evidence == [evidence] and state.source.rule_id == "high-value-order"
    assert state.occurrences == 1 and state.sla_due_at is not None
