"""Audit search and export: every kept record as an audit entry, filtered by entity, type, action,
actor, source and time, oldest or newest first, paged by cursor; the same filters streamed as CSV
or NDJSON.

``GET /v1/audit`` answers ``{"items": [...], "next_cursor": ...}``: pass ``cursor`` (with the same
``order``) to go on; ``next_cursor`` is null on the last page. Each item carries its own ``cursor``
too, so a client following the log can resume after the last record it saw.

``GET /v1/audit/export?format=csv|ndjson`` streams every match as a download, a page at a time from
its own short read (constant memory, no transaction held open for the export's length). An export is
itself an audit entry (``audit.exported``: who, which filters), written before the first row is sent.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from schemas.audit import AuditRecord
from schemas.common import EntityType
from services.audit.store import OUTBOX, AuditRow, Filters, search
from storeops.auth import Principal, Role, requires
from storeops.errors import Invalid
from storeops.http import CursorQuery, Page, decode_cursor, encode_cursor
from storeops.service import runtime

router = APIRouter(prefix="/v1/audit", tags=["audit"])

EXPORT_PAGE = 1000
Order = Literal["oldest", "newest"]


class AuditItem(AuditRecord):
    cursor: str = Field(description="Pass as cursor (with the same order) to read the records after this one")


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Invalid(name, "give a timezone, e.g. 2026-11-23T09:00:00Z")
    try:
        return value.astimezone(UTC) if value is not None else None
    except OverflowError:  # 0001-01-01T00:00+00:01 is before year 1 in UTC
        raise Invalid(name, "out of range once in UTC (before year 1 or after 9999)") from None


def filters(
    entity: str | None = Query(None, max_length=200, description="An entity's id: every record that concerns it "
                               "(an order's events, the exception raised about it, its rule run, its notification)"),
    entity_type: str | None = Query(None, max_length=40, pattern=r"^[a-z_]+$",
                                    description="order, sku, exception, rule, credential...; with entity, that type only"),
    action: list[str] = Query([], max_length=20, description="An action (exception.resolved), or a prefix ending in "
                              "a dot (rule.); repeat for any of several"),
    actor: str | None = Query(None, max_length=200, description="Who did it: a person's name, or a part of the system"),
    actor_kind: Literal["person", "system"] | None = Query(None),
    source: str | None = Query(None, max_length=200, description="The service that said it (storeops/rules...)"),
    since: datetime | None = Query(None, description="Records whose time is at or after this"),
    until: datetime | None = Query(None, description="Records whose time is before this"),
    topic: str | None = Query(None, max_length=200),
) -> Filters:
    since, until = _aware("since", since), _aware("until", until)
    if since and until and since >= until:
        raise Invalid("until", "must be later than since")
    for value in action:
        if not value or len(value) > 100:
            raise Invalid("action", "give an action or a prefix ending in a dot, 1 to 100 characters")
    return Filters(entity=entity, entity_type=entity_type, actions=tuple(action), actor=actor, actor_kind=actor_kind,
                   source=source, since=since, until=until, topic=topic)


SearchFilters = Annotated[Filters, Depends(filters)]


def _position(cursor: str | None, order: Order) -> int | None:
    """The seq a cursor stands for: an integer for the oldest-first order, ``["newest", seq]`` for the other."""
    position = decode_cursor(cursor)
    if position is None:
        return None
    newest = isinstance(position, list) and len(position) == 2 and position[0] == "newest"
    seq = position[1] if newest else position
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise Invalid("cursor", "not a cursor this service gave; use next_cursor of the previous page")
    if newest != (order == "newest"):
        raise Invalid("cursor", f"a cursor of the {'newest' if newest else 'oldest'}-first order: pass that order")
    return seq


def _item(row: AuditRow, order: Order) -> AuditItem:
    return AuditItem(**row.fields(), cursor=encode_cursor(["newest", row.seq] if order == "newest" else row.seq))


@router.get("")
async def audit(
    request: Request,
    found: SearchFilters,
    order: Order = Query("oldest", description="oldest (the order they were kept) or newest first"),
    cursor: CursorQuery = None,
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = requires(Role.viewer),
) -> Page[AuditItem]:
    after = _position(cursor, order)
    async with runtime(request).sessions() as session:
        rows = await search(session, found, after=after, limit=limit + 1, newest_first=order == "newest")
    more = len(rows) > limit
    items = [_item(r, order) for r in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].cursor if more else None)


CSV_COLUMNS = ("time", "action", "actor_kind", "actor", "entity_type", "entity_id", "entities", "before", "after",
               "cause", "type", "source", "topic", "partition", "offset", "record_id", "recorded_at", "conflict")


def _csv_row(row: AuditRow) -> list[object]:
    entry = row.fields()["entry"]
    first = entry["entities"][0] if entry["entities"] else {"type": "", "id": ""}

    def js(value: object) -> str:
        return "" if value is None else orjson.dumps(value).decode()

    return [row.time.isoformat(), entry["action"], entry["actor"]["kind"], entry["actor"]["name"], first["type"],
            first["id"], js(entry["entities"]), js(entry["before"]), js(entry["after"]), entry["cause"] or "",
            row.type, row.source or "", row.topic, row.partition, row.offset, str(row.record_id),
            row.recorded_at.isoformat(), "true" if row.conflict else "false"]


def _csv_line(values: list[object] | tuple[str, ...]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue().encode()


@router.get("/export", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
                             "description": "Every match: CSV with a header row, or one JSON object per line"}})
async def export(
    request: Request,
    found: SearchFilters,
    format: Literal["csv", "ndjson"] = Query("ndjson"),
    order: Order = Query("oldest", description="oldest (the order they were kept) or newest first"),
    principal: Principal = requires(Role.viewer),
) -> StreamingResponse:
    rt = runtime(request)
    export_id = str(uuid.uuid4())
    async with rt.sessions.begin() as session:  # who exported what, kept before the first row goes out
        await OUTBOX.audit_change(session, principal.actor(), "audit.exported", [(EntityType.AUDIT_EXPORT, export_id)],
                                  after={"format": format, "order": order, "filters": _described(found)})

    async def rows() -> AsyncIterator[bytes]:
        if format == "csv":
            yield _csv_line(CSV_COLUMNS)
        after: int | None = None
        while True:
            async with rt.sessions() as session:
                page = await search(session, found, after=after, limit=EXPORT_PAGE, newest_first=order == "newest")
            for row in page:
                if format == "csv":
                    yield _csv_line(_csv_row(row))
                else:
                    yield orjson.dumps(AuditRecord(**row.fields()).model_dump(mode="json")) + b"\n"
            if len(page) < EXPORT_PAGE:
                return
            after = page[-1].seq

    name = f"storeops-audit-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.{format}"
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(rows(), media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"',
                                                                "X-Export-Id": export_id})


def _described(found: Filters) -> dict[str, object]:
    return {k: (v.isoformat() if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v)
            for k, v in vars(found).items() if v not in (None, ())}

