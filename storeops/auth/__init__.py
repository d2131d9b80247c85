"""Identity and access: principals and roles, storeops' own tokens, OpenID Connect, the
dependency every route declares its role with."""

from pathlib import Path

from storeops.auth.http import install_roles, requires
from storeops.auth.keys import SigningKeyError, ensure_key, load_key
from storeops.auth.principal import Principal, Role, system
from storeops.auth.verify import Authenticator

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # the token list's Alembic scripts


def migrate(url: str, revision: str = "head") -> None:
    """Create or upgrade the token list's table (its own Alembic version table, ``alembic_version_auth``)."""
    from storeops.db import upgrade

    upgrade("auth", MIGRATIONS, url, revision)

__all__ = ["MIGRATIONS", "Authenticator", "Principal", "Role", "SigningKeyError", "ensure_key",
           "install_roles", "load_key", "migrate", "requires",
           "system"]
