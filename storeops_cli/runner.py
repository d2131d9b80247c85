"""``storeops up``: broker, migrations and all five services as child processes.

Services run in their own sessions, so Ctrl-C reaches only this runner, which
then stops them in order (services, then the broker) and waits for each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services import SERVICES, load_spec, service_port
from storeops.auth import Role
from storeops.settings import Settings
from storeops_cli import access, reaper
from storeops_cli.broker import RunningBroker, start_broker
from storeops_cli.demo import DemoStore


class StartupError(RuntimeError):
    """A service did not become ready."""


@dataclass
class Child:
    name: str
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    started_at: float = 0.0
    argv: tuple[str, ...] = ()  # default: ``storeops serve <name>``

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            list(self.argv) or [sys.executable, "-m", "storeops_cli.cli", "serve", self.name],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        reaper.track(id(self), self.stop)

    def log_tail(self, lines: int = 30) -> str:
        """The end of its log, for an error message."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        self.terminate()
        self.wait_stopped(time.monotonic() + timeout)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM); ``wait_stopped`` waits for it."""
        reaper.untrack(id(self))
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Until it has exited, killing it at ``deadline`` (a monotonic time)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_all(children: Iterable[Child], timeout: float = 15.0) -> None:
    """Every child asked at once (newest first), then each waited for: stopping takes one
    service's shutdown, not the sum of them."""
    ordered = list(children)[::-1]
    for child in ordered:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in ordered:
        child.wait_stopped(deadline)


def migrate_all(settings: Settings) -> None:
    access.prepare(settings)
    for name in SERVICES:
        load_spec(name).migrate(settings.database_url_for(name))


SEED_RULES = ("delayed-fulfillment", "high-value-order", "low-stock", "payment-callback-failed", "payment-mismatch",
              "price-below-margin", "refund-escalation")


def seeds_live(rules_url: str, token: str, note: str, timeout: float = 30.0) -> list[str]:
    """Switch the seed rules to LIVE through the rules API, with an admin ``token`` (its
    name is recorded with each rule).

    The rules service loads its seeds just after it starts; until then a seed is 404.
    """
    switched: list[str] = []
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=rules_url, timeout=10.0, headers=access.bearer(token)) as client:
        for rule_id in SEED_RULES:
            while (found := client.get(f"/v1/rules/{rule_id}")).status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.1)
            if found.status_code == 200 and found.json()["mode"] == "LIVE":
                continue
            response = client.post(f"/v1/rules/{rule_id}/mode", json={"mode": "LIVE", "note": note})
            if response.status_code != 200:
                raise StartupError(f"could not switch rule {rule_id} to LIVE: {response.status_code} {response.text}")
            switched.append(rule_id)
    return switched


def wait_ready(children: list[Child], timeout: float) -> dict[str, float]:
    """Until every ``/readyz`` answers 200; returns each one's seconds from its start.

    StartupError names the ones that did not get ready.
    """
    deadline = time.monotonic() + timeout
    pending, ready = list(children), {}
    with httpx.Client(timeout=2.0) as client:
        while pending and time.monotonic() < deadline:
            for child in list(pending):
                if child.proc and child.proc.poll() is not None:
                    raise StartupError(f"{child.name} exited with {child.proc.returncode}; see {child.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{child.url}/readyz").status_code == 200:
                        pending.remove(child)
                        ready[child.name] = time.monotonic() - child.started_at
            time.sleep(0.02)
    if pending:
        raise StartupError(f"not ready after {timeout:.0f} s: {', '.join(c.name for c in pending)}")
    return ready


class Runner:
    def __init__(self, settings: Settings, demo_rate: float | None = None) -> None:
        self.settings = settings
        self.demo_rate = demo_rate
        self.broker: RunningBroker | None = None
        self.children: list[Child] = []
        self._stop = threading.Event()
        self.token = self.demo_token = ""
        self.token_file = settings.data_dir / "admin.token"
        self.token_new = False

    def start(self) -> None:
        data = self.settings.data_dir.resolve()
        (data / "logs").mkdir(parents=True, exist_ok=True)
        self.broker = start_broker(log_file=data / "logs" / "broker.log")
        migrate_all(self.settings)
        self.token, self.token_file, self.token_new = access.kept_token(self.settings)
        env = {**os.environ, **self.broker.env(), "STOREOPS_DATA_DIR": str(data)}
        notifier = load_spec("notifier")
        env.setdefault("STOREOPS_RULES__NOTIFIER_URL", f"http://127.0.0.1:{service_port(notifier)}")
        for name in SERVICES:
            spec = load_spec(name)
            child = Child(name, service_port(spec), data / "logs" / f"{name}.log", env)
            child.start()
            self.children.append(child)
        wait_ready(self.children, timeout=60)

    def supervise(self) -> None:
        """Restart a service that died (at most 5 times a minute), until stopped."""
        while not self._stop.wait(1.0):
            for child in self.children:
                if child.proc and child.proc.poll() is not None:
                    now = time.monotonic()
                    child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                    if len(child.restarts) > 5:
                        print(f"{child.name} keeps exiting; see {child.log_path}", file=sys.stderr)
                        self._stop.set()
                        return
                    print(f"{child.name} exited with {child.proc.returncode}; restarting", file=sys.stderr)
                    child.start()

    def demo(self) -> None:
        """Post a steady stream of store events to ingest until stopped, with the demo
        store's token (``demo.token``), as a store's connector would."""
        store, sent = DemoStore(), 0
        ingest = next(c.url for c in self.children if c.name == "ingest")
        interval = 1.0 / (self.demo_rate or 1.0)
        with httpx.Client(base_url=ingest, timeout=10.0, headers=access.bearer(self.demo_token)) as client:
            while not self._stop.wait(interval):
                kind, event = store.next()
                with contextlib.suppress(httpx.HTTPError):
                    response = client.post(f"/v1/events/{kind}", json=event)
                    if response.status_code in (401, 403):
                        print(f"demo: ingest refused the demo token ({response.status_code} {response.text[:200]}); "
                              "stopping the demo stream", file=sys.stderr, flush=True)
                        return
                    sent += 1
                if sent and sent % 100 == 0:
                    print(f"demo: {sent} events sent", flush=True)

    def stop(self) -> None:
        self._stop.set()
        stop_all(self.children)
        if self.broker:
            self.broker.stop()


