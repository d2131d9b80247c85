"""Thin: every record of every topic in, one audit row each, linked into its partition's chain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.audit import metrics, retention
from services.audit.recorder import Recorder
from services.audit.settings import audit_settings
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def state(rt: Runtime[Recorder]) -> Recorder:
    """The audit service's state: its recorder (ServiceSpec.state)."""
    return Recorder(rt.sessions, audit_settings(rt.settings))


def handler(rt: Runtime[Recorder]) -> Handler:
    recorder = rt.state

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        metrics.RECORDED.inc(await recorder.record(batch))
        return []

    return handle


async def sweeps(rt: Runtime[Recorder]) -> None:
    """Checkpoints of the chains that stopped receiving records, and retention; only where records
    are consumed."""
    if rt.consumer is not None:
        await asyncio.gather(rt.state.run_sweeps(),
                             retention.run(rt.sessions, audit_settings(rt.settings), rt.state.signer))
