"""Splitting a request body into events and rejections (services/ingest/logic.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.events import OrderPlaced
from schemas.export import EXAMPLES_DIR
from schemas.registry import ORDERS, STOCK
from services.ingest.logic import BodyError, parse_body, sort_events


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text())


def order(**data: Any) -> dict[str, Any]:
    doc = example("OrderPlaced")
    return {**doc, "data": {**doc["data"], **data}}


def body_error(body: bytes, max_events: int = 10) -> BodyError:
    with pytest.raises(BodyError) as exc_info:
        parse_body(body, max_events)
    return exc_info.value


# --- parse_body -------------------------------------------------------------


def test_single_object_is_one_event_not_an_array():
    assert parse_body(b'{"type": "OrderPlaced"}', 10) == ([{"type": "OrderPlaced"}], False)


def test_array_keeps_items_in_order():
    assert parse_body(b'[{"a": 1}, {"a": 2}, 3]', 10) == ([{"a": 1}, {"a": 2}, 3], True)


def test_array_at_the_limit_is_accepted():
    items, is_array = parse_body(json.dumps([{}] * 5).encode(), 5)
    assert len(items) == 5 and is_array


def test_too_many_events():
    error = body_error(json.dumps([{}] * 6).encode(), max_events=5)
    assert error.field == "(body)"
    assert error.error == "6 events in one request; at most 5"
    assert str(error) == "(body): 6 events in one request; at most 5"


def test_empty_array():
    error = body_error(b"[]")
    assert (error.field, error.error) == ("(body)", "the array is empty")


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"{'single': 'quotes'}", b"\xff\xfe"])
def test_not_json(body: bytes):
    error = body_error(body)
    assert error.field == "(body)"
    assert error.error.startswith("not valid JSON: ")


@pytest.mark.parametrize("body", [b"42", b'"OrderPlaced"', b"null", b"true"])
def test_scalar_json(body: bytes):
    error = body_error(body)
    assert (error.field, error.error) == ("(body)", "expected one event object or an array of them")


def test_body_error_is_a_value_error():
    assert isinstance(body_error(b"[]"), ValueError)


# --- sort_events ------------------------------------------------------------


def test_all_valid():
    result = sort_events(ORDERS, [example("OrderPlaced"), example("OrderPaid")])
    assert result.rejected == []
    assert [(i, e.type) for i, e in result.valid] == [(0, "OrderPlaced"), (1, "OrderPaid")]
    assert isinstance(result.valid[0][1], OrderPlaced)


def test_mixed_keeps_indexes_on_both_sides():
    good, bad = example("OrderPaid"), order(total="-5")
    result = sort_events(ORDERS, [bad, good, bad, good])
    assert [i for i, _ in result.valid] == [1, 3]
    assert [r["index"] for r in result.rejected] == [0, 2]


def test_rejection_names_the_field_path_and_echoes_the_id():
    result = sort_events(ORDERS, [order(total="-5")])
    assert result.valid == []
    assert result.rejected == [{
        "index": 0,
        "id": "0b7c6f1e-4c1a-4d7e-9b59-2f3a6c1d9e01",
        "errors": [{"field": "data.total", "error": "Input should be greater than or equal to 0"}],
    }]


def test_rejection_lists_every_problem_with_nested_paths():
    item = order(total="x", lines=[{"sku": "A", "quantity": 1, "unit_price": "1"}, {"sku": "B", "quantity": 0, "unit_price": "1"}])
    [rejected] = sort_events(ORDERS, [item]).rejected
    assert [e["field"] for e in rejected["errors"]] == ["data.total", "data.lines[1].quantity"]


def test_missing_field_is_named():
    item = order()
    del item["data"]["customer_id"]
    [rejected] = sort_events(ORDERS, [item]).rejected
    assert rejected["errors"] == [{"field": "data.customer_id", "error": "Field required"}]


def test_unknown_field_is_named():
    [rejected] = sort_events(ORDERS, [{**example("OrderPaid"), "extra": 1}]).rejected
    assert rejected["errors"] == [{"field": "extra", "error": "Extra inputs are not permitted"}]


def test_non_object_item_is_rejected_without_id():
    result = sort_events(ORDERS, [42, example("OrderPaid")])
    assert [i for i, _ in result.valid] == [1]
    [rejected] = result.rejected
    assert rejected["index"] == 0 and rejected["id"] is None
    assert [e["field"] for e in rejected["errors"]] == ["(body)"]


def test_item_without_id_is_rejected_with_id_none():
    item = {k: v for k, v in order(total="-1").items() if k != "id"}
    [rejected] = sort_events(ORDERS, [item]).rejected
    assert rejected["id"] is None


def test_subject_mismatch_is_rejected_with_a_message_naming_the_key_field():
    [rejected] = sort_events(ORDERS, [{**example("OrderPaid"), "subject": "ord-other"}]).rejected
    [error] = rejected["errors"]
    assert "subject must equal data.order_id" in error["error"]


def test_event_of_another_topic_is_rejected_naming_type():
    """StockChanged posted to /orders: the error points at ``type``, not "(body)"."""
    [rejected] = sort_events(ORDERS, [example("StockChanged")]).rejected
    [error] = rejected["errors"]
    assert "StockChanged" in error["error"]
    assert error["field"] == "type"


def test_event_without_type_is_rejected_naming_type():
    item = {k: v for k, v in example("OrderPaid").items() if k != "type"}
    [rejected] = sort_events(ORDERS, [item]).rejected
    assert [e["field"] for e in rejected["errors"]] == ["type"]


def test_same_event_is_valid_on_its_own_topic():
    result = sort_events(STOCK, [example("StockChanged")])
    assert result.rejected == [] and len(result.valid) == 1


def test_empty_list_sorts_to_nothing():
    result = sort_events(ORDERS, [])
    assert result.valid == [] and result.rejected == []


def test_parse_then_sort_round_trip():
    body = json.dumps([example("OrderPlaced"), order(currency="eur")]).encode()
    items, is_array = parse_body(body, 10)
    result = sort_events(ORDERS, items)
    assert is_array
    assert [i for i, _ in result.valid] == [0]
    assert result.rejected[0]["errors"][0]["field"] == "data.currency"
