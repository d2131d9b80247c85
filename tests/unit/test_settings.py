"""Platform settings (storeops/settings.py): Kafka flavors, env variables, database URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.rules.settings import RulesSettings
from storeops.settings import (
    EMBEDDED_HEARTBEAT_INTERVAL_MS,
    EMBEDDED_SESSION_TIMEOUT_MS,
    KafkaSettings,
    Settings,
    normalize_database_url,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the shell that runs the tests."""
    for name in list(os.environ):
        if name.startswith("STOREOPS_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
            monkeypatch.delenv(name)


# --- Kafka flavors ----------------------------------------------------------


def test_kafka_flavor_defaults():
    kafka = KafkaSettings()
    assert kafka.flavor == "kafka"
    assert (kafka.session_timeout, kafka.heartbeat_interval, kafka.idempotence) == (10000, 3000, True)


def test_embedded_flavor_defaults():
    kafka = KafkaSettings(flavor="embedded")
    assert (EMBEDDED_SESSION_TIMEOUT_MS, EMBEDDED_HEARTBEAT_INTERVAL_MS) == (2000, 500)
    assert (kafka.session_timeout, kafka.heartbeat_interval, kafka.idempotence) == (2000, 500, False)


def test_embedded_heartbeat_fits_in_its_session():
    kafka = KafkaSettings(flavor="embedded")
    assert kafka.heartbeat_interval * 3 <= kafka.session_timeout


@pytest.mark.parametrize("flavor", ["kafka", "embedded"])
def test_explicit_values_win_over_flavor(flavor: str):
    kafka = KafkaSettings(flavor=flavor, session_timeout_ms=6000, heartbeat_interval_ms=1500)
    assert (kafka.session_timeout, kafka.heartbeat_interval) == (6000, 1500)


def test_fetch_wait_is_short_only_on_the_embedded_broker():
    # The embedded broker holds an empty fetch for the whole wait; Kafka answers when data arrives.
    assert (KafkaSettings(flavor="embedded").fetch_max_wait, KafkaSettings().fetch_max_wait) == (100, 500)
    assert KafkaSettings(flavor="embedded", fetch_max_wait_ms=20).fetch_max_wait == 20


def test_idempotence_can_be_forced_either_way():
    assert KafkaSettings(flavor="embedded", enable_idempotence=True).idempotence is True
    assert KafkaSettings(flavor="kafka", enable_idempotence=False).idempotence is False


def test_unknown_flavor_is_refused():
    with pytest.raises(ValidationError):
        KafkaSettings(flavor="redpanda")


# --- environment ------------------------------------------------------------


def test_defaults_without_environment():
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.flavor == "kafka"
    assert settings.database_url is None


def test_kafka_bootstrap_servers_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    assert Settings().kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"


def test_nested_kafka_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STOREOPS_KAFKA__BOOTSTRAP_SERVERS", "nested:9092")
    monkeypatch.setenv("STOREOPS_KAFKA__FLAVOR", "embedded")
    kafka = Settings().kafka
    assert kafka.bootstrap_servers == "nested:9092"
    assert kafka.session_timeout == 2000


def test_conventional_kafka_variable_wins_over_nested(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STOREOPS_KAFKA__BOOTSTRAP_SERVERS", "nested:9092")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "conventional:9092")
    assert Settings().kafka.bootstrap_servers == "conventional:9092"


def test_env_override_does_not_leak_into_later_instances(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "once:9092")
    assert Settings().kafka.bootstrap_servers == "once:9092"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    assert Settings().kafka.bootstrap_servers == "127.0.0.1:9092"


@pytest.mark.parametrize("variable", ["DATABASE_URL", "STOREOPS_DATABASE_URL"])
def test_database_url_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str):
    monkeypatch.setenv(variable, "postgresql://u:p@db:5432/storeops")
    monkeypatch.setenv("STOREOPS_DATA_DIR", str(tmp_path / "unused"))
    settings = Settings()
    assert settings.database_url == "postgresql://u:p@db:5432/storeops"
    assert settings.database_url_for("rules") == "postgresql+asyncpg://u:p@db:5432/storeops"
    assert settings.database_url_for("audit") == settings.database_url_for("rules")
    assert not (tmp_path / "unused").exists()


def test_service_group_from_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STOREOPS_RULES__MIN_DRY_RUN_HOURS", "48")
    monkeypatch.setenv("STOREOPS_RULES__NOTIFIER_URL", "http://notifier:8004")
    rules = RulesSettings().rules
    assert rules.min_dry_run_hours == 48
    assert rules.notifier_url == "http://notifier:8004"


def test_service_group_defaults():
    rules = RulesSettings().rules
    assert (rules.min_dry_run_hours, rules.max_chain_depth) == (0, 3)
    assert (rules.rate_limit_max_runs, rules.rate_limit_per_seconds) == (None, 60)  # no default limit


def test_service_group_refuses_a_negative_dry_run_period(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STOREOPS_RULES__MIN_DRY_RUN_HOURS", "-1")
    with pytest.raises(ValueError, match="min_dry_run_hours"):
        RulesSettings()


# --- per-service SQLite -----------------------------------------------------


def test_sqlite_file_per_service_under_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("STOREOPS_DATA_DIR", str(data_dir))
    settings = Settings()
    assert settings.database_url_for("exceptions") == f"sqlite+aiosqlite:///{data_dir.resolve()}/exceptions.db"
    assert settings.database_url_for("audit") == f"sqlite+aiosqlite:///{data_dir.resolve()}/audit.db"
    assert data_dir.is_dir()


def test_relative_data_dir_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    url = Settings().database_url_for("audit")
    assert url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/.storeops-data/audit.db"
    assert (tmp_path / ".storeops-data").is_dir()


# --- normalize_database_url -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///tmp/x.db", "sqlite+aiosqlite:///tmp/x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("mysql://u@h/db", "mysql://u@h/db"),
    ],
)
def test_normalize_database_url(url: str, normalized: str):
    assert normalize_database_url(url) == normalized
