"""Topic contracts: every record on a storeops topic is one of these models.

Services import from here and never redefine a wire format. The JSON Schemas
under ``schemas/jsonschema`` and the examples under ``schemas/examples`` are
generated from these models (``storeops schemas export``) and a test fails when
they drift.
"""

from schemas.envelope import SCHEMA_VERSION, Envelope, Money
from schemas.registry import REGISTRY, Topic, topic_for

__all__ = ["SCHEMA_VERSION", "Envelope", "Money", "REGISTRY", "Topic", "topic_for"]
