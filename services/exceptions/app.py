"""exceptions: consumes actions and store events, keeps the queue, emits every change."""

from pathlib import Path

from schemas.registry import ACTIONS, EVENT_TOPICS
from services.exceptions import agents, api
from services.exceptions.settings import ExceptionsSettings
from services.exceptions.store import Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="exceptions",
    settings=ExceptionsSettings,
    routers=(api.router,),
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations",
    consumes=(ACTIONS,),
    # store events wake snoozed exceptions and heal those whose problem went away
    watches=EVENT_TOPICS,
    handler=agents.handler,
    state=agents.state,
    background=agents.sweeps,
    description="The severity-ranked exception queue: workflow, dedup, SLA escalation, snooze, bulk actions.",
)
