"""The inbox: each principal's notifications (their own, their teams', the default team's
Critical and High ones) by cursor, their state per principal, counts, and the live stream.

A team's notification has a state per member: one member reading it reads it for
themselves only (Novu's inbox keeps seen / read / archived per subscriber the same way).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.common import EntityType
from services.notifier import mail, stream
from services.notifier.settings import notifier_config
from services.notifier.store import (
    OUTBOX,
    Audience,
    NotificationRow,
    NotificationStateRow,
    inbox_after,
    inbox_counts,
    last_seq,
    mark,
    state_of,
    unread_ids,
    visible_notification,
)
from services.notifier.subscriptions import DEFAULT_SEVERITIES, teams_of
from services.notifier.trouble import role_feed
from storeops.auth import Principal, Role, requires
from storeops.errors import NotFound
from storeops.http import CursorQuery, answers, encode_cursor, int_cursor
from storeops.service import Runtime, runtime

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

State = Literal["unread", "seen", "read", "archived"]
Severity = Literal["Critical", "High", "Medium", "Low"]
RecipientQuery = Query(None, max_length=200, description="Read this recipient's feed (a person or a team) instead of "
                       "your inbox; the states shown are still yours")
READ_ALL_LIMIT = 10000  # read-all marks at most this many at a time; ask again while ``marked`` is this many


async def audience_of(rt: Runtime[Any], session: AsyncSession, who: Principal, recipient: str | None = None) -> Audience:
    """Whose notifications ``who`` reads: their inbox, or ``recipient``'s feed."""
    config = notifier_config(rt.settings)
    # and the feed of their role: delivery trouble goes to role:admin (services.notifier.trouble)
    mine = frozenset({who.name, role_feed(who.role), *await teams_of(session, who.name)})
    return Audience(who.name, mine, config.default_recipient, DEFAULT_SEVERITIES | set(config.critical_severities),
                    only=recipient)


def item(row: NotificationRow, state: NotificationStateRow | None) -> dict[str, Any]:
    return {"cursor": encode_cursor(row.seq), "id": str(row.id), "channel": row.channel, "recipient": row.recipient,
            "kind": row.kind, "title": row.title, "body": row.body, "severity": row.severity,
            "exception_id": str(row.exception_id) if row.exception_id else None, "created_at": row.created_at.isoformat(),
            "state": state_of(state)}


@router.get("")
async def feed(
    request: Request,
    cursor: CursorQuery = None,
    recipient: str | None = RecipientQuery,
    state: State | None = Query(None, description="Only notifications in this state (for you)"),
    severity: Severity | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = requires(Role.viewer),
) -> dict[str, Any]:
    """Your notifications after ``cursor``, oldest first, each with its state for you.

    Each item carries its own ``cursor``: a client that was away asks again with the
    cursor of the last item it saw and misses nothing. ``next_cursor`` is the cursor
    of the next page while more may follow, null when this page is the last.
    """
    after = int_cursor(cursor) or 0
    rt = runtime(request)
    async with rt.sessions() as session:
        audience = await audience_of(rt, session, who, recipient)
        rows = await inbox_after(session, audience, after, limit, state, severity)
    items = [item(row, st) for row, st in rows]
    return {"items": items, "next_cursor": items[-1]["cursor"] if len(items) == limit else None}


