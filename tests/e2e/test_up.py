"""``storeops up --demo`` as a new user runs it: embedded broker, SQLite, an admin token made on
first start and kept, Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from services import SERVICES
from storeops_cli.broker import free_port
from storeops_cli.runner import SEED_RULES
from tests.helpers import bearer

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


def _up(data_dir: Path, ports: dict[str, int], *args: str) -> subprocess.Popen:
    """``storeops up`` as a new user starts it: no database, broker or auth settings of the suite's
    (its key, token list and tokens go to the data directory)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") and not k.startswith("STOREOPS_AUTH__")}
    env.update({f"STOREOPS_{name.upper()}__PORT": str(port) for name, port in ports.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "storeops_cli.cli", "up", *args, "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _stop(proc: subprocess.Popen, ports: dict[str, int]) -> None:
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


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_with_demo_runs_the_pipeline_with_its_admin_token_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    exceptions_url = f"http://127.0.0.1:{ports['exceptions']}/v1/exceptions"
    token_file = tmp_path / "admin.token"
    proc = _up(tmp_path, ports, "--demo", "--rate", "40")
    try:
        lines = _wait_for_line(proc, "Press Ctrl-C to stop.", timeout=90)
        printed = "".join(lines)
        assert any("broker: embedded" in line for line in lines)
        # which rules act, and where to look: with --demo every seed is LIVE
        assert any(line.startswith(f"rules: {len(SEED_RULES)} of {len(SEED_RULES)} act") for line in lines), lines
        assert all(any(line.split()[:3] == ["LIVE", "active", seed] for line in lines) for seed in SEED_RULES), lines
        assert any("/v1/rules/runs?mode=DRY_RUN" in line for line in lines)
        for name, port in ports.items():
            assert f"http://127.0.0.1:{port}" in printed, name

        # the admin token: made on first start, kept in the data dir for its owner only, and how to use it said
        assert token_file.is_file() and _mode(token_file) == 0o600, oct(_mode(token_file))
        token = token_file.read_text().strip()
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["sub"], claims["role"]) == ("admin", "admin"), claims
        assert f"admin token (made on first start): {token_file}" in printed, printed
        assert f"export TOKEN=$(cat {token_file})" in printed, printed
        assert 'curl -H "Authorization: Bearer $TOKEN"' in printed and exceptions_url in printed, printed
        assert token not in printed  # said where it is, never printed
        assert _mode(tmp_path / "auth.key") == 0o600 and _mode(tmp_path / "demo.token") == 0o600
        anonymous = httpx.get(exceptions_url, timeout=5)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer"), anonymous.text

        deadline = time.monotonic() + 60
        exceptions: list = []
        while not exceptions and time.monotonic() < deadline:
            answer = httpx.get(exceptions_url, timeout=5, headers=bearer(token))
            assert answer.status_code == 200, answer.text
            exceptions = answer.json()["items"]
            time.sleep(0.5)
        assert exceptions, "the demo stream raised no exception within 60 s"
        # the demo store's own token switched the seeds LIVE: its name is the actor
        history = httpx.get(f"http://127.0.0.1:{ports['rules']}/v1/rules/high-value-order/history", timeout=5,
                            headers=bearer(token)).json()["items"]
        assert any(c["kind"] == "mode" and c["actor"] == "demo" and c["after"]["live_by"] == "demo" for c in history), history
        assert sorted(p.name for p in tmp_path.glob("*.db")) == [
            "audit.db", "auth.db", "exceptions.db", "notifier.db", "rules.db"]
    finally:
        _stop(proc, ports)

    # a second start on the same data dir keeps the token (and says so)
    again = _up(tmp_path, ports)
    try:
        printed = "".join(_wait_for_line(again, "Press Ctrl-C to stop.", timeout=90))
        assert f"admin token (kept): {token_file}" in printed, printed
        assert token_file.read_text().strip() == token and _mode(token_file) == 0o600
        assert httpx.get(exceptions_url, timeout=5, headers=bearer(token)).status_code == 200
    finally:
        _stop(again, ports)
