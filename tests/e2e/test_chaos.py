"""The crash test, small: kill -9 each worker in turn under load; nothing may be lost or doubled.

Runs ``storeops chaos`` as a subprocess (its own broker and service processes)
on the suite's database, so the counts it reads there are restricted to the
run's own ids while other tests write rows of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

EVENTS, RATE = 3000, 600


@pytest.fixture(scope="module")
def chaos_run(migrated: str) -> tuple[int, dict, str]:
    """(exit code, figures, printed output) of one small chaos run; it must end within 110 s."""
    env = {**os.environ, "DATABASE_URL": migrated}
    done = subprocess.run(
        [sys.executable, "-m", "storeops_cli.cli", "chaos", "--events", str(EVENTS), "--rate", str(RATE)],
        env=env, capture_output=True, text=True, timeout=110,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(lines[-1]), done.stdout


def test_nothing_lost_or_doubled_when_each_worker_is_killed(chaos_run: tuple[int, dict, str]) -> None:
    code, f, output = chaos_run
    assert not {"401", "403"} & set(f["http_statuses"]), output  # the tool posts with its stack's token
    assert f["events_accepted"] == EVENTS, output
    assert f["events_lost"] == 0 and f["audit_events"] == EVENTS, output
    assert f["audit_duplicate_record_ids"] == 0 and f["audit_duplicate_origins"] == 0, output
    assert f["exceptions_expected"] == EVENTS // 10 == f["exceptions_created"], output
    assert f["exceptions_duplicated"] == 0 and f["exceptions_missing"] == 0, output
    assert f["notifications_expected"] == f["notifications_stored"] == f["exceptions_created"], output
    assert f["notifications_duplicated"] == 0 and f["notifications_missing"] == 0, output
    assert code == 0 and f["ok"] and f["failures"] == [], output


def test_every_killed_worker_resumed(chaos_run: tuple[int, dict, str]) -> None:
    _, f, output = chaos_run
    assert [k["service"] for k in f["kills"]] == ["rules", "exceptions", "notifier", "audit"], output
    assert all(k["resumed_seconds"] is not None for k in f["kills"]), output
    assert all(f["services_alive"].values()), output


def test_ran_on_the_suite_database(chaos_run: tuple[int, dict, str], migrated: str) -> None:
    _, f, _ = chaos_run
    assert f["database"] == ("sqlite" if migrated.startswith("sqlite") else "postgresql")
