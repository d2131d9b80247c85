"""Requests from other services: the rules service hands over its notification,
e-mail and webhook steps here.

Each request is committed before the answer, which says per request, in order:
``accepted`` (new), ``duplicate`` (stored before: a retried hand-over) or
``refused`` and why (then nothing is stored). In-app messages land in the feed
at once and are announced on the notifications topic after the commit, for
duplicates too: ids are deterministic, so announcing again is harmless and
covers a crash between the commit and the announcement.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.actions import RuleRef
from schemas.notifications import (
    Channel,
    InAppMessage,
    NotificationCreated,
    NotifyRequest,
    NotifyRequestBatch,
    NotifyResult,
    WebhookMessage,
)
from schemas.registry import NOTIFICATIONS
from services.notifier import intake, ledger, metrics, store
from services.notifier.intake import StoredStatus
from services.notifier.settings import notifier_config
from services.notifier.state import state_of
from storeops import outbound
from storeops.auth import Principal, Role, requires
from storeops.errors import NotFound, Unavailable
from storeops.http import answers
from storeops.outbound import Network
from storeops.service import runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/requests", tags=["requests"])


class NotifyResponse(BaseModel):
    results: list[NotifyResult]


class NotifyRequestPublic(BaseModel):
    """A stored request and where its delivery stands."""

    request_id: uuid.UUID
    channel: Channel
    status: str
    attempts: int
    message: dict[str, Any]
    rule: RuleRef | None
    run_id: uuid.UUID | None
    step_id: str | None
    event_id: uuid.UUID | None
    created_at: AwareDatetime

    @classmethod
    def of(cls, row: store.NotifyRequestRow) -> NotifyRequestPublic:
        rule = RuleRef(rule_id=row.rule_id, rule_version=row.rule_version, mode=row.rule_mode) if row.rule_id else None
        return cls(request_id=row.request_id, channel=row.channel, status=row.status, attempts=row.attempts,
                   message=row.message, rule=rule, run_id=row.run_id, step_id=row.step_id, event_id=row.event_id,
                   created_at=row.created_at)


class NotifyRequestPage(BaseModel):
    items: list[NotifyRequestPublic]


@router.post("", responses=answers(unavailable="Stored, but the broker did not acknowledge the in-app announcements"))
async def hand_over(request: Request, body: NotifyRequestBatch, _: Principal = requires(Role.service)) -> NotifyResponse:
    """Store each request (idempotent on ``request_id``) and answer for each, in order."""
    rt = runtime(request)
    unsafe = await asyncio.to_thread(_unsafe_webhooks, body.requests, rt.settings.outbound.networks)
    smtp = ledger.smtp_route(notifier_config(rt.settings).smtp_url)
    async with rt.sessions.begin() as session:
        results, notes = await _store(session, body.requests, datetime.now(UTC), unsafe, smtp)
    state_of(rt).deliveries_due.set()
    _count(body.requests, results)
    try:
        await rt.emitter.emit(NOTIFICATIONS, notes)
    except KafkaError as exc:
        log.warning("in-app notifications stored but not announced", extra={"notifications": len(notes), "error": repr(exc)})
        raise Unavailable(
            "(broker)", "stored, but the broker did not acknowledge the in-app notifications; hand the same requests "
                        "over again to announce them", results=[r.model_dump(mode="json") for r in results]) from exc
    return NotifyResponse(results=results)


@router.get("")
async def stored_requests(
    request: Request,
    channel: Channel | None = None,
    status: StoredStatus | None = Query(None, description="accepted: waiting for delivery; delivered: done; dead: its retries exhausted"),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = requires(Role.viewer),
) -> NotifyRequestPage:
    """Stored requests, newest first."""
    async with runtime(request).sessions() as session:
        rows = await store.list_requests(session, channel, status, limit)
    return NotifyRequestPage(items=[NotifyRequestPublic.of(r) for r in rows])


@router.get("/{request_id}", responses=answers(not_found="No request with this id"))
async def one(request: Request, request_id: uuid.UUID, _: Principal = requires(Role.viewer)) -> NotifyRequestPublic:
    async with runtime(request).sessions() as session:
        row = await store.get_request(session, request_id)
    if row is None:
        raise NotFound("request_id", f"unknown request {request_id}")
    return NotifyRequestPublic.of(row)


def _unsafe_webhooks(requests: Sequence[NotifyRequest], allow: Sequence[Network]) -> dict[uuid.UUID, str]:
    """The webhook requests whose URL would reach inside, and why (names are resolved: blocking).
    Refused here, and checked again when the delivery sends them."""
    return {r.request_id: why for r in requests if isinstance(r.message, WebhookMessage)
            and (why := outbound.refusal(str(r.message.url), allow)) is not None}


async def _store(
    session: AsyncSession, requests: Sequence[NotifyRequest], now: datetime, unsafe: dict[uuid.UUID, str], smtp_route: str
) -> tuple[list[NotifyResult], list[NotificationCreated]]:
    """Store the new requests, the feed rows of the in-app ones and the deliveries of the others (in the
    ledger, in the same transaction); the answers and what to announce."""
    stored = await store.stored_request_ids(session, [r.request_id for r in requests])
    credentials = await store.credential_names(session, sorted(intake.credentials_named(requests)))
    sorted_ = intake.sort_requests(requests, stored, credentials, unsafe)
    inserted = await store.add_requests(session, [intake.request_row(r, now) for r in sorted_.to_store])
    results = sorted_.settle(inserted)
    await ledger.enqueue_all(session, (d for r in sorted_.to_store if r.request_id in inserted
                                       and (d := intake.delivery_of(r, smtp_route)) is not None), now)
    # Built from the stored rows, so a duplicate is announced exactly as it was the first time.
    order = {r.request_id: i for i, r in enumerate(results) if r.status != "refused"}
    rows = sorted(await store.requests_by_id(session, list(order)), key=lambda row: order[row.request_id])
    notes = [n for row in rows if row.channel == "in_app" for n in _in_app(row)]
    metrics.STORED.labels("in_app").inc(await store.add_notifications(session, notes))
    return results, notes


def _in_app(row: store.NotifyRequestRow) -> list[NotificationCreated]:
    return intake.in_app_notifications(row.request_id, InAppMessage.model_validate(row.message), row.created_at, row.event_id)


def _count(requests: Sequence[NotifyRequest], results: Sequence[NotifyResult]) -> None:
    for request, result in zip(requests, results, strict=True):
        metrics.REQUESTS.labels(request.message.channel, result.status).inc()
