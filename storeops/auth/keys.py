"""The Ed25519 key storeops signs its own tokens with.

One key per installation, in a PEM file (``STOREOPS_AUTH__KEY_FILE``, default
``<data dir>/auth.key``, mode 0600). Every service reads it: the public half
verifies any storeops token, the private half signs the short-lived tokens a
service presents to another. Only the composition root (``storeops token``,
``storeops up``, ``storeops migrate``) creates it; a service without it does not
start.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class SigningKeyError(Exception):
    """The signing key is missing or unreadable; the message says where and what to do."""


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"no token signing key at {path}: `storeops up`, `storeops migrate` or "
                        "`storeops token create` creates one; or set STOREOPS_AUTH__KEY_FILE") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read the token signing key at {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def ensure_key(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``, created (mode 0600, never overwritten) if there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
    return load_key(path)
