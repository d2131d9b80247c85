from pydantic import BaseModel, Field

from storeops.settings import Settings


class RulesConfig(BaseModel):
    port: int = 8002
    notifier_url: str = Field(
        default="http://127.0.0.1:8004", description="The notifier, asked whether a webhook's credential exists")
    min_dry_run_hours: float = Field(
        default=0, ge=0,
        description="How long a rule must dry-run before it may go LIVE; 0 lets it at once. The usual advice is 48")
    max_chain_depth: int = Field(
        default=3, ge=0, description="Records a rule may stand after in a chain of rule-made events (envelope depth)")
    # A rule that sets no rate_limit of its own gets this one; none by default, because no
    # number fits every store (a busy store's high-value rule may fire thousands of times an
    # hour). Loops, the usual runaway, are stopped by max_chain_depth.
    rate_limit_max_runs: int | None = Field(default=None, ge=1, description="Default per rule: at most this many runs...")
    rate_limit_per_seconds: int = Field(default=60, ge=1, description="...in any window of this many seconds")
    backtest_late_seconds: int = Field(
        default=3600, ge=0,
        description="A backtest stops reading a partition at a record written this long after the window's end; "
                    "events that reached the broker later than that after they happened are not seen")


class RulesSettings(Settings):
    rules: RulesConfig = Field(default_factory=RulesConfig)


def rules_config(settings: Settings) -> RulesConfig:
    """The rules group of a runtime's settings (``Runtime.settings`` is typed as the platform's part only)."""
    assert isinstance(settings, RulesSettings)  # the service runs on its SPEC's settings
    return settings.rules
