"""``storeops bench broker``, ``bench ingest`` and ``bench queue`` run end to end and print their figures.

Smoke tests, not timing assertions: each command runs small, as a user would
run it, and must exit 0 with one JSON object as its last stdout line holding
the expected keys and positive rates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import postgres_database

pytestmark = pytest.mark.e2e


def _run(*args: str, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "storeops_cli.cli", "bench", *args],
                          capture_output=True, text=True, timeout=timeout, check=False, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) > 1, f"expected a table before the JSON line:\n{proc.stdout}"
    return json.loads(lines[-1])


def test_bench_broker_prints_positive_rates() -> None:
    figures = _run("broker", "--events", "2000", "--runs", "1", timeout=120)

    assert figures["bench"] == "broker"
    assert figures["broker"] in {"external", "docker", "embedded"}
    assert figures["settings"]["events"] == 2000
    assert len(figures["runs"]) == 1
    for key in ("produce_eps", "consume_eps", "consume_produce_eps"):
        assert figures["median"][key] > 0, key
        assert figures["runs"][0][key] > 0, key
    assert figures["runs"][0]["payload_bytes"]["min"] >= 200


def test_bench_auth_prints_the_cost_of_a_token_per_request() -> None:
    figures = _run("auth", "--requests", "300", "--runs", "1", timeout=120)
    assert figures["bench"] == "auth" and set(figures["median"]) == {"open", "listed token", "service token"}
    for kind, m in figures["median"].items():
        assert 0 < m["median_us"] <= m["p99_us"], kind
    assert set(figures["auth_cost_us"]) == {"listed token", "service token"}
    assert all(r[k]["requests"] == 300 for r in figures["per_run"] for k in r)


def test_bench_notifier_prints_delivery_rates_and_latency() -> None:
    figures = _run("notifier", "--events", "5", "--burst", "40", "--emails", "10", "--runs", "1", "--databases", "sqlite",
                   "--sse-clients", "20", "--sse-rounds", "2", timeout=300)
    assert figures["bench"] == "notifier"
    sqlite = figures["sqlite"]
    assert sqlite["webhooks_per_second"] > 0 and sqlite["emails_per_second"] > 0
    assert 0 < sqlite["latency_p50_ms"] <= sqlite["latency_p99_ms"]
    assert sqlite["duplicates"] == 0
    sse = sqlite["sse"]
    assert (sse["clients"], sse["rounds"], len(sse["all_received_ms"])) == (20, 2, 2)
    assert 0 < sse["p50_ms"] <= sse["p99_ms"] <= sse["max_ms"]


def test_bench_ingest_prints_positive_rates_for_both_servers() -> None:
    figures = _run("ingest", "--seconds", "1", "--runs", "1", "--concurrency", "4", "--batch-size", "10", timeout=180)

    assert figures["bench"] == "ingest"
    assert figures["settings"]["batch_size"] == 10
    assert len(figures["runs"]) == 1
    for mode, per_request in (("single", 1), ("batched", 10)):
        for target in ("bare", "ingest"):
            phase = figures["median"][mode][target]
            assert phase["rps"] > 0, (mode, target)
            assert phase["eps"] == pytest.approx(phase["rps"] * per_request, rel=0.01), (mode, target)
            assert phase["errors"] == 0, (mode, target, figures["runs"][0][mode][target]["error_kinds"])
        assert figures["ratio"][mode] > 0, mode


@pytest.fixture
def bench_database(database_url: str, tmp_path: Path) -> Any:
    """An empty database on the suite's server for one bench (the suite's own stays as the other tests expect it)."""
    if make_url(database_url).get_backend_name() != "postgresql":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bench-queue.db'}"
        return
    with postgres_database(database_url, "storeops_bench") as url:
        yield url


def test_bench_queue_prints_latencies_and_bulk_figures(bench_database: str) -> None:
    figures = _run("queue", "--exceptions", "2000", "--queries", "10", "--runs", "1", "--bulk", "100",
                   timeout=240, env={**os.environ, "DATABASE_URL": bench_database})

    assert figures["bench"] == "queue"
    assert figures["database"]["source"] == "DATABASE_URL"
    assert figures["database"]["backend"] == make_url(bench_database).get_backend_name()
    assert figures["seed"]["exceptions"] == 2000 and figures["seed"]["seconds"] > 0
    assert len(figures["runs"]) == 1
    reads = {"queue_page", "deep_page", "type_severity", "assignee", "text_common", "text_rare", "entity_id", "counts"}
    assert set(figures["median"]["reads"]) == reads
    for key, read in figures["median"]["reads"].items():
        for q in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
            assert read[q] > 0, (key, q)
        assert figures["runs"][0]["reads"][key]["requests"] == 10, key
        assert isinstance(figures["met"]["reads"][key], bool), key
    assert figures["runs"][0]["reads"]["queue_page"]["rows"] == 50
    assert figures["runs"][0]["deep_cursor_rows_skipped"] == 1000
    for action in ("bulk_resolve", "bulk_reassign"):
        assert figures["median"][action]["seconds"] > 0, action
        assert figures["runs"][0][action]["done"] == 100, figures["runs"][0][action]
        assert figures["runs"][0][action]["refused"] == 0, figures["runs"][0][action]
    assert figures["targets"] == {"read_p95_ms": 50.0, "bulk_seconds": 1.0}
    assert figures["database"]["cleanup"] == "seeded rows deleted"


def test_sigterm_mid_benchmark_stops_the_broker_it_started() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "storeops_cli.cli", "bench", "broker", "--events", "3000000", "--runs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert "embedded at " in first or "broker:" in first, first
        address = first.split(" at ")[1].split(";")[0].strip()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143
    if "embedded" in first:
        host, port = address.rsplit(":", 1)
        with socket.socket() as s:
            assert s.connect_ex((host, int(port))) != 0, "the embedded broker outlived its benchmark"


@pytest.mark.parametrize("script, args, key", [
    ("post_to_notification", ["--events", "3", "--runs", "1"], "latency_ms_median"),
    ("consume_loop", ["--events", "500", "--runs", "1"], "shapes"),
])
def test_benchmark_scripts_run_and_print_their_json(script: str, args: list[str], key: str) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", f"storeops_cli.bench.{script}", *args], capture_output=True, text=True,
                          timeout=180, check=False, cwd=root)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures[key]


def test_bench_audit_prints_sink_search_export_and_verify_figures() -> None:
    figures = _run("audit", "--entries", "3000", "--queries", "3", "--databases", "sqlite", timeout=300)
    assert figures["bench"] == "audit" and figures["settings"]["entries"] == 3000
    sqlite = figures["sqlite"]
    sink = sqlite["sink"]
    assert sink["entries"] == 3000 and sink["entries_per_second"] > 0 and len(sink["per_tenth_entries_per_second"]) == 3
    assert len(sqlite["search"]) == 13
    for name, f in sqlite["search"].items():
        assert 0 < f["p50_ms"] <= f["p95_ms"], name
    assert sqlite["search"]["entity (an order)"]["items_per_page"] > 0
    export = sqlite["export"]
    assert export["rows"] >= 3000 and export["rows_per_second"] > 0  # and the export's own entry, if it came in time
    assert 0 < export["rss_before_mb"] <= export["rss_peak_mb"]
    verify = sqlite["verify"]
    assert verify["exit_status"] == 0 and verify["first_bad"] is None and verify["checked"] >= 3000
