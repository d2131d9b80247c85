"""The errors every storeops API answers with, and the one translator of pydantic
error locations into field names.

Domain code raises these; they carry no HTTP status. ``storeops.http`` turns
each into one body shape, ``{"errors": [{"field": ..., "error": ...}], ...}``,
on every service. Every error names a field: the body part, query parameter
or path parameter at fault (``(body)`` when it is the body as a whole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

NO_INPUT: Any = object()  # no input given to walk (a default for ``data``)
# An error message never carries more than this much of the input.
EXCERPT = 120
_MESSAGE_MAX = 500


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """A short, printable excerpt of ``value`` for an error message."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\x00", "\\u0000")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def field_error(field: str, error: str) -> dict[str, str]:
    return {"field": field, "error": error if len(error) <= _MESSAGE_MAX else error[:_MESSAGE_MAX] + "…"}


class StoreopsError(Exception):
    """Base of every error an API answers on purpose: one or more field errors and
    top-level extras (``allowed``, ``live_allowed_at``...)."""

    def __init__(self, field: str | None, error: str | None = None, *,
                 errors: Sequence[Mapping[str, str]] | None = None, **extra: Any) -> None:
        if errors is None:
            if field is None or error is None:
                raise TypeError("give field and error, or errors")
            errors = [field_error(field, error)]
        self.errors = [field_error(e["field"], e["error"]) for e in errors]
        self.extra = extra
        super().__init__("; ".join(f"{e['field']}: {e['error']}" for e in self.errors))

    def body(self) -> dict[str, Any]:
        extra = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.extra.items()}
        return {"errors": self.errors, **extra}


class NotFound(StoreopsError):
    """What the request names does not exist."""


class Conflict(StoreopsError):
    """The request does not fit the current state: a stale version, a move the
    workflow does not allow (``allowed`` lists the moves that are), a duplicate."""

    def __init__(self, field: str, error: str, *, allowed: Sequence[str] | None = None, **extra: Any) -> None:
        if allowed is not None:
            extra["allowed"] = list(allowed)
        super().__init__(field, error, **extra)

    @property
    def allowed(self) -> list[str] | None:
        return self.extra.get("allowed")


class Invalid(StoreopsError):
    """The request itself is wrong; each problem names its field."""

    @classmethod
    def of(cls, exc: ValidationError, data: Any = NO_INPUT, prefix: str = "") -> Invalid:
        """Every problem of a pydantic validation of ``data``; fields start with ``prefix``."""
        return cls(None, errors=field_errors(exc, data, prefix))


class TooLarge(StoreopsError):
    """The body is larger than the service takes."""


class UnsupportedMediaType(StoreopsError):
    """The body is not in a format the route reads."""


class Unauthenticated(StoreopsError):
    """No credentials, or credentials that do not verify."""


class Forbidden(StoreopsError):
    """The principal may not do this."""


class Unavailable(StoreopsError):
    """Something the request needs (the broker, another service) is away; try again after ``retry_after`` seconds."""

    def __init__(self, field: str, error: str, *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(field, error, **extra)
        self.retry_after = retry_after


# --- NUL characters -----------------------------------------------------------------------

NUL_ERROR = "NUL characters (\\u0000) are not allowed"


def find_nul(node: Any, path: str = "") -> str | None:
    """The path of the first string (value or key) holding a NUL character, or None.

    PostgreSQL refuses NUL in text and JSONB while SQLite keeps it; refusing it at
    every door (HTTP bodies, topic records) makes both databases behave alike.
    """
    if isinstance(node, str):
        return (path or "(body)") if "\x00" in node else None
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return excerpt(here, 200)
            found = find_nul(value, here)
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = find_nul(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None


# --- pydantic locations -> field names ---------------------------------------------------

_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
_TAG_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found"})


def field_path(loc: Sequence[Any], data: Any = NO_INPUT, missing: bool = True) -> str:
    """``('data', 'lines', 0, 'sku')`` → ``data.lines[0].sku``; ``(body)`` for the whole input.

    pydantic puts the member it tried of a union into the location (a tag such as
    ``OrderPlaced`` or ``compare``, or a type name such as ``function-after[...]``);
    those parts name no field. With ``data``, the input that was validated, a part
    is kept only if it is a key or index of the input at that point, or, with
    ``missing`` (the error is about an absent field), the last part. Without it, a tag is recognised only in
    first place, by its leading capital (the event type of a store event).
    """
    out = ""
    node = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else NO_INPUT
            continue
        last = i == len(loc) - 1
        if data is NO_INPUT:
            if i == 0 and isinstance(part, str) and part[:1].isupper() and part.isalnum():
                continue
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not (last and missing):
            continue  # a union member's tag or type name, not a field of the input
        else:
            node = NO_INPUT
        out += f".{part}" if out else str(part)
    return out or "(body)"


def field_errors(errors: ValidationError | Sequence[Mapping[str, Any]], data: Any = NO_INPUT,
                 prefix: str = "", request: bool = False) -> list[dict[str, str]]:
    """One ``{"field", "error"}`` per pydantic (or FastAPI request) error, in order.

    A request error's location (``request``: FastAPI's) starts with its source
    (``body``, ``query``...), which is dropped: the field is the parameter's or the
    body part's name. A check
    across fields whose message starts ``name: ...`` names that field.
    """
    if isinstance(errors, ValidationError):
        errors = errors.errors(include_url=False)
    out = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if request and loc and loc[0] in _SOURCES:
            loc = loc[1:]
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        kind = e.get("type")
        if kind == "json_invalid":
            detail = (e.get("ctx") or {}).get("error")
            out.append(field_error(prefix.rstrip(".") or "(body)", f"not valid JSON: {detail}" if detail else "not valid JSON"))
            continue
        path = field_path(loc, data, missing=kind == "missing")
        path = "" if path == "(body)" else path
        if kind in _TAG_ERRORS:
            tag = str((e.get("ctx") or {}).get("discriminator", "type")).strip("'")
            path = f"{path}.{tag}" if path else tag
        head, sep, rest = message.partition(": ")
        if sep and head.isidentifier() and head.islower():
            path, message = (f"{path}.{head}" if path else head), rest  # a model check naming its field
        path = f"{prefix}{path}" if path else (prefix.rstrip(".") or "(body)")
        out.append(field_error(path, message))
    return out


def describe(exc: ValidationError, data: Any = NO_INPUT) -> str:
    """All problems on one line, for logs and dead-letter envelopes."""
    return "; ".join(f"{e['field']}: {e['error']}" for e in field_errors(exc, data))
