"""The queue's read API."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request

from schemas.exceptions import ExceptionState
from services.exceptions.store import get_exception, list_exceptions
from storeops.service import runtime

router = APIRouter(prefix="/v1/exceptions", tags=["exceptions"])


@router.get("")
async def queue(
    request: Request,
    status: Literal["New", "In Progress", "Resolved", "Snoozed"] | None = None,
    entity_id: str | None = Query(None, description="Only exceptions about this order id, sku, customer..."),
    limit: int = Query(100, ge=1, le=1000),
) -> list[ExceptionState]:
    """The queue, most severe first, then oldest first."""
    async with runtime(request).sessions() as session:
        rows = await list_exceptions(session, status, limit, entity_id)
    return [r.state() for r in rows]


@router.get("/{exception_id}")
async def one(request: Request, exception_id: uuid.UUID) -> ExceptionState:
    async with runtime(request).sessions() as session:
        row = await get_exception(session, exception_id)
    if row is None:
        raise HTTPException(404, detail=f"no exception {exception_id}")
    return row.state()
