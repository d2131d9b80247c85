"""Audit search: by entity, time range and topic, in the order records were kept, paged by cursor.

``GET /v1/audit`` answers ``{"items": [...], "next_cursor": ...}``: pass ``cursor``
to go on; ``next_cursor`` is null on the last page. Each item carries its own
``cursor`` too, so a client following the log can resume after the last record
it saw.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from pydantic import Field

from schemas.audit import AuditRecord
from services.audit.store import AuditRow, search
from storeops.auth import Principal, Role, requires
from storeops.errors import Invalid
from storeops.http import CursorQuery, Page, encode_cursor, int_cursor
from storeops.service import runtime

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditItem(AuditRecord):
    cursor: str = Field(description="Pass as cursor to read the records kept after this one")


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Invalid(name, "give a timezone, e.g. 2026-11-23T09:00:00Z")
    try:
        return value.astimezone(UTC) if value is not None else None
    except OverflowError:  # 0001-01-01T00:00+00:01 is before year 1 in UTC
        raise Invalid(name, "out of range once in UTC (before year 1 or after 9999)") from None


def _item(row: AuditRow) -> AuditItem:
    return AuditItem(**row.fields(), cursor=encode_cursor(row.seq))


@router.get("")
async def audit(
    request: Request,
    entity: str | None = Query(None, max_length=400, description="Entity key: order id, sku, exception id..."),
    since: datetime | None = Query(None, description="Records whose time is at or after this"),
    until: datetime | None = Query(None, description="Records whose time is before this"),
    topic: str | None = Query(None, max_length=200),
    cursor: CursorQuery = None,
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = requires(Role.viewer),
) -> Page[AuditItem]:
    since, until = _aware("since", since), _aware("until", until)
    if since and until and since >= until:
        raise Invalid("until", "must be later than since")
    after = int_cursor(cursor) or 0
    async with runtime(request).sessions() as session:
        rows = await search(session, entity=entity, since=since, until=until, topic=topic, after=after, limit=limit + 1)
    more = len(rows) > limit
    items = [_item(r) for r in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].cursor if more else None)
