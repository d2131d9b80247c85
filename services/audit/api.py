"""Audit search: by entity, time range and topic, paged by cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from services.audit.store import search
from storeops.service import runtime

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, detail=[{"field": name, "error": "give a timezone, e.g. 2026-11-23T09:00:00Z"}])
    return value


@router.get("")
async def audit(
    request: Request,
    entity: str | None = Query(None, description="Entity key: order id, sku, exception id..."),
    since: datetime | None = Query(None, description="Records whose time is at or after this"),
    until: datetime | None = Query(None, description="Records whose time is before this"),
    topic: str | None = None,
    after: int = Query(0, ge=0, description="next_cursor of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    since, until = _aware("since", since), _aware("until", until)
    if since and until and since >= until:
        raise HTTPException(422, detail=[{"field": "until", "error": "must be later than since"}])
    async with runtime(request).sessions() as session:
        rows = await search(session, entity=entity, since=since, until=until, topic=topic, after=after, limit=limit)
    return {
        "items": [r.public().model_dump(mode="json") for r in rows],
        "next_cursor": rows[-1].seq if rows else after,
    }
