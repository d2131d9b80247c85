"""Identity and access in the platform: tokens verified by the service itself, roles,
revocation, service tokens, an OpenID Connect provider over real HTTP, the OpenAPI
document, and no token in any log line."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, FastAPI, Request

from storeops import auth
from storeops.auth import Principal, Role, requires
from storeops.auth import tokens as auth_tokens
from storeops.db import make_engine
from storeops.service import ServiceSpec, build_app, runtime
from storeops.settings import KafkaSettings, Settings
from storeops_cli.broker import RunningBroker, free_port
from tests.helpers import bearer

router = APIRouter(prefix="/v1")


@router.get("/read")
async def read(who: Principal = requires(Role.viewer)) -> dict[str, Any]:
    return who.record()


@router.post("/work")
async def work(who: Principal = requires(Role.operator)) -> dict[str, Any]:
    return who.record()


@router.post("/admin")
async def administer(who: Principal = requires(Role.admin)) -> dict[str, Any]:
    return who.record()


@router.post("/service")
async def serve(who: Principal = requires(Role.service)) -> dict[str, Any]:
    return who.record()


@router.get("/own-token")
async def own_token(request: Request, who: Principal = requires(Role.admin)) -> dict[str, str]:
    auth_ = runtime(request).auth
    assert auth_ is not None
    return {"token": auth_.service_token()}


SPEC: ServiceSpec[None] = ServiceSpec(name="authtest", settings=Settings, routers=(router,))
ROUTES = {"/v1/read": ("GET", Role.viewer), "/v1/work": ("POST", Role.operator), "/v1/admin": ("POST", Role.admin),
          "/v1/service": ("POST", Role.service)}


def settings_for(broker: RunningBroker, tmp: Any, **auth_settings: Any) -> Settings:
    return Settings(data_dir=tmp, kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor),
                    auth=Settings().auth.model_copy(update=auth_settings))


@pytest.fixture
async def make_api(broker: RunningBroker, tmp_path: Any) -> AsyncIterator[Any]:
    stack = []

    async def make(**auth_settings: Any) -> httpx.AsyncClient:
        app = build_app(SPEC, settings_for(broker, tmp_path, **auth_settings))
        context = app.router.lifespan_context(app)
        await context.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://authtest")
        stack.append((context, client))
        return client

    yield make
    for context, client in reversed(stack):
        await client.aclose()
        await context.__aexit__(None, None, None)


@pytest.fixture
async def api(make_api: Any) -> httpx.AsyncClient:
    return await make_api()


def assert_refused(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "Authorization" and fragment in error["error"], error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def issue(database_url: str, name: str, role: Role, expires_in: timedelta | None = None) -> tuple[str, str]:
    key = auth.load_key(Settings().auth_key_file())
    engine = make_engine(database_url)
    try:
        token, row = await auth_tokens.issue(engine, key, name, role, "test", expires_in)
    finally:
        await engine.dispose()
    return token, row.id


async def revoke(database_url: str, name_or_id: str) -> None:
    engine = make_engine(database_url)
    try:
        assert await auth_tokens.revoke(engine, name_or_id)
    finally:
        await engine.dispose()


# --- who may do what --------------------------------------------------------------------------


async def test_each_role_reaches_what_it_may_and_is_told_which_role_it_lacks(api: httpx.AsyncClient,
                                                                            tokens: dict[Role, str]) -> None:
    allowed = {Role.viewer: {Role.viewer}, Role.operator: {Role.viewer, Role.operator},
               Role.admin: set(Role), Role.service: {Role.viewer, Role.service}}
    for holder, token in tokens.items():
        for path, (method, needed) in ROUTES.items():
            response = await api.request(method, path, headers=bearer(token))
            if needed in allowed[holder]:
                assert response.status_code == 200, (holder, path, response.text)
                assert response.json() == {"name": f"test-{holder.value}", "role": holder.value,
                                           "token_id": response.json()["token_id"], "via": "token"}
            else:
                assert_refused(response, 403, f"needs the role {needed.value}")
                assert response.json()["needed_role"] == needed.value


async def test_no_token_a_foreign_one_or_garbage_is_401_with_www_authenticate(api: httpx.AsyncClient,
                                                                              tokens: dict[Role, str]) -> None:
    assert_refused(await api.get("/v1/read"), 401, "Bearer")
    assert_refused(await api.get("/v1/read", headers={"Authorization": f"Basic {tokens[Role.admin]}"}), 401, "Bearer")
    assert_refused(await api.get("/v1/read", headers=bearer("not.a.token")), 401, "not a token")
    foreign = jwt.encode({"iss": "storeops", "sub": "mallory", "role": "admin", "jti": str(uuid.uuid4()), "iat": 0},
                         Ed25519PrivateKey.generate(), algorithm="EdDSA")
    assert_refused(await api.get("/v1/read", headers=bearer(foreign)), 401, "does not verify")
    unsigned = jwt.encode({"iss": "storeops", "sub": "mallory", "role": "admin", "jti": "x", "iat": 0}, None,
                          algorithm="none")
    assert_refused(await api.get("/v1/read", headers=bearer(unsigned)), 401, "does not verify")
    other_issuer = jwt.encode({"iss": "https://idp.example", "sub": "m"}, "s" * 32, algorithm="HS256")
    assert_refused(await api.get("/v1/read", headers=bearer(other_issuer)), 401, "not a token")
    # the health probes stay open, and so does /metrics by default
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api.get(path)).status_code in (200, 503), path


async def test_without_a_token_the_body_is_not_even_looked_at(api: httpx.AsyncClient, tokens: dict[Role, str]) -> None:
    # what the guard would refuse for its body is 401 first: an anonymous caller learns nothing of the body's rules
    for kind, body in (("text/plain", b"hello"), ("application/json", b'{"a": "\\u0000"}'),
                       ("application/json", b"x" * (2 * 1024 * 1024))):
        assert_refused(await api.post("/v1/work", content=body, headers={"content-type": kind}), 401, "Bearer")
    assert_refused(await api.get("/v1/no-such-route"), 401, "Bearer")  # nor which routes exist
    too_big = await api.post("/v1/work", content=b"x" * (2 * 1024 * 1024),
                             headers={"content-type": "application/json", **bearer(tokens[Role.operator])})
    assert too_big.status_code == 413  # with a token, the guard answers as before


async def test_a_token_made_after_start_works_at_once_and_an_expired_one_does_not(api: httpx.AsyncClient,
                                                                                  migrated: str) -> None:
    token, _ = await issue(migrated, f"ana-{uuid.uuid4().hex[:6]}", Role.operator)
    assert (await api.post("/v1/work", headers=bearer(token))).status_code == 200  # an id not seen yet is looked up
    expired, _ = await issue(migrated, "short", Role.operator, timedelta(seconds=-60))
    assert_refused(await api.post("/v1/work", headers=bearer(expired)), 401, "expired")


async def test_a_revoked_token_stops_within_the_refresh_period(make_api: Any, migrated: str) -> None:
    api = await make_api(refresh_seconds=1.0)
    token, token_id = await issue(migrated, f"bo-{uuid.uuid4().hex[:6]}", Role.viewer)
    assert (await api.get("/v1/read", headers=bearer(token))).status_code == 200
    await revoke(migrated, token_id)
    deadline = time.monotonic() + 5
    while (response := await api.get("/v1/read", headers=bearer(token))).status_code == 200:
        assert time.monotonic() < deadline, "still accepted 5 s after it was revoked (refresh every 1 s)"
        await asyncio.sleep(0.1)
    assert_refused(response, 401, "revoked")


async def test_a_service_presents_its_own_short_token(api: httpx.AsyncClient, tokens: dict[Role, str]) -> None:
    own = (await api.get("/v1/own-token", headers=bearer(tokens[Role.admin]))).json()["token"]
    claims = jwt.decode(own, options={"verify_signature": False})
    assert claims["role"] == "service" and claims["sub"] == "authtest" and claims["exp"] - claims["iat"] <= 300
    answer = await api.post("/v1/service", headers=bearer(own))
    assert answer.status_code == 200 and answer.json()["via"] == "service"
    assert_refused(await api.post("/v1/work", headers=bearer(own)), 403, "needs the role operator")
    key = auth.load_key(Settings().auth_key_file())
    lasting = auth_tokens.sign(key, {**claims, "exp": claims["iat"] + 86_400})  # a day: no unlisted token lives that long
    assert_refused(await api.post("/v1/service", headers=bearer(lasting)), 401, "does not verify")
    admin_claim = auth_tokens.sign(key, {**claims, "role": "admin"})
    assert_refused(await api.post("/v1/admin", headers=bearer(admin_claim)), 401, "does not verify")


async def test_a_listed_token_whose_claims_were_changed_does_not_verify(api: httpx.AsyncClient, migrated: str) -> None:
    token, _ = await issue(migrated, "cy", Role.viewer)
    claims = jwt.decode(token, options={"verify_signature": False})
    key = auth.load_key(Settings().auth_key_file())
    promoted = auth_tokens.sign(key, {**claims, "role": "admin"})  # signed right, but the list says viewer
    assert_refused(await api.post("/v1/admin", headers=bearer(promoted)), 401, "does not verify")


# --- an OpenID Connect provider ---------------------------------------------------------------


class Provider:
    """An identity provider's JWKS over real HTTP, and its access tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks = {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}
        app = FastAPI()
        app.get("/jwks")(lambda: jwks)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.issuer = f"http://127.0.0.1:{self.port}/realms/shop"

    def token(self, audience: str = "storeops", **claims: Any) -> str:
        now = int(time.time())
        return jwt.encode({"iss": self.issuer, "aud": audience, "sub": "u-1", "iat": now, "exp": now + 300, **claims},
                          self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    running = Provider()
    running.thread.start()
    while not running.server.started:
        time.sleep(0.02)
    yield running
    running.server.should_exit = True
    running.thread.join()


async def test_an_identity_providers_tokens_verify_with_the_role_from_a_claim(make_api: Any, provider: Provider) -> None:
    api = await make_api(oidc_issuer=provider.issuer, oidc_audience="storeops",
                         oidc_jwks_url=f"http://127.0.0.1:{provider.port}/jwks", oidc_role_claim="realm_access.roles")
    dana = provider.token(preferred_username="dana", realm_access={"roles": ["offline_access", "operator", "viewer"]})
    answer = await api.post("/v1/work", headers=bearer(dana))
    assert answer.status_code == 200 and answer.json() == {"name": "dana", "role": "operator", "token_id": "u-1",
                                                          "via": "oidc"}
    assert_refused(await api.post("/v1/admin", headers=bearer(dana)), 403, "needs the role admin")
    no_role = provider.token(preferred_username="eve", realm_access={"roles": ["offline_access"]})
    assert_refused(await api.get("/v1/read", headers=bearer(no_role)), 403, "names no storeops role")
    assert_refused(await api.get("/v1/read", headers=bearer(provider.token(audience="another-app"))), 401, "does not verify")
    expired = provider.token(exp=int(time.time()) - 120, realm_access={"roles": ["admin"]})
    assert_refused(await api.get("/v1/read", headers=bearer(expired)), 401, "expired")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": provider.issuer, "aud": "storeops", "sub": "m", "exp": int(time.time()) + 60,
                         "realm_access": {"roles": ["admin"]}}, stranger, algorithm="RS256", headers={"kid": provider.kid})
    assert_refused(await api.get("/v1/read", headers=bearer(forged)), 401, "does not verify")


