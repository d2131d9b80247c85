"""The five services as real processes on the session's broker and database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storeops_cli.bench.stack import BenchStack
from storeops_cli.broker import RunningBroker


@pytest.fixture(scope="session")
def stack(broker: RunningBroker, migrated: str) -> Iterator[BenchStack]:
    running = BenchStack.start(database_url=migrated, broker=broker)
    try:
        yield running
        died = [c for c in running.children.values() if c.proc and c.proc.poll() is not None]
        assert not died, "\n".join(f"{c.name} died ({c.proc.returncode}):\n{c.log_tail()}" for c in died)
    finally:
        running.stop()
