"""Every HTTP route of every service, tried as an attacker would, on PostgreSQL and on SQLite.

The routes come from each service's own OpenAPI document, so a route added
later is attacked too. Each route gets, in its path parameters, its query
parameters and its body: NUL characters, integers far beyond 64 bits, floats
that overflow, very long strings, deep nesting, garbage cursors, bodies that
are not JSON or not declared JSON, and bodies over the size limit (with and
without a Content-Length). Then schemathesis generates requests from the same
documents, some that fit the schema (which reach the database) and some that
do not.

Every answer must be below 500, and every 4xx must be the one error shape:
``{"errors": [{"field", "error"}, ...]}``, small whatever was sent, naming the
field (a NUL names the parameter or the body path it was found at). The
services run as processes with a broker and a database of their own.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from services import SERVICES, load_spec
from storeops.errors import excerpt
from storeops.service import build_app
from storeops_cli.bench.stack import BenchStack
from tests.helpers import isolated_stack

pytestmark = pytest.mark.e2e

# examples schemathesis generates per route and mode; raise it for a deeper run
EXAMPLES = int(os.environ.get("STOREOPS_TEST_FUZZ_EXAMPLES", "15"))
# an error answer stays this small whatever the request was
MAX_ERROR_BYTES = 64 * 1024
OVERSIZE = 6 * 1024 * 1024  # above every service's body limit (ingest's is 5 MiB)


@dataclass(frozen=True)
class Operation:
    service: str
    method: str
    path: str
    spec: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.path}"

    def parameters(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == where]

    @property
    def takes_body(self) -> bool:
        return "requestBody" in self.spec


def _operations() -> list[Operation]:
    found = []
    for service in SERVICES:
        document = build_app(load_spec(service)).openapi()
        for path, methods in document["paths"].items():
            for method, spec in methods.items():
                found.append(Operation(service, method.upper(), path, spec))
    return found


DOCUMENTS = {service: build_app(load_spec(service)).openapi() for service in SERVICES}
OPERATIONS = _operations()
WITH_PATH = [o for o in OPERATIONS if o.parameters("path")]
WITH_QUERY = [o for o in OPERATIONS if o.parameters("query")]
WITH_BODY = [o for o in OPERATIONS if o.takes_body]


def opaque(raw: bytes) -> str:
    """A string shaped like our cursors holding ``raw`` (no page of ours would give it)."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


NUL = "a\x00b"
VALUES = {
    "huge integer": "9" * 30,
    "huge negative": "-" + "9" * 30,
    "float overflow": "1e400",
    "not a number": "NaN",
    "long": "x" * 4000,
    "empty": "",
    "unicode": "Å\u202eº\U0001f600",
    "traversal": "../../etc/passwd",
}
CURSORS = {
    "not base64": "!!!***",
    "truncated JSON": opaque(b'{"a":'),
    "float overflow": opaque(b"[1e400]"),
    "huge integer": opaque(b"99999999999999999999999"),
    "negative": opaque(b"-1"),
    "wrong shape": opaque(b'{"x": [1, 2]}'),
    "null": opaque(b"null"),
    "long": "A" * 5000,
}


@dataclass
class Target:
    stack: BenchStack
    known: dict[str, str]  # a real id for each path parameter name

    def url(self, op: Operation, **override: str) -> str:
        path = op.path
        for p in op.parameters("path"):
            value = override.get(p["name"], self.known.get(p["name"], "1"))
            path = path.replace("{" + p["name"] + "}", quote(value, safe=""))
        return self.stack.urls[op.service] + path


def _seed(stack: BenchStack) -> dict[str, str]:
    """One of each thing a path names, so attacks reach real rows too."""
    with httpx.Client(timeout=30) as client:
        rule = client.post(f"{stack.urls['rules']}/v1/rules", json={"actor": "dana", "id": f"hostile-{uuid.uuid4().hex[:8]}",
                                                                    "definition": {
            "name": "Big orders", "trigger": {"event_types": ["OrderPlaced"]},
            "conditions": {"all": [{"path": "data.total", "op": "ge", "value": 1000}]},
            "actions": [{"id": "raise", "type": "create_exception", "exception_type": "vip", "severity": "High",
                         "title": "Big order {{ data.order_id }}"}]}})
        assert rule.status_code == 201, rule.text
        exception = client.post(f"{stack.urls['exceptions']}/v1/exceptions", json={
            "actor": "dana", "type": "address_problem", "severity": "Low", "title": "zip code missing",
            "entity_type": "order", "entity_id": f"ord-{uuid.uuid4().hex[:8]}"})
        assert exception.status_code == 201, exception.text
        credential = f"hostile-{uuid.uuid4().hex[:8]}"
        put = client.put(f"{stack.urls['notifier']}/v1/credentials/{credential}", json={"value": "s3cret", "actor": "dana"})
        assert put.status_code in (200, 201), put.text
        request_id = str(uuid.uuid4())
        handed = client.post(f"{stack.urls['notifier']}/v1/requests", json={"requests": [{
            "request_id": request_id, "run_id": str(uuid.uuid4()), "step_id": "notify", "event_id": str(uuid.uuid4()),
            "rule": {"rule_id": "high-value-order", "rule_version": 1, "mode": "LIVE"},
            "message": {"channel": "in_app", "recipients": ["dana"], "title": "Big order", "body": "ord-1", "severity": "High"}}]})
        assert handed.status_code == 200, handed.text
    return {"rule_id": rule.json()["id"], "version": "1", "exception_id": exception.json()["id"], "name": credential,
            "request_id": request_id, "run_id": str(uuid.uuid4()), "kind": "orders"}


