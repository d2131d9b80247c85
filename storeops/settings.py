"""Settings shared by every service; each service adds its own group.

Environment variables: ``STOREOPS_<GROUP>__<FIELD>``, plus the conventional
``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded broker holds each JoinGroup reply until half the group's
# session timeout has passed, so Kafka's usual 10-45 s sessions make a worker
# wait 5-20 s to join. These values join in about a second there; real Kafka
# keeps the client defaults below.
EMBEDDED_SESSION_TIMEOUT_MS = 2000
EMBEDDED_HEARTBEAT_INTERVAL_MS = 500
EMBEDDED_FETCH_MAX_WAIT_MS = 100


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    flavor: Literal["kafka", "embedded"] = Field(
        default="kafka", description="'embedded' when talking to the broker storeops started itself"
    )
    session_timeout_ms: int | None = None
    heartbeat_interval_ms: int | None = None
    enable_idempotence: bool | None = Field(
        default=None, description="Default: on for Kafka; the embedded broker refuses aiokafka's InitProducerId"
    )
    # Services send a whole batch and then wait for its acks, so lingering only
    # adds delay: 0 halved POST -> notification p99 at 2,000 ev/s (430 -> 211 ms).
    linger_ms: int = 0
    max_batch_bytes: int = 65536
    max_poll_records: int = 1000
    request_timeout_ms: int = Field(default=30000, description="How long a produce may wait for its acknowledgement")
    fetch_max_wait_ms: int | None = Field(default=None, description="How long the broker may hold an empty fetch")
    client_id_prefix: str = "storeops"

    @property
    def session_timeout(self) -> int:
        if self.session_timeout_ms is not None:
            return self.session_timeout_ms
        return EMBEDDED_SESSION_TIMEOUT_MS if self.flavor == "embedded" else 10000

    @property
    def heartbeat_interval(self) -> int:
        if self.heartbeat_interval_ms is not None:
            return self.heartbeat_interval_ms
        return EMBEDDED_HEARTBEAT_INTERVAL_MS if self.flavor == "embedded" else 3000

    @property
    def fetch_max_wait(self) -> int:
        # Kafka answers a waiting fetch as soon as data arrives, so its 500 ms
        # default costs no latency. The embedded broker holds a fetch that found
        # no data for the whole wait (measured: 500 ms took POST -> notification
        # from 80 ms to 254 ms median), so each hop's latency is bounded by it.
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        return EMBEDDED_FETCH_MAX_WAIT_MS if self.flavor == "embedded" else 500

    @property
    def idempotence(self) -> bool:
        if self.enable_idempotence is not None:
            return self.enable_idempotence
        return self.flavor != "embedded"


class AuthSettings(BaseModel):
    """Who may ask (storeops/auth): storeops' own tokens, and optionally an OpenID Connect provider."""

    key_file: Path | None = Field(default=None, description="The Ed25519 key storeops signs its tokens with; "
                                  "default <data dir>/auth.key")
    tokens_database_url: str | None = Field(default=None, description="Where the token list is; default "
                                            "DATABASE_URL, else <data dir>/auth.db")
    refresh_seconds: float = Field(default=30.0, ge=1.0, le=60.0, description="How often each service re-reads "
                                   "the token list (a revoked token stops within it)")
    metrics_require_token: bool = Field(default=False, description="/metrics asks for a viewer token too")
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_role_claim: str = Field(default="storeops_role", description="The claim naming the role: a string or a "
                                 "list (the highest known role wins); dotted for nested claims, realm_access.roles")
    oidc_name_claim: str = Field(default="preferred_username", description="The claim naming the person; else sub")

    @model_validator(mode="after")
    def _oidc_complete(self) -> AuthSettings:
        given = [n for n in ("oidc_issuer", "oidc_audience", "oidc_jwks_url") if getattr(self, n)]
        if given and len(given) < 3:
            missing = sorted({"oidc_issuer", "oidc_audience", "oidc_jwks_url"} - set(given))
            raise ValueError(f"OpenID Connect needs issuer, audience and JWKS URL; missing {', '.join(missing)}")
        return self


class OutboundSettings(BaseModel):
    """Where outbound requests (webhooks) may go although the address is internal (storeops/outbound.py)."""

    # A plain string: pydantic-settings would try to JSON-decode a list from the environment.
    allow_networks: str = Field(default="", description="Comma-separated CIDRs outbound requests may reach "
                                "although they are loopback, private or otherwise internal, e.g. "
                                "127.0.0.1/32,10.0.0.0/8; default none")

    @field_validator("allow_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        cls.parse_networks(value)
        return value

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return self.parse_networks(self.allow_networks)

    @staticmethod
    def parse_networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        networks = []
        for entry in filter(None, (part.strip() for part in value.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry))  # strict: 10.0.0.1/8 is a typo, not 10.0.0.0/8
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not a network in CIDR notation: {exc}") from None
        return tuple(networks)


class Settings(BaseSettings):
    """The platform part of every service's settings."""

    model_config = SettingsConfigDict(env_prefix="STOREOPS_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "STOREOPS_KAFKA_BOOTSTRAP_SERVERS")
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "STOREOPS_DATABASE_URL"),
        description="Shared server for every service; default: one SQLite file per service in data_dir",
    )
    data_dir: Path = Path(".storeops-data")
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Larger request bodies are refused with 413")

    def model_post_init(self, context: Any) -> None:
        if self.kafka_bootstrap_servers:
            self.kafka.bootstrap_servers = self.kafka_bootstrap_servers

    def database_url_for(self, service: str) -> str:
        """The service's database: ``DATABASE_URL`` if set, else its own SQLite file."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.db').resolve()}"


    def auth_key_file(self) -> Path:
        return self.auth.key_file or self.data_dir / "auth.key"

    def tokens_database_url(self) -> str:
        """The token list's database: the setting, else ``DATABASE_URL``, else ``<data dir>/auth.db``."""
        return normalize_database_url(self.auth.tokens_database_url) if self.auth.tokens_database_url \
            else self.database_url_for("auth")


def normalize_database_url(url: str) -> str:
    """Accept the usual ``postgresql://`` / ``sqlite://`` forms and pick the async drivers."""
    for prefix, driver in (("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://"),
                           ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(prefix):
            return driver + url[len(prefix):]
    return url
