"""The notifier's request validation, answered the storeops way: 422 with
``{"detail": [{"field", "error"}]}``, each field named as a path such as
``requests[0].message.to[0]``, and no input echoed back (it may be a secret)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from schemas.notifications import Channel
from storeops.errors import field_path
from storeops.http import field_error_route

_SOURCES = frozenset({"body", "query", "path", "header"})
# pydantic puts a discriminated union's tag into the location; the caller knows the field, not the tag.
_UNIONS: dict[str, tuple[str, frozenset[str]]] = {"message": ("channel", frozenset(get_args(Channel)))}
_TAG_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found"})


class FieldError(BaseModel):
    field: str
    error: str


class ValidationFailed(BaseModel):
    detail: list[FieldError]


VALIDATION_RESPONSES: dict[int | str, dict[str, Any]] = {422: {"model": ValidationFailed, "description": "Invalid request"}}


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """FastAPI's validation errors as ``{"field", "error"}``, one per problem, in order."""
    out = []
    for error in errors:
        if error.get("type") == "json_invalid":
            out.append({"field": "(body)", "error": f"not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}"})
            continue
        loc = list(error.get("loc", ()))
        if loc and loc[0] in _SOURCES:
            loc = loc[1:]
        kept: list[Any] = []
        for part in loc:
            union = _UNIONS.get(kept[-1]) if kept and isinstance(kept[-1], str) else None
            if union is None or part not in union[1]:
                kept.append(part)
        path = field_path(tuple(kept))
        if error.get("type") in _TAG_ERRORS and kept and kept[-1] in _UNIONS:
            path = f"{path}.{_UNIONS[kept[-1]][0]}"
        out.append({"field": path, "error": error["msg"]})
    return out


# A route whose validation failures are answered with ``field_errors``.
FieldErrorRoute = field_error_route(field_errors)


def not_found(detail: str) -> Any:
    """A 404 in the house format; typed Any so a route may return it in place of its model."""
    return JSONResponse({"detail": detail}, status_code=404)
