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


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{"field", "error"}`` per problem, in pydantic's order."""
    return [{"field": field_path(e["loc"]), "error": e["msg"]} for e in exc.errors(include_url=False)]


def describe(exc: ValidationError) -> str:
    """All problems on one line, for logs and dead-letter envelopes."""
    return "; ".join(f"{e['field']}: {e['error']}" for e in field_errors(exc))
