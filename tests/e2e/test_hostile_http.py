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

Who may ask, from the same documents (each operation's ``security``,
``[{"bearer": ["operator"]}]``): every route but ``/healthz``, ``/readyz`` and
``/metrics`` answers 401 with ``WWW-Authenticate`` to a request without a
token, or with one that is forged, unsigned, expired or never issued; a token
whose role is not enough gets 403 naming ``needed_role`` (a viewer on every
route that changes something), one whose role is enough never does. The
generated requests carry an admin token; the hostile inputs are sent with each
role's token: a role too low may be refused with 403 before its input is
looked at, except by the request guard in front of every route (413, 415, NUL),
which answers alike whoever asks.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services import SERVICES, load_spec
from storeops import auth
from storeops.auth import Role
from storeops.auth.principal import SATISFIES
from storeops.errors import excerpt
from storeops.service import build_app
from storeops_cli.bench.stack import BenchStack
from tests.helpers import bearer, isolated_stack

pytestmark = pytest.mark.e2e

# examples schemathesis generates per route and mode; raise it for a deeper run
EXAMPLES = int(os.environ.get("STOREOPS_TEST_FUZZ_EXAMPLES", "15"))
# an error answer stays this small whatever the request was
MAX_ERROR_BYTES = 64 * 1024
OVERSIZE = 6 * 1024 * 1024  # above every service's body limit (ingest's is 5 MiB)
OPEN = frozenset({"/healthz", "/readyz", "/metrics"})  # the only routes anyone may call without a token
ROLES = [pytest.param(role, id=role.value) for role in Role]


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

    @property
    def role(self) -> Role | None:
        """The role its ``security`` declares (None: an open route)."""
        roles = [r for requirement in self.spec.get("security", []) for r in requirement.get("bearer", [])]
        assert len(roles) <= 1, f"{self}: {roles}"
        return Role(roles[0]) if roles else None

    def admits(self, role: Role) -> bool:
        return self.role is None or role in SATISFIES[self.role]


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
    "before year 1 in UTC": "0001-01-01T00:00:00+00:01",  # schemathesis found it: a time the database cannot keep
    "after 9999 in UTC": "9999-12-31T23:59:59-00:01",
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
    tokens: dict[Role, str]  # one per role, listed where the stack verifies tokens

    def url(self, op: Operation, **override: str) -> str:
        path = op.path
        for p in op.parameters("path"):
            value = override.get(p["name"], self.known.get(p["name"], "1"))
            path = path.replace("{" + p["name"] + "}", quote(value, safe=""))
        return self.stack.urls[op.service] + path


def _seed(stack: BenchStack) -> dict[str, str]:
    """One of each thing a path names, so attacks reach real rows too."""
    with httpx.Client(timeout=30, headers=stack.headers) as client:
        rule = client.post(f"{stack.urls['rules']}/v1/rules", json={"id": f"hostile-{uuid.uuid4().hex[:8]}",
                                                                    "definition": {
            "name": "Big orders", "trigger": {"event_types": ["OrderPlaced"]},
            "conditions": {"all": [{"path": "data.total", "op": "ge", "value": 1000}]},
            "actions": [{"id": "raise", "type": "create_exception", "exception_type": "vip", "severity": "High",
                         "title": "Big order {{ data.order_id }}"}]}})
        assert rule.status_code == 201, rule.text
        exception = client.post(f"{stack.urls['exceptions']}/v1/exceptions", json={
            "type": "address_problem", "severity": "Low", "title": "zip code missing",
            "entity_type": "order", "entity_id": f"ord-{uuid.uuid4().hex[:8]}"})
        assert exception.status_code == 201, exception.text
        credential = f"hostile-{uuid.uuid4().hex[:8]}"
        put = client.put(f"{stack.urls['notifier']}/v1/credentials/{credential}", json={"value": "s3cret"})
        assert put.status_code in (200, 201), put.text
        request_id = str(uuid.uuid4())
        handed = client.post(f"{stack.urls['notifier']}/v1/requests", json={"requests": [{
            "request_id": request_id, "run_id": str(uuid.uuid4()), "step_id": "notify", "event_id": str(uuid.uuid4()),
            "rule": {"rule_id": "high-value-order", "rule_version": 1, "mode": "LIVE"},
            "message": {"channel": "in_app", "recipients": ["dana"], "title": "Big order", "body": "ord-1", "severity": "High"}}]})
        assert handed.status_code == 200, handed.text
        notifier = stack.urls["notifier"]
        endpoint = client.post(f"{notifier}/v1/webhook-endpoints", json={"url": "https://hooks.example/hostile"})
        assert endpoint.status_code == 201, endpoint.text
        subscription = client.post(f"{notifier}/v1/subscriptions", json={"event_types": ["stock.low"]})
        assert subscription.status_code == 201, subscription.text
        member = client.put(f"{notifier}/v1/subscriptions/teams/hostile/members/dana")
        assert member.status_code in (200, 201), member.text
        webhook = client.post(f"{notifier}/v1/requests", json={"requests": [{
            "request_id": str(uuid.uuid4()), "message": {"channel": "webhook", "url": "https://hooks.example/rule"}}]})
        assert webhook.status_code == 200, webhook.text
        [delivery] = client.get(f"{notifier}/v1/deliveries", params={"channel": "webhook", "limit": 1}).json()["items"]
        [note] = client.get(f"{notifier}/v1/notifications", params={"recipient": "dana"}).json()["items"]
    return {"rule_id": rule.json()["id"], "version": "1", "exception_id": exception.json()["id"], "name": credential,
            "request_id": request_id, "run_id": str(uuid.uuid4()), "kind": "orders", "endpoint_id": endpoint.json()["id"],
            "subscription_id": subscription.json()["id"], "team": "hostile", "member": "dana",
            "delivery_id": delivery["id"], "notification_id": note["id"]}


