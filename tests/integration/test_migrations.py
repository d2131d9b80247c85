"""Migrations build exactly the tables the models describe, and re-running them is harmless: every chain,
each service's and the token list's (storeops.auth), each with its own version table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text

from services import SERVICES, load_spec
from storeops import auth
from storeops.auth import tokens as auth_tokens
from storeops.db import alembic_config, make_engine

pytestmark = pytest.mark.integration

STATEFUL = [name for name in SERVICES if load_spec(name).metadata is not None]


@dataclass(frozen=True)
class Chain:
    """One migration chain: its name (its version table is ``alembic_version_<name>``), its tables, its scripts."""

    name: str
    metadata: MetaData
    migrations: Path
    migrate: Callable[[str], None]

    def head(self) -> str:
        head = ScriptDirectory.from_config(alembic_config(self.name, self.migrations, "sqlite://")).get_current_head()
        assert head is not None, self.name
        return head


CHAINS = {
    **{name: Chain(name, load_spec(name).metadata, load_spec(name).migrations, load_spec(name).migrate) for name in STATEFUL},
    "auth": Chain("auth", auth_tokens.metadata, auth.MIGRATIONS, auth.migrate),  # the token list every service reads
}


@pytest.fixture
def every_chain_migrated(migrated: str) -> str:
    """The suite's database with every chain applied (the token list's too)."""
    auth.migrate(migrated)
    return migrated


@pytest.mark.parametrize("chain", CHAINS)
async def test_migrated_schema_matches_the_models(every_chain_migrated: str, chain: str) -> None:
    metadata = CHAINS[chain].metadata
    engine = make_engine(every_chain_migrated)
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


def test_upgrading_again_changes_nothing(every_chain_migrated: str) -> None:
    for chain in CHAINS.values():
        chain.migrate(every_chain_migrated)  # raises if a migration were not re-runnable


def test_each_chain_keeps_its_own_version_table_at_its_head(fresh_database: str) -> None:
    """The chains share a database without touching each other: the token list's alone makes its table and
    alembic_version_auth, nothing else; then all of them stand at their heads, each in its own table."""
    import asyncio

    async def tables() -> set[str]:
        engine = make_engine(fresh_database)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    async def versions() -> dict[str, list[str]]:
        engine = make_engine(fresh_database)
        try:
            async with engine.connect() as conn:
                return {name: list((await conn.execute(text(f"SELECT version_num FROM alembic_version_{name}"))).scalars())
                        for name in CHAINS}
        finally:
            await engine.dispose()

    auth.migrate(fresh_database)
    assert asyncio.run(tables()) == {"auth_tokens", "auth_outbox", "alembic_version_auth"}
    for chain in CHAINS.values():
        chain.migrate(fresh_database)
    assert asyncio.run(versions()) == {name: [chain.head()] for name, chain in CHAINS.items()}


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
