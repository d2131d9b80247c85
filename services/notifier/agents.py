"""Thin: exception changes in, in-app notifications stored and announced."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.exceptions import ExceptionChangeRecord
from schemas.registry import NOTIFICATIONS
from services.notifier import metrics
from services.notifier.logic import notifications_for
from services.notifier.settings import notifier_config
from services.notifier.state import NotifierState
from services.notifier.store import add_notifications
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def handler(rt: Runtime[NotifierState]) -> Handler:
    recipient = notifier_config(rt.settings).default_recipient

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        notes = [n for i in batch if isinstance(i.event, ExceptionChangeRecord) for n in notifications_for(i.event, recipient)]
        if not notes:  # most change kinds notify nobody
            return []
        async with rt.sessions.begin() as session:
            stored = await add_notifications(session, notes)
        await rt.emitter.emit(NOTIFICATIONS, notes)
        metrics.STORED.labels("in_app").inc(stored)
        return []

    return handle
