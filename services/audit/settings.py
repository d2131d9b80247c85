from pydantic import BaseModel, Field

from storeops.settings import Settings


class AuditConfig(BaseModel):
    port: int = 8005


class AuditSettings(Settings):
    audit: AuditConfig = Field(default_factory=AuditConfig)
