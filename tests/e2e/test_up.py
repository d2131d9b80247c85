"""``storeops up --demo`` as a new user runs it: embedded broker, SQLite, Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services import SERVICES
from storeops_cli.broker import free_port
from storeops_cli.runner import SEED_RULES

pytestmark = pytest.mark.e2e


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not printed within {timeout} s; got: {''.join(lines)}")


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_up_with_demo_runs_the_pipeline_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update({f"STOREOPS_{name.upper()}__PORT": str(port) for name, port in ports.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "storeops_cli.cli", "up", "--demo", "--rate", "40", "--data-dir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = _wait_for_line(proc, "Press Ctrl-C to stop.", timeout=90)
        assert any("broker: embedded" in line for line in lines)
        # which rules act, and where to look: with --demo every seed is LIVE
        assert any(line.startswith(f"rules: {len(SEED_RULES)} of {len(SEED_RULES)} act") for line in lines), lines
        assert all(any(line.split()[:3] == ["LIVE", "active", seed] for line in lines) for seed in SEED_RULES), lines
        assert any("/v1/rules/runs?mode=DRY_RUN" in line for line in lines)
        for name, port in ports.items():
            assert f"http://127.0.0.1:{port}" in "".join(lines), name
        deadline = time.monotonic() + 60
        exceptions: list = []
        while not exceptions and time.monotonic() < deadline:
            exceptions = httpx.get(f"http://127.0.0.1:{ports['exceptions']}/v1/exceptions", timeout=5).json()["items"]
            time.sleep(0.5)
        assert exceptions, "the demo stream raised no exception within 60 s"
        assert sorted(p.name for p in tmp_path.glob("*.db")) == ["audit.db", "exceptions.db", "notifier.db", "rules.db"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM stops it and its services too; never leave them running
            proc.communicate(timeout=60)
            raise
    assert proc.returncode == 0, out
    assert out.rstrip().endswith("stopped.")
    assert all(_port_closed(port) for port in ports.values())
