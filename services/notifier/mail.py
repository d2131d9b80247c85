"""E-mail: the SMTP sender, one template per notification kind, digests."""

from __future__ import annotations

import asyncio

from services.notifier.state import NotifierState
from storeops.service import Runtime


async def digests(rt: Runtime[NotifierState]) -> None:
    """The digest loop (not built yet)."""
    await asyncio.Event().wait()
