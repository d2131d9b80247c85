"""The delivery ledger: every e-mail and webhook delivery, its due time, its attempts."""

from __future__ import annotations

import asyncio

from services.notifier.state import NotifierState
from storeops.service import Runtime


async def run(rt: Runtime[NotifierState]) -> None:
    """The delivery loop (not built yet)."""
    await asyncio.Event().wait()
