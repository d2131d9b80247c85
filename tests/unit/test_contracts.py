"""The wire contracts in schemas/: examples, envelopes, money, topics, ids, bytes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from schemas.actions import CreateException, CreateExceptionData, ExceptionSpec, RuleRef
from schemas.common import B64Bytes, EntityType, ExceptionType, Severity
from schemas.envelope import SCHEMA_VERSION, Envelope, deterministic_id
from schemas.events import EVENT_CLASSES, OrderPlaced, PriceChanged, StockChanged
from schemas.export import EXAMPLES_DIR
from schemas.registry import ACTIONS, EVENT_TOPICS, ORDERS, REGISTRY, STOCK, Topic, topic_for

EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.json"))


def types_on(topic: Topic) -> set[str]:
    """The ``type`` literals of every model in a topic's value union."""
    inner = get_args(topic.value)[0]  # Annotated[Union[...], Field(...)] -> Union[...]
    members = get_args(inner) if get_origin(inner) is Union else (inner,)
    return {tag for model in members for tag in get_args(model.model_fields["type"].annotation)}


def topic_of_type(type_: str) -> Topic:
    matches = [t for t in REGISTRY if type_ in types_on(t)]
    assert len(matches) == 1, f"{type_} is on {[t.name for t in matches]}"
    return matches[0]


def load_example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text())


def order_placed(**changes: Any) -> dict[str, Any]:
    doc = load_example("OrderPlaced")
    data = {**doc["data"], **changes.pop("data", {})}
    return {**doc, **changes, "data": data}


def errors_of(exc_info: pytest.ExceptionInfo[ValidationError]) -> list[dict[str, Any]]:
    return exc_info.value.errors(include_url=False)


# --- examples ---------------------------------------------------------------