def up(settings: Settings, demo_rate: float | None) -> int:
    runner = Runner(settings, demo_rate)
    signal.signal(signal.SIGTERM, lambda *_: runner._stop.set())
    # Ctrl-C stops it even when started with SIGINT ignored (a background job of a script,
    # nohup): Python leaves an inherited SIG_IGN in place instead of raising KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t0 = time.monotonic()
        print("starting storeops: broker, migrations, services...", flush=True)
        runner.start()
        _print_urls(runner, time.monotonic() - t0)
        rules = next(c.url for c in runner.children if c.name == "rules")
        if demo_rate:
            runner.demo_token = access.kept_token(settings, "demo", Role.admin, "storeops up --demo")[0]
            seeds_live(rules, runner.demo_token, "storeops up --demo: the demo store's rules go LIVE at once")
            print("demo: the seed rules are LIVE (a real store dry-runs them first)", flush=True)
        made = "made on first start" if runner.token_new else "kept"
        print(f"admin token ({made}): {runner.token_file}\n"
              f"  export TOKEN=$(cat {runner.token_file})\n"
              f"  curl -H \"Authorization: Bearer $TOKEN\" "
              f"{next(c.url for c in runner.children if c.name == 'exceptions')}/v1/exceptions\n"
              "  more tokens: ./run token create --name NAME --role viewer|operator|admin|service", flush=True)
        print("\n".join(rules_summary(rules, runner.token)), flush=True)
        if demo_rate:
            threading.Thread(target=runner.demo, name="demo", daemon=True).start()
            print(f"demo: posting about {demo_rate:g} store events a second to ingest", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        runner.supervise()
        return 0
    except KeyboardInterrupt:
        return 0
    except StartupError as exc:
        print(f"storeops did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        # the services are stopped even when the terminal that started it is gone (a print
        # to a closed pipe raises): a stopped `up` never leaves its services running
        with contextlib.suppress(OSError):
            print("\nstopping...", flush=True)
        runner.stop()
        with contextlib.suppress(OSError):
            print("stopped.", flush=True)


def _print_urls(runner: Runner, seconds: float) -> None:
    assert runner.broker is not None
    print(f"storeops is up in {seconds:.1f} s (broker: {runner.broker.kind} at {runner.broker.bootstrap_servers})")
    for c in runner.children:
        print(f"  {c.name:<11} {c.url}   (docs {c.url}/docs, logs {c.log_path})")


def rules_summary(rules_url: str, token: str, timeout: float = 30.0) -> list[str]:
    """Lines saying which rules act (LIVE) and which only record what they would do
    (DRY_RUN), and where to look. Waits for the seed rules, which load just after start."""
    with httpx.Client(base_url=rules_url, timeout=10.0, headers=access.bearer(token)) as client:
        deadline = time.monotonic() + timeout
        while True:
            rules, cursor = [], None
            while True:
                page = client.get("/v1/rules", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
                page.raise_for_status()
                rules += page.json()["items"]
                if (cursor := page.json()["next_cursor"]) is None:
                    break
            if set(SEED_RULES) <= {r["id"] for r in rules} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    acting = [r for r in rules if r["mode"] == "LIVE" and r["status"] == "active"]
    lines = [f"rules: {len(acting)} of {len(rules)} act (LIVE and active); the others only record what they would do "
             "(DRY_RUN) or are not active:"]
    lines += [f"  {r['mode']:<8} {r['status']:<8} {r['id']:<26} {r['definition']['name']}"
              for r in sorted(rules, key=lambda r: (r["mode"] != "LIVE", r["id"]))]
    lines += [f"  what each did or would have done: curl '{rules_url}/v1/rules/runs?mode=DRY_RUN' "
              "-H \"Authorization: Bearer $TOKEN\" (or mode=LIVE, rule_id=<id>)",
              f"  let one act: curl {rules_url}/v1/rules/<id>/mode -H \"Authorization: Bearer $TOKEN\" "
              "-H 'content-type: application/json' -d '{\"mode\":\"LIVE\"}'"]
    return lines