@pytest.fixture(scope="module", params=["suite database", "sqlite"])
def target(request: pytest.FixtureRequest, database_url: str, tokens: dict[Role, str]) -> Iterator[Target]:
    # the notifier's live stream ends at once (event reconnect), so every request to it gets a whole answer
    with isolated_stack(request.param, database_url, "storeops_hostile_http",
                        {"STOREOPS_NOTIFIER__STREAM_LIFETIME_SECONDS": "0"}) as stack:
        yield Target(stack, _seed(stack), tokens)
        died = [c for c in stack.children.values() if c.proc and c.proc.poll() is not None]
        assert not died, "\n".join(f"{c.name} died ({c.proc.returncode}):\n{c.log_tail()}" for c in died if c.proc)


def check(response: httpx.Response | requests.Response, what: str, op: Operation | None = None,
          role: Role | None = None) -> list[dict[str, Any]]:
    """No 5xx; a 4xx is small and in the one error shape. Returns its errors.

    Sent with a token of ``role`` to ``op``: never 401 (the token is good), and a 403 names a
    ``needed_role`` the token does not satisfy: the route's own when its role is not enough."""
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
    if role is not None:
        assert op is not None
        assert status != 401, f"{what} with a {role.value} token: {response.text[:500]}"
        if status == 403:
            refused_role(response, f"{what} with a {role.value} token")
            assert role not in SATISFIES[Role(body["needed_role"])], f"{what} with a {role.value} token: {body}"
            if not op.admits(role):
                assert op.role is not None and body["needed_role"] == op.role.value, f"{what}: {body}"
    return body["errors"]


def refused_role(response: httpx.Response | requests.Response, what: str) -> None:
    """403 in the one shape, naming ``Authorization`` and the role needed."""
    body = response.json()
    assert response.status_code == 403, f"{what}: {response.status_code} {response.text[:500]}"
    assert [e["field"] for e in body["errors"]] == ["Authorization"], f"{what}: {body}"
    assert body.get("needed_role") in {r.value for r in Role}, f"{what}: {body}"


def expected(response: httpx.Response, status: int, what: str, op: Operation, role: Role) -> list[dict[str, Any]]:
    """``status``, or (for a role too low for ``op``) the 403 that may come first."""
    errors = check(response, what, op, role)
    if response.status_code == 403 and not op.admits(role):
        return errors
    assert response.status_code == status, f"{what} with a {role.value} token: {response.status_code} {errors}"
    return errors


def refused_nul(response: httpx.Response, field: str, what: str, op: Operation | None = None,
                role: Role | None = None) -> None:
    """422 naming where the NUL is: the request guard's answer, whoever asks."""
    errors = check(response, what, op, role)
    assert response.status_code == 422, f"{what}: {response.status_code} {response.text[:500]}"
    assert [e["field"] for e in errors] == [field] and "NUL" in errors[0]["error"], f"{what}: {errors}"


# --- who may ask -------------------------------------------------------------------------------


def _not_ours(target: Target) -> dict[str, str]:
    """Tokens no service may accept: each says Authorization, and why not."""
    good = target.stack.token
    claims = jwt.decode(good, options={"verify_signature": False})
    viewer = jwt.decode(target.tokens[Role.viewer], options={"verify_signature": False})
    key = auth.load_key(Path(os.environ["STOREOPS_AUTH__KEY_FILE"]))  # the suite's: the stack's services verify with it
    now = int(time.time())
    return {
        "no Authorization": "",
        "another scheme": "Basic YWRtaW46YWRtaW4=",
        "a bearer without a token": "Bearer",
        "not a JWT": "Bearer not-a-token",
        "forged (another key)": "Bearer " + jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA"),
        "unsigned (alg none)": "Bearer " + jwt.encode(claims, None, algorithm="none"),
        # the viewer's listed token signed again with the key, claiming admin: the list's role decides
        "a role it was not issued with": "Bearer " + jwt.encode({**viewer, "role": "admin"}, key, algorithm="EdDSA"),
        "expired": "Bearer " + jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, key, algorithm="EdDSA"),
        "never issued": "Bearer " + jwt.encode({**claims, "jti": str(uuid.uuid4())}, key, algorithm="EdDSA"),
        "a service token past five minutes": "Bearer " + jwt.encode(
            {"iss": "storeops", "sub": "rules", "role": "service", "jti": f"svc-{uuid.uuid4()}", "svc": True,
             "iat": now, "exp": now + 3600}, key, algorithm="EdDSA"),
    }


