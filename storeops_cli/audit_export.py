"""``storeops audit export``: the audit trail, filtered, streamed from the audit service to stdout.

It asks the service's ``GET /v1/audit/export`` with a token (``--token-file``, ``STOREOPS_TOKEN``,
else the admin token ``./run up`` keeps in the data directory), so the export is made by, and kept
in the trail as made by, whoever holds the token. The body goes to stdout as it arrives, a chunk at a
time (constant memory whatever the size); a progress line on stderr counts rows, bytes and rows/s.
Exit status 0 when the whole export arrived, 1 when the service refused it (its error on stderr) or
the stream broke, 2 when it cannot start (no token, no service at ``--url``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from tqdm import tqdm

from storeops.settings import Settings

DEFAULT_PORT = 8005  # services.audit.settings.AuditConfig.port


def add_parser(actions: Any) -> None:
    export = actions.add_parser("export", help="stream the audit trail, filtered, as CSV or NDJSON to stdout")
    export.add_argument("--format", choices=["csv", "ndjson"], default="ndjson")
    export.add_argument("--since", help="entries whose time is at or after this (ISO 8601 with a zone)")
    export.add_argument("--until", help="entries whose time is before this")
    export.add_argument("--entity", help="every entry that concerns this entity id (order, sku, exception...)")
    export.add_argument("--entity-type", help="order, sku, exception, rule, credential...")
    export.add_argument("--action", action="append", default=[], help="an action, or a prefix ending in a dot "
                        "(rule.); repeat for several")
    export.add_argument("--actor", help="who did it")
    export.add_argument("--actor-kind", choices=["person", "system"])
    export.add_argument("--source", help="the service that said it (storeops/rules...)")
    export.add_argument("--topic")
    export.add_argument("--order", choices=["oldest", "newest"], default="oldest")
    export.add_argument("--url", help=f"the audit service (default: http://127.0.0.1:STOREOPS_AUDIT__PORT, {DEFAULT_PORT})")
    export.add_argument("--token-file", type=Path, help="a file holding the token (default: STOREOPS_TOKEN, "
                        "else <data dir>/admin.token)")
    export.set_defaults(func=run)


def _token(args: argparse.Namespace, settings: Settings) -> str:
    if args.token_file is None and (held := os.environ.get("STOREOPS_TOKEN", "").strip()):
        return held
    path = args.token_file or settings.data_dir / "admin.token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"storeops audit export: no token: cannot read {path} ({exc.strerror}); give --token-file "
                         "or set STOREOPS_TOKEN (./run token create --name NAME --role viewer)") from None


def _params(args: argparse.Namespace) -> list[tuple[str, str]]:
    single = {"format": args.format, "order": args.order, "since": args.since, "until": args.until,
              "entity": args.entity, "entity_type": args.entity_type, "actor": args.actor,
              "actor_kind": args.actor_kind, "source": args.source, "topic": args.topic}
    return [(k, v) for k, v in single.items() if v is not None] + [("action", a) for a in args.action]


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    port = os.environ.get("STOREOPS_AUDIT__PORT", str(DEFAULT_PORT))
    url = (args.url or f"http://127.0.0.1:{port}").rstrip("/") + "/v1/audit/export"
    try:
        token = _token(args, settings)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    return export(url, token, _params(args), sys.stdout.buffer)


def export(url: str, token: str, params: list[tuple[str, str]], out: BinaryIO) -> int:
    """Stream the export at ``url`` into ``out``; the exit status."""
    rows = 0
    try:
        with httpx.Client(timeout=httpx.Timeout(30, read=300)) as client, client.stream(
                "GET", url, params=params, headers={"Authorization": f"Bearer {token}"}) as response:
            if response.status_code != 200:
                print(f"storeops audit export: the audit service answered {response.status_code}: "
                      f"{response.read().decode(errors='replace')[:2000]}", file=sys.stderr)
                return 1
            header = next((p.split("=", 1)[1] for p in response.headers.get("content-disposition", "").split(";")
                           if p.strip().startswith("filename=")), "").strip().strip('"')
            with tqdm(desc=f"exporting {header}".strip(), unit=" rows", file=sys.stderr, mininterval=0.5) as bar:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    lines = chunk.count(b"\n")
                    rows += lines
                    bar.update(lines)
            out.flush()
    except httpx.ConnectError as exc:
        print(f"storeops audit export: no audit service at {url}: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"storeops audit export: the stream broke after {rows} lines: {exc!r}", file=sys.stderr)
        return 1
    print(f"storeops audit export: {rows} lines written", file=sys.stderr)
    return 0
