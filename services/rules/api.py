"""Read-only API: the built-in rules and their recorded runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from services.rules.logic import BUILTIN_RULES
from services.rules.store import list_runs
from storeops.service import runtime

router = APIRouter(prefix="/v1/rules", tags=["rules"])


@router.get("")
async def rules(request: Request) -> list[dict[str, Any]]:
    config = runtime(request).settings.rules
    return [
        {"id": r.id, "version": r.version, "mode": "LIVE", "status": "active", "trigger": r.event_type,
         "description": r.description, "config": config.model_dump(mode="json", exclude={"port"})}
        for r in BUILTIN_RULES
    ]


@router.get("/runs")
async def runs(request: Request, rule_id: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Recorded runs, newest event first."""
    async with runtime(request).sessions() as session:
        rows = await list_runs(session, rule_id, limit)
    return [
        {"run_id": str(r.run_id), "rule_id": r.rule_id, "rule_version": r.rule_version, "mode": r.mode,
         "event_id": str(r.event_id), "event_type": r.event_type, "event_time": r.event_time.isoformat(),
         "status": r.status, "action_ids": r.action_ids}
        for r in rows
    ]
