"""Thin: every record of every topic in, one audit row each."""

from __future__ import annotations

from collections.abc import Sequence

from services.audit import metrics
from services.audit.store import add_records
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def handler(rt: Runtime[None]) -> Handler:

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        async with rt.sessions.begin() as session:
            stored = await add_records(session, batch)
        metrics.RECORDED.inc(stored)
        return []

    return handle
