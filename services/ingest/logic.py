"""Splitting a request body into valid events and rejections. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.envelope import Envelope
from schemas.registry import Topic
from storeops.errors import field_errors


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, wrong shape, too many events)."""

    def __init__(self, field: str, error: str) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error


@dataclass
class Sorted:
    valid: list[tuple[int, Envelope]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


def parse_body(body: bytes, max_events: int) -> tuple[list[Any], bool]:
    """The events in a body holding one JSON object or an array; and whether it was an array."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError("(body)", f"not valid JSON: {exc}") from exc
    if isinstance(doc, dict):
        return [doc], False
    if not isinstance(doc, list):
        raise BodyError("(body)", "expected one event object or an array of them")
    if not doc:
        raise BodyError("(body)", "the array is empty")
    if len(doc) > max_events:
        raise BodyError("(body)", f"{len(doc)} events in one request; at most {max_events}")
    return doc, True


def sort_events(topic: Topic, items: list[Any]) -> Sorted:
    """Validate each item against the topic's contract; keep its index either way."""
    out = Sorted()
    for index, item in enumerate(items):
        try:
            out.valid.append((index, topic.adapter.validate_python(item)))
        except ValidationError as exc:
            out.rejected.append({"index": index, "id": item.get("id") if isinstance(item, dict) else None,
                                 "errors": field_errors(exc)})
    return out