def test_every_route_but_the_probes_and_metrics_answers_401_without_a_good_token(target: Target) -> None:
    refused = _not_ours(target)
    open_routes: set[tuple[str, str]] = set()
    with httpx.Client(timeout=30) as client:
        for op in OPERATIONS:
            body = {} if op.takes_body else None
            if op.path in OPEN:
                assert op.role is None and op.method == "GET", f"{op}: {op.spec.get('security')}"
                response = client.request(op.method, target.url(op))
                assert response.status_code == 200, f"{op} without a token: {response.status_code} {response.text[:500]}"
                open_routes.add((op.service, op.path))
                continue
            assert op.role is not None, f"{op} declares no role"
            for label, authorization in refused.items():
                headers = {"Authorization": authorization} if authorization else {}
                response = client.request(op.method, target.url(op), json=body, headers=headers)
                errors = check(response, f"{op} {label}")
                assert response.status_code == 401, f"{op} {label}: {response.status_code} {errors}"
                assert response.headers.get("www-authenticate", "").startswith("Bearer"), f"{op} {label}: {response.headers}"
                assert [e["field"] for e in errors] == ["Authorization"], f"{op} {label}: {errors}"
    assert open_routes == {(service, path) for service in SERVICES for path in OPEN}


def _unknown(op: Operation) -> dict[str, str]:
    """A value for each path parameter that names nothing there (a refusal must come from the role,
    and an allowed request must change nothing)."""
    return {p["name"]: "999999" if p.get("schema", {}).get("type") == "integer" else str(uuid.uuid4())
            for p in op.parameters("path")}


@pytest.mark.parametrize("role", ROLES)
def test_each_route_admits_the_roles_its_document_declares_and_refuses_the_others(target: Target, role: Role) -> None:
    token = target.tokens[role]
    guarded = [op for op in OPERATIONS if op.path not in OPEN]
    if role is Role.viewer:  # a viewer reads; everything that changes something needs more
        assert all(not op.admits(Role.viewer) for op in guarded if op.method != "GET"), \
            [str(op) for op in guarded if op.method != "GET" and op.admits(Role.viewer)]
    with httpx.Client(timeout=30, headers=bearer(token)) as client:
        for op in guarded:
            body = {} if op.takes_body else None
            response = client.request(op.method, target.url(op, **_unknown(op)), json=body)
            what = f"{op} with a {role.value} token"
            check(response, what, op, role)
            if op.admits(role):
                assert response.status_code not in (401, 403), f"{what}: {response.status_code} {response.text[:500]}"
            else:
                refused_role(response, what)
                assert op.role is not None and response.json()["needed_role"] == op.role.value, f"{what}: {response.text}"


# --- path parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", WITH_PATH, ids=str)
def test_hostile_path_parameters_are_refused_by_name(target: Target, op: Operation, role: Role) -> None:
    with httpx.Client(timeout=60, headers=bearer(target.tokens[role])) as client:
        for p in op.parameters("path"):
            body = {} if op.takes_body else None
            nul = client.request(op.method, target.url(op, **{p["name"]: NUL}), json=body)
            refused_nul(nul, "(path)", f"{op} {p['name']}=NUL", op, role)
            for label, value in VALUES.items():
                if value == "":
                    continue  # an empty segment is another route
                response = client.request(op.method, target.url(op, **{p["name"]: value}), json=body)
                check(response, f"{op} {p['name']}={label}", op, role)


# --- query parameters --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", WITH_QUERY, ids=str)
def test_hostile_query_parameters_are_refused_by_name(target: Target, op: Operation, role: Role) -> None:
    url = target.url(op)
    with httpx.Client(timeout=60, headers=bearer(target.tokens[role])) as client:
        for p in op.parameters("query"):
            name = p["name"]
            refused_nul(client.request(op.method, url, params={name: NUL}), name, f"{op} {name}=NUL", op, role)
            values = {**VALUES, **(CURSORS if name == "cursor" else {})}
            for label, value in values.items():
                response = client.request(op.method, url, params={name: value})
                errors = check(response, f"{op} {name}={label}", op, role)
                if response.status_code == 422:  # a repeatable parameter names the occurrence: status[0]
                    assert all(e["field"] == name or e["field"].startswith(f"{name}[") for e in errors), \
                        f"{op} {name}={label}: {errors}"
            check(client.request(op.method, url, params=[(name, "1"), (name, "9" * 30)]), f"{op} {name} twice", op, role)


