"""Credentials: named secrets that webhook definitions refer to. Values go in and
never come out: every answer carries metadata only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.common import EntityType
from schemas.notifications import CredentialName
from services.notifier import store
from services.notifier.credentials import cipher_of
from services.notifier.errors import CredentialKeyError
from storeops.auth import Principal, Role, requires
from storeops.errors import NotFound, Unavailable
from storeops.http import answers
from storeops.service import runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/credentials", tags=["credentials"])
Name = Annotated[CredentialName, Path(description="Letters, digits, '_', '.', '-'; at most 100 characters")]
_UNKNOWN = answers(not_found="No credential with this name")


class CredentialPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(min_length=1, max_length=10000, repr=False, description="The secret; stored encrypted, never returned")


class CredentialPublic(BaseModel):
    name: str
    created_at: AwareDatetime
    updated_at: AwareDatetime
    updated_by: str

    @classmethod
    def of(cls, row: store.CredentialRow) -> CredentialPublic:
        return cls(name=row.name, created_at=row.created_at, updated_at=row.updated_at, updated_by=row.updated_by)


class CredentialPage(BaseModel):
    items: list[CredentialPublic]


@router.put("/{name}", responses={200: {"description": "Replaced"}, 201: {"model": CredentialPublic, "description": "Created"},
                                     **answers(unavailable="The credentials key is unusable; nothing was stored")})
async def put(request: Request, name: Name, body: CredentialPut, response: Response,
              who: Principal = requires(Role.admin)) -> CredentialPublic:
    """Store a credential, or replace its value: 201 when new, 200 when replaced."""
    rt = runtime(request)
    try:
        ciphertext = cipher_of(rt).encrypt(body.value)
    except CredentialKeyError as exc:
        log.error("credentials key unusable", extra={"error": str(exc)})
        # a server configuration problem, not the caller's: say what to fix, and that nothing was stored
        raise Unavailable("(credentials key)", f"{exc}; nothing was stored") from exc
    async with rt.sessions.begin() as session:
        created = await store.put_credential(session, name, ciphertext, who.name, datetime.now(UTC))
        await _audited(session, name, who, "credential.created" if created else "credential.replaced")
        row = await store.get_credential(session, name)
    assert row is not None  # stored in the same transaction
    log.info("credential stored", extra={"credential": name, "actor": who.name, "new": created})
    response.status_code = 201 if created else 200
    return CredentialPublic.of(row)


@router.get("")
async def credentials(request: Request, _: Principal = requires(Role.service)) -> CredentialPage:
    """Every credential's metadata, by name; never a value (admins, and services checking a name)."""
    async with runtime(request).sessions() as session:
        return CredentialPage(items=[CredentialPublic.of(r) for r in await store.list_credentials(session)])


@router.get("/{name}", responses=_UNKNOWN)
async def one(request: Request, name: Name, _: Principal = requires(Role.service)) -> CredentialPublic:
    """One credential's metadata; the rules service asks before it saves a webhook step naming it."""
    async with runtime(request).sessions() as session:
        row = await store.get_credential(session, name)
    if row is None:
        raise NotFound("name", f"unknown credential {name!r}")
    return CredentialPublic.of(row)


@router.delete("/{name}", status_code=204, responses=_UNKNOWN)
async def remove(
    request: Request, name: Name, who: Principal = requires(Role.admin)) -> Response:
    """Delete a credential; webhooks naming it are refused from then on."""
    rt = runtime(request)
    async with rt.sessions.begin() as session:
        deleted = await store.delete_credential(session, name)
        if deleted:
            await _audited(session, name, who, "credential.deleted")
    if not deleted:
        raise NotFound("name", f"unknown credential {name!r}")
    log.info("credential deleted", extra={"credential": name, "actor": who.name})
    return Response(status_code=204)


async def _audited(session: AsyncSession, name: str, who: Principal, action: str) -> None:
    """The change's audit entry, in its transaction, naming the principal (never the value)."""
    await store.OUTBOX.audit_change(session, who.actor(), action, [(EntityType.CREDENTIAL, name)])
