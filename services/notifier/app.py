"""notifier: consumes exception changes, keeps the in-app feed."""

from schemas.registry import EXCEPTIONS
from services.notifier import agents, api
from services.notifier.settings import NotifierSettings
from services.notifier.store import Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="notifier",
    settings=NotifierSettings,
    routers=(api.router,),
    metadata=Base.metadata,
    consumes=(EXCEPTIONS,),
    handler=agents.handler,
    description="Notifications: the in-app feed with a catch-up cursor.",
)
