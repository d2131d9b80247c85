"""exceptions: consumes actions, keeps the queue, emits exception changes."""

from schemas.registry import ACTIONS
from services.exceptions import agents, api
from services.exceptions.settings import ExceptionsSettings
from services.exceptions.store import Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="exceptions",
    settings=ExceptionsSettings,
    routers=(api.router,),
    metadata=Base.metadata,
    consumes=(ACTIONS,),
    handler=agents.handler,
    description="The severity-ranked exception queue.",
)
