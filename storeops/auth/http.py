"""Routes declare the role they need next to their definition:

    @router.post("/{id}/resolve")
    async def resolve(request: Request, body: ResolveRequest, who: Principal = requires(Role.operator)) -> ...

``requires`` verifies the bearer token (the service's own Authenticator) and
checks the role; the OpenAPI document shows the bearer scheme and the role on
every operation. ``install_roles`` refuses to build an app with a route that
declares no role, unless it is one of the open ones.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from storeops.auth.principal import Principal, Role
from storeops.auth.verify import FIELD, Authenticator
from storeops.errors import Forbidden
from storeops.http import document_error

_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="JWT",
                     description="A storeops token (`storeops token create`) or the identity provider's access token")
# Routes anyone may call: the probes, the API's own description
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/docs"})


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:
        raise RuntimeError("the app has no Authenticator (storeops.service.build_app sets it at start)")
    return auth


def requires(role: Role) -> Any:
    """A dependency: the verified principal, which must hold ``role`` (403 naming it otherwise).

    Declared as a security requirement with the role as its one entry, so the OpenAPI
    document says ``security: [{"bearer": ["operator"]}]`` (OpenAPI 3.1 lets a
    non-OAuth scheme list the roles an operation needs)."""
    async def principal(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Principal:
        who = await authenticator(request).authenticate(credentials.credentials if credentials else None)
        if not who.may(role):
            raise Forbidden(FIELD, f"needs the role {role.value}; this token's role is {who.role.value}",
                            needed_role=role.value)
        request.state.principal = who
        return who

    return Security(principal, scopes=[role.value])


def install_roles(app: FastAPI, open_paths: frozenset[str] = OPEN_PATHS) -> None:
    """Refuse an app with an operation that declares no role (unless open); say each
    operation's role in its description too, and document the answers of the check
    (401, 403, and 503 while the token list or the identity provider's keys cannot be read)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    roles = [r for requirement in operation.get("security", []) for r in requirement.get("bearer", [])]
                    if roles:
                        note = f"Role: `{roles[0]}` or one that includes it."
                        operation["description"] = f"{operation['description']}\n\n{note}" \
                            if operation.get("description") else note
                        document_error(document, operation, 401, "No token, or one that does not verify")
                        document_error(document, operation, 403, f"The token's role is not {roles[0]} or one that includes it")
                        document_error(document, operation, 503, "Something the request needs is away (the token "
                                       "list, the identity provider, the broker...); try again after Retry-After")
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    bare = [f"{method.upper()} {path}" for path, operations in openapi().get("paths", {}).items()
            if path not in open_paths for method, operation in operations.items()
            if not any(requirement.get("bearer") for requirement in operation.get("security", []))]
    if bare:
        raise RuntimeError(f"routes that declare no role (storeops.auth.requires): {', '.join(bare)}")