@pytest.fixture(scope="module", params=["suite database", "sqlite"])
def target(request: pytest.FixtureRequest, database_url: str) -> Iterator[Target]:
    with isolated_stack(request.param, database_url, "storeops_hostile_http") as stack:
        yield Target(stack, _seed(stack))
        died = [c for c in stack.children.values() if c.proc and c.proc.poll() is not None]
        assert not died, "\n".join(f"{c.name} died ({c.proc.returncode}):\n{c.log_tail()}" for c in died if c.proc)


def check(response: httpx.Response | requests.Response, what: str) -> list[dict[str, Any]]:
    """No 5xx; a 4xx is small and in the one error shape. Returns its errors."""
    status = response.status_code
    assert status < 500, f"{what}: {status} {response.text[:2000]}"
    if status < 400:
        return []
    assert len(response.content) <= MAX_ERROR_BYTES, f"{what}: a {len(response.content)}-byte error answer"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], f"{what}: {body}"
    for error in body["errors"]:
        assert isinstance(error.get("field"), str) and error["field"], f"{what}: {error}"
        assert isinstance(error.get("error"), str) and error["error"], f"{what}: {error}"
    return body["errors"]


def refused_nul(response: httpx.Response, field: str, what: str) -> None:
    errors = check(response, what)
    assert response.status_code == 422, f"{what}: {response.status_code} {response.text[:500]}"
    assert [e["field"] for e in errors] == [field] and "NUL" in errors[0]["error"], f"{what}: {errors}"


# --- path parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", WITH_PATH, ids=str)
def test_hostile_path_parameters_are_refused_by_name(target: Target, op: Operation) -> None:
    with httpx.Client(timeout=60) as client:
        for p in op.parameters("path"):
            body = {} if op.takes_body else None
            nul = client.request(op.method, target.url(op, **{p["name"]: NUL}), json=body)
            refused_nul(nul, "(path)", f"{op} {p['name']}=NUL")
            for label, value in VALUES.items():
                if value == "":
                    continue  # an empty segment is another route
                response = client.request(op.method, target.url(op, **{p["name"]: value}), json=body)
                check(response, f"{op} {p['name']}={label}")


# --- query parameters --------------------------------------------------------------------------


@pytest.mark.parametrize("op", WITH_QUERY, ids=str)
def test_hostile_query_parameters_are_refused_by_name(target: Target, op: Operation) -> None:
    url = target.url(op)
    with httpx.Client(timeout=60) as client:
        for p in op.parameters("query"):
            name = p["name"]
            refused_nul(client.request(op.method, url, params={name: NUL}), name, f"{op} {name}=NUL")
            values = {**VALUES, **(CURSORS if name == "cursor" else {})}
            for label, value in values.items():
                response = client.request(op.method, url, params={name: value})
                errors = check(response, f"{op} {name}={label}")
                if response.status_code == 422:  # a repeatable parameter names the occurrence: status[0]
                    assert all(e["field"] == name or e["field"].startswith(f"{name}[") for e in errors), \
                        f"{op} {name}={label}: {errors}"
            check(client.request(op.method, url, params=[(name, "1"), (name, "9" * 30)]), f"{op} {name} twice")


def test_an_unknown_query_parameter_with_a_nul_is_refused_everywhere(target: Target) -> None:
    with httpx.Client(timeout=30) as client:
        for op in OPERATIONS:
            refused_nul(client.request(op.method, target.url(op), params={"x\x00": "1"}), excerpt("x\x00"),
                        f"{op} unknown parameter")


# --- bodies ------------------------------------------------------------------------------------


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


