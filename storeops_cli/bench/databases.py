"""Where a bench measures (``--databases sqlite|postgresql|both``): each database named, a PostgreSQL
one made fresh on the given server for the run and dropped after it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")


def named(value: str) -> list[str]:
    """``sqlite``, ``postgresql``, ``both``, or a comma list of the first two."""
    kinds = ["sqlite", "postgresql"] if value == "both" else [k.strip() for k in value.split(",")]
    unknown = [k for k in kinds if k not in ("sqlite", "postgresql")]
    if unknown or not kinds:
        raise SystemExit(f"storeops bench: --databases {value!r}: give sqlite, postgresql, both, or sqlite,postgresql")
    return list(dict.fromkeys(kinds))


async def fresh_postgres(admin: str) -> str | None:
    """A new database on the server ``admin`` connects to (None if it does not answer)."""
    try:
        conn = await asyncpg.connect(admin, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None
    name = f"storeops_bench_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


async def drop_postgres(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def on_each(value: str, postgres: str, measure: Callable[[str, str | None], T]) -> dict[str, T]:
    """``measure(kind, url)`` on each database ``value`` names: ``("sqlite", None)``, and
    ``("postgresql", url)`` of a database made for it on ``postgres`` (skipped, and said, when nothing
    answers there)."""
    figures: dict[str, T] = {}
    for kind in named(value):
        if kind == "sqlite":
            figures[kind] = measure(kind, None)
        elif (url := asyncio.run(fresh_postgres(postgres))) is not None:
            try:
                figures[kind] = measure(kind, url)
            finally:
                asyncio.run(drop_postgres(postgres, url.rsplit("/", 1)[1]))
        else:
            print(f"postgresql: nothing answers at {postgres}; skipped", flush=True)
    return figures
