"""storeops' own tokens: JWTs signed with the installation's Ed25519 key, each listed in
the ``auth_tokens`` table so it can be revoked.

A token names its principal (``sub``), its role and its id (``jti``); the table keeps
the same and whether it was revoked. Services read the table (every
``refresh_seconds`` and at once on a token id they have not seen), never another
service. A service presents a short-lived token it signs itself (``svc``) to
another; those are not listed and expire within minutes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Column, MetaData, String, Table, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from schemas.common import Actor, EntityType
from storeops.auth.principal import Role
from storeops.db import UTCDateTime
from storeops.outbox import Outbox

ISSUER = "storeops"
ALGORITHM = "EdDSA"
SERVICE_TOKEN_SECONDS = 300  # a service's own token: long enough to reuse, short enough not to need revoking
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")

metadata = MetaData()
TOKENS = Table(
    "auth_tokens", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False, index=True),
    Column("role", String(20), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

# token.created / token.revoked, written with the change (auth_0002); every service's runtime publishes
# them (storeops.service), so a token made or revoked from the command line reaches the audit trail
OUTBOX = Outbox("auth", metadata)


def _actor(by: str) -> Actor:
    """Who made a change to the token list from the command line: whoever holds the signing key (an admin)."""
    return Actor(kind="person", name=by[:200] or "unknown", role="admin")


@dataclass(frozen=True)
class TokenRow:
    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _row(r: object) -> TokenRow:
    m = r._mapping  # type: ignore[attr-defined]
    return TokenRow(m["id"], m["name"], Role(m["role"]), m["created_at"], m["created_by"], m["expires_at"], m["revoked_at"])


def sign(key: Ed25519PrivateKey, claims: dict[str, object]) -> str:
    return jwt.encode({"iss": ISSUER, **claims}, key, algorithm=ALGORITHM)


def service_token(key: Ed25519PrivateKey, service: str, now: datetime | None = None) -> tuple[str, datetime]:
    """A token for ``service`` to present to another service, and when it expires."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=SERVICE_TOKEN_SECONDS)
    token = sign(key, {"sub": service, "role": Role.service.value, "jti": f"svc-{uuid.uuid4()}", "svc": True,
                       "iat": int(now.timestamp()), "exp": int(expires.timestamp())})
    return token, expires


async def issue(engine: AsyncEngine, key: Ed25519PrivateKey, name: str, role: Role, created_by: str,
                expires_in: timedelta | None = None) -> tuple[str, TokenRow]:
    """A new token for ``name`` with ``role``, listed (so it verifies) before it is returned."""
    if not NAME.match(name):
        raise ValueError(f"token name {name!r}: letters, digits, '_', '.', '@', '-'; at most 100 characters")
    now = datetime.now(UTC).replace(microsecond=0)
    row = TokenRow(str(uuid.uuid4()), name, role, now, created_by, now + expires_in if expires_in else None, None)
    claims: dict[str, object] = {"sub": name, "role": role.value, "jti": row.id, "iat": int(now.timestamp())}
    if row.expires_at is not None:
        claims["exp"] = int(row.expires_at.timestamp())
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(TOKENS.insert().values(
            id=row.id, name=name, role=role.value, created_at=now, created_by=created_by, expires_at=row.expires_at))
        await OUTBOX.audit_change(session, _actor(created_by), "token.created", [(EntityType.TOKEN, row.id)],
                                  after={"name": name, "role": role.value,
                                         "expires_at": row.expires_at.isoformat() if row.expires_at else None})
    return sign(key, claims), row


async def list_tokens(engine: AsyncEngine) -> list[TokenRow]:
    async with engine.connect() as conn:
        result = await conn.execute(select(TOKENS).order_by(TOKENS.c.created_at, TOKENS.c.id))
        return [_row(r) for r in result]


async def revoke(engine: AsyncEngine, name_or_id: str, by: str = "storeops token") -> Sequence[TokenRow]:
    """Revoke the token with this id, or every unrevoked token with this name; returns those revoked."""
    now = datetime.now(UTC)
    which = or_(TOKENS.c.id == name_or_id, TOKENS.c.name == name_or_id)
    async with AsyncSession(engine) as session, session.begin():
        found = [_row(r) for r in await session.execute(select(TOKENS).where(which, TOKENS.c.revoked_at.is_(None)))]
        if found:
            await session.execute(update(TOKENS).where(TOKENS.c.id.in_([t.id for t in found])).values(revoked_at=now))
        for token in found:
            await OUTBOX.audit_change(session, _actor(by), "token.revoked", [(EntityType.TOKEN, token.id)],
                                      before={"revoked_at": None}, after={"revoked_at": now.isoformat()},
                                      cause=f"revoke {name_or_id}"[:200])
    return found
