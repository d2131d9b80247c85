"""/v1/webhook-endpoints (not built yet)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])
