from datetime import timedelta

from pydantic import BaseModel, Field

from schemas.common import Severity
from storeops.settings import Settings


class ExceptionsConfig(BaseModel):
    port: int = 8003
    sla_minutes: dict[Severity, float] = Field(
        default_factory=lambda: {Severity.CRITICAL: 15, Severity.HIGH: 60, Severity.MEDIUM: 240, Severity.LOW: 1440},
        description="How long an exception may stay New before it is escalated one level",
    )
    sweep_seconds: float = Field(default=5.0, gt=0, description="How often SLA escalations and snooze wake-ups run")
    bulk_max: int = Field(default=1000, ge=1, description="Most ids one bulk request may carry")

    @property
    def sla(self) -> dict[Severity, timedelta]:
        return {s: timedelta(minutes=self.sla_minutes.get(s, 1440)) for s in Severity}


class ExceptionsSettings(Settings):
    exceptions: ExceptionsConfig = Field(default_factory=ExceptionsConfig)
