"""The key the audit service signs its checkpoints with, kept outside the database.

The private key is an Ed25519 PEM file (``STOREOPS_AUDIT__SIGNING_KEY_FILE``, default
``<data dir>/audit-signing.key``), created with mode 0600 the first time a checkpoint is signed,
by the same code that keeps storeops' token signing key (``storeops.auth.keys``). Its public
half is written next to it (``audit-signing.pub``): that is all ``storeops audit verify`` needs,
so it can be copied wherever the trail is checked. Every checkpoint names its key by ``key_id``
(the first 16 hex digits of the SHA-256 of the raw public key), so checkpoints signed by several
instances, or before a key was replaced, verify against the set of public keys given.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.audit.chain import checkpoint_message, prune_message
from storeops.auth.keys import SigningKeyError, ensure_key

KEY_FILE_NAME = "audit-signing.key"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_path(key_file: Path) -> Path:
    """Where the public half of ``key_file`` is written: the same name with ``.pub``."""
    return key_file.with_suffix(".pub")


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: str
    signature: str  # 128 hex digits


class Signer:
    """Signs checkpoints with the key at ``key_file``, created (and its ``.pub``) on first use."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._key: Ed25519PrivateKey | None = None
        self._key_id = ""

    def _loaded(self) -> Ed25519PrivateKey:
        if self._key is None:
            key = ensure_key(self.key_file)
            write_public_key(key.public_key(), public_key_path(self.key_file))
            self._key, self._key_id = key, key_id(key.public_key())
        return self._key

    def sign(self, chain: str, chain_seq: int, hash: str, time: datetime) -> Signature:
        key = self._loaded()
        message = checkpoint_message(chain, chain_seq, hash, time, self._key_id)
        return Signature(self._key_id, key.sign(message).hex())

    def sign_prune(self, chain: str, up_to_seq: int, hash: str, time: datetime, archive_sha256: str) -> Signature:
        key = self._loaded()
        return Signature(self._key_id, key.sign(prune_message(chain, up_to_seq, hash, time, archive_sha256,
                                                              self._key_id)).hex())


def write_public_key(public: Ed25519PublicKey, path: Path) -> None:
    """Write ``public`` to ``path`` (PEM, mode 0644) unless a file is there already."""
    if path.exists():
        return
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-pub-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(tmp, 0o644)
        with contextlib.suppress(FileExistsError):  # link() refuses to replace: another process wrote it first
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in ``path``: a PEM public key, or a PEM private key (its public half)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {path}: {exc.strerror}") from None
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise SigningKeyError(f"{path} is not a PEM public or private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def signature_problem(keys: dict[str, Ed25519PublicKey], chain: str, chain_seq: int, hash: str, time: datetime,
                      signer: str, signature: str) -> str | None:
    """Why a checkpoint's signature does not verify with ``keys`` (by key id), or None when it does."""
    return message_problem(keys, signer, signature, lambda: checkpoint_message(chain, chain_seq, hash, time, signer))


def prune_problem(keys: dict[str, Ed25519PublicKey], chain: str, up_to_seq: int, hash: str, time: datetime,
                  archive_sha256: str, signer: str, signature: str) -> str | None:
    """Why a retention prune's signature does not verify with ``keys``, or None when it does."""
    return message_problem(keys, signer, signature,
                           lambda: prune_message(chain, up_to_seq, hash, time, archive_sha256, signer))


def message_problem(keys: dict[str, Ed25519PublicKey], signer: str, signature: str,
                    message: Callable[[], bytes]) -> str | None:
    public = keys.get(signer)
    if public is None:
        return f"signed by key {signer}, which is not one of the public keys given ({', '.join(sorted(keys)) or 'none'})"
    try:
        public.verify(bytes.fromhex(signature), message())
    except (InvalidSignature, ValueError, OverflowError):
        return f"its signature does not verify with key {signer}"
    return None