@pytest.mark.parametrize("role", ROLES)
def test_an_unknown_query_parameter_with_a_nul_is_refused_everywhere(target: Target, role: Role) -> None:
    with httpx.Client(timeout=30, headers=bearer(target.tokens[role])) as client:
        for op in OPERATIONS:
            refused_nul(client.request(op.method, target.url(op), params={"x\x00": "1"}), excerpt("x\x00"),
                        f"{op} unknown parameter", op, role)


# --- bodies ------------------------------------------------------------------------------------


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# what the request guard refuses, in front of every route: the same answer whoever asks
GUARDED = frozenset({"text/plain", "no content type", "form", "NUL as an escape", "NUL as a raw byte"})
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


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", WITH_BODY, ids=str)
def test_hostile_bodies_are_refused_with_the_field(target: Target, op: Operation, role: Role) -> None:
    url = target.url(op)
    with httpx.Client(timeout=60, headers=bearer(target.tokens[role])) as client:
        for label, (kind, raw, status) in RAW_BODIES.items():
            headers = {"content-type": kind} if kind else {}
            response = client.request(op.method, url, content=raw, headers=headers)
            what = f"{op} body {label}"
            if label in GUARDED:
                errors = check(response, what, op, role)
                assert response.status_code == status, f"{what} with a {role.value} token: {response.status_code} {errors}"
            else:
                expected(response, status, what, op, role)
        for name in _property_names(op):
            refused_nul(client.request(op.method, url, json={name: NUL}), name, f"{op} {name}=NUL", op, role)
            refused_nul(client.request(op.method, url, json={name: {"deeper": [NUL]}}), f"{name}.deeper[0]",
                        f"{op} {name}.deeper[0]=NUL", op, role)
            for label, value in FIELD_VALUES.items():
                response = client.request(op.method, url, content=_json({name: value}),
                                          headers={"content-type": "application/json"})
                check(response, f"{op} {name}={label}", op, role)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", WITH_BODY, ids=str)
def test_oversized_bodies_are_refused_before_they_are_read(target: Target, op: Operation, role: Role) -> None:
    url = target.url(op)
    chunk = b"x" * 65536

    def stream() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(OVERSIZE // len(chunk)):
            yield chunk
        yield b'"}'

    with httpx.Client(timeout=60, headers=bearer(target.tokens[role])) as client:
        declared = client.request(op.method, url, content=b'{"a": "' + b"x" * OVERSIZE + b'"}',
                                  headers={"content-type": "application/json"})
        assert declared.status_code == 413 and check(declared, f"{op} oversized", op, role)[0]["field"] == "(body)"
        chunked = client.request(op.method, url, content=stream(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and check(chunked, f"{op} oversized, chunked", op, role)[0]["field"] == "(body)"


# --- generated from the OpenAPI documents ------------------------------------------------------


def _negatable(op: Operation) -> bool:
    """Whether a request can break this route's schema (a free string in the path cannot)."""
    return bool(op.parameters("query")) or op.takes_body or any(
        p.get("schema", {}).get("type") not in (None, "string") for p in op.parameters("path"))


def _without_security(document: dict[str, Any]) -> dict[str, Any]:
    """The document as schemathesis generates from it: without its security requirements, so that
    every generated request carries the admin token passed to it and a negative one breaks a
    parameter or the body, not the Authorization header (no token, or a bad one, is tried on
    every route above)."""
    stripped = copy.deepcopy(document)
    for operations in stripped["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    stripped.get("components", {}).pop("securitySchemes", None)
    return stripped


CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]
GENERATING = {service: _without_security(document) for service, document in DOCUMENTS.items()}
GENERATED = [pytest.param(op, GenerationMode.POSITIVE, id=f"{op}-positive") for op in OPERATIONS] + [
    pytest.param(op, GenerationMode.NEGATIVE, id=f"{op}-negative") for op in OPERATIONS if _negatable(op)]


@pytest.mark.parametrize(("op", "mode"), GENERATED)
def test_generated_requests_never_meet_a_server_error(target: Target, op: Operation, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_dict(GENERATING[op.service])
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
                response = case.call(base_url=base, session=session, headers=target.stack.headers, timeout=60)
                assert response.request.headers.get("Authorization") == target.stack.headers["Authorization"]
                check(response, f"{op} {case.as_curl_command()[:3000]}", op, Role.admin)
                # and the answer is one the document declares: its status, content type, headers and body schema
                case.validate_response(response, checks=CONFORMANCE)

            attack()
