"""ingest: HTTP in, keyed records on the event topics out."""

from services.ingest import api
from services.ingest.settings import IngestSettings, ingest_config
from storeops.service import ServiceSpec
from storeops.settings import Settings


def _max_body_bytes(settings: Settings) -> int:
    return ingest_config(settings).max_body_bytes


SPEC: ServiceSpec[None] = ServiceSpec(  # ingest keeps no state
    name="ingest",
    settings=IngestSettings,
    routers=(api.router,),
    max_body_bytes=_max_body_bytes,
    description="Store events over HTTP, on the topics once the broker acknowledged them.",
)
