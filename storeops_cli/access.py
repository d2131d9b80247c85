"""Tokens from the composition root: the signing key and the token list made ready,
``storeops token create|list|revoke``, and the tokens ``storeops up`` keeps in the data
directory (``admin.token``; ``demo.token`` for the demo store)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from storeops import auth
from storeops.auth import Role, tokens
from storeops.db import make_engine
from storeops.settings import Settings

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def prepare(settings: Settings) -> None:
    """The signing key exists and the token list's table is migrated."""
    auth.ensure_key(settings.auth_key_file())
    auth.migrate(settings.tokens_database_url())


def duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r}: a positive number and one of s, m, h, d, w (e.g. 30d)")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _on_tokens(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work`` on the token list (made ready first), with an engine of its own."""
    prepare(settings)

    async def go() -> T:
        engine = make_engine(settings.tokens_database_url())
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def create(settings: Settings, name: str, role: Role, created_by: str, expires_in: timedelta | None = None
           ) -> tuple[str, tokens.TokenRow]:
    key = auth.ensure_key(settings.auth_key_file())
    return _on_tokens(settings, lambda engine: tokens.issue(engine, key, name, role, created_by, expires_in))


def listed(settings: Settings) -> list[tokens.TokenRow]:
    return _on_tokens(settings, tokens.list_tokens)


def revoke(settings: Settings, name_or_id: str, by: str = "storeops token") -> list[tokens.TokenRow]:
    async def revoking(engine: AsyncEngine) -> list[tokens.TokenRow]:
        return list(await tokens.revoke(engine, name_or_id, by))

    return _on_tokens(settings, revoking)


def kept_token(settings: Settings, name: str = "admin", role: Role = Role.admin, created_by: str = "storeops up"
               ) -> tuple[str, Path, bool]:
    """A usable token for ``name`` kept in ``<data dir>/<name>.token`` (mode 0600): the one
    there, or a new one (first start, or the one there was revoked or expired). Returns
    the token, the file and whether the token is new."""
    path = settings.data_dir / f"{name}.token"
    if path.exists():
        import jwt

        kept = path.read_text().strip()
        try:
            token_id = jwt.decode(kept, options={"verify_signature": False}).get("jti")
        except jwt.PyJWTError:
            token_id = None
        now = datetime.now(UTC)
        if any(t.id == token_id and t.usable(now) for t in listed(settings)):
            return kept, path, False
    token, _ = create(settings, name, role, created_by)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token, path, True


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def table(rows: list[tokens.TokenRow]) -> str:
    from storeops_cli.bench.report import table as render

    now = datetime.now(UTC)
    return render(["id", "name", "role", "created", "by", "expires", "state"], [
        (t.id, t.name, t.role.value, t.created_at.isoformat(timespec="seconds"), t.created_by,
         t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never",
         "revoked" if t.revoked_at else "expired" if not t.usable(now) else "active") for t in rows])
