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
