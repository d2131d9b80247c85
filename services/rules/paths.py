"""Field paths on store events: what a path names on each trigger type, and reading one.

A path starts at the envelope (``data.total``, ``subject``, ``time``) and walks
the events' pydantic models; a number segment indexes a list
(``data.lines.0.sku``). Its kind is one of ``number`` (int, Decimal, Money),
``string`` (str, Key, Currency, a string Literal or StrEnum), ``datetime``,
``bool``, ``uuid``, ``list`` or ``object`` (a nested model). An optional field
(``X | None``) has the kind of ``X``; its ``None`` reads as ``MISSING``.
"""

from __future__ import annotations

import enum
import re
import types
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, FutureDatetime, NaiveDatetime, PastDatetime

from schemas.envelope import Envelope
from schemas.events import EVENT_CLASSES
from schemas.rules import FieldPath


class _Missing:
    """No value: a path that does not exist on this event, or an optional field left ``None``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

# The one pattern rules.FieldPath checks; repeated here because a model built with
# model_construct skips validation, and paths end up in generated source.
PATH_PATTERN: Final = re.compile(get_args(FieldPath)[1].pattern)  # Annotated[str, StringConstraints(pattern=...)]
EVENT_BY_NAME: Final = {cls.__name__: cls for cls in EVENT_CLASSES}
_DATETIMES = (datetime, AwareDatetime, NaiveDatetime, PastDatetime, FutureDatetime)


@dataclass(frozen=True)
class Step:
    """One segment: an attribute name or a list index; ``maybe_none`` when the value there may be None."""

    key: str | int
    maybe_none: bool  # for an index: the item itself may be None (a shorter list is always guarded)


@dataclass(frozen=True)
class Resolved:
    """A path as it resolves on every listed event type."""

    path: str
    steps: tuple[Step, ...]
    kind: str
    item_kind: str | None = None  # for a list: the kind of its items


def path_kind(event_types: Sequence[str], path: str) -> str:
    """The kind of ``path`` on every type in ``event_types``; ValueError (a readable message) if it does not fit."""
    return resolve(event_types, path).kind


def resolve(event_types: Sequence[str], path: str) -> Resolved:
    """``path`` walked on each event type; the guards are the union (optional on any type → may be None)."""
    if not isinstance(path, str) or not PATH_PATTERN.fullmatch(path):
        raise ValueError(f"not a field path: {path!r} (like data.total or data.lines.0.sku)")
    if not event_types:
        raise ValueError("no event types to resolve the path on")
    found: list[tuple[str, Resolved]] = []
    for name in event_types:
        cls = EVENT_BY_NAME.get(name)
        if cls is None:
            raise ValueError(f"unknown event type {name!r}")
        found.append((name, _walk(cls, path)))
    first_name, first = found[0]
    for name, other in found[1:]:
        if (other.kind, other.item_kind) != (first.kind, first.item_kind):
            raise ValueError(f"{path} is {an(_kind_label(first))} on {first_name} "
                             f"but {an(_kind_label(other))} on {name}")
    steps = tuple(Step(s.key, any(r.steps[i].maybe_none for _, r in found)) for i, s in enumerate(first.steps))
    return Resolved(path, steps, first.kind, first.item_kind)


def _walk(cls: type[BaseModel], path: str) -> Resolved:
    tp: Any = cls
    where = cls.__name__
    steps: list[Step] = []
    kind, item = "object", None
    for seg in path.split("."):
        if seg.isdigit():
            if kind != "list":
                raise ValueError(f"{seg!r} indexes a list; {where} is {an(kind)}")
            tp, maybe_none = _unwrap(item)
            steps.append(Step(int(seg), maybe_none))
        else:
            fields = tp.model_fields if kind == "object" and _is_model(tp) else None
            if fields is None:
                hint = f" (index it: {where}.0)" if kind == "list" else ""
                raise ValueError(f"{where} is {an(kind)}; it has no field {seg!r}{hint}")
            if seg not in fields:
                raise ValueError(f"unknown field {seg!r} on {where}; known: {', '.join(fields)}")
            tp, maybe_none = _unwrap(fields[seg].annotation)
            steps.append(Step(seg, maybe_none))
        where = f"{where}.{seg}"
        kind, item = _kind_of(tp)
    return Resolved(path, tuple(steps), kind, _kind_of(_unwrap(item)[0])[0] if kind == "list" else None)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``Annotated[X, ...] | None`` → (X, True)."""
    optional = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(get_args(annotation))
            if len(args) != 1:
                return object, optional  # a true union: only ``exists`` applies
            annotation = args[0]
        else:
            return annotation, optional


def _kind_of(tp: Any) -> tuple[str, Any]:
    """(kind, item annotation for lists)."""
    origin = get_origin(tp)
    if origin in (list, tuple, Sequence):
        args = get_args(tp)
        return "list", args[0] if args else object
    if origin is Literal:
        values = get_args(tp)
        return ("string" if all(isinstance(v, str) for v in values) else "object"), None
    if not isinstance(tp, type):
        return "object", None
    if issubclass(tp, bool):
        return "bool", None
    if issubclass(tp, enum.Enum):
        return ("string" if issubclass(tp, str) else "object"), None
    if issubclass(tp, (int, float, Decimal)):
        return "number", None
    if issubclass(tp, str):
        return "string", None
    if issubclass(tp, _DATETIMES):
        return "datetime", None
    if issubclass(tp, uuid.UUID):
        return "uuid", None
    return "object", None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _kind_label(r: Resolved) -> str:
    return f"list of {r.item_kind}s" if r.kind == "list" else r.kind


def an(kind: str) -> str:
    """``an object``, ``a number``, ``a uuid``."""
    return f"an {kind}" if kind[:1] in "aeio" else f"a {kind}"


def getter(path: str) -> Callable[[Envelope], Any]:
    """Read ``path`` on a decoded event: the value, or MISSING if absent or None. ValueError for a malformed path.

    Only model fields (or mapping keys) are read, never other attributes.
    """
    if not isinstance(path, str) or not PATH_PATTERN.fullmatch(path):
        raise ValueError(f"not a field path: {path!r} (like data.total or data.lines.0.sku)")
    keys = tuple(int(s) if s.isdigit() else s for s in path.split("."))

    def get(event: Envelope) -> Any:
        value: Any = event
        for key in keys:
            value = _step(value, key)
            if value is None or value is MISSING:
                return MISSING
        return value

    return get


def _step(value: Any, key: str | int) -> Any:
    if isinstance(key, int):
        if isinstance(value, (list, tuple)) and key < len(value):
            return value[key]
        return MISSING
    if isinstance(value, BaseModel):
        return getattr(value, key) if key in type(value).model_fields else MISSING
    if isinstance(value, dict):
        return value.get(key, MISSING)
    return MISSING
