"""``storeops bench notifier|audit --databases``: which databases a run measures, and a clear refusal."""

from __future__ import annotations

import pytest

from storeops_cli.bench.databases import named


@pytest.mark.parametrize(("value", "kinds"), [
    ("both", ["sqlite", "postgresql"]),
    ("sqlite", ["sqlite"]),
    ("postgresql", ["postgresql"]),
    ("postgresql, sqlite", ["postgresql", "sqlite"]),
    ("sqlite,sqlite", ["sqlite"]),
])
def test_databases_named(value: str, kinds: list[str]) -> None:
    assert named(value) == kinds


@pytest.mark.parametrize("value", ["mysql", "sqlite,both", "", "sqlite,"])
def test_an_unknown_database_is_refused_naming_the_choices(value: str) -> None:
    with pytest.raises(SystemExit) as refused:
        named(value)
    assert f"--databases {value!r}" in str(refused.value)
    assert "sqlite, postgresql, both" in str(refused.value)
