"""/v1/subscriptions (not built yet)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])
