"""Notifications the notifier stored or sent."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, Field

from schemas.common import Severity
from schemas.envelope import Contract, Envelope, Key

Channel = Literal["in_app", "email", "webhook"]


class NotificationData(Contract):
    notification_id: uuid.UUID
    recipient: Key
    channel: Channel
    title: str
    body: str
    severity: Severity | None = None
    exception_id: uuid.UUID | None = None
    created_at: AwareDatetime


class NotificationCreated(Envelope):
    """Subject: the recipient."""

    type: Literal["NotificationCreated"]
    data: NotificationData


NotificationEvent = Annotated[Union[NotificationCreated], Field(discriminator="type")]
