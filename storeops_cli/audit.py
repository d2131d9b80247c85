"""``storeops audit verify``: walk every hash chain of the audit store and every checkpoint.

Prints a line per chain it checked, and last one JSON object: ``checked`` (entries that
verified), ``chains``, ``checkpoints`` (signatures that verified), ``first_bad`` (null, or the
first entry that does not verify: ``chain``, ``seq`` (its chain_seq), ``id`` (its record id),
``kind`` (edited, deleted, inserted, reordered, checkpoint) and ``reason``) and ``seconds``.
Exit status 0 when everything verifies, 1 at the first entry or checkpoint that does not, 2 when
it cannot check (no database or tables, no public key for the checkpoints, a bad ``--since``):
then the object also has ``error``, and the message is on stderr too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, make_url, select
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audit import store
from services.audit.settings import AuditSettings
from services.audit.signing import key_id, load_public_key, prune_problem, public_key_path
from services.audit.verification import ChainCheck, Checkpoint, Finding
from storeops.auth import SigningKeyError
from storeops.db import make_engine
from storeops.settings import normalize_database_url


class CannotVerify(Exception):
    """Nothing could be checked; the message says why (exit status 2)."""


def run(args: argparse.Namespace) -> int:
    """``storeops audit verify [--since SEQ_OR_TIME] [--database-url URL] [--public-key FILE]...``"""
    settings = AuditSettings()
    url = normalize_database_url(args.database_url) if args.database_url else settings.database_url_for("audit")
    try:
        since = _since(args.since)
        keys = _public_keys(args.public_key, settings)
        _existing_database(url)
    except CannotVerify as exc:
        return _summary(0, 0, 0, None, time.monotonic(), str(exc))
    return asyncio.run(verify(url, keys, since))


def _existing_database(url: str) -> None:
    """Refuse a URL that names no database instead of checking (and, for SQLite, creating) an empty one."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CannotVerify(f"the database URL: {exc}") from None
    backend, path = parsed.get_backend_name(), parsed.database
    if backend not in ("postgresql", "sqlite"):
        raise CannotVerify(f"the database URL names {backend}; storeops keeps its data in PostgreSQL or SQLite")
    if backend == "sqlite" and path and path != ":memory:" and not Path(path).exists():
        raise CannotVerify(f"no SQLite database at {path}")


def _since(value: str | None) -> int | datetime:
    if value is None:
        return 1
    if value.isdigit():
        return max(int(value), 1)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CannotVerify(f"--since {value!r} is neither a chain_seq nor an ISO 8601 time") from None
    if at.tzinfo is None:
        raise CannotVerify(f"--since {value!r}: give a zone, e.g. 2026-11-23T09:00:00Z")
    return at


def _public_keys(files: list[Path] | None, settings: AuditSettings) -> dict[str, Ed25519PublicKey]:
    """The keys checkpoints may be signed with, by key id: those given, else the service's own."""
    if not files:
        own = public_key_path(settings.signing_key_file())
        files = [own] if own.exists() else [settings.signing_key_file()] if settings.signing_key_file().exists() else []
    try:
        loaded = [load_public_key(path) for path in files]
    except SigningKeyError as exc:
        raise CannotVerify(str(exc)) from None
    return {key_id(key): key for key in loaded}


async def verify(url: str, keys: dict[str, Ed25519PublicKey], since: int | datetime = 1) -> int:
    """Check every chain in the database at ``url``; prints as the module says and returns the exit status."""
    t0 = time.monotonic()
    checked = signed = 0
    names: list[str] = []
    first_bad: Finding | None = None
    error: str | None = None
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            names = await _chains(conn, bool(keys))
            for chain in names:
                check = await _check_chain(conn, chain, keys, since)
                checked, signed = checked + check.checked, signed + check.signed
                first_bad = check.found
                _report(chain, check)
                if first_bad is not None:
                    break
    except CannotVerify as exc:
        error = str(exc)
    except (DBAPIError, OSError) as exc:  # the database went away, or was never there
        error = f"cannot read the audit chains: {getattr(exc, 'orig', None) or exc}"
    finally:
        await engine.dispose()
    return _summary(checked, len(names), signed, first_bad, t0, error)


def _summary(checked: int, chains: int, signed: int, first_bad: Finding | None, t0: float, error: str | None) -> int:
    """Print the last line (the JSON object) and give the exit status."""
    summary: dict[str, Any] = {"checked": checked, "chains": chains, "checkpoints": signed,
                               "first_bad": first_bad.as_json() if first_bad else None,
                               "seconds": round(time.monotonic() - t0, 3)}
    if error is not None:
        print(f"storeops audit verify: {error}", file=sys.stderr)
        summary["error"] = error
    print(json.dumps(summary), flush=True)
    return 2 if error is not None else 1 if first_bad else 0


async def _chains(conn: AsyncConnection, have_keys: bool) -> list[str]:
    try:
        names = await store.chains(conn)
        if not have_keys and await conn.scalar(select(func.count()).select_from(store.CHECKPOINTS)):
            raise CannotVerify("the chains have signed checkpoints and no public key was found: give --public-key")
    except DBAPIError as exc:
        raise CannotVerify(f"cannot read the audit chains (is the audit service migrated?): {exc.orig}") from None
    return names


async def _check_chain(conn: AsyncConnection, chain: str, keys: dict[str, Ed25519PublicKey],
                       since: int | datetime) -> ChainCheck:
    from_seq = since if isinstance(since, int) else await store.checkpoint_before(conn, chain, since)
    anchor = None
    pruned = (await conn.execute(select(store.PRUNES).where(store.PRUNES.c.chain == chain)
                                 .order_by(store.PRUNES.c.up_to_seq.desc()).limit(1))).first()
    if pruned is not None:  # retention removed 1..up_to_seq: the chain goes on from a signed hash
        problem = prune_problem(keys, chain, pruned.up_to_seq, pruned.hash, pruned.time, pruned.archive_sha256,
                                pruned.key_id, pruned.signature)
        if problem is not None:
            check = ChainCheck(chain, [], keys, pruned.up_to_seq + 1)
            check.found = Finding(chain, 1, None, "deleted", f"entries 1..{pruned.up_to_seq} were removed, and the "
                                                             f"retention record that says so does not verify: {problem}")
            return check
        if from_seq <= pruned.up_to_seq:
            from_seq, anchor = pruned.up_to_seq + 1, pruned.hash
    # the checkpoints first: every entry one of them signed is committed, so the entries read next include it
    checkpoints = [Checkpoint(*row) for row in await store.checkpoints_of(conn, chain, from_seq)]
    check = ChainCheck(chain, checkpoints, keys, from_seq, anchor=anchor)
    async for page in store.entries(conn, chain, from_seq):
        if check.feed(page) is not None:
            return check
    check.finish()
    return check


def _report(chain: str, check: ChainCheck) -> None:
    if check.found is None:
        print(f"{chain}: {check.checked} entries from chain_seq {check.from_seq} verified, "
              f"{check.signed} checkpoints verified")
        return
    bad = check.found
    record = f"record {bad.id}" if bad.id else "no entry there"
    print(f"{chain}: {check.checked} entries verified, then chain_seq {bad.seq} ({record}) does not: "
          f"{bad.kind}: {bad.reason}")
