"""Notifications the notifier stored or sent."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, Union

from pydantic import AnyHttpUrl, AwareDatetime, Field, StringConstraints, model_validator

from schemas.actions import RuleRef
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


# --- requests from other services (rules' notification, e-mail and webhook steps) -----

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
CredentialName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
EmailAddress = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)]


class InAppMessage(Contract):
    """A message for the in-app feeds of ``recipients``."""

    channel: Literal["in_app"]
    recipients: list[Key] = Field(min_length=1, max_length=50)
    title: str = Field(min_length=1, max_length=400)
    body: str = Field(max_length=10000)
    severity: Severity | None = None


class EmailMessage(Contract):
    """An e-mail, rendered already: a plain-text part, an HTML part, or both."""

    channel: Literal["email"]
    to: list[EmailAddress] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=300)
    text: str | None = Field(default=None, max_length=100000)
    html: str | None = Field(default=None, max_length=200000)

    @model_validator(mode="after")
    def _has_a_body(self) -> EmailMessage:
        if self.text is None and self.html is None:
            raise ValueError("an e-mail needs text, html or both")
        return self


class WebhookMessage(Contract):
    """An HTTP call. ``credential`` names a stored secret; its value never travels in a request."""

    channel: Literal["webhook"]
    method: HttpMethod = "POST"
    url: AnyHttpUrl
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    body: str | None = Field(default=None, max_length=100000)
    credential: CredentialName | None = None


Message = Annotated[Union[InAppMessage, EmailMessage, WebhookMessage], Field(discriminator="channel")]


class NotifyRequest(Contract):
    """One thing to deliver, handed to the notifier, which owns channels, retries and delivery records.

    ``request_id`` is the idempotency key: the rules service derives it from
    (run, step), so a retried hand-over is recognised as the same request.
    """

    request_id: uuid.UUID
    message: Message
    rule: RuleRef | None = None
    run_id: uuid.UUID | None = None
    step_id: str | None = Field(default=None, max_length=100)
    event_id: uuid.UUID | None = Field(default=None, description="The event that caused it")


class NotifyRequestBatch(Contract):
    requests: list[NotifyRequest] = Field(min_length=1, max_length=500)


RequestStatus = Literal["accepted", "duplicate", "refused"]


class NotifyResult(Contract):
    """The notifier's answer for one request: stored (now or before), or refused and why."""

    request_id: uuid.UUID
    status: RequestStatus
    error: str | None = None
