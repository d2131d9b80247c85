"""Manual changes made through an API, and the audit service's public record."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, Field

from schemas.common import Actor, EntityType
from schemas.envelope import Contract, Envelope, Key


class ManualChangeData(Contract):
    actor: Actor
    entity_type: EntityType
    entity_id: Key
    action: str = Field(min_length=1, max_length=100)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class ManualChangeRecorded(Envelope):
    """Subject: the entity id."""

    type: Literal["ManualChangeRecorded"]
    data: ManualChangeData


AuditEvent = Annotated[Union[ManualChangeRecorded], Field(discriminator="type")]


class AuditRecord(Contract):
    """One record as the audit service stores and serves it, with its origin."""

    topic: str
    partition: int
    offset: int
    key: str | None
    record_id: uuid.UUID
    type: str
    subject: str
    time: AwareDatetime
    recorded_at: AwareDatetime
    payload: dict[str, Any]
