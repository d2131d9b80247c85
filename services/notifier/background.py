"""The notifier's background loops, run side by side for the life of the process
(ServiceSpec.background): deliveries, e-mail digests, the fallback for unseen
critical notifications. One that crashes ends the process (the platform's rule)."""

from __future__ import annotations

import asyncio

from services.notifier import fallback, ledger, mail, trouble
from services.notifier.state import NotifierState
from storeops.service import Runtime


async def run(rt: Runtime[NotifierState]) -> None:
    trouble.install()
    async with asyncio.TaskGroup() as group:
        group.create_task(ledger.run(rt), name="notifier-deliveries")
        group.create_task(mail.digests(rt), name="notifier-digests")
        group.create_task(fallback.run(rt), name="notifier-fallback")