def test_there_are_examples():
    assert len(EXAMPLE_FILES) >= len(EVENT_CLASSES)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_validates_against_the_topic_carrying_its_type(path: Path):
    doc = json.loads(path.read_text())
    topic = topic_of_type(doc["type"])
    record = topic.decode(path.read_bytes())
    assert type(record).__name__ == doc["type"]
    assert str(record.id) == doc["id"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_file_is_named_after_its_type(path: Path):
    assert json.loads(path.read_text())["type"] == path.stem


def test_every_event_class_has_exactly_one_example():
    types = [json.loads(p.read_text())["type"] for p in EXAMPLE_FILES]
    for cls in EVENT_CLASSES:
        assert types.count(cls.__name__) == 1, cls.__name__


def test_no_example_for_an_unknown_event_type():
    known = {cls.__name__ for cls in EVENT_CLASSES}
    assert {json.loads(p.read_text())["type"] for p in EXAMPLE_FILES} <= known


def test_every_event_type_lives_on_exactly_one_event_topic():
    for cls in EVENT_CLASSES:
        assert topic_of_type(cls.__name__) in EVENT_TOPICS


def test_types_on_reads_single_member_unions():
    assert types_on(ACTIONS) == {"CreateException"}
    assert types_on(STOCK) == {"StockChanged"}


# --- registry ---------------------------------------------------------------


def test_topic_names_are_unique_and_looked_up_by_name():
    names = [t.name for t in REGISTRY]
    assert len(names) == len(set(names))
    assert topic_for("storeops.events.orders.v1") is ORDERS


def test_unknown_topic_lookup_names_the_topic():
    with pytest.raises(KeyError, match="storeops.nope.v1"):
        topic_for("storeops.nope.v1")


def test_short_name_drops_prefix_and_version():
    assert ORDERS.short_name == "events.orders"
    assert topic_for("storeops.rule-runs.v1").short_name == "rule-runs"


# --- subject ----------------------------------------------------------------


def test_subject_is_filled_from_the_key_field_when_absent():
    doc = order_placed()
    assert "subject" not in doc
    assert ORDERS.adapter.validate_python(doc).subject == "ord-10045"


def test_empty_subject_is_filled_too():
    assert ORDERS.adapter.validate_python(order_placed(subject="")).subject == "ord-10045"


def test_subject_for_sku_events_comes_from_sku():
    record = STOCK.decode((EXAMPLES_DIR / "StockChanged.json").read_bytes())
    assert record.subject == record.data.sku == "LENS-50MM"


def test_matching_subject_is_accepted():
    assert ORDERS.adapter.validate_python(order_placed(subject="ord-10045")).subject == "ord-10045"


def test_mismatching_subject_is_refused_naming_the_key_field():
    with pytest.raises(ValidationError) as exc_info:
        ORDERS.adapter.validate_python(order_placed(subject="ord-1"))
    [error] = errors_of(exc_info)
    assert "subject must equal data.order_id" in error["msg"]
    assert "'ord-1'" in error["msg"]


def test_mismatching_subject_names_sku_for_price_events():
    doc = load_example("PriceChanged")
    with pytest.raises(ValidationError, match=r"data\.sku"):
        PriceChanged.model_validate({**doc, "subject": "OTHER-SKU"})


def test_subject_without_key_in_data_is_refused():
    doc = order_placed()
    del doc["data"]["order_id"]
    with pytest.raises(ValidationError) as exc_info:
        ORDERS.adapter.validate_python(doc)
    locs = [e["loc"][1:] for e in errors_of(exc_info)]
    assert ("data", "order_id") in locs


# --- unknown fields ---------------------------------------------------------


def test_unknown_envelope_field_is_refused():
    with pytest.raises(ValidationError) as exc_info:
        ORDERS.adapter.validate_python(order_placed(colour="red"))
    assert [(e["type"], e["loc"][-1]) for e in errors_of(exc_info)] == [("extra_forbidden", "colour")]


def test_unknown_data_field_is_refused():
    with pytest.raises(ValidationError) as exc_info:
        ORDERS.adapter.validate_python(order_placed(data={"discount": "5"}))
    assert [(e["type"], e["loc"][-2:]) for e in errors_of(exc_info)] == [("extra_forbidden", ("data", "discount"))]


def test_contracts_are_frozen():
    record = ORDERS.adapter.validate_python(order_placed())
    with pytest.raises(ValidationError):
        record.subject = "other"  # type: ignore[misc]


# --- money and currency -----------------------------------------------------


def total_of(value: Any) -> Decimal:
    return ORDERS.adapter.validate_python(order_placed(data={"total": value})).data.total


@pytest.mark.parametrize("value", ["0", "0.0001", "129.90", "9999999999.9999"])
def test_money_accepts_non_negative_amounts_with_up_to_four_decimals(value: str):
    assert total_of(value) == Decimal(value)


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        ("-0.01", "greater_than_equal"),
        ("1.23456", "decimal_max_places"),
        ("99999999999.9999", "decimal_max_digits"),
        ("NaN", "finite_number"),
        ("Infinity", "finite_number"),
        ("ten", "decimal_parsing"),
    ],
)
def test_money_refuses(value: str, error_type: str):
    with pytest.raises(ValidationError) as exc_info:
        total_of(value)
    [error] = errors_of(exc_info)
    assert error["type"] == error_type
    assert error["loc"][-2:] == ("data", "total")


def test_money_serializes_as_a_decimal_string_keeping_cents():
    record = ORDERS.adapter.validate_python(order_placed(data={"total": "129.90"}))
    assert json.loads(record.model_dump_json())["data"]["total"] == "129.90"


def test_money_serializes_without_exponent():
    record = ORDERS.adapter.validate_python(order_placed(data={"total": "1E+3"}))
    assert json.loads(record.model_dump_json())["data"]["total"] == "1000"


def test_money_stays_decimal_in_python_mode():
    record = ORDERS.adapter.validate_python(order_placed(data={"total": "129.90"}))
    assert record.model_dump()["data"]["total"] == Decimal("129.90")


def test_money_round_trips_through_json_exactly():
    record = ORDERS.adapter.validate_python(order_placed(data={"total": "0.1000"}))
    again = ORDERS.decode(record.model_dump_json().encode())
    assert again.data.total == Decimal("0.1000")
    assert again == record


@pytest.mark.parametrize("currency", ["EUR", "USD", "CHF"])
def test_currency_accepts_three_upper_case_letters(currency: str):
    record = ORDERS.adapter.validate_python(order_placed(data={"currency": currency}))
    assert record.data.currency == currency


