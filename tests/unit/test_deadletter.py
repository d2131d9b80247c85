"""The dead-letter envelope for a record a consumer gave up on (storeops/deadletter.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.deadletter import RecordDeadLettered
from schemas.registry import DEADLETTER
from storeops.deadletter import dead_letter

TOPIC = "storeops.events.orders.v1"


def record(key: bytes | None = b"ord-1", value: bytes | None = b'{"broken":', *, partition: int = 2,
           offset: int = 41, topic: str = TOPIC) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic, partition=partition, offset=offset, timestamp=1_700_000_000_000, timestamp_type=0,
        key=key, value=value, checksum=None,
        serialized_key_size=len(key) if key is not None else -1,
        serialized_value_size=len(value) if value is not None else -1,
        headers=[],
    )


def test_record_with_a_key():
    before = datetime.now(UTC)
    letter = dead_letter(record(), "decode", "not JSON", "rules")
    assert isinstance(letter, RecordDeadLettered)
    assert letter.type == "RecordDeadLettered"
    assert letter.source == "storeops/rules"
    assert letter.subject == "ord-1"
    data = letter.data
    assert data.original_key == b"ord-1"
    assert data.original_value == b'{"broken":'
    assert (data.topic, data.partition, data.offset) == (TOPIC, 2, 41)
    assert (data.stage, data.error, data.service) == ("decode", "not JSON", "rules")
    assert before - timedelta(seconds=1) <= data.failed_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert data.failed_at.tzinfo is not None


@pytest.mark.parametrize("key", [None, b"", b"   "])
def test_record_without_a_usable_key_is_keyed_by_its_origin(key: bytes | None):
    letter = dead_letter(record(key=key), "validate", "bad", "rules")
    assert letter.subject == f"{TOPIC}:2:41"
    assert letter.data.original_key == key


def test_key_is_stripped_for_the_subject_but_kept_whole_in_the_data():
    letter = dead_letter(record(key=b"  ord-1 \n"), "process", "boom", "exceptions")
    assert letter.subject == "ord-1"
    assert letter.data.original_key == b"  ord-1 \n"


def test_non_utf8_key_still_gives_a_subject():
    letter = dead_letter(record(key=b"\xff\xfeord"), "decode", "x", "rules")
    assert letter.subject == "\ufffd\ufffdord"
    assert letter.data.original_key == b"\xff\xfeord"


def test_long_key_is_cut_to_the_subject_limit():
    letter = dead_letter(record(key=b"k" * 500), "decode", "x", "rules")
    assert letter.subject == "k" * 200
    assert letter.data.original_key == b"k" * 500


def test_long_error_is_cut():
    letter = dead_letter(record(), "process", "e" * 10_000, "rules")
    assert letter.data.error == "e" * 4000


def test_tombstone_value_is_kept_as_none():
    assert dead_letter(record(value=None), "decode", "empty", "audit").data.original_value is None


def test_unknown_stage_is_refused():
    with pytest.raises(ValidationError):
        dead_letter(record(), "retry", "x", "rules")  # type: ignore[arg-type]


def test_id_is_deterministic_per_service_and_record():
    first = dead_letter(record(), "decode", "one error", "rules")
    again = dead_letter(record(), "process", "another error", "rules")
    assert first.id == again.id


def test_a_different_record_at_a_reused_origin_gets_its_own_id():
    """Offsets restart at 0 when a topic is re-created or the embedded broker restarts."""
    assert dead_letter(record(value=b"other"), "decode", "x", "rules").id != dead_letter(record(), "decode", "x", "rules").id


@pytest.mark.parametrize(
    "other",
    [
        {"service": "audit"},
        {"offset": 42},
        {"partition": 3},
        {"topic": "storeops.events.stock.v1"},
    ],
)
def test_id_differs_for_another_service_or_origin(other: dict):
    service = other.pop("service", "rules")
    assert dead_letter(record(**other), "decode", "x", service).id != dead_letter(record(), "decode", "x", "rules").id


@pytest.mark.parametrize(
    ("key", "value"),
    [(b"ord-1", b'{"broken":'), (None, bytes(range(256))), (b"\xff\x00", b"\x80\x81\xfe\xff"), (b"k", None)],
)
def test_round_trips_through_the_deadletter_topic_with_bytes_intact(key: bytes | None, value: bytes | None):
    letter = dead_letter(record(key=key, value=value), "decode", "boom", "rules")
    wire_key, wire_value = DEADLETTER.encode(letter)
    assert wire_key == letter.subject.encode()
    json.loads(wire_value)  # the value is JSON text, bytes carried as base64
    decoded = DEADLETTER.decode(wire_value)
    assert decoded == letter
    assert decoded.data.original_value == value
    assert decoded.data.original_key == key


def test_wire_form_carries_base64():
    letter = dead_letter(record(key=b"\xff", value=b"\x00\x01"), "decode", "x", "rules")
    data = json.loads(DEADLETTER.encode(letter)[1])["data"]
    assert data["original_key"] == "/w=="
    assert data["original_value"] == "AAE="
