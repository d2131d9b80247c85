from pydantic import BaseModel, Field

from storeops.settings import Settings


class NotifierConfig(BaseModel):
    port: int = 8004
    default_recipient: str = Field(default="ops-team", description="Feed that receives every exception until subscriptions exist")


class NotifierSettings(Settings):
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)
