"""Verifying a bearer token, in the service that receives it.

Two sources, one path: a storeops token (issuer ``storeops``, signed with the
installation's key, listed and not revoked) or, when configured, an access token
of an OpenID Connect provider (its issuer, audience and JWKS; the role from a
claim). Nothing else verifies. No other service is asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storeops.auth import tokens
from storeops.auth.keys import load_key
from storeops.auth.principal import RANK, Principal, Role
from storeops.db import make_engine
from storeops.errors import Forbidden, Unauthenticated, Unavailable
from storeops.settings import AuthSettings, Settings

log = logging.getLogger(__name__)

FIELD = "Authorization"
_LEEWAY = 30  # seconds of clock difference tolerated on exp/iat
_VERIFIED_MAX = 10_000  # tokens whose signature verified, remembered (oldest forgotten first)


class Authenticator:
    """Turns a bearer token into a Principal, or raises Unauthenticated (401) / Forbidden (403)."""

    def __init__(self, settings: Settings, service: str, engine: AsyncEngine | None = None) -> None:
        self.config: AuthSettings = settings.auth
        self.service = service
        self._key = load_key(settings.auth_key_file())
        self._public = self._key.public_key()
        self._engine = engine or make_engine(settings.tokens_database_url())
        self._owns_engine = engine is None
        self._listed: dict[str, tokens.TokenRow] = {}
        self._loaded = False
        self._last_refresh = float("-inf")
        self._lock = asyncio.Lock()
        self._own: tuple[str, datetime] | None = None
        self._verified: dict[bytes, tuple[str, dict[str, Any]]] = {}
        self._jwks = jwt.PyJWKClient(self.config.oidc_jwks_url, cache_keys=True, lifespan=300) \
            if self.config.oidc_jwks_url else None

    @property
    def engine(self) -> AsyncEngine:
        """The token list's database."""
        return self._engine

    # --- the token list ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the token list again (a missing table or an unreachable database keeps the last one)."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        self._last_refresh = time.monotonic()
        try:
            rows = await tokens.list_tokens(self._engine)
        except (OperationalError, DBAPIError, OSError) as exc:
            log.warning("token list unreadable; keeping the last one", extra={"error": type(exc).__name__})
            return
        self._listed = {r.id: r for r in rows}
        self._loaded = True

    async def run(self) -> None:
        """Refresh the list every ``refresh_seconds`` (a revoked token stops within that)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.config.refresh_seconds)

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()

    async def _listed_token(self, token_id: str) -> tokens.TokenRow | None:
        row = self._listed.get(token_id)
        if row is None:
            # A token made since the last refresh: read the list now. Only the key's holder can
            # sign a token, so unknown ids cannot be used to flood the database; requests that
            # wait here together share one read.
            asked = time.monotonic()
            async with self._lock:
                if token_id not in self._listed and self._last_refresh < asked:
                    await self._refresh()
            row = self._listed.get(token_id)
        if row is None and not self._loaded:
            raise Unavailable(FIELD, "the token list cannot be read yet; try again", retry_after=2)
        return row

    # --- verifying ------------------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated(FIELD, "send Authorization: Bearer <token>")
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:  # its signature verified before: only expiry, revocation and role are checked again
            source, claims = known
            if "exp" in claims and claims["exp"] + _LEEWAY < time.time():
                self._verified.pop(digest, None)
                raise Unauthenticated(FIELD, "the token has expired")
            return await self._storeops_claims(claims) if source == "storeops" else self._oidc_claims(claims)
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise Unauthenticated(FIELD, "not a token this installation issues or trusts") from None
        if issuer == tokens.ISSUER:
            return await self._storeops(token)
        if self._jwks is not None and issuer == self.config.oidc_issuer:
            return await self._oidc(token)
        raise Unauthenticated(FIELD, "not a token this installation issues or trusts")

    def _remember(self, token: str, source: str, claims: dict[str, Any]) -> None:
        """Keep a verified token's claims (by its SHA-256), so the next request with it skips
        the signature check (PyJWT's EdDSA verify costs ~100 µs; a dict look-up ~1 µs)."""
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.pop(next(iter(self._verified)))
        self._verified[hashlib.sha256(token.encode()).digest()] = (source, claims)

    async def _storeops(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self._public, algorithms=[tokens.ALGORITHM], issuer=tokens.ISSUER,
                                leeway=_LEEWAY, options={"require": ["sub", "jti", "role", "iat"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(FIELD, "the token has expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated(FIELD, "the token does not verify") from None
        principal = await self._storeops_claims(claims)
        self._remember(token, "storeops", claims)
        return principal

    async def _storeops_claims(self, claims: dict[str, Any]) -> Principal:
        role = _role(claims.get("role"))
        if claims.get("svc") is True:
            if role is not Role.service or "exp" not in claims or claims["exp"] - claims["iat"] > tokens.SERVICE_TOKEN_SECONDS:
                raise Unauthenticated(FIELD, "the token does not verify")
            return Principal(str(claims["sub"]), Role.service, str(claims["jti"]), "service")
        row = await self._listed_token(str(claims["jti"]))
        if row is None or row.revoked_at is not None:
            raise Unauthenticated(FIELD, "the token has been revoked or was never issued here")
        if not row.usable(datetime.now(UTC)):
            raise Unauthenticated(FIELD, "the token has expired")
        if role is not row.role or claims["sub"] != row.name:
            raise Unauthenticated(FIELD, "the token does not verify")
        return Principal(row.name, row.role, row.id, "token")

    async def _oidc(self, token: str) -> Principal:
        assert self._jwks is not None
        try:
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            claims = jwt.decode(token, signing.key, algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"],
                                audience=self.config.oidc_audience, issuer=self.config.oidc_issuer, leeway=_LEEWAY,
                                options={"require": ["exp", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(FIELD, "the token has expired") from None
        except jwt.PyJWKClientConnectionError:
            raise Unavailable(FIELD, "the identity provider's keys cannot be fetched; try again", retry_after=5) from None
        except jwt.PyJWTError:
            raise Unauthenticated(FIELD, "the token does not verify") from None
        principal = self._oidc_claims(claims)
        self._remember(token, "oidc", claims)
        return principal

    def _oidc_claims(self, claims: dict[str, Any]) -> Principal:
        role = _highest(_claim(claims, self.config.oidc_role_claim))
        if role is None:
            raise Forbidden(FIELD, f"the token's {self.config.oidc_role_claim} claim names no storeops role "
                                   f"({', '.join(r.value for r in Role)})")
        name = _claim(claims, self.config.oidc_name_claim) or claims["sub"]
        return Principal(str(name), role, str(claims.get("jti") or claims["sub"]), "oidc")

    # --- calling another service ---------------------------------------------------------------

    def service_token(self) -> str:
        """This service's own short-lived token, renewed a minute before it expires."""
        now = datetime.now(UTC)
        if self._own is None or (self._own[1] - now).total_seconds() < 60:
            self._own = tokens.service_token(self._key, self.service, now)
        return self._own[0]


def _role(value: Any) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path: ``realm_access.roles`` (Keycloak), ``https://example.com/roles``."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _highest(value: Any) -> Role | None:
    named = {_role(v) for v in (value if isinstance(value, list) else [value])} - {None}
    return next((r for r in RANK if r in named), None)