@pytest.mark.parametrize("currency", ["eur", "Eur", "EU", "EURO", "E1R", " EUR", "EUR\n", "ÄBC", ""])
def test_currency_refuses_anything_else(currency: str):
    with pytest.raises(ValidationError) as exc_info:
        ORDERS.adapter.validate_python(order_placed(data={"currency": currency}))
    assert [e["loc"][-2:] for e in errors_of(exc_info)] == [("data", "currency")]


# --- time -------------------------------------------------------------------


def test_aware_time_keeps_its_offset_through_json():
    record = ORDERS.adapter.validate_python(order_placed(time="2026-11-23T09:30:00+02:00"))
    assert record.time.utcoffset() == timedelta(hours=2)
    assert json.loads(record.model_dump_json())["time"] == "2026-11-23T09:30:00+02:00"


def test_z_suffix_means_utc():
    record = ORDERS.adapter.validate_python(order_placed(time="2026-11-23T09:30:00Z"))
    assert record.time == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def test_default_time_is_timezone_aware():
    record = ORDERS.adapter.validate_python({k: v for k, v in order_placed().items() if k != "time"})
    assert record.time.tzinfo is not None


def test_naive_time_is_refused_naming_the_field():
    """A timestamp without an offset is ambiguous; the audit store keeps UTC only."""
    with pytest.raises(ValidationError) as info:
        ORDERS.adapter.validate_python(order_placed(time="2026-11-23T09:30:00"))
    assert [e["loc"][-1] for e in info.value.errors()] == ["time"]
    assert "timezone" in info.value.errors()[0]["msg"]


# --- encode / decode --------------------------------------------------------


def test_encode_returns_subject_bytes_and_json_bytes():
    record = ORDERS.adapter.validate_python(order_placed())
    key, value = ORDERS.encode(record)
    assert key == b"ord-10045"
    doc = json.loads(value)
    assert doc["type"] == "OrderPlaced"
    assert doc["subject"] == "ord-10045"
    assert doc["schema_version"] == SCHEMA_VERSION
    assert ORDERS.decode(value) == record


def test_encode_refuses_a_record_of_another_topics_type():
    stock = STOCK.decode((EXAMPLES_DIR / "StockChanged.json").read_bytes())
    with pytest.raises(TypeError, match="StockChanged does not belong on storeops.events.orders.v1"):
        ORDERS.encode(stock)
    assert STOCK.encode(stock)[0] == b"LENS-50MM"


def test_encode_refuses_a_bare_envelope_claiming_a_type():
    fake = Envelope(type="OrderPlaced", subject="ord-1", data={"order_id": "ord-1"})
    with pytest.raises(TypeError, match="Envelope does not belong"):
        ORDERS.encode(fake)


def test_decode_refuses_bytes_that_are_not_json():
    with pytest.raises(ValidationError):
        ORDERS.decode(b"{not json")


def test_decode_refuses_a_type_of_another_topic():
    with pytest.raises(ValidationError):
        ORDERS.decode((EXAMPLES_DIR / "StockChanged.json").read_bytes())


# --- envelope ---------------------------------------------------------------


def test_child_of_a_root_record_uses_its_id_as_correlation():
    parent = ORDERS.adapter.validate_python(order_placed())
    assert parent.correlation_id is None
    assert parent.child() == {"causation_id": parent.id, "correlation_id": parent.id, "depth": 1}


def test_child_keeps_an_existing_correlation_id():
    root = uuid.uuid4()
    parent = ORDERS.adapter.validate_python(order_placed(correlation_id=str(root)))
    fields = parent.child(subject="x")
    assert fields == {"causation_id": parent.id, "correlation_id": root, "depth": 1, "subject": "x"}


def test_child_chains_through_generations():
    event = ORDERS.adapter.validate_python(order_placed())
    spec = ExceptionSpec(type=ExceptionType.VIP, severity=Severity.HIGH, title="t",
                         entity_type=EntityType.ORDER, entity_id="ord-10045")
    rule = RuleRef(rule_id="r", rule_version=1, mode="LIVE")
    action = CreateException(**event.child(type="CreateException", subject="ord-10045",
                                           data=CreateExceptionData(rule=rule, exception=spec, evidence=[event.id])))
    grandchild = action.child()
    assert grandchild["causation_id"] == action.id != event.id
    assert grandchild["correlation_id"] == event.id
    assert (event.depth, action.depth, grandchild["depth"]) == (0, 1, 2)  # how deep in its chain, for the loop guard


