"""rules: consumes the store event topics, emits actions and rule runs."""

from schemas.registry import EVENT_TOPICS
from services.rules import agents, api
from services.rules.settings import RulesSettings
from services.rules.store import Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="rules",
    settings=RulesSettings,
    routers=(api.router,),
    metadata=Base.metadata,
    consumes=EVENT_TOPICS,
    handler=agents.handler,
    description="Turns store events into actions.",
)
