"""notifier: consumes exception changes, keeps the in-app feed, takes requests from other services."""

from pathlib import Path

from schemas.registry import EXCEPTIONS
from services.notifier import agents, api, credentials, credentials_api, requests_api
from services.notifier.settings import NotifierSettings
from services.notifier.store import Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="notifier",
    settings=NotifierSettings,
    routers=(api.router, requests_api.router, credentials_api.router),
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations",
    consumes=(EXCEPTIONS,),
    handler=agents.handler,
    state=credentials.cipher_state,
    description="Notifications: the in-app feed with a catch-up cursor; requests handed over by other services; "
                "named credentials for webhooks.",
)
