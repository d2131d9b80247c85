"""notifier: consumes exception changes, keeps the in-app feed, takes requests from other services."""

from pathlib import Path

from schemas.registry import EXCEPTIONS, ORDERS, PRICES, RULE_RUNS, STOCK
from services.notifier import agents, api, background, credentials_api, endpoints_api, requests_api, subscriptions_api
from services.notifier.settings import NotifierSettings
from services.notifier.state import notifier_state
from services.notifier.store import OUTBOX, Base
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="notifier",
    settings=NotifierSettings,
    routers=(api.router, subscriptions_api.router, requests_api.router, endpoints_api.router, credentials_api.router),
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations",
    consumes=(EXCEPTIONS,), watches=(RULE_RUNS, ORDERS, PRICES, STOCK),
    handler=agents.handler,
    state=notifier_state,
    background=background.run,
    outbox=OUTBOX,
    description="Notifications: the in-app feed with a catch-up cursor; requests handed over by other services; "
                "named credentials for webhooks.",
)
