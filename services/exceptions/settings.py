from pydantic import BaseModel, Field

from storeops.settings import Settings


class ExceptionsConfig(BaseModel):
    port: int = 8003


class ExceptionsSettings(Settings):
    exceptions: ExceptionsConfig = Field(default_factory=ExceptionsConfig)
