"""The dead-letter envelope: a record that could not be processed, kept whole."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, Field

from schemas.common import B64Bytes
from schemas.envelope import Contract, Envelope

Stage = Literal["decode", "validate", "process"]


class DeadLetter(Contract):
    original_value: B64Bytes | None = Field(description="The record's bytes, base64")
    original_key: B64Bytes | None = None
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    stage: Stage
    error: str
    service: str = Field(description="Which consumer gave up on it")
    failed_at: AwareDatetime


class RecordDeadLettered(Envelope):
    """Subject: the original key (or topic:partition:offset when it had none)."""

    type: Literal["RecordDeadLettered"]
    data: DeadLetter


DeadLetterEvent = Annotated[Union[RecordDeadLettered], Field(discriminator="type")]
