"""Critical notifications nobody has seen in time go out again on the recipient's next channel.

A notification of a critical severity is stored due for the fallback (store.add_notifications).
Once someone it was for sees, reads or archives it, it is no longer due. One still due
``fallback_after_seconds`` after it was stored is e-mailed to the recipient's address (from
their e-mail subscription, now before digest), once: the outcome is recorded on the
notification, ``sent`` or ``impossible`` (no address to fall back on).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import ledger, mail
from services.notifier.settings import notifier_config
from services.notifier.state import NotifierState, state_of
from services.notifier.store import NotificationRow, fallback_due, record_fallback
from services.notifier.subscriptions import email_address_of
from storeops.service import Runtime

log = logging.getLogger(__name__)

BATCH = 100
FALLBACK_KIND = "fallback"  # the template mail renders a fallback with


async def run(rt: Runtime[NotifierState]) -> None:
    """The fallback loop: look for due notifications every tenth of the wait (at least every 60 s)."""
    config = notifier_config(rt.settings)
    interval = min(60.0, max(1.0, config.fallback_after_seconds / 10))
    while True:
        try:
            await fall_back(rt, datetime.now(UTC))
        except (DBAPIError, OSError) as exc:
            if not ledger.is_outage(exc):
                raise  # a bug: the process ends and its supervisor restarts it
            log.warning("fallback round failed: the database does not answer; trying again", exc_info=True)
        await asyncio.sleep(interval)


async def fall_back(rt: Runtime[NotifierState], now: datetime) -> int:
    """One round: every notification due as of ``now`` handled and recorded; how many were e-mailed."""
    config = notifier_config(rt.settings)
    cutoff = now - timedelta(seconds=config.fallback_after_seconds)
    sent = 0
    while True:
        async with rt.sessions.begin() as session:
            rows = await fallback_due(session, cutoff, BATCH)
            for row in rows:
                sent += await _fall_back_one(session, row, now, ledger.smtp_route(config.smtp_url))
        if sent:
            state_of(rt).deliveries_due.set()
        if len(rows) < BATCH:
            return sent


async def _fall_back_one(session: AsyncSession, row: NotificationRow, now: datetime, route: str | None) -> int:
    address = await email_address_of(session, row.recipient)
    if address is None:
        await record_fallback(session, row.id, "impossible", now)
        log.info("critical notification unseen, no address to fall back on",
                 extra={"notification_id": str(row.id), "recipient": row.recipient})
        return 0
    context = {"type": row.kind, "title": f"Unseen: {row.title}", "recipient": row.recipient, "body": row.body, "severity": row.severity,
               "exception_id": str(row.exception_id) if row.exception_id else None,
               "created_at": row.created_at.isoformat()}
    await mail.enqueue_now(session, address=address, recipient=row.recipient, kind=FALLBACK_KIND,
                           notification_id=row.id, context=context, now=now, route=route)
    await record_fallback(session, row.id, "sent", now)
    return 1
