"""ingest: HTTP in, keyed records on the event topics out."""

from services.ingest import api
from services.ingest.settings import IngestSettings
from storeops.service import ServiceSpec

SPEC = ServiceSpec(
    name="ingest",
    settings=IngestSettings,
    routers=(api.router,),
    max_body_bytes=lambda settings: settings.ingest.max_body_bytes,
    description="Store events over HTTP, on the topics once the broker acknowledged them.",
)
