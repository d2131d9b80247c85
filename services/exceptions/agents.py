"""Thin: actions raise or add to exceptions, store events may wake or heal them."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.actions import CreateException
from services.exceptions import metrics
from services.exceptions.queue import Queue
from services.exceptions.settings import exceptions_config
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def state(rt: Runtime[Queue]) -> Queue:
    """The exceptions service's state: its queue (ServiceSpec.state)."""
    return Queue(rt.sessions, rt.producer, exceptions_config(rt.settings))


def queue_of(rt: Runtime[Queue]) -> Queue:
    return rt.state


def handler(rt: Runtime[Queue]) -> Handler:
    queue = queue_of(rt)

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        actions = [i.event for i in batch if isinstance(i.event, CreateException)]
        events = [i.event for i in batch if not isinstance(i.event, CreateException)]
        changes = await queue.apply_batch(actions, events)
        metrics.CREATED.inc(sum(1 for c in changes if c.kind == "created"))
        return []

    return handle


async def sweeps(rt: Runtime[Queue]) -> None:
    await queue_of(rt).run_sweeps()
