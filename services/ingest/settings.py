from pydantic import BaseModel, Field

from storeops.settings import Settings


class IngestConfig(BaseModel):
    port: int = 8001
    max_events_per_request: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)


class IngestSettings(Settings):
    ingest: IngestConfig = Field(default_factory=IngestConfig)


def ingest_config(settings: Settings) -> IngestConfig:
    """The ingest group of a runtime's settings (``Runtime.settings`` is typed as the platform's part only)."""
    assert isinstance(settings, IngestSettings)  # the service runs on its SPEC's settings
    return settings.ingest
