"""The five services as real processes on the session's broker and database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services import SERVICES
from storeops.broker import RunningBroker, free_port
from storeops.runner import Child, wait_ready


@dataclass
class Stack:
    children: dict[str, Child]
    broker: RunningBroker

    def url(self, service: str) -> str:
        return self.children[service].url


def stack_env(broker: RunningBroker, database_url: str, data_dir: str, ports: dict[str, int]) -> dict[str, str]:
    env = {**os.environ, **broker.env(), "DATABASE_URL": database_url, "STOREOPS_DATA_DIR": data_dir}
    env.update({f"STOREOPS_{name.upper()}__PORT": str(port) for name, port in ports.items()})
    return env


@pytest.fixture(scope="session")
def stack(broker: RunningBroker, migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    ports = {name: free_port() for name in SERVICES}
    env = stack_env(broker, migrated, str(logs), ports)
    children = {name: Child(name, ports[name], logs / f"{name}.log", env) for name in SERVICES}
    for child in children.values():
        child.start()
    try:
        wait_ready(list(children.values()), timeout=60)
        yield Stack(children, broker)
        died = [c for c in children.values() if c.proc and c.proc.poll() is not None]
        assert not died, "\n".join(f"{c.name} died ({c.proc.returncode}):\n{_tail(c.log_path)}" for c in died)
    finally:
        for child in children.values():
            child.stop()


def _tail(path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
