"""HTTP pieces every service's API shares: the one error handler, the request
guard (body size, NUL characters), opaque cursors, bounded integers and the
offline API docs.

Every error, whatever raised it, is answered in one shape:
``{"errors": [{"field": "data.total", "error": "..."}], ...extras}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storeops.errors import (
    NUL_ERROR,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StoreopsError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    excerpt,
    field_error,
    field_errors,
    find_nul,
)

log = logging.getLogger(__name__)

# The status each kind of error is answered with; domain code never names one.
STATUS: dict[type[StoreopsError], int] = {
    Invalid: 422, NotFound: 404, Conflict: 409, TooLarge: 413, UnsupportedMediaType: 415,
    Unauthenticated: 401, Forbidden: 403, Unavailable: 503,
}

# Integers a query or path parameter may carry: what a signed 64-bit column holds.
INT64_MAX = 2**63 - 1


class FieldError(BaseModel):
    field: str = Field(description="The body part, query or path parameter at fault; (body) for the body as a whole")
    error: str


class ErrorBody(BaseModel):
    """The one error shape of every storeops API (some errors add top-level fields, such as ``allowed``)."""

    errors: list[FieldError]


class RoleRefusal(ErrorBody):
    """A 403: the token verified, but its role is not enough."""

    needed_role: str = Field(description="The role the operation needs (or one that includes it)")


class StateConflict(ErrorBody):
    """A 409: the request does not fit the current state."""

    allowed: list[str] | None = Field(None, description="The moves the workflow allows from the current state, when that is the conflict")


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}

# What every route may answer, whatever it does: the request guard and the validation in front of it.
GUARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "The body is over the service's size limit"},
    415: {"model": ErrorBody, "description": "The body is not declared JSON"},
    422: {"model": ErrorBody, "description": "Invalid request: each problem names its field"},
}

# The statuses a route's own errors take, by kind; a route declares the ones it raises with ``answers``.
_KINDS: dict[int, tuple[type[BaseModel], dict[str, Any]]] = {
    404: (ErrorBody, {}), 409: (StateConflict, {}), 503: (ErrorBody, {"headers": _RETRY_AFTER}),
    401: (ErrorBody, {"headers": {"WWW-Authenticate": {"description": "Bearer realm=\"storeops\"",
                                                       "schema": {"type": "string"}}}}),
    403: (RoleRefusal, {}),
}


def answers(**why: str) -> dict[int | str, dict[str, Any]]:
    """The error statuses a route raises, for its ``responses=``, each in the one error shape:
    ``answers(not_found="No rule with this id", conflict="A stale version")``."""
    statuses = {"not_found": 404, "conflict": 409, "unavailable": 503}
    unknown = set(why) - set(statuses)
    if unknown:
        raise TypeError(f"answers() takes {', '.join(statuses)}; not {', '.join(sorted(unknown))}")
    return {statuses[kind]: {"model": _KINDS[statuses[kind]][0], "description": description, **_KINDS[statuses[kind]][1]}
            for kind, description in why.items()}


def document_error(document: dict[str, Any], operation: dict[str, Any], status: int, description: str) -> None:
    """Add an error status to an operation of a generated OpenAPI document (unless it says it
    already), its body schema put in the document's components."""
    responses = operation.setdefault("responses", {})
    if str(status) in responses:
        return
    model, extra = _KINDS[status]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if model.__name__ not in schemas:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    responses[str(status)] = {"description": description, **extra, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


def status_of(exc: StoreopsError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_response(exc: StoreopsError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else \
        {"WWW-Authenticate": 'Bearer realm="storeops"'} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(exc.body(), status_code=status_of(exc), headers=headers)


def _errors(status: int, field: str, error: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": [field_error(field, error)]}, status_code=status, headers=dict(headers or {}))


async def _storeops_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreopsError)
    return error_response(exc)


async def _request_invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = exc.body if isinstance(exc.body, (dict, list)) else None
    errors = []
    for error in exc.errors():
        in_body = body is not None and tuple(error.get("loc", ()))[:1] == ("body",)
        errors += field_errors([error], body, request=True) if in_body else field_errors([error], request=True)
    return JSONResponse({"errors": errors}, status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.__cause__ is not None:
        # FastAPI answers a body its JSON decoder raised on (other than JSONDecodeError: not
        # UTF-8, an integer past Python's 4,300-digit limit, nesting past the recursion limit)
        # with a bare 400 "There was an error parsing the body", the cause chained.
        return error_response(Invalid("(body)", f"not readable as JSON: {excerpt(str(exc.__cause__), 200)}"))
    field = "(path)" if exc.status_code in (404, 405) else "(request)"
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return _errors(exc.status_code, field, detail, exc.headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("request failed", exc_info=exc)
    return _errors(500, "(request)", "internal error; it is logged")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answered in the one shape: ours, FastAPI's validation errors, routing errors, bugs."""
    app.add_exception_handler(StoreopsError, _storeops_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


# --- the request guard ---------------------------------------------------------------------


class RequestGuard:
    """ASGI middleware in front of every route: bodies over ``max_body_bytes`` are 413
    before they are read whole, a body that is not declared JSON is 415, and a NUL
    character anywhere in the path, the query or a JSON body is 422 naming where it is.

    PostgreSQL refuses NUL in text and JSONB, so a NUL accepted by one service would
    stop every consumer downstream; SQLite would keep it. Refusing it at the door makes
    both databases answer alike.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, open_paths: frozenset[str] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # With ``open_paths``, a request elsewhere that brings no Authorization header is 401
        # before its body is read: an anonymous caller learns nothing about what the body
        # should hold and cannot make the service read megabytes. (A token that is there
        # but does not verify is refused by the route's own check.)
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _nul_in_url(scope)
        if refusal is None and self.open_paths is not None and _header(scope, b"authorization") is None \
                and not _is_open(scope.get("path", ""), self.open_paths):
            refusal = error_response(Unauthenticated("Authorization", "send Authorization: Bearer <token>"))
        if refusal is None:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                refusal = error_response(TooLarge("(body)", f"{declared} bytes; at most {self.max_body_bytes}"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body, refusal = await self._read(receive)
        if refusal is None and body and not _is_json(scope):
            kind = (_header(scope, b"content-type") or b"nothing").decode("latin-1")
            refusal = error_response(UnsupportedMediaType("content-type", f"send application/json, not {excerpt(kind, 60)}"))
        elif refusal is None and (b"\\u0000" in body or b"\x00" in body):
            where = _nul_in_json(body)
            if where is not None:
                refusal = error_response(Invalid(where, NUL_ERROR))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, JSONResponse | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _errors(400, "(body)", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", error_response(TooLarge("(body)", f"more than {self.max_body_bytes} bytes"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then the client's own messages: a streaming answer (Server-Sent
    Events) waits on ``receive`` for the disconnect, which must come when the client goes, not
    at once."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_open(path: str, open_paths: frozenset[str]) -> bool:
    return path in open_paths or path.startswith("/swagger/")  # /docs' own assets


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _is_json(scope: Scope) -> bool:
    kind = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    return kind == b"application/json" or kind.endswith(b"+json") or kind == b"application/x-ndjson"


def _nul_in_url(scope: Scope) -> JSONResponse | None:
    if "\x00" in scope.get("path", ""):
        return error_response(Invalid("(path)", NUL_ERROR))
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return error_response(Invalid(excerpt(name, 60), NUL_ERROR))
    return None


def _nul_in_json(body: bytes) -> str | None:
    """Where the first NUL is (``data.order_id``, ``[3].data.sku``); None when the body has
    none that JSON decodes to (or is not JSON: the route says so)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "(body)" if b"\x00" in body else None
    return find_nul(doc)


# --- opaque cursors --------------------------------------------------------------------------

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list; ask again with ``cursor=next_cursor`` until it is null."""

    items: list[T]
    next_cursor: str | None = Field(description="The cursor of the next page; null at the end")


def encode_cursor(position: Any) -> str:
    """An opaque cursor for ``position`` (any JSON value: a sequence number, a sort key)."""
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(cursor: str | None, field: str = "cursor") -> Any:
    """The position a cursor of ours stands for; None for no cursor; Invalid for anything else."""
    if cursor is None or cursor == "":
        return None
    try:
        if len(cursor) > 2000:
            raise ValueError("too long")
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise Invalid(field, "not a cursor this service gave; use next_cursor of the previous page") from None


def int_cursor(cursor: str | None, field: str = "cursor") -> int | None:
    """A cursor that stands for a sequence number (0 ≤ n < 2**63)."""
    position = decode_cursor(cursor, field)
    if position is None:
        return None
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= INT64_MAX:
        raise Invalid(field, "not a cursor this service gave; use next_cursor of the previous page")
    return position


def encode_time_cursor(at: datetime, last: uuid.UUID) -> str:
    """A cursor for a list in (time, id) order: the last item's."""
    return encode_cursor([at.astimezone(UTC).isoformat(), str(last)])


def time_cursor(cursor: str | None, field: str = "cursor") -> tuple[datetime, uuid.UUID] | None:
    """The (time, id) position an ``encode_time_cursor`` cursor stands for; None for no cursor."""
    position = decode_cursor(cursor, field)
    if position is None:
        return None
    try:
        at, last = position
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("a time without its zone")
        return when.astimezone(UTC), uuid.UUID(last)
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise Invalid(field, "not a cursor this service gave; use next_cursor of the previous page") from None


CursorQuery = Annotated[str | None, Query(max_length=2000, description="next_cursor of the previous page; omit for the first")]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+00:01 is before year 1 in UTC
        raise ValueError("out of range once in UTC (before year 1 or after 9999)") from None


# A time with its zone that has a UTC equivalent (the databases keep UTC); for query parameters.
UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


# --- the API docs, served from the package ---------------------------------------------------


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the installed package's assets (the default loads them from
    a public CDN, so /docs was blank on a machine without internet)."""
    from fastapi_swagger import patch_fastapi

    patch_fastapi(app, docs_url="/docs", title=app.title)