def test_envelope_defaults():
    bare = {k: v for k, v in order_placed().items() if k not in ("id", "source")}
    record = ORDERS.adapter.validate_python(bare)
    assert isinstance(record.id, uuid.UUID)
    assert record.source == "storeops"
    assert record.schema_version == SCHEMA_VERSION
    assert ORDERS.adapter.validate_python(bare).id != record.id


def test_schema_version_below_one_is_refused():
    with pytest.raises(ValidationError):
        ORDERS.adapter.validate_python(order_placed(schema_version=0))


# --- deterministic ids ------------------------------------------------------


def test_deterministic_id_is_stable():
    event_id = uuid.UUID("0b7c6f1e-4c1a-4d7e-9b59-2f3a6c1d9e01")
    first = deterministic_id("action", event_id, "high-value-order", 1)
    assert first == deterministic_id("action", str(event_id), "high-value-order", "1")
    assert first.version == 5
    # pinned: changing the derivation would orphan every id already on a topic
    assert first == uuid.uuid5(uuid.NAMESPACE_URL, f"storeops:action/{event_id}/high-value-order/1")


@pytest.mark.parametrize(
    "other",
    [("action", "e2", "rule", 1), ("run", "e1", "rule", 1), ("action", "e1", "rule", 2), ("action", "e1", "rule")],
)
def test_deterministic_id_differs_for_different_parts(other: tuple):
    assert deterministic_id("action", "e1", "rule", 1) != deterministic_id(*other)


def test_deterministic_id_depends_on_order():
    assert deterministic_id("a", "b") != deterministic_id("b", "a")


# --- base64 bytes -----------------------------------------------------------


class Blob(BaseModel):
    raw: B64Bytes
    maybe: B64Bytes | None = None


@pytest.mark.parametrize("raw", [b"", b"hello", bytes(range(256)), b"\xff\xfe\x00\x80", "żółw".encode("utf-16")])
def test_b64bytes_round_trips_any_bytes_through_json(raw: bytes):
    text = Blob(raw=raw).model_dump_json()
    assert Blob.model_validate_json(text).raw == raw


def test_b64bytes_is_standard_base64_on_one_line():
    raw = bytes(range(256)) * 4
    encoded = json.loads(Blob(raw=raw).model_dump_json())["raw"]
    assert "\n" not in encoded
    assert encoded.startswith("AAECAwQF")


def test_b64bytes_stays_bytes_in_python_mode():
    assert Blob(raw=b"\xff").model_dump() == {"raw": b"\xff", "maybe": None}


def test_b64bytes_none_stays_none():
    assert Blob.model_validate_json(Blob(raw=b"x").model_dump_json()).maybe is None


@pytest.mark.parametrize("bad", ["not base64!", "abc"])
def test_b64bytes_refuses_invalid_base64(bad: str):
    with pytest.raises(ValidationError):
        Blob.model_validate_json(json.dumps({"raw": bad}))


def test_non_utc_timezone_compares_equal_to_utc_instant():
    cet = timezone(timedelta(hours=1))
    a = ORDERS.adapter.validate_python(order_placed(time=datetime(2026, 1, 1, 10, tzinfo=cet)))
    b = ORDERS.adapter.validate_python(order_placed(time=datetime(2026, 1, 1, 9, tzinfo=UTC)))
    assert a.time == b.time


def test_order_placed_lines_validate_each_line():
    with pytest.raises(ValidationError) as exc_info:
        OrderPlaced.model_validate(order_placed(data={"lines": [{"sku": "A", "quantity": 0, "unit_price": "1"}]}))
    assert [e["loc"] for e in errors_of(exc_info)] == [("data", "lines", 0, "quantity")]


def test_stock_on_hand_cannot_be_negative():
    doc = load_example("StockChanged")
    with pytest.raises(ValidationError):
        StockChanged.model_validate({**doc, "data": {**doc["data"], "on_hand": -1}})
