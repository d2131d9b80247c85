"""Small test helpers: polling until a condition holds, reading a topic from the start, a database
of one's own, a stack of one's own."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import jwt
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from storeops.auth import Role

if TYPE_CHECKING:
    from storeops_cli.bench.stack import BenchStack

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 30.0, interval: float = 0.1) -> T:
    """The first truthy result of ``probe``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last result: {last!r}")


async def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[ConsumerRecord]], bool], timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, read until ``until(records)`` holds.

    Reads until a condition, never "until the end offset": the embedded broker
    under-reports end offsets, so such a loop would stop early.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met within {timeout} s after {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            records += [r for msgs in batch.values() for r in msgs]
        return records
    finally:
        await consumer.stop()


@contextlib.contextmanager
def postgres_database(server_url: str, prefix: str = "storeops_test") -> Iterator[str]:
    """A new empty database on the PostgreSQL server ``server_url`` points at (any database
    there, any driver), dropped afterwards; yields its async-driver URL."""
    url = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def isolated_stack(where: str, database_url: str, prefix: str, env_extra: dict[str, str] | None = None
                   ) -> Iterator[BenchStack]:
    """The five services with a broker of their own (what they are fed must not reach the
    topics other tests read) and a database of their own: ``where`` is "suite database"
    (a new database on the suite's server; skipped when the suite runs on SQLite) or
    "sqlite" (a file per service). Seed rules stay in DRY_RUN."""
    from storeops_cli.bench.stack import BenchStack

    with contextlib.ExitStack() as cleanup:
        url = None
        if where == "suite database" and database_url.startswith("postgresql"):
            url = cleanup.enter_context(postgres_database(database_url, prefix))
        elif where == "suite database":
            import pytest
            pytest.skip("the suite runs on SQLite this time (the report header says why)")
        running = BenchStack.start(env_extra=env_extra, database_url=url, live_seeds=False)
        cleanup.callback(running.stop)
        yield running


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


# --- who may ask ---------------------------------------------------------------------------------

# Who holds enough for each role, as the README's "Who may ask" says (written out here, not
# read from the code, so the tests check the code against the documented matrix).
HOLDERS: dict[Role, set[Role]] = {Role.viewer: set(Role), Role.operator: {Role.operator, Role.admin},
                                  Role.admin: {Role.admin}, Role.service: {Role.service, Role.admin}}


def declared_roles(app: FastAPI) -> dict[tuple[str, str], str]:
    """Each operation of the app's OpenAPI document that asks for a token, and the role it names."""
    return {(method.upper(), path): requirement["bearer"][0] for path, operations in app.openapi()["paths"].items()
            for method, operation in operations.items() for requirement in operation.get("security", [])}


def token_id(token: str) -> str:
    """The id a storeops token carries (``jti``): its row in the token list."""
    return str(uuid.UUID(jwt.decode(token, options={"verify_signature": False})["jti"]))


def assert_unauthenticated(response: Any) -> None:
    """401 with WWW-Authenticate, in the one error shape naming Authorization."""
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    [error] = body["errors"]
    assert body.keys() == {"errors"} and error["field"] == "Authorization" and "Bearer" in error["error"]


def assert_forbidden(response: Any, needed: Role, held: Role) -> None:
    """403 naming the role needed and the role held."""
    assert response.status_code == 403, response.text
    assert response.json() == {"needed_role": needed.value, "errors": [
        {"field": "Authorization", "error": f"needs the role {needed.value}; this token's role is {held.value}"}]}


async def assert_role_matrix(app: FastAPI, anonymous: Any, routes: dict[tuple[str, str], Role], tokens: dict[Role, str],
                             **path_values: Any) -> None:
    """Every route of ``app`` declares the role ``routes`` says (a new route fails until listed);
    without a token each is 401; each role is let through exactly where the README's matrix
    says (403 naming the role otherwise); the probes stay open. ``path_values`` fill the paths."""
    assert declared_roles(app) == {route: role.value for route, role in routes.items()}
    for (method, path), needed in routes.items():
        url, body = path.format(**path_values), {} if method != "GET" else None
        assert_unauthenticated(await anonymous.request(method, url, json=body))
        for held, token in tokens.items():
            response = await anonymous.request(method, url, json=body, headers=bearer(token))
            if held in HOLDERS[needed]:
                assert response.status_code not in (401, 403), (method, path, held, response.text)
            else:
                assert_forbidden(response, needed, held)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await anonymous.get(path)).status_code in (200, 503), path