RAW_BODIES: dict[str, tuple[str | None, bytes, int]] = {
    # label: (content type, body, expected status)
    "text/plain": ("text/plain", b"hello", 415),
    "no content type": (None, b"{}", 415),
    "form": ("application/x-www-form-urlencoded", b"a=1&b=2", 415),
    "truncated JSON": ("application/json", b'{"a": ', 422),
    "not UTF-8": ("application/json", b'{"a": "\xff\xfe"}', 422),
    "array": ("application/json", b"[]", 422),
    "null": ("application/json", b"null", 422),
    "string": ("application/json", b'"s"', 422),
    "float overflow": ("application/json", b"1e400", 422),
    "5000-digit integer": ("application/json", b'{"a": 1' + b"0" * 5000 + b"}", 422),
    "nested 100,000 deep (arrays)": ("application/json", b"[" * 100_000 + b"]" * 100_000, 422),
    "nested 50,000 deep (objects)": ("application/json", _deep(50_000), 422),
    "NUL as an escape": ("application/json", b'{"a": "x\\u0000y"}', 422),
    "NUL as a raw byte": ("application/json", b'{"a": "x\x00y"}', 422),
}


def _property_names(op: Operation) -> list[str]:
    """The body's top-level fields (of its first form, when it has several)."""
    schema = op.spec["requestBody"]["content"]["application/json"]["schema"]
    components = DOCUMENTS[op.service].get("components", {}).get("schemas", {})
    while "$ref" in schema or "oneOf" in schema:
        schema = schema["oneOf"][0] if "oneOf" in schema else components[schema["$ref"].rsplit("/", 1)[-1]]
    return list(schema.get("properties", {})) or ["a"]


FIELD_VALUES: dict[str, Any] = {
    "integer beyond 64 bits": 10**30,
    "negative beyond 64 bits": -(10**30),
    "float overflow": float("inf"),  # sent as the literal 1e400, which JSON decoders read as infinity
    "200,000-character string": "x" * 200_000,
    "nested 3,000 deep": json.loads("[" * 900 + "]" * 900),
    "object": {"$where": "1"},
}


def _json(value: Any) -> bytes:
    return json.dumps(value).replace("Infinity", "1e400").encode()


@pytest.mark.parametrize("op", WITH_BODY, ids=str)
def test_hostile_bodies_are_refused_with_the_field(target: Target, op: Operation) -> None:
    url = target.url(op)
    with httpx.Client(timeout=60) as client:
        for label, (kind, raw, expected) in RAW_BODIES.items():
            headers = {"content-type": kind} if kind else {}
            response = client.request(op.method, url, content=raw, headers=headers)
            errors = check(response, f"{op} body {label}")
            assert response.status_code == expected, f"{op} body {label}: {response.status_code} {errors}"
        for name in _property_names(op):
            refused_nul(client.request(op.method, url, json={name: NUL}), name, f"{op} {name}=NUL")
            refused_nul(client.request(op.method, url, json={name: {"deeper": [NUL]}}), f"{name}.deeper[0]",
                        f"{op} {name}.deeper[0]=NUL")
            for label, value in FIELD_VALUES.items():
                response = client.request(op.method, url, content=_json({name: value}),
                                          headers={"content-type": "application/json"})
                check(response, f"{op} {name}={label}")


@pytest.mark.parametrize("op", WITH_BODY, ids=str)
def test_oversized_bodies_are_refused_before_they_are_read(target: Target, op: Operation) -> None:
    url = target.url(op)
    chunk = b"x" * 65536

    def stream() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(OVERSIZE // len(chunk)):
            yield chunk
        yield b'"}'

    with httpx.Client(timeout=60) as client:
        declared = client.request(op.method, url, content=b'{"a": "' + b"x" * OVERSIZE + b'"}',
                                  headers={"content-type": "application/json"})
        assert declared.status_code == 413 and check(declared, f"{op} oversized")[0]["field"] == "(body)"
        chunked = client.request(op.method, url, content=stream(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and check(chunked, f"{op} oversized, chunked")[0]["field"] == "(body)"


# --- generated from the OpenAPI documents ------------------------------------------------------


def _negatable(op: Operation) -> bool:
    """Whether a request can break this route's schema (a free string in the path cannot)."""
    return bool(op.parameters("query")) or op.takes_body or any(
        p.get("schema", {}).get("type") not in (None, "string") for p in op.parameters("path"))


GENERATED = [pytest.param(op, GenerationMode.POSITIVE, id=f"{op}-positive") for op in OPERATIONS] + [
    pytest.param(op, GenerationMode.NEGATIVE, id=f"{op}-negative") for op in OPERATIONS if _negatable(op)]


@pytest.mark.parametrize(("op", "mode"), GENERATED)
def test_generated_requests_never_meet_a_server_error(target: Target, op: Operation, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENTS[op.service])
    operation = schema[op.path][op.method]
    base = target.stack.urls[op.service]
    known = {p["name"]: target.known[p["name"]] for p in op.parameters("path") if p["name"] in target.known}
    strategies = [operation.as_strategy(generation_mode=mode)]
    if known and mode is GenerationMode.POSITIVE:
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=known))
    with requests.Session() as session:
        for strategy in strategies:
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def attack(case: Any) -> None:
                response = case.call(base_url=base, session=session, timeout=60)
                check(response, f"{op} {case.as_curl_command()[:3000]}")

            attack()
