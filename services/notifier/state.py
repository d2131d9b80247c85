"""The notifier's state (ServiceSpec.state): what its routes, its consumer and its
background loops share within one process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.notifier.credentials import Cipher
from storeops.service import Runtime


@dataclass
class NotifierState:
    cipher: Cipher
    # set when a delivery is enqueued, so the delivery loop looks now instead of at its next poll
    deliveries_due: asyncio.Event = field(default_factory=asyncio.Event)
    # the live feed's fan-out to Server-Sent Events clients (services.notifier.stream), made at start
    hub: Any = None


def notifier_state(rt: Runtime[NotifierState]) -> NotifierState:
    return NotifierState(cipher=Cipher.from_settings(rt.settings))


def state_of(rt: Runtime[Any]) -> NotifierState:
    state = rt.state
    assert isinstance(state, NotifierState)  # the notifier's SPEC builds it
    return state
