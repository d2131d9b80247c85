"""rules: consumes the store event topics; runs the active rules; emits actions, commands and runs."""

from pathlib import Path

from schemas.registry import EVENT_TOPICS
from services.rules import agents, api
from services.rules.settings import RulesSettings
from services.rules.store import OUTBOX, Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="rules",
    settings=RulesSettings,
    routers=(api.router,),
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations",
    consumes=EVENT_TOPICS,
    handler=agents.handler,
    state=agents.state,
    background=agents.background,
    outbox=OUTBOX,
    description="Rules: conditions and actions over store events, DRY_RUN and LIVE, every run and step on record.",
)
