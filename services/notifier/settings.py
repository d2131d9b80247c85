from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.notifier.credentials import CREDENTIALS_KEY_ENV, KEY_FILE_NAME, check_key
from services.notifier.errors import CredentialKeyError
from storeops.settings import Settings


class NotifierConfig(BaseModel):
    port: int = 8004
    default_recipient: str = Field(default="ops-team", description="Feed that receives every exception until subscriptions exist")
    credentials_key: SecretStr | None = Field(
        default=None,
        description=(
            "Fernet key (32 url-safe base64-encoded bytes) that encrypts stored credentials. When unset, one is "
            f"generated on first use and kept in <data_dir>/{KEY_FILE_NAME} (mode 0600): fine for the embedded "
            f"default, but in production set {CREDENTIALS_KEY_ENV} (from your secret store) so every replica and "
            "every restore uses the same key. Credentials stored under one key cannot be read with another."
        ),
    )

    # --- delivery (e-mail and webhooks share one ledger; services.notifier.ledger) ---
    smtp_url: str | None = Field(default=None, description=(
        "The SMTP server e-mail goes out through: smtp://host:port (STARTTLS when the server offers it), "
        "smtps://host:port (TLS from the start). Unset: e-mail waits in the ledger until one is set."))
    smtp_credential: str | None = Field(default=None, description=(
        "A named credential holding the SMTP login as user:password (PUT /v1/credentials/<name>)"))
    smtp_require_tls: bool = Field(default=False, description="Refuse to send over smtp:// when the server offers no STARTTLS")
    smtp_timeout_seconds: float = Field(default=30, gt=0, description=(
        "An SMTP connection, login or command that takes longer failed (the e-mail is retried)"))
    smtp_sessions: int = Field(default=10, ge=1, le=100, description=(
        "SMTP sessions open at once, each kept and used for the next e-mails"))
    mail_from: str = Field(default="storeops <storeops@localhost>", description="The From of every e-mail")
    reply_to: str | None = Field(default=None, description="The Reply-To of every e-mail, if any")
    public_url: str = Field(default="http://127.0.0.1:8004", description="Where links in e-mails point (the console, later)")
    retry_schedule_seconds: list[float] = Field(
        default=[0, 5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1,
        description="Wait before each attempt (the first is immediate): Svix' schedule by default")
    webhook_timeout_seconds: float = Field(default=15, gt=0, description="An attempt that takes longer failed")
    endpoint_disable_after_seconds: float = Field(
        default=5 * 86400, gt=0, description="An endpoint failing for this long without a success is disabled")
    message_retention_days: float = Field(default=30, ge=0, description=(
        "Every occurrence an endpoint could receive is kept this long, so a recover can send it to an endpoint "
        "that never got it (added or re-enabled later); 0 keeps none"))
    secret_rotation_grace_seconds: float = Field(
        default=86400, ge=0, description="After a secret rotation, both secrets sign for this long")
    delivery_poll_seconds: float = Field(default=1.0, gt=0, description="How often the delivery loop looks for due work")
    delivery_batch: int = Field(default=200, ge=1, le=10000, description="Deliveries claimed at a time")
    delivery_concurrency: int = Field(default=200, ge=1, le=1000, description=(
        "Sends in flight at once, per process: a send holds its slot until its attempt is recorded, so this is also "
        "the most a killed process sends again (with the same webhook-id)"))
    claim_seconds: float = Field(default=60, gt=0, description=(
        "A claimed delivery that is not finished by then is taken over by another process (one that died)"))
    # --- the inbox and fallback ---
    fallback_after_seconds: float = Field(default=900, gt=0, description=(
        "A critical notification nobody has seen by then goes out again on the recipient's next channel, once"))
    critical_severities: list[str] = Field(default=["Critical"], description=(
        "Severities a store treats as critical: they cannot be muted and ignore quiet hours"))
    digest_drops_read: bool = Field(default=True, description="An e-mail held for a digest is dropped if its in-app copy was read first")
    low_stock_default: int = Field(default=5, ge=0, description="stock.low at or under this on hand (an event without a reorder point)")

    # --- the live stream ---
    stream_heartbeat_seconds: float = Field(default=15, gt=0, description=(
        "A comment line this often keeps proxies from closing an idle stream"))
    stream_lifetime_seconds: float = Field(default=900, ge=0, description=(
        "A stream is ended (event reconnect) after this long: the client comes back with its last id and its token is checked again"))
    stream_queue_size: int = Field(default=1000, ge=1, description=(
        "Notifications a slow client may fall behind before it is told to reconnect"))

    @field_validator("credentials_key")
    @classmethod
    def _is_a_fernet_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                check_key(value.get_secret_value().encode(), CREDENTIALS_KEY_ENV)
            except CredentialKeyError as exc:
                raise ValueError(str(exc)) from exc
        return value


class NotifierSettings(Settings):
    model_config = SettingsConfigDict(hide_input_in_errors=True)  # a mistyped key is still a secret; keep it out of logs

    notifier: NotifierConfig = Field(default_factory=NotifierConfig)


def notifier_config(settings: Settings) -> NotifierConfig:
    """The notifier group of a runtime's settings (``Runtime.settings`` is typed as the platform's part only)."""
    assert isinstance(settings, NotifierSettings)  # the service runs on its SPEC's settings
    return settings.notifier
