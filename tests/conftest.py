"""Fixtures: a real broker and a real database for the whole session.

Database: PostgreSQL wherever one is reachable (``DATABASE_URL``, else the
server at 127.0.0.1:5432 as user postgres), else testcontainers' PostgreSQL
when a Docker engine answers, else SQLite, said in the report header. Under
``CI=true`` the suite refuses to fall back to SQLite. The suite creates its own
database and drops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from storeops import auth
from storeops.auth import Role
from storeops.auth import tokens as auth_tokens
from storeops.db import make_engine
from storeops.settings import normalize_database_url
from storeops_cli.broker import RunningBroker, docker_available, start_broker
from tests.helpers import postgres_database

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class DatabaseServer:
    kind: str  # "postgresql" or "sqlite"
    admin_url: str | None  # a database on the server to connect to for CREATE/DROP DATABASE
    note: str


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _find_database_server() -> DatabaseServer:
    explicit = os.environ.get("DATABASE_URL")
    if explicit:
        url = make_url(normalize_database_url(explicit))
        if url.get_backend_name() != "postgresql":
            return DatabaseServer("sqlite", None, f"SQLite from DATABASE_URL ({explicit})")
        admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        if not asyncio.run(_answers(admin)):
            raise pytest.UsageError(f"DATABASE_URL is set but its server does not answer: {url!r}")
        return DatabaseServer("postgresql", admin, f"PostgreSQL from DATABASE_URL ({url.host}:{url.port})")
    if asyncio.run(_answers(LOCAL_POSTGRES)):
        return DatabaseServer("postgresql", LOCAL_POSTGRES, "PostgreSQL at 127.0.0.1:5432")
    if docker_available():
        return DatabaseServer("postgresql", None, "PostgreSQL in a testcontainers container")
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError("CI=true: no PostgreSQL reachable (DATABASE_URL, 127.0.0.1:5432, Docker); refusing SQLite")
    return DatabaseServer("sqlite", None, "SQLite: NO PostgreSQL reachable, so database behaviour is tested on SQLite only")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVER] = _find_database_server()


_SERVER = pytest.StashKey[DatabaseServer]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"storeops test database: {config.stash[_SERVER].note}"


@pytest.fixture(scope="session")
def database_url(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database of the suite's own, dropped at the end (async driver URL)."""
    server = pytestconfig.stash[_SERVER]
    if server.kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'storeops.db'}"
        return
    with contextlib.ExitStack() as stack:
        admin = server.admin_url
        if admin is None:
            from testcontainers.postgres import PostgresContainer

            container = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
            admin = container.get_connection_url()
        yield stack.enter_context(postgres_database(admin))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """The session's broker: KAFKA_BOOTSTRAP_SERVERS, else Docker, else the embedded one."""
    running = start_broker(log_file=Path(tmp_path_factory.mktemp("broker")) / "broker.log")
    print(f"\nbroker: {running.kind} at {running.bootstrap_servers}, ready in {running.ready_seconds:.2f} s")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    """The suite's database with every service's migrations applied."""
    from services import SERVICES, load_spec
    for name in SERVICES:
        load_spec(name).migrate(database_url)
    return database_url


@pytest.fixture
def fresh_database(pytestconfig: pytest.Config, database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the suite's server, for a test that needs one of its own."""
    if pytestconfig.stash[_SERVER].kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    with postgres_database(database_url) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def tokens(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Role, str]]:
    """One token per role, from the suite's own signing key and token list.

    Every app the suite builds and every process it starts verifies against them:
    the key file and the token list's database are set in the environment
    (``STOREOPS_AUTH__KEY_FILE``, ``STOREOPS_AUTH__TOKENS_DATABASE_URL``) before any
    settings are read, and child processes inherit it.
    """
    key_file = tmp_path_factory.mktemp("auth") / "auth.key"
    key = auth.ensure_key(key_file)
    saved = {k: os.environ.get(k) for k in ("STOREOPS_AUTH__KEY_FILE", "STOREOPS_AUTH__TOKENS_DATABASE_URL")}
    os.environ["STOREOPS_AUTH__KEY_FILE"] = str(key_file)
    os.environ["STOREOPS_AUTH__TOKENS_DATABASE_URL"] = database_url
    auth.migrate(database_url)

    async def issue() -> dict[Role, str]:
        engine = make_engine(database_url)
        try:
            return {role: (await auth_tokens.issue(engine, key, f"test-{role.value}", role, "the test suite"))[0]
                    for role in Role}
        finally:
            await engine.dispose()

    try:
        yield asyncio.run(issue())
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