@router.get("/counts")
async def counts(request: Request, recipient: str | None = RecipientQuery,
                 who: Principal = requires(Role.viewer)) -> dict[str, Any]:
    """How many of your notifications are unread and unseen (archived ones are neither), and unread by severity."""
    rt = runtime(request)
    async with rt.sessions() as session:
        return await inbox_counts(session, await audience_of(rt, session, who, recipient))


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
async def live(
    request: Request,
    cursor: CursorQuery = None,
    last_event_id: str | None = Header(None, max_length=2000, description="The id of the last event received: "
                                       "the stream resumes after it (wins over cursor)"),
    who: Principal = requires(Role.viewer),
) -> StreamingResponse:
    """Your notifications as Server-Sent Events (event ``notification``, id = the item's cursor): first
    what came after ``Last-Event-ID`` (or ``cursor``; neither: only what comes next), then live.
    A comment line every few seconds keeps proxies from closing an idle stream. A client too far
    behind receives event ``reconnect`` and should reconnect with its last event id."""
    rt = runtime(request)
    hub = stream.hub_of(rt)
    resume = int_cursor(last_event_id, "Last-Event-ID") if last_event_id else int_cursor(cursor)
    async with rt.sessions() as session:
        audience = await audience_of(rt, session, who)
    after = resume if resume is not None else await _now(hub)
    return StreamingResponse(stream.events(hub, audience, after, item), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _now(hub: stream.Hub) -> int:
    async with hub.sessions() as session:
        return await last_seq(session)


async def _mark(request: Request, who: Principal, notification_id: uuid.UUID, how: str) -> dict[str, Any]:
    rt = runtime(request)
    now = datetime.now(UTC)
    async with rt.sessions.begin() as session:
        audience = await audience_of(rt, session, who)
        row = await visible_notification(session, audience, notification_id)
        if row is None:
            raise NotFound("notification_id", "no notification with this id in your inbox")
        await mark(session, who.name, [notification_id], how, now)
        action = {"seen": "notification.seen", "read": "notification.read", "archive": "notification.archived"}[how]
        await OUTBOX.audit_change(session, who.actor(), action, [(EntityType.NOTIFICATION, str(notification_id)),
                                                                 (EntityType.PRINCIPAL, who.name)])
        if how == "read":
            await mail.forget(session, [notification_id], enabled=notifier_config(rt.settings).digest_drops_read)
        [(row, state)] = [(r, s) for r, s in await inbox_after(session, audience, row.seq - 1, 1)]
    return item(row, state)


@router.post("/{notification_id}/seen", responses=answers(not_found="No notification with this id in your inbox"))
async def seen(request: Request, notification_id: uuid.UUID, who: Principal = requires(Role.operator)) -> dict[str, Any]:
    """Mark one notification seen (for you)."""
    return await _mark(request, who, notification_id, "seen")


@router.post("/{notification_id}/read", responses=answers(not_found="No notification with this id in your inbox"))
async def read(request: Request, notification_id: uuid.UUID, who: Principal = requires(Role.operator)) -> dict[str, Any]:
    """Mark one notification read (and so seen), for you."""
    return await _mark(request, who, notification_id, "read")


@router.post("/{notification_id}/archive", responses=answers(not_found="No notification with this id in your inbox"))
async def archive(request: Request, notification_id: uuid.UUID, who: Principal = requires(Role.operator)) -> dict[str, Any]:
    """Archive one notification (for you): it leaves the unread and unseen counts."""
    return await _mark(request, who, notification_id, "archive")


@router.post("/read-all")
async def read_all(request: Request, up_to: CursorQuery = None, who: Principal = requires(Role.operator)) -> dict[str, Any]:
    """Mark every notification of your inbox read, or those up to the cursor ``up_to`` (an item's
    cursor: one that came after it stays unread). ``marked`` says how many."""
    last = int_cursor(up_to, "up_to")
    rt = runtime(request)
    async with rt.sessions.begin() as session:
        audience = await audience_of(rt, session, who)
        ids = await unread_ids(session, audience, last, READ_ALL_LIMIT)
        await mark(session, who.name, ids, "read", datetime.now(UTC))
        await mail.forget(session, ids, enabled=notifier_config(rt.settings).digest_drops_read)
        await OUTBOX.audit_change(session, who.actor(), "notification.read_all", [(EntityType.PRINCIPAL, who.name)],
                                  None, {"marked": len(ids), "up_to": up_to})
    return {"marked": len(ids)}
