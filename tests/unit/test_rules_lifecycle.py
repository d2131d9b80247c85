"""A stored rule's lifecycle and a backtest's tally, without I/O: status moves (a restore from
archived among them), the way to LIVE, edits, and the replay of records in the order read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.registry import ORDERS, PRICES
from schemas.rules import RuleDefinition
from services.rules import lifecycle
from services.rules.backtest import Replay, topics_for
from services.rules.compiler import compile_rule
from services.rules.lifecycle import MOVES, RuleState
from storeops.errors import Conflict
from storeops.http import status_of

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def state(status: str = "active", mode: str = "DRY_RUN", since: datetime | None = NOW, version: int = 1) -> RuleState:
    live = NOW - timedelta(days=3) if mode == "LIVE" else None
    return RuleState("r", version, status, mode, since if mode == "DRY_RUN" else None, live, "ana" if live else None)


@pytest.mark.parametrize(("start", "to"), [(s, t) for s in MOVES for t in MOVES if s != t])
def test_status_moves_are_the_documented_ones(start: str, to: str) -> None:
    if to in MOVES[start]:
        change = lifecycle.move_status(state(start), to, "dana", NOW)
        assert change.values["status"] == to and change.entries[0].after == {"status": to}
    else:
        with pytest.raises(Conflict) as refused:
            lifecycle.move_status(state(start), to, "dana", NOW)
        assert status_of(refused.value) == 409 and refused.value.body()["allowed"] == list(MOVES[start])
        assert [e["field"] for e in refused.value.errors] == ["status"]


def test_the_documented_moves() -> None:
    assert MOVES == {"draft": ("active", "archived"), "active": ("paused", "archived"),
                     "paused": ("active", "archived"), "archived": ("draft",)}


def test_an_archived_rule_is_restored_to_draft_and_recorded_like_any_status_change() -> None:
    change = lifecycle.move_status(state("archived"), "draft", "admin", NOW)
    assert change.values == {"updated_at": NOW, "updated_by": "admin", "status": "draft"}
    [entry] = change.entries
    assert (entry.kind, entry.action, entry.version, entry.before, entry.after) == (
        "status", "rule.status", 1, {"status": "archived"}, {"status": "draft"})


def test_a_restored_live_rule_goes_back_to_dry_run() -> None:
    change = lifecycle.move_status(state("archived", mode="LIVE"), "draft", "admin", NOW)
    assert change.values.items() >= {"status": "draft", "mode": "DRY_RUN", "dry_run_since": NOW,
                                      "live_since": None, "live_by": None}.items()
    assert [(e.kind, e.before, e.after, e.note) for e in change.entries] == [
        ("status", {"status": "archived"}, {"status": "draft"}, None),
        ("mode", {"mode": "LIVE", "live_since": (NOW - timedelta(days=3)).isoformat(), "live_by": "ana"},
         {"mode": "DRY_RUN", "dry_run_since": NOW.isoformat()}, lifecycle.RESTORED_NOTE)]


def test_live_waits_for_the_minimum_dry_run_and_says_until_when() -> None:
    with pytest.raises(Conflict) as refused:
        lifecycle.switch_mode(state(since=NOW - timedelta(hours=47)), "LIVE", "dana", NOW, 48)
    assert status_of(refused.value) == 409 and [e["field"] for e in refused.value.errors] == ["mode"]
    assert refused.value.body()["live_allowed_at"] == (NOW + timedelta(hours=1)).isoformat()
    change = lifecycle.switch_mode(state(since=NOW - timedelta(hours=48)), "LIVE", "dana", NOW, 48, "looked fine")
    assert change.values["live_since"] == NOW and change.values["live_by"] == "dana"
    assert change.entries[0].note == "looked fine" and change.entries[0].action == "rule.mode"


def test_without_a_minimum_live_is_allowed_at_once_and_dry_run_any_time() -> None:
    assert lifecycle.switch_mode(state(), "LIVE", "dana", NOW, 0).values["mode"] == "LIVE"
    back = lifecycle.switch_mode(state(mode="LIVE"), "DRY_RUN", "dana", NOW, 48)
    assert back.values.items() >= {"mode": "DRY_RUN", "dry_run_since": NOW, "live_since": None, "live_by": None}.items()
    assert back.entries[0].before["live_by"] == "ana"


@pytest.mark.parametrize("mode", ["LIVE", "DRY_RUN"])
def test_an_archived_rule_changes_no_more_until_restored(mode: str) -> None:
    for attempt in (lambda: lifecycle.switch_mode(state("archived"), mode, "d", NOW, 0),
                    lambda: lifecycle.edit(state("archived"), 1, "d", NOW, 0)):
        with pytest.raises(Conflict, match="archived") as refused:
            attempt()
        assert [e["field"] for e in refused.value.errors] == ["status"] and refused.value.allowed == ["draft"]


def test_a_mode_already_set_is_refused_naming_the_mode() -> None:
    with pytest.raises(Conflict, match="already DRY_RUN") as refused:
        lifecycle.switch_mode(state(), "DRY_RUN", "d", NOW, 0)
    assert [e["field"] for e in refused.value.errors] == ["mode"]


def test_an_edit_is_a_new_version_and_a_live_rule_dry_runs_it_first_when_a_minimum_is_set() -> None:
    kept = lifecycle.edit(state(mode="LIVE", version=3), 3, "bo", NOW, 0)
    assert kept.values == {"updated_at": NOW, "updated_by": "bo", "version": 4} and len(kept.entries) == 1
    back = lifecycle.edit(state(mode="LIVE", version=3), 3, "bo", NOW, 48)
    assert back.values["mode"] == "DRY_RUN" and back.values["dry_run_since"] == NOW
    assert [(e.kind, e.version, e.note) for e in back.entries] == [
        ("edited", 4, None), ("mode", 4, lifecycle.EDITED_NOTE)]
    with pytest.raises(Conflict) as stale:
        lifecycle.edit(state(version=3), 2, "bo", NOW, 0)
    assert stale.value.body()["version"] == 3 and [e["field"] for e in stale.value.errors] == ["version"]


def _rule(definition: dict) -> object:
    return compile_rule("r", 1, "DRY_RUN", RuleDefinition.model_validate(definition))


def _order(total: str, minutes: int) -> bytes:
    event = ORDERS.adapter.validate_python({"type": "OrderPlaced", "time": NOW + timedelta(minutes=minutes), "data": {
        "order_id": "o1", "customer_id": "c", "total": total, "currency": "EUR"}})
    return ORDERS.encode(event)[1]


BIG = {"name": "big", "trigger": {"event_types": ["OrderPlaced"]},
       "conditions": {"path": "data.total", "op": "ge", "value": 100},
       "actions": [{"type": "create_exception", "exception_type": "vip", "severity": "High", "title": "big"},
                   {"type": "send_notification", "recipients": ["ops"], "title": "t",
                    "when": {"path": "data.total", "op": "ge", "value": 1000}}]}


def test_a_replay_counts_the_window_the_matches_and_the_actions_taken() -> None:
    replay = Replay(_rule(BIG), NOW, NOW + timedelta(hours=1), sample=1)
    for total, minutes in [("500", -1), ("500", 0), ("50", 10), ("5000", 20), ("500", 60)]:
        replay.feed(ORDERS, _order(total, minutes))
    replay.feed(ORDERS, b"{not json")
    replay.feed(ORDERS, None)
    tally = replay.tally.answer()
    assert (tally["events_scanned"], tally["events_in_window"], tally["matched"], tally["skipped_records"]) == (7, 3, 2, 2)
    assert tally["actions"] == {"create_exception": 2, "send_notification": 1}
    assert tally["runs_by_status"] == {"completed": 2} and len(tally["sample"]) == 1


def test_a_replay_compares_with_the_previous_value_of_the_same_entity_only() -> None:
    jump = {"name": "jump", "trigger": {"event_types": ["PriceChanged"]},
            "conditions": {"path": "data.new_price", "op": "changed_by_more_than_pct", "value": 20},
            "actions": [{"type": "flag_for_review", "reason": "jump"}]}
    replay = Replay(_rule(jump), NOW, NOW + timedelta(hours=1), sample=10)
    for sku, price, minutes in [("a", "10", 1), ("b", "50", 2), ("a", "13", 3), ("b", "51", 4), ("a", "13.5", 5)]:
        event = PRICES.adapter.validate_python({"type": "PriceChanged", "time": NOW + timedelta(minutes=minutes),
                                                "data": {"sku": sku, "new_price": price, "currency": "EUR"}})
        replay.feed(PRICES, PRICES.encode(event)[1])
    assert [r.subject for r in replay.tally.sample] == ["a"]  # a: 10 -> 13 (+30%); b: +2%; a: 13 -> 13.5 (+3.8%)


def test_a_backtest_reads_only_the_topics_that_carry_the_trigger() -> None:
    both = {**BIG, "trigger": {"event_types": ["OrderPlaced", "PaymentFailed"]}, "conditions": None,
            "actions": BIG["actions"][:1]}
    assert [t.name for t in topics_for(_rule(both))] == ["storeops.events.orders.v1", "storeops.events.payments.v1"]
