from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from schemas.common import Severity
from storeops.settings import Settings

# Minutes per severity; a setting that names only some severities keeps these for the rest.
DEFAULT_SLA_MINUTES: dict[Severity, float] = {Severity.CRITICAL: 15, Severity.HIGH: 60, Severity.MEDIUM: 240, Severity.LOW: 1440}


class ExceptionsConfig(BaseModel):
    port: int = 8003
    sla_minutes: dict[Severity, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_SLA_MINUTES),
        description="How long an exception may stay New before it is escalated one level; a Critical one "
        "cannot go higher, so its breach is recorded as an escalation at Critical and raised again each period",
    )
    sweep_seconds: float = Field(default=5.0, gt=0, description="How often SLA escalations and snooze wake-ups run")
    bulk_max: int = Field(
        default=1000, ge=1, le=10_000,
        description="Most ids one bulk request may carry (all are changed in one transaction, their rows locked)",
    )

    @field_validator("sla_minutes")
    @classmethod
    def _every_severity(cls, value: dict[Severity, float]) -> dict[Severity, float]:
        return {**DEFAULT_SLA_MINUTES, **value}

    @property
    def sla(self) -> dict[Severity, timedelta]:
        return {s: timedelta(minutes=m) for s, m in self.sla_minutes.items()}


class ExceptionsSettings(Settings):
    exceptions: ExceptionsConfig = Field(default_factory=ExceptionsConfig)


def exceptions_config(settings: Settings) -> ExceptionsConfig:
    """The exceptions group of a runtime's settings (``Runtime.settings`` is typed as the platform's part only)."""
    assert isinstance(settings, ExceptionsSettings)  # the service runs on its SPEC's settings
    return settings.exceptions
