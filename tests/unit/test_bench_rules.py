"""``storeops bench rules`` at toy sizes: the figures are there, the engines agree, the CLI prints JSON."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from storeops_cli.bench import rules as bench_rules
from storeops_cli.cli import main


def test_bench_figures_at_tiny_sizes() -> None:
    fig = bench_rules.bench(rules=5, events=200, runs=1, repeat=200, peer_events=50)
    assert fig["agreement"]["agree"] == fig["agreement"]["events"] == 200
    assert fig["settings"] | {"rules": 5, "events": 200, "runs": 1, "peer_events": 50} == fig["settings"]
    for engine in ("ours", "peer"):
        for phase in ("single", "distinct"):
            figures = fig["median"][engine][phase]
            assert set(figures) == {"median_us", "p99_us", "batch_mean_us"}
            assert all(v > 0 for v in figures.values())
    assert all(r > 0 for r in fig["ratio_peer_to_ours"].values())
    assert len(fig["per_run"]) == 1
    assert "rules on OrderPlaced" in bench_rules.render(fig)


def test_every_template_translates_and_agrees() -> None:
    conditions = bench_rules.rule_conditions(len(bench_rules.TEMPLATES) * 2, seed=3)
    events = bench_rules.order_events(300, seed=3)
    agreed = bench_rules.agreement(conditions, events, [e.model_dump(mode="python") for e in events])
    assert agreed["agree"] == 300
    assert 0 < agreed["matches"] < agreed["pairs"] / 2  # real rules: mostly false, but some hold


def test_a_disagreement_is_caught() -> None:
    conditions = bench_rules.rule_conditions(1)  # data.total >= 2000 or more
    events = [e for e in bench_rules.order_events(50) if e.data.total < 2000][:5]
    dumps = [e.model_dump(mode="python") for e in events]
    for d in dumps:
        d["data"]["total"] = Decimal(10**9)  # the peer now sees other totals
    with pytest.raises(AssertionError, match="engines disagree"):
        bench_rules.agreement(conditions, events, dumps)


def test_the_command_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "rules", "--rules", "3", "--events", "50", "--runs", "1", "--repeat", "40",
                 "--peer-events", "10", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["bench"] == "rules" and fig["agreement"]["agree"] == 50
