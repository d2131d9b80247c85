from decimal import Decimal

from pydantic import BaseModel, Field

from storeops.settings import Settings


class RulesConfig(BaseModel):
    port: int = 8002
    high_value_threshold: Decimal = Field(default=Decimal("1000"), ge=0, description="Order total that raises a High exception")
    low_stock_threshold: int = Field(default=5, ge=0, description="Default stock threshold when an event carries no reorder point")


class RulesSettings(Settings):
    rules: RulesConfig = Field(default_factory=RulesConfig)
