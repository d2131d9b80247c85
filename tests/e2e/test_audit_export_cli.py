"""``storeops audit export`` against the real audit service: the order's trail on stdout as CSV and
NDJSON, a progress line on stderr, the export itself in the trail under the token's holder; a refused
token and an absent service each end with their own exit status and a message."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import uuid
from typing import Any

from storeops.auth import Role
from storeops_cli.bench.stack import BenchStack
from tests.e2e.test_exceptions_api import ingest
from tests.helpers import eventually


def export(stack: BenchStack, token: str, *args: str, url: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "STOREOPS_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "storeops_cli.cli", "audit", "export", "--url", url or stack.urls["audit"],
                           *args], env=env, capture_output=True, timeout=60)


async def trail(stack: BenchStack, **params: Any) -> list[dict[str, Any]]:
    async with stack.async_client(timeout=10) as client:
        response = await client.get(f"{stack.urls['audit']}/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_an_orders_trail_is_exported_to_stdout_and_the_export_is_in_the_trail(
        stack: BenchStack, tokens: dict[Role, str]) -> None:
    order = f"ord-{uuid.uuid4().hex[:10]}"
    ids = [await ingest(stack, "orders", {"order_id": order, "customer_id": "c-1", "total": f"{n}.00", "currency": "EUR"},
                        "OrderPlaced") for n in range(1, 4)]

    async def kept() -> list[dict[str, Any]] | None:
        items = await trail(stack, entity=order, action="order.placed")
        return items if len(items) == 3 else None
    await eventually(kept, timeout=30)

    done = export(stack, tokens[Role.viewer], "--entity", order, "--action", "order.placed", "--format", "csv")
    assert done.returncode == 0, done.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(done.stdout.decode())))
    assert [r["record_id"] for r in rows] == ids and {r["action"] for r in rows} == {"order.placed"}
    assert {(r["entity_type"], r["entity_id"], r["actor"]) for r in rows} == {("order", order, "tests")}
    assert "storeops audit export: 4 lines written" in done.stderr.decode()  # the header and three rows
    assert "exporting storeops-audit-" in done.stderr.decode()  # the progress line names the file

    ndjson = export(stack, tokens[Role.viewer], "--entity", order, "--order", "newest")
    assert ndjson.returncode == 0, ndjson.stderr.decode()
    assert [json.loads(line)["record_id"] for line in ndjson.stdout.splitlines()][-3:] == ids[::-1]

    async def exported() -> list[dict[str, Any]] | None:
        items = [i for i in await trail(stack, action="audit.exported", actor="test-viewer")
                 if (i["entry"]["after"] or {}).get("filters", {}).get("entity") == order]
        return items if len(items) == 2 else None
    first, second = await eventually(exported, timeout=30)
    assert first["entry"]["after"] == {"format": "csv", "order": "oldest",
                                       "filters": {"entity": order, "actions": ["order.placed"]}}
    assert first["entry"]["actor"]["kind"] == "person" and first["entry"]["actor"]["role"] == "viewer"
    assert second["entry"]["after"]["format"] == "ndjson" and second["topic"] == "storeops.audit.v1"


def test_a_refused_token_a_bad_filter_and_an_absent_service_end_with_a_message(
        stack: BenchStack, tokens: dict[Role, str]) -> None:
    refused = export(stack, "not-a-token", "--format", "csv")
    assert refused.returncode == 1 and refused.stdout == b""
    assert "answered 401" in refused.stderr.decode() and "Authorization" in refused.stderr.decode()

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    absent = export(stack, "x", url=f"http://127.0.0.1:{port}")
    assert absent.returncode == 2 and f"no audit service at http://127.0.0.1:{port}" in absent.stderr.decode()

    bad = export(stack, tokens[Role.viewer], "--since", "yesterday")
    assert bad.returncode == 1 and bad.stdout == b""
    assert "answered 422" in bad.stderr.decode() and '"field":"since"' in bad.stderr.decode().replace(" ", "")


def test_no_token_at_all_is_exit_status_2_naming_the_way_to_get_one(stack: BenchStack, tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STOREOPS_TOKEN"} | {"STOREOPS_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "storeops_cli.cli", "audit", "export", "--url", stack.urls["audit"]],
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 2 and "no token" in done.stderr.decode() and "token create" in done.stderr.decode()
