"""Credentials: secrets that webhook definitions name, stored encrypted with Fernet.

The key comes from ``STOREOPS_NOTIFIER__CREDENTIALS_KEY``, or else from a key
file in the data folder, generated on first use. A value leaves the notifier
only through ``credential_value``, for the delivery worker; no API returns one.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import store
from services.notifier.errors import CredentialKeyError, CredentialUnreadable
from storeops.service import Runtime

log = logging.getLogger(__name__)

CREDENTIALS_KEY_ENV = "STOREOPS_NOTIFIER__CREDENTIALS_KEY"
KEY_FILE_NAME = "notifier-credentials.key"
_MAKE_ONE = "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


def check_key(key: bytes, source: str) -> Fernet:
    """A Fernet for ``key``; CredentialKeyError naming ``source`` when it is not a Fernet key."""
    try:
        return Fernet(key.strip())
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise CredentialKeyError(f"{source}: not a Fernet key (32 url-safe base64-encoded bytes); {_MAKE_ONE}") from exc


def read_or_create_key_file(path: Path) -> bytes:
    """The key kept in ``path``; a new one, written with mode 0600, when there is none yet."""
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".notifier-key-")  # mkstemp creates it 0600
    except OSError as exc:
        raise CredentialKeyError(f"cannot create the credentials key file {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
        os.chmod(tmp, 0o600)
        # link() is atomic and refuses to replace: two processes starting together keep one key.
        os.link(tmp, path)
        log.warning("generated a credentials key", extra={"key_file": str(path), "hint": f"set {CREDENTIALS_KEY_ENV} in production"})
    except FileExistsError:
        pass
    except OSError as exc:
        raise CredentialKeyError(f"cannot create the credentials key file {path}: {exc}") from exc
    finally:
        os.unlink(tmp)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CredentialKeyError(f"cannot read the credentials key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("credentials key file is readable by others", extra={"key_file": str(path), "mode": oct(mode & 0o777)})
    return key


class Cipher:
    """Encrypts and decrypts credential values; the key is loaded (or generated) on first use."""

    def __init__(self, key: SecretStr | None, key_file: Path) -> None:
        self._key = key
        self.key_file = key_file
        self._fernet: Fernet | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Cipher:
        """The cipher a notifier with ``settings`` uses."""
        return cls(settings.notifier.credentials_key, Path(settings.data_dir) / KEY_FILE_NAME)

    @property
    def source(self) -> str:
        """Where the key comes from, for error messages (never the key itself)."""
        return CREDENTIALS_KEY_ENV if self._key is not None else str(self.key_file)

    def _loaded(self) -> Fernet:
        if self._fernet is None:
            key = self._key.get_secret_value().encode() if self._key is not None else read_or_create_key_file(self.key_file)
            self._fernet = check_key(key, self.source)
        return self._fernet

    def encrypt(self, value: str) -> str:
        """The Fernet token for ``value`` (url-safe base64 text)."""
        return self._loaded().encrypt(value.encode()).decode("ascii")

    def decrypt(self, name: str, token: str) -> str:
        """The value of credential ``name``; CredentialUnreadable when the key does not fit."""
        try:
            return self._loaded().decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise CredentialUnreadable(
                f"credential {name!r} cannot be decrypted with the key from {self.source}: it was stored under "
                f"another key or altered; restore that key or store the credential again"
            ) from exc


def cipher_of(rt: Runtime[Any]) -> Cipher:
    """The cipher the notifier's credentials use (part of its state, services.notifier.state)."""
    cipher = getattr(rt.state, "cipher", None)
    assert isinstance(cipher, Cipher)
    return cipher


async def credential_value(session: AsyncSession, cipher: Cipher, name: str) -> str | None:
    """The decrypted value of credential ``name``; None when there is no such credential.

    Raises CredentialUnreadable (a NotifierError) when the stored value does not
    decrypt with the configured key, and CredentialKeyError when there is no usable key.
    """
    row = await store.get_credential(session, name)
    return None if row is None else cipher.decrypt(name, row.ciphertext)
