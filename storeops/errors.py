"""Turning validation failures into messages that name the field and the reason."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def field_path(loc: tuple[Any, ...]) -> str:
    """``('data', 'lines', 0, 'sku')`` → ``data.lines[0].sku``; union tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() and part.isalnum() and out == ""):
            continue  # the discriminator tag pydantic puts first, e.g. 'OrderPlaced'
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


# Errors about the union's tag carry the location of the union itself; the
# field at fault is the discriminator.
_TAG_ERRORS = {"union_tag_invalid": "type", "union_tag_not_found": "type"}


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{"field", "error"}`` per problem, in pydantic's order."""
    out = []
    for e in exc.errors(include_url=False):
        path = field_path(e["loc"])
        if e["type"] in _TAG_ERRORS:
            path = f"{path}.{_TAG_ERRORS[e['type']]}" if e["loc"] else _TAG_ERRORS[e["type"]]
        out.append({"field": path, "error": e["msg"]})
    return out


def describe(exc: ValidationError) -> str:
    """All problems on one line, for logs and dead-letter envelopes."""
    return "; ".join(f"{e['field']}: {e['error']}" for e in field_errors(exc))
