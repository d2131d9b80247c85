"""The full set of services for a benchmark or the crash test: started here, or attached to.

Started: the broker from the launcher (``KAFKA_BOOTSTRAP_SERVERS``, Docker or
embedded), one process per service on free ports, SQLite files in a fresh
folder unless ``DATABASE_URL`` is set. Attached: services already running at
the given URLs (their processes are found by the port they listen on).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from services import SERVICES, load_spec, service_port
from storeops.auth import Role
from storeops.settings import Settings, normalize_database_url
from storeops_cli import access
from storeops_cli.broker import RunningBroker, free_port, start_broker
from storeops_cli.runner import Child, seeds_live, stop_all, wait_ready


@dataclass
class BenchStack:
    urls: dict[str, str]
    broker: RunningBroker | None = None
    bootstrap_servers: str = ""
    children: dict[str, Child] = field(default_factory=dict)
    data_dir: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = None
    database_url: str | None = None
    ready_seconds: dict[str, float] = field(default_factory=dict)
    owns_broker: bool = True
    token: str = ""  # an admin token ("bench"): the load generators and tests authenticate like any client

    @property
    def headers(self) -> dict[str, str]:
        return access.bearer(self.token)

    def client(self, service: str, **kwargs: object) -> httpx.Client:
        """An HTTP client for one service of the stack, with the stack's token."""
        return httpx.Client(base_url=self.urls[service], headers=self.headers, **kwargs)  # type: ignore[arg-type]

    def async_client(self, service: str | None = None, **kwargs: object) -> httpx.AsyncClient:
        """An async HTTP client with the stack's token (for one service, or any URL)."""
        base = {"base_url": self.urls[service]} if service else {}
        return httpx.AsyncClient(headers=self.headers, **base, **kwargs)  # type: ignore[arg-type]

    def database_url_for(self, service: str) -> str:
        """The (async driver) URL of the database ``service`` uses in this stack."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return Settings(data_dir=self.data_dir or Path(".")).database_url_for(service)

    @classmethod
    def start(cls, env_extra: dict[str, str] | None = None, only: Iterable[str] = SERVICES,
              database_url: str | None = None, broker: RunningBroker | None = None, live_seeds: bool = True
              ) -> BenchStack:
        """Start the services named in ``only`` (default: all five) and, unless given one, a broker.

        Every service uses ``database_url`` (migrated here) if given, else
        ``DATABASE_URL``, else a SQLite file of its own in the stack's folder.
        A broker passed in is left running by ``stop()``. With ``live_seeds`` the
        seed rules are switched to LIVE (they start in DRY_RUN), so events become
        exceptions and notifications.
        """
        tmp = tempfile.TemporaryDirectory(prefix="storeops-bench-")
        data = Path(tmp.name)
        owns_broker = broker is None
        broker = broker or start_broker(log_file=data / "broker.log")
        env = {**os.environ, **broker.env(), "STOREOPS_DATA_DIR": str(data), **(env_extra or {})}
        if database_url:
            env["DATABASE_URL"] = database_url
        ports = {name: free_port() for name in SERVICES}
        env.update({f"STOREOPS_{name.upper()}__PORT": str(port) for name, port in ports.items()})
        env["STOREOPS_RULES__NOTIFIER_URL"] = f"http://127.0.0.1:{ports['notifier']}"
        children = {name: Child(name, ports[name], data / f"{name}.log", env) for name in names(only)}
        stack = cls({n: c.url for n, c in children.items()}, broker, broker.bootstrap_servers, children, data, tmp,
                    env.get("DATABASE_URL"), owns_broker=owns_broker)
        # the stack's own settings read like its children's: env_extra's STOREOPS_AUTH__* too (a key or a
        # token list of its own), so the stack's token verifies where its services look
        auth_extra = {k.removeprefix("STOREOPS_AUTH__").lower(): v for k, v in (env_extra or {}).items()
                      if k.startswith("STOREOPS_AUTH__")}
        settings = Settings(**{"data_dir": data, "DATABASE_URL": env.get("DATABASE_URL"), "auth": auth_extra})
        access.prepare(settings)
        stack.token = access.kept_token(settings, "bench", Role.admin, "bench stack")[0]
        for name in children:
            load_spec(name).migrate(stack.database_url_for(name))
        try:
            for child in children.values():
                child.start()
            stack.ready_seconds = wait_ready(list(children.values()), timeout=90)
            if live_seeds and "rules" in children:
                seeds_live(children["rules"].url, stack.token, "a bench or test stack runs the seed rules LIVE")
        except BaseException:
            stack.stop()
            raise
        return stack

    @classmethod
    def attach(cls, bootstrap_servers: str, host: str = "127.0.0.1") -> BenchStack:
        """Services already running on their configured ports."""
        urls = {name: f"http://{host}:{service_port(load_spec(name))}" for name in SERVICES}
        settings = Settings()
        token = os.environ.get("STOREOPS_TOKEN") or access.kept_token(settings, "bench", Role.admin, "bench")[0]
        return cls(urls, bootstrap_servers=bootstrap_servers, token=token)

    @property
    def owned(self) -> bool:
        return bool(self.children)

    def pid(self, name: str) -> int | None:
        child = self.children.get(name)
        if child and child.proc and child.proc.poll() is None:
            return child.proc.pid
        return listening_pid(int(self.urls[name].rsplit(":", 1)[1]))

    def kill9(self, name: str) -> None:
        child = self.children[name]
        assert child.proc is not None
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()

    def restart(self, name: str) -> None:
        self.children[name].start()

    def metrics(self, name: str) -> dict[str, float]:
        """The service's counters, each summed over its labels ({} if it does not answer)."""
        try:
            text = httpx.get(f"{self.urls[name]}/metrics", timeout=5, headers=self.headers).text
        except httpx.HTTPError:
            return {}
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def ready(self, name: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.urls[name]}/readyz", timeout=2).status_code == 200
        return False

    def stop(self) -> None:
        stop_all(self.children.values())
        if self.broker and self.owns_broker:
            self.broker.stop()
        if self._tmp:
            self._tmp.cleanup()


def listening_pid(port: int) -> int | None:
    """The local process listening on ``port``, if any."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
    return None


class ProcessSampler:
    """CPU seconds and peak RSS of some processes over a phase (sampled every 100 ms)."""

    def __init__(self, pids: dict[str, int | None], interval: float = 0.1) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.interval = interval
        self.peak_rss: dict[str, int] = dict.fromkeys(self.procs, 0)
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._t0 = time.perf_counter()
        self._cpu0 = {n: _cpu(p) for n, p in self.procs.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = {n: _cpu(p) - self._cpu0[n] for n, p in self.procs.items()}

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name, proc in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    self.peak_rss[name] = max(self.peak_rss[name], proc.memory_info().rss)

    def figures(self) -> dict[str, dict[str, float]]:
        return {
            name: {"cpu_seconds": round(self.cpu_seconds[name], 3),
                   "cpu_percent": round(100 * self.cpu_seconds[name] / self.seconds, 2),
                   "peak_rss_mb": round(self.peak_rss[name] / 2**20, 1)}
            for name in self.procs
        }


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def wait_for(condition, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition()`` until true or ``timeout`` seconds passed; returns whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def names(services: Iterable[str]) -> list[str]:
    return [s for s in services if s in SERVICES]
