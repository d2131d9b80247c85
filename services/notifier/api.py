"""The in-app feed: a client that was away asks for what came after its cursor."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from services.notifier.store import notifications_after
from storeops.auth import Principal, Role, requires
from storeops.http import CursorQuery, encode_cursor, int_cursor
from storeops.service import runtime

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


@router.get("")
async def feed(
    request: Request,
    cursor: CursorQuery = None,
    recipient: str | None = Query(None, max_length=200),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = requires(Role.viewer),
) -> dict[str, Any]:
    """Notifications after ``cursor``, oldest first.

    Each item carries its own ``cursor``: a client that was away asks again with the
    cursor of the last item it saw and misses nothing. ``next_cursor`` is the cursor
    of the next page while more may follow, null when this page is the last.
    """
    after = int_cursor(cursor) or 0
    async with runtime(request).sessions() as session:
        rows = await notifications_after(session, after, recipient, limit)
    items = [
        {"cursor": encode_cursor(r.seq), "id": str(r.id), "channel": r.channel, "recipient": r.recipient,
         "title": r.title, "body": r.body, "severity": r.severity,
         "exception_id": str(r.exception_id) if r.exception_id else None, "created_at": r.created_at.isoformat()}
        for r in rows
    ]
    return {"items": items, "next_cursor": items[-1]["cursor"] if len(items) == limit else None}
