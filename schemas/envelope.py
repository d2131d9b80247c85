"""The envelope every record carries, in the spirit of CloudEvents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints

SCHEMA_VERSION = 1

# Money travels as a decimal string ("129.90"): floats lose cents.
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=4),
    PlainSerializer(lambda v: format(v, "f"), return_type=str, when_used="json"),
]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Key = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the contracts use."""
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Contract(BaseModel):
    """Base of every wire model: unknown fields are refused, not dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(Contract):
    """Self-describing record: who said what about which entity, and why.

    ``subject`` is the entity key and also the Kafka record key, so every record
    of one entity lands on one partition, in order.
    """

    id: uuid.UUID = Field(default_factory=new_id, description="Unique id; consumers dedupe on it")
    type: str = Field(description="Past tense for events (OrderPlaced), imperative for commands")
    source: str = Field(default="storeops", min_length=1, max_length=200)
    time: AwareDatetime = Field(default_factory=utcnow, description="When it happened; a timezone is required")
    subject: Key = Field(description="Entity key (order id, sku, exception id...); the record key")
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    causation_id: uuid.UUID | None = Field(default=None, description="Id of the record that caused this one")
    correlation_id: uuid.UUID | None = Field(default=None, description="Id shared by a whole chain")
    depth: int = Field(default=0, ge=0, le=1000, description="Records between this one and the chain's first (0)")
    data: Any

    def child(self, **fields: Any) -> dict[str, Any]:
        """Envelope fields for a record caused by this one (ids chained)."""
        return {
            "causation_id": self.id,
            "correlation_id": self.correlation_id or self.id,
            "depth": self.depth + 1,
            **fields,
        }


def deterministic_id(*parts: object) -> uuid.UUID:
    """Same inputs, same id: lets a replayed effect collide with its first run."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "storeops:" + "/".join(str(p) for p in parts))
