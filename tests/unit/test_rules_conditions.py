"""The condition compiler: every operator both ways, MISSING, pointers to problems, and an oracle."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

import schemas
from schemas.events import OrderPlaced, StockChanged
from schemas.rules import AllOf, AnyOf, Condition, FieldRef, NotOf
from services.rules.conditions import MISSING, compile_condition, getter, path_kind
from services.rules.errors import DefinitionError

CONDITION = TypeAdapter(Condition)
EXAMPLES = Path(schemas.__file__).parent / "examples"
ORDER = ("OrderPlaced",)
STOCK = ("StockChanged",)


def body(kind: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{kind}.json").read_text())


def order(**data: Any) -> OrderPlaced:
    """The example order (total 1249.00 EUR, one CAM-X100 line, channel web, tag first-order), changed by ``data``."""
    doc = body("OrderPlaced")
    doc["data"].update(data)
    return OrderPlaced.model_validate(doc)


def stock(on_hand: int) -> StockChanged:
    doc = body("StockChanged")
    doc["data"]["on_hand"] = on_hand
    return StockChanged.model_validate(doc)


def holds(doc: dict[str, Any], event: Any, prev: dict[str, Any] | None = None, types: tuple[str, ...] = ORDER) -> bool:
    result = compile_condition(CONDITION.validate_python(doc), types)(event, (prev or {}).get)
    assert isinstance(result, bool)
    return result


def problems(doc: dict[str, Any], types: tuple[str, ...] = ORDER) -> list[dict[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        compile_condition(CONDITION.validate_python(doc), types)
    return caught.value.errors


def c(path: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"path": path, "op": op} if value is None else {"path": path, "op": op, "value": value}


NUMBER = "value must be a number"
RANGE = "out of range: at most 31 digits either side of the point"
LINES = [{"sku": "CAM-X100", "quantity": 1, "unit_price": "1249.00"}, {"sku": "SD-128GB", "quantity": 3, "unit_price": "24.99"}]

# --- each operator: holds, does not hold, MISSING ------------------------------------------


@pytest.mark.parametrize(("doc", "event", "expected"), [
    (c("data.total", "eq", "1249"), order(), True),
    (c("data.total", "eq", 1249.5), order(), False),
    (c("data.currency", "eq", "EUR"), order(), True),
    (c("data.currency", "eq", "USD"), order(), False),
    (c("data.channel", "eq", "web"), order(channel=None), False),
    (c("id", "eq", "0b7c6f1e-4c1a-4d7e-9b59-2f3a6c1d9e01"), order(), True),
    (c("data.total", "==", "1249.00"), order(), True),
])
def test_eq(doc: dict, event: OrderPlaced, expected: bool) -> None:
    assert holds(doc, event) is expected


@pytest.mark.parametrize(("doc", "event", "expected"), [
    (c("data.currency", "ne", "USD"), order(), True),
    (c("data.currency", "ne", "EUR"), order(), False),
    (c("data.channel", "ne", "web"), order(channel=None), False),  # MISSING: every comparison is False
    (c("causation_id", "ne", "0b7c6f1e-4c1a-4d7e-9b59-2f3a6c1d9e01"), order(), False),
    (c("data.lines.1.sku", "ne", "X"), order(), False),
])
def test_ne(doc: dict, event: OrderPlaced, expected: bool) -> None:
    assert holds(doc, event) is expected


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("lt", "1249.01", True), ("lt", "1249", False), ("le", 1249, True), ("le", "1248.99", False),
    ("gt", 1000, True), ("gt", "1249.00", False), ("ge", "1249.0", True), ("ge", 1249.5, False),
])
def test_ordering_on_numbers(op: str, value: Any, expected: bool) -> None:
    assert holds(c("data.total", op, value), order()) is expected


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("lt", "2026-11-23T10:00:00+00:00", True), ("lt", "2026-11-23T10:30:00+01:00", False),
    ("ge", "2026-11-23T09:30:00Z", True), ("gt", "2026-11-23T09:30:00Z", False),
])
def test_ordering_on_times(op: str, value: str, expected: bool) -> None:
    assert holds(c("time", op, value), order()) is expected


@pytest.mark.parametrize("op", ["lt", "le", "gt", "ge"])
def test_ordering_on_missing_is_false(op: str) -> None:
    assert holds(c("data.lines.1.quantity", op, 2), order()) is False
    assert holds(c("data.lines.1.quantity", op, 2), order(lines=LINES)) is (op in ("gt", "ge"))


@pytest.mark.parametrize(("doc", "event", "expected"), [
    (c("data.currency", "in", ["USD", "EUR"]), order(), True),
    (c("data.currency", "in", ["USD", "GBP"]), order(), False),
    (c("data.total", "in", ["100", 1249]), order(), True),
    (c("data.channel", "in", ["web", "app"]), order(channel=None), False),
])
def test_in(doc: dict, event: OrderPlaced, expected: bool) -> None:
    assert holds(doc, event) is expected


@pytest.mark.parametrize(("doc", "event", "expected"), [
    (c("data.order_id", "contains", "100"), order(), True),
    (c("data.order_id", "contains", "999"), order(), False),
    (c("data.tags", "contains", "first-order"), order(), True),
    (c("data.tags", "contains", "vip"), order(), False),
    (c("data.channel", "contains", "w"), order(channel=None), False),
    (c("data.lines.1.sku", "contains", "SD"), order(), False),
])
def test_contains(doc: dict, event: OrderPlaced, expected: bool) -> None:
    assert holds(doc, event) is expected


@pytest.mark.parametrize(("path", "event", "expected"), [
    ("data.channel", order(), True),
    ("data.channel", order(channel=None), False),
    ("data.lines.0", order(), True),
    ("data.lines.1.sku", order(), False),
    ("data.lines.1.sku", order(lines=LINES), True),
    ("causation_id", order(), False),
    ("data.total", order(), True),
])
def test_exists(path: str, event: OrderPlaced, expected: bool) -> None:
    assert holds(c(path, "exists"), event) is expected
    assert holds({"not": c(path, "exists")}, event) is not expected


# --- stateful operators ----------------------------------------------------------------------


@pytest.mark.parametrize(("before", "now", "pct", "expected"), [
    (100, 120, 10, True), (100, 105, 10, False), (100, 80, 10, True), (100, 110, 10, False),
    (None, 120, 10, False), (0, 5, 10, True), (0, 0, 0, False), (4, 4, 0, False),
])
def test_changed_by_more_than_pct(before: int | None, now: int, pct: int, expected: bool) -> None:
    prev = {} if before is None else {"data.on_hand": before}
    assert holds(c("data.on_hand", "changed_by_more_than_pct", pct), stock(now), prev, STOCK) is expected


@pytest.mark.parametrize(("before", "now", "expected"), [
    (12, 8, True), (10, 9, True), (8, 5, False), (12, 10, False), (None, 5, False),
])
def test_crossed_below(before: int | None, now: int, expected: bool) -> None:
    prev = {} if before is None else {"data.on_hand": before}
    assert holds(c("data.on_hand", "crossed_below", 10), stock(now), prev, STOCK) is expected


@pytest.mark.parametrize(("before", "now", "expected"), [
    (8, 12, True), (10, 11, True), (12, 15, False), (8, 10, False), (None, 15, False),
])
def test_crossed_above(before: int | None, now: int, expected: bool) -> None:
    prev = {} if before is None else {"data.on_hand": before}
    assert holds(c("data.on_hand", "crossed_above", 10), stock(now), prev, STOCK) is expected


def test_stateful_paths_are_listed() -> None:
    doc = {"any": [c("data.on_hand", "crossed_below", 5), {"not": c("data.on_hand", "changed_by_more_than_pct", 50)},
                   c("data.reorder_point", "gt", 3)]}
    predicate = compile_condition(CONDITION.validate_python(doc), STOCK)
    assert predicate.stateful_paths == frozenset({"data.on_hand"})
    assert compile_condition(CONDITION.validate_python(c("data.on_hand", "gt", 3)), STOCK).stateful_paths == frozenset()


def test_a_none_previous_value_counts_as_none() -> None:
    assert holds(c("data.on_hand", "crossed_below", 10), stock(5), {"data.on_hand": None}, STOCK) is False


# --- trees, FieldRefs, list indexes ------------------------------------------------------------


def test_nested_all_any_not() -> None:
    doc = {"all": [c("data.total", "ge", 1000),
                   {"any": [c("data.currency", "eq", "USD"), {"not": c("data.channel", "in", ["app", "pos"])}]},
                   {"not": {"not": c("data.tags", "contains", "first-order")}}]}
    assert holds(doc, order()) is True
    assert holds(doc, order(channel="app")) is False
    assert holds(doc, order(channel="app", currency="USD")) is True
    assert holds(doc, order(tags=[])) is False
    assert holds(doc, order(total="999.99")) is False


def test_no_condition_always_holds() -> None:
    predicate = compile_condition(None, ORDER)
    assert predicate(order(), {}.get) is True
    assert predicate.stateful_paths == frozenset()


@pytest.mark.parametrize(("op", "factor", "expected"), [
    ("eq", None, True), ("lt", "1.1", True), ("gt", "0.9", True), ("le", "0.99", False), ("ne", None, False),
])
def test_field_ref(op: str, factor: str | None, expected: bool) -> None:
    ref = {"path": "data.lines.0.unit_price"} | ({"factor": factor} if factor else {})
    assert holds(c("data.total", op, ref), order()) is expected


def test_field_ref_built_as_a_model_or_read_from_json() -> None:
    for value in (FieldRef(path="data.lines.0.unit_price", factor=Decimal(2)), {"path": "data.lines.0.unit_price", "factor": 2}):
        assert holds(c("data.total", "lt", value), order()) is True
    parsed = CONDITION.validate_json(json.dumps(c("data.total", "lt", {"path": "data.lines.0.unit_price", "factor": "0.5"})))
    assert compile_condition(parsed, ORDER)(order(), {}.get) is False


def test_field_ref_to_missing_is_false() -> None:
    assert holds(c("data.total", "ge", {"path": "data.lines.1.unit_price"}), order()) is False
    assert holds(c("data.total", "ge", {"path": "data.lines.1.unit_price"}), order(lines=LINES)) is True
    assert holds(c("data.channel", "eq", {"path": "data.channel"}), order(channel=None)) is False


def test_field_ref_for_in_and_contains() -> None:
    assert holds(c("data.channel", "in", {"path": "data.tags"}), order(tags=["web"])) is True
    assert holds(c("data.tags", "contains", {"path": "data.channel"}), order(tags=["app"])) is False
    assert holds(c("data.customer_id", "contains", {"path": "data.currency"}), order(customer_id="cus-EUR-1")) is True


def test_list_index_paths() -> None:
    assert holds(c("data.lines.0.sku", "eq", "CAM-X100"), order()) is True
    assert holds(c("data.lines.1.quantity", "ge", 3), order(lines=LINES)) is True
    assert holds(c("data.lines.1.quantity", "ge", 3), order(lines=LINES[:1])) is False
    assert holds(c("data.tags.0", "eq", "first-order"), order()) is True
    assert holds(c("data.tags.0", "eq", "first-order"), order(tags=[])) is False


def test_predicates_stay_right_on_interleaved_events() -> None:
    big, small = order(total="5000"), order(total="5")
    high = compile_condition(CONDITION.validate_python(c("data.total", "gt", 100)), ORDER)
    low = compile_condition(CONDITION.validate_python(c("data.total", "lt", 100)), ORDER)
    for _ in range(3):
        assert (high(big, {}.get), low(big, {}.get), high(small, {}.get), low(small, {}.get)) == (True, False, False, True)


def test_values_never_reach_the_source() -> None:
    sneaky = "x') or __import__('os').system('true') or ('"
    predicate = compile_condition(CONDITION.validate_python(c("data.currency", "eq", sneaky)), ORDER)
    assert sneaky not in predicate.source and "1249" not in predicate.source
    assert predicate(order(), {}.get) is False
    assert predicate(order(currency="EUR"), {}.get) is False


# --- problems, with pointers -------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "field", "error"), [
    (c("data.totl", "gt", 1), "conditions.path",
     "unknown field 'totl' on OrderPlaced.data; known: order_id, customer_id, total, currency, lines, channel, tags"),
    (c("data.currency", "lt", "EUR"), "conditions.op", "'lt' compares numbers or times; data.currency is a string"),
    (c("data.tags", "eq", "vip"), "conditions.op", "'eq' compares single values; data.tags is a list"),
    (c("data.lines", "contains", "x"), "conditions.op", "'contains' needs a list of single values; data.lines holds objects"),
    (c("data.total", "contains", "1"), "conditions.op", "'contains' looks in a string or a list; data.total is a number"),
    (c("data.currency", "crossed_below", 3), "conditions.op", "'crossed_below' follows a number; data.currency is a string"),
    (c("data.total", "gt", "lots"), "conditions.value", NUMBER),
    (c("data.total", "gt", True), "conditions.value", NUMBER),
    (c("data.total", "eq", None), "conditions.value", NUMBER),
    (c("data.total", "eq", "1e40"), "conditions.value", RANGE),
    (c("data.total", "gt", "1e-31"), "conditions.value", RANGE),
    (c("data.total", "lt", "NaN"), "conditions.value", NUMBER),
    (c("data.total", "lt", {"path": "data.total", "factor": "1e999"}), "conditions.value.factor", RANGE),
    (c("data.currency", "eq", 3), "conditions.value", "value must be a string"),
    (c("time", "lt", "2026-11-23T09:30:00"), "conditions.value",
     "value must be a time with a timezone, like 2026-11-23T09:30:00Z"),
    (c("id", "eq", "not-a-uuid"), "conditions.value", "value must be a uuid"),
    (c("data.currency", "in", "EUR"), "conditions.value", "'in' needs a list"),
    (c("data.currency", "in", []), "conditions.value", "'in' needs at least one value"),
    (c("data.total", "in", [1, "x"]), "conditions.value[1]", NUMBER),
    (c("data.tags", "contains", 3), "conditions.value", "value must be a string"),
    (c("data.channel", "exists", "web"), "conditions.value", "'exists' takes no value"),
    (c("data.total", "changed_by_more_than_pct", -1), "conditions.value", "value must be a percentage ≥ 0"),
    (c("data.total", "gt", {"path": "data.totl"}), "conditions.value.path",
     "unknown field 'totl' on OrderPlaced.data; known: order_id, customer_id, total, currency, lines, channel, tags"),
    (c("data.total", "gt", {"path": "data.currency"}), "conditions.value.path",
     "'gt' on data.total needs a number to compare with; data.currency is a string"),
    (c("data.channel", "eq", {"path": "data.currency", "factor": 2}), "conditions.value.factor",
     "factor scales numbers; data.currency is a string"),
    (c("data.total", "crossed_above", {"path": "data.total"}), "conditions.value",
     "'crossed_above' takes a literal value, not another field"),
    (c("data.total.cents", "gt", 1), "conditions.path", "OrderPlaced.data.total is a number; it has no field 'cents'"),
    (c("data.currency.0", "eq", "E"), "conditions.path", "'0' indexes a list; OrderPlaced.data.currency is a string"),
    (c("data.lines.sku", "eq", "E"), "conditions.path",
     "OrderPlaced.data.lines is a list; it has no field 'sku' (index it: OrderPlaced.data.lines.0)"),
])
def test_problem_pointers(doc: dict, field: str, error: str) -> None:
    assert problems(doc) == [{"field": field, "error": error}]


def test_every_problem_is_listed_with_its_pointer() -> None:
    doc = {"all": [c("data.total", "ge", 10),
                   {"any": [c("data.currency", "lt", "EUR"), {"not": c("data.totl", "gt", 1)}]},
                   c("data.total", "gt", "x")]}
    assert [e["field"] for e in problems(doc)] == [
        "conditions.all[1].any[0].op", "conditions.all[1].any[1].not.path", "conditions.all[2].value"]


def test_where_prefixes_the_pointer() -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_condition(CONDITION.validate_python(c("data.totl", "gt", 1)), ORDER, where="actions[2].when")
    assert caught.value.errors[0]["field"] == "actions[2].when.path"


def test_a_path_must_exist_on_every_trigger_type() -> None:
    assert problems(c("data.total", "gt", 1), ("OrderPlaced", "OrderPaid")) == [
        {"field": "conditions.path", "error": "unknown field 'total' on OrderPaid.data; known: order_id, amount, currency"}]
    assert holds(c("data.currency", "eq", "EUR"), order(), types=("OrderPlaced", "OrderPaid")) is True


def test_too_deep_a_tree_is_refused() -> None:
    doc: dict[str, Any] = c("data.total", "gt", 1)
    for _ in range(40):
        doc = {"not": doc}
    assert problems(doc)[0]["error"] == "conditions nest deeper than 32 levels"


# --- path_kind and getter ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind"), [
    ("subject", "string"), ("type", "string"), ("source", "string"), ("id", "uuid"), ("time", "datetime"),
    ("causation_id", "uuid"), ("correlation_id", "uuid"), ("depth", "number"), ("data", "object"),
    ("data.total", "number"), ("data.channel", "string"), ("data.lines", "list"), ("data.lines.0", "object"),
    ("data.lines.0.unit_price", "number"), ("data.lines.2.quantity", "number"), ("data.tags.0", "string"),
])
def test_path_kind(path: str, kind: str) -> None:
    assert path_kind(ORDER, path) == kind


def test_path_kind_refusals() -> None:
    with pytest.raises(ValueError, match="unknown field 'amount' on OrderPlaced.data"):
        path_kind(("OrderPaid", "OrderPlaced"), "data.amount")
    with pytest.raises(ValueError, match="not a field path"):
        path_kind(ORDER, "data..total")
    with pytest.raises(ValueError, match="not a field path"):
        path_kind(ORDER, "schema_version")
    assert path_kind(("PaymentCallbackReplayRequested",), "data.requested_by.kind") == "string"
    assert path_kind(("FulfillmentDelayed",), "data.expected_by") == "datetime"


def test_getter() -> None:
    event = order(channel=None, lines=LINES)
    assert getter("data.total")(event) == Decimal("1249.00")
    assert getter("data.lines.1.sku")(event) == "SD-128GB"
    assert getter("time")(event) == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    assert getter("data.channel")(event) is MISSING
    assert getter("data.lines.5.sku")(event) is MISSING
    assert getter("data.nothing")(event) is MISSING
    assert getter("causation_id")(event) is MISSING
    with pytest.raises(ValueError):
        getter("data.__class__.x y")


# --- an oracle: a plain interpreter must agree with the compiled predicate ------------------------


def _read(event: Any, path: str) -> Any:
    value = event
    for part in path.split("."):
        if part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        else:
            value = getattr(value, part)
        if value is None:
            return MISSING
    return value


def _like(sample: Any, raw: Any) -> Any:
    """``raw`` as the kind of ``sample`` holds it."""
    if isinstance(sample, (int, Decimal)):
        return Decimal(str(raw))
    if isinstance(sample, datetime):
        return datetime.fromisoformat(raw)
    return raw


def interpret(cond: Any, event: Any, prev: dict[str, Any]) -> bool:
    if isinstance(cond, AllOf):
        return all(interpret(x, event, prev) for x in cond.all)
    if isinstance(cond, AnyOf):
        return any(interpret(x, event, prev) for x in cond.any)
    if isinstance(cond, NotOf):
        return not interpret(cond.not_, event, prev)
    value = _read(event, cond.path)
    if cond.op == "exists":
        return value is not MISSING
    if value is MISSING:
        return False
    if isinstance(cond.value, (FieldRef, dict)):  # a dict: a FieldRef with a factor, built from Python
        ref = FieldRef.model_validate(cond.value)
        other = _read(event, ref.path)
        if other is MISSING:
            return False
        other = other * ref.factor if ref.factor is not None else other
    elif cond.op == "in":
        other = [_like(value, v) for v in cond.value]
    elif cond.op == "contains" and isinstance(value, list):
        other = cond.value
    else:
        other = _like(value, cond.value)
    if cond.op in ("changed_by_more_than_pct", "crossed_below", "crossed_above"):
        before = prev.get(cond.path, MISSING)
        if before is MISSING:
            return False
        if cond.op == "crossed_below":
            return before >= other and value < other
        if cond.op == "crossed_above":
            return before <= other and value > other
        return value != 0 if before == 0 else abs(value - before) / abs(before) * 100 > other
    return {
        "eq": lambda: value == other, "ne": lambda: value != other, "lt": lambda: value < other,
        "le": lambda: value <= other, "gt": lambda: value > other, "ge": lambda: value >= other,
        "in": lambda: value in other, "contains": lambda: other in value,
    }[cond.op]()


NUMBERS = st.sampled_from([0, 1, 3, "24.99", 100, "329.00", 1249, "1249.00", 5000, 2.5])
STRINGS = st.sampled_from(["EUR", "USD", "web", "app", "vip", "CAM-X100", "SD-128GB", "cus-1", "ord-1", "1", "", "-"])
TIMES = st.sampled_from(["2026-11-23T09:30:00Z", "2026-11-23T10:00:00+01:00", "2025-01-01T00:00:00Z"])
NUMBER_PATHS = st.sampled_from(["data.total", "data.lines.0.unit_price", "data.lines.1.quantity", "depth"])
STRING_PATHS = st.sampled_from(["data.currency", "data.channel", "data.customer_id", "data.lines.0.sku",
                                "data.tags.0", "subject"])


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    number = st.one_of(
        st.builds(c, NUMBER_PATHS, st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "crossed_below",
                                                    "crossed_above", "changed_by_more_than_pct"]), NUMBERS),
        st.builds(c, NUMBER_PATHS, st.just("in"), st.lists(NUMBERS, min_size=1, max_size=3)),
        st.builds(c, NUMBER_PATHS, st.sampled_from(["eq", "lt", "ge"]),
                  st.builds(lambda p, f: {"path": p, **({"factor": f} if f else {})}, NUMBER_PATHS,
                            st.sampled_from([None, "0.5", "2"]))),
    )
    string = st.one_of(
        st.builds(c, STRING_PATHS, st.sampled_from(["eq", "ne", "contains"]), STRINGS),
        st.builds(c, STRING_PATHS, st.just("in"), st.lists(STRINGS, min_size=1, max_size=3)),
        st.builds(c, st.just("data.tags"), st.just("contains"), STRINGS),
    )
    other = st.one_of(
        st.builds(c, st.sampled_from(["time"]), st.sampled_from(["lt", "ge", "eq"]), TIMES),
        st.builds(c, st.sampled_from(["data.channel", "data.lines.1", "data.tags.0", "causation_id"]), st.just("exists")),
    )
    return st.one_of(number, string, other)


CONDITIONS = st.recursive(_leaf(), lambda kids: st.one_of(
    st.builds(lambda xs: {"all": xs}, st.lists(kids, min_size=1, max_size=3)),
    st.builds(lambda xs: {"any": xs}, st.lists(kids, min_size=1, max_size=3)),
    st.builds(lambda x: {"not": x}, kids),
), max_leaves=8)

LINE = st.builds(lambda sku, q, p: {"sku": sku, "quantity": q, "unit_price": p},
                 st.sampled_from(["CAM-X100", "SD-128GB", "1"]), st.sampled_from([1, 3, 100]),
                 st.sampled_from(["0", "24.99", "1249.00", "5000"]))
EVENTS = st.builds(
    lambda total, currency, channel, tags, lines, customer, when, depth: OrderPlaced.model_validate({
        "type": "OrderPlaced", "time": when, "depth": depth,
        "data": {"order_id": "ord-1", "customer_id": customer, "total": total, "currency": currency,
                 "channel": channel, "tags": tags, "lines": lines}}),
    st.sampled_from(["0", "1", "3", "24.99", "100", "1249.00", "2500", "5000"]),
    st.sampled_from(["EUR", "USD"]), st.sampled_from([None, "web", "app", "-"]),
    st.lists(st.sampled_from(["vip", "web", "", "EUR"]), max_size=2), st.lists(LINE, max_size=3),
    st.sampled_from(["cus-1", "cus-10", "1"]), TIMES, st.sampled_from([0, 1, 3]),
)
PREVIOUS = st.dictionaries(st.sampled_from(["data.total", "data.lines.0.unit_price", "data.lines.1.quantity", "depth"]),
                           st.sampled_from([Decimal(0), Decimal(1), Decimal("24.99"), Decimal(100), Decimal(5000)]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONDITIONS, st.lists(EVENTS, min_size=1, max_size=4), PREVIOUS)
def test_compiled_agrees_with_a_plain_interpreter(doc: dict, events: list[OrderPlaced], prev: dict) -> None:
    cond = CONDITION.validate_python(doc)
    predicate = compile_condition(cond, ORDER)
    for event in events:
        assert predicate(event, prev.get) is interpret(cond, event, prev), predicate.source
