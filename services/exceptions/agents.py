"""Thin: actions in, exceptions stored, ExceptionCreated out."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.actions import CreateException
from schemas.registry import EXCEPTIONS
from services.exceptions import metrics
from services.exceptions.logic import created_change, exception_from_action
from services.exceptions.store import add_exceptions
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def handler(rt: Runtime) -> Handler:
    assert rt.sessions is not None

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        actions = [item.event for item in batch if isinstance(item.event, CreateException)]
        states = [exception_from_action(a) for a in actions]
        async with rt.sessions.begin() as session:
            created = await add_exceptions(session, states)
        # Emitted for every action, stored now or before: if a crash came between
        # the insert and the produce, the redelivered action still announces it.
        # Ids are derived, so the notifier and audit see a repeat as a no-op.
        await rt.emitter.emit(EXCEPTIONS, [created_change(s, a) for s, a in zip(states, actions, strict=True)])
        metrics.CREATED.inc(created)
        return []

    return handle
