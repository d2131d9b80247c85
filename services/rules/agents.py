"""Thin: decoded events in, actions and runs out, runs stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from schemas.registry import ACTIONS, RULE_RUNS
from services.rules import metrics
from services.rules.logic import evaluate
from services.rules.store import record_runs
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def handler(rt: Runtime) -> Handler:
    config = rt.settings.rules
    assert rt.sessions is not None

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        outcomes = [o for item in batch for o in evaluate(item.event, config)]
        if outcomes:
            # both sent before either is awaited: one acknowledgement wait, not two
            await asyncio.gather(rt.emitter.emit(ACTIONS, [o.action for o in outcomes]),
                                 rt.emitter.emit(RULE_RUNS, [o.run for o in outcomes]))
            async with rt.sessions.begin() as session:
                await record_runs(session, [o.run for o in outcomes])
            for o in outcomes:
                metrics.MATCHES.labels(o.run.data.rule.rule_id).inc()
        metrics.EVALUATED.inc(len(batch))
        return []

    return handle
