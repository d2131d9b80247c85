"""Critical notifications nobody has seen in time go out again on the recipient's next channel."""

from __future__ import annotations

import asyncio

from services.notifier.state import NotifierState
from storeops.service import Runtime


async def run(rt: Runtime[NotifierState]) -> None:
    """The fallback loop (not built yet)."""
    await asyncio.Event().wait()
