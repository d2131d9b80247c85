"""The body of every service's Alembic ``env.py``: async engine, own version table."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def run(metadata: MetaData) -> None:
    """Run migrations online for the service named in the Alembic config."""
    config = context.config
    service = config.attributes["service"]
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("the Alembic config names no sqlalchemy.url")

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=f"alembic_version_{service}",
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def go() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # WAL is kept in the file: a migrated database is in it before any service connects.
                # Otherwise the service's first connections each switch it (storeops.db.make_engine),
                # and a switch that meets another connection fails at once with "database is locked"
                # (SQLite takes no busy timeout for a journal mode change).
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                await conn.commit()
            await conn.run_sync(do_run)
        await engine.dispose()

    asyncio.run(go())