def test_openid_connect_settings_come_complete() -> None:
    with pytest.raises(ValueError, match="missing oidc_audience, oidc_jwks_url"):
        Settings(auth={"oidc_issuer": "https://idp.example"})


# --- the OpenAPI document, /metrics, routes without a role, the logs ------------------------------


def test_every_operation_shows_its_role_and_a_route_without_one_is_refused(broker: RunningBroker, tmp_path: Any) -> None:
    document = build_app(SPEC, settings_for(broker, tmp_path)).openapi()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": document["components"][
            "securitySchemes"]["bearer"]["description"]}
    for path, (method, role) in ROUTES.items():
        operation = document["paths"][path][method.lower()]
        assert operation["security"] == [{"bearer": [role.value]}] and f"Role: `{role.value}`" in operation["description"]
    assert "security" not in document["paths"]["/healthz"]["get"]

    bare = APIRouter()
    bare.get("/v1/open-by-mistake")(lambda: {})
    with pytest.raises(RuntimeError, match="GET /v1/open-by-mistake"):
        build_app(ServiceSpec(name="authtest", settings=Settings, routers=(bare,)), settings_for(broker, tmp_path))


async def test_metrics_can_require_a_token(make_api: Any, tokens: dict[Role, str]) -> None:
    api = await make_api(metrics_require_token=True)
    assert_refused(await api.get("/metrics"), 401, "Bearer")
    assert (await api.get("/metrics", headers=bearer(tokens[Role.viewer]))).status_code == 200


async def test_no_token_reaches_a_log_line_or_an_error_body(api: httpx.AsyncClient, tokens: dict[Role, str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    for token in (*tokens.values(), "eyJhbGciOiJFZERTQSJ9.e30.c2ln"):
        for path, (method, _) in ROUTES.items():
            response = await api.request(method, path, headers=bearer(token))
            seen.append(response.text)
    everything = "\n".join([*seen, caplog.text])
    for token in tokens.values():
        assert token not in everything and token.split(".")[2] not in everything


def test_the_signing_key_is_made_once_with_mode_0600(tmp_path: Any) -> None:
    path = tmp_path / "keys" / "auth.key"
    first = auth.ensure_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.ensure_key(path).private_bytes_raw() == first.private_bytes_raw()
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(auth.SigningKeyError, match="not a PEM private key"):
        auth.load_key(tmp_path / "bad.key")
    with pytest.raises(auth.SigningKeyError, match="storeops token create"):
        auth.load_key(tmp_path / "missing.key")


def test_tokens_name_what_they_may_be_called(migrated: str) -> None:
    with pytest.raises(ValueError, match="token name"):
        asyncio.run(issue(migrated, "has space", Role.viewer))
