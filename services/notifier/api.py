"""The in-app feed: a client that was away asks for what came after its cursor."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from services.notifier.store import notifications_after
from storeops.service import runtime

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


def parse_cursor(after: str | None) -> int:
    if after is None or after == "":
        return 0
    if not after.isdigit():
        raise HTTPException(422, detail=[{"field": "after", "error": "cursor must be a value returned as next_cursor"}])
    return int(after)


@router.get("")
async def feed(
    request: Request,
    after: str | None = Query(None, description="next_cursor of the previous page; omit to start at the beginning"),
    recipient: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Notifications after ``after``, oldest first, and the cursor to ask with next."""
    cursor = parse_cursor(after)
    async with runtime(request).sessions() as session:
        rows = await notifications_after(session, cursor, recipient, limit)
    items = [
        {"cursor": str(r.seq), "id": str(r.id), "channel": r.channel, "recipient": r.recipient, "title": r.title,
         "body": r.body, "severity": r.severity, "exception_id": str(r.exception_id) if r.exception_id else None,
         "created_at": r.created_at.isoformat()}
        for r in rows
    ]
    return {"items": items, "next_cursor": items[-1]["cursor"] if items else str(cursor)}
