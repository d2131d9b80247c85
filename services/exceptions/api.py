"""The queue's API: read it, filter it, count it, and work on it one exception or a
thousand at a time. Every change carries the version its author read.

Refusals are answered in the platform's one error shape, each naming its field:
404 ``exception_id`` (no such exception), 409 ``version`` (a stale version),
409 ``status`` with ``allowed`` (a move the workflow does not allow), 422 for a
missing or bad input (``snooze``, ``snooze.until``, ``resolution.note``...).
Lists are pages: ``{"items": [...], "next_cursor": ...}``; pass ``cursor`` to go on,
``next_cursor`` is null on the last page.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import Currency, Key, Money
from schemas.events import EVENT_CLASSES
from schemas.exceptions import ExceptionState, ExceptionStatus, Resolution, ResolutionReason, Snooze
from services.exceptions import store, workflow
from services.exceptions.agents import queue_of
from services.exceptions.queue import MakeChange, Outcome, Queue
from services.exceptions.workflow import OPEN, Change
from storeops.auth import Principal, Role, requires
from storeops.errors import Invalid, NotFound, StoreopsError
from storeops.http import INT64_MAX, CursorQuery, FieldError, Page, UtcTime, answers, decode_cursor, encode_cursor, int_cursor, status_of
from storeops.service import runtime

router = APIRouter(prefix="/v1/exceptions", tags=["exceptions"])
_UNKNOWN = answers(not_found="No exception with this id")
_CHANGE = answers(not_found="No exception with this id", conflict="The exception changed since it was read (version), "
                  "or the workflow does not allow this from where it is (``allowed`` lists what it does)")
_EVENT_TYPES = sorted(cls.__name__ for cls in EVENT_CLASSES)
Worker = Annotated[Principal, requires(Role.operator)]  # works the queue
Reader = Annotated[Principal, requires(Role.viewer)]
Version = Annotated[int, Field(ge=1, le=INT64_MAX, description="The version you read; a stale one is refused with 409")]


class _Body(BaseModel):
    """A change's body. Who makes it is the authenticated principal, never a field."""

    model_config = ConfigDict(extra="forbid")


class _Versioned(_Body):
    version: Version


class SnoozeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: UtcTime | None = None
    until_event: str | None = Field(default=None, description=f"One of: {', '.join(_EVENT_TYPES)}")

    @field_validator("until_event")
    @classmethod
    def _known_event(cls, value: str | None) -> str | None:
        if value is not None and value not in _EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}; one of: {', '.join(_EVENT_TYPES)}")
        return value

    @model_validator(mode="after")
    def _needs_one(self) -> SnoozeBody:
        if self.until is None and self.until_event is None:
            raise ValueError("give until, until_event or both")
        return self

    def model(self) -> Snooze:
        return Snooze(until=self.until, until_event=self.until_event)


class ResolutionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: ResolutionReason
    note: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _other_needs_note(self) -> ResolutionBody:
        if self.reason is ResolutionReason.OTHER and not (self.note and self.note.strip()):
            raise ValueError("note: a resolution with reason 'other' needs a note")
        return self

    def model(self) -> Resolution:
        return Resolution(reason=self.reason, note=self.note)


class ExceptionCreate(_Body):
    type: ExceptionType
    severity: Severity
    title: str = Field(min_length=1, max_length=300)
    entity_type: EntityType
    entity_id: Key
    impact: Money | None = None
    currency: Currency | None = None


class ExceptionEdit(_Versioned):
    # May be left out, never null: an exception always has a severity and a title.
    severity: Severity = Field(default=None)  # type: ignore[assignment]
    title: str = Field(default=None, min_length=1, max_length=300)  # type: ignore[assignment]
    impact: Money | None = Field(default=None, description="null clears it")


class AssignBody(_Versioned):
    assignee: str | None = Field(min_length=1, max_length=200, description="null unassigns")


class StatusBody(_Versioned):
    status: ExceptionStatus
    snooze: SnoozeBody | None = Field(default=None, description="Required to snooze")
    resolution: ResolutionBody | None = Field(default=None, description="Required to resolve")


class SnoozeRequest(_Versioned, SnoozeBody):
    pass


class ResolveRequest(_Versioned, ResolutionBody):
    pass


class BulkItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    version: Version


class BulkBody(_Body):
    action: Literal["resolve", "snooze", "reassign", "status"]
    # at most exceptions.bulk_max (a setting, default 1,000): checked by the route
    items: list[BulkItem] = Field(min_length=1, description="One to exceptions.bulk_max (default 1,000) ids")
    resolution: ResolutionBody | None = None
    snooze: SnoozeBody | None = None
    assignee: str | None = Field(default=None, min_length=1, max_length=200)
    status: ExceptionStatus | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BulkBody:
        ids = [i.id for i in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("items: each id may appear once")
        if self.action == "reassign" and "assignee" not in self.model_fields_set:
            raise ValueError("assignee: required for action 'reassign' (null unassigns)")
        needs = {"resolve": "resolution", "snooze": "snooze", "status": "status"}.get(self.action)
        if needs and getattr(self, needs) is None:
            raise ValueError(f"{needs}: required for action {self.action!r}")
        if self.action == "status" and self.status in (ExceptionStatus.SNOOZED, ExceptionStatus.RESOLVED):
            extra = "snooze" if self.status is ExceptionStatus.SNOOZED else "resolution"
            if getattr(self, extra) is None:
                raise ValueError(f"{extra}: required to set status {self.status.value}")
        return self


class BulkItemResult(BaseModel):
    """One id's answer. A refused one carries the error body the single-exception route
    would have answered with: ``errors`` (each naming its field), and ``allowed`` for a
    move the workflow does not allow."""

    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    outcome: Literal["done", "refused"]
    status_code: int = Field(description="200 done; 404 no such id, 409 stale version or not allowed, 422 invalid")
    version: int | None = Field(default=None, description="The version now: after the change, or the one that stands")
    errors: list[FieldError] | None = None
    allowed: list[str] | None = Field(default=None, description="The moves allowed from where it is")


class BulkResult(BaseModel):
    done: int
    refused: int
    results: list[BulkItemResult]


# --- reading ---------------------------------------------------------------------


def _filters(
    status: Annotated[list[ExceptionStatus] | None, Query(description="Default: the open ones")] = None,
    type: Annotated[list[ExceptionType] | None, Query()] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    assignee: str | None = None,
    unassigned: bool = False,
    entity_type: EntityType | None = None,
    entity_id: str | None = Query(None, description="Only exceptions about this order id, sku, customer..."),
    q: str | None = Query(None, min_length=1, max_length=200, description="Text in the title or entity id"),
    since: UtcTime | None = Query(None, description="Last seen at or after"),
    until: UtcTime | None = Query(None, description="Last seen before"),
) -> dict[str, Any]:
    return {
        "status": status or sorted(OPEN), "type": type, "severity": severity, "assignee": assignee,
        "unassigned": unassigned, "entity_type": entity_type, "entity_id": entity_id, "q": q,
        "since": since, "until": until,
    }


Filters = Annotated[dict[str, Any], Depends(_filters)]


@router.get("")
async def queue(
    request: Request, filters: Filters, _: Reader, cursor: CursorQuery = None, limit: int = Query(50, ge=1, le=500)
) -> Page[ExceptionState]:
    """The queue: most severe first, then largest impact, then oldest; paged by cursor."""
    after = decode_cursor(cursor)
    if after is not None and not store.is_rank_key(after):
        raise Invalid("cursor", "not a cursor this service gave; use next_cursor of the previous page")
    async with runtime(request).sessions() as session:
        items = await store.page(session, filters, after, limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return Page(items=items, next_cursor=encode_cursor(store.rank_key(items[-1])) if more else None)


@router.get("/counts")
async def counts(request: Request, filters: Filters, _: Reader) -> dict[str, Any]:
    """How many, per bucket (type) and severity, for a dashboard."""
    async with runtime(request).sessions() as session:
        rows = await store.counts(session, filters)
    by_type: dict[str, dict[str, int]] = {}
    by_severity = {s.value: 0 for s in Severity}
    for type_, severity, n in rows:
        by_type.setdefault(type_, {})[severity] = n
        by_severity[severity] += n
    return {"total": sum(by_severity.values()), "by_severity": by_severity, "by_type": by_type}


@router.get("/{exception_id}", responses=_UNKNOWN)
async def one(request: Request, exception_id: uuid.UUID, _: Reader) -> ExceptionState:
    async with runtime(request).sessions() as session:
        state = await store.get_state(session, exception_id)
    if state is None:
        raise NotFound("exception_id", f"no exception {exception_id}")
    return state


@router.get("/{exception_id}/history", responses=_UNKNOWN)
async def history(
    request: Request, exception_id: uuid.UUID, _: Reader, cursor: CursorQuery = None,
    limit: int = Query(100, ge=1, le=1000),
) -> Page[dict[str, Any]]:
    """Every change, oldest first, as published on the exceptions topic; paged by cursor."""
    after = int_cursor(cursor)
    async with runtime(request).sessions() as session:
        rows = await store.history_page(session, exception_id, after, limit + 1)
        if not rows and await store.get_state(session, exception_id) is None:
            raise NotFound("exception_id", f"no exception {exception_id}")
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=[json.loads(value) for _, value in rows], next_cursor=encode_cursor(rows[-1][0]) if more else None)


# --- working on one -----------------------------------------------------------------


@router.post("", status_code=201, responses=answers(conflict="One is open already for this type and entity "
                                                          "(``open_exception`` names it)"))
async def raise_exception(request: Request, body: ExceptionCreate, who: Worker) -> ExceptionState:
    """Raise an exception by hand; 409 names the open one for the same type and entity."""
    rt = runtime(request)
    queue = queue_of(rt)
    change = workflow.create_by_person(body.model_dump(), who.actor(), queue.clock(), queue.sla)
    return await queue.create(change)


@router.patch("/{exception_id}", responses=_CHANGE)
async def edit(request: Request, exception_id: uuid.UUID, body: ExceptionEdit, who: Worker) -> ExceptionState:
    """Correct severity, title or impact."""
    queue = queue_of(runtime(request))
    fields = body.model_dump(exclude={"version"}, exclude_unset=True)
    if not fields:
        raise Invalid("(body)", "give at least one of severity, title, impact")
    make = lambda s, now: workflow.edit(s, fields, who.actor(), now, queue.sla)  # noqa: E731
    return await queue.change_one(exception_id, body.version, make)


@router.post("/{exception_id}/assign", responses=_CHANGE)
async def assign(request: Request, exception_id: uuid.UUID, body: AssignBody, who: Worker) -> ExceptionState:
    queue = queue_of(runtime(request))
    make = lambda s, now: workflow.assign(s, body.assignee, who.actor(), now)  # noqa: E731
    return await queue.change_one(exception_id, body.version, make)


@router.post("/{exception_id}/status", responses=_CHANGE)
async def set_status(request: Request, exception_id: uuid.UUID, body: StatusBody, who: Worker) -> ExceptionState:
    """Move through the workflow; 409 names the moves allowed from where it is."""
    queue = queue_of(runtime(request))
    return await queue.change_one(exception_id, body.version, _status_change(queue, who, body, body.status))


@router.post("/{exception_id}/snooze", responses=_CHANGE)
async def snooze(request: Request, exception_id: uuid.UUID, body: SnoozeRequest, who: Worker) -> ExceptionState:
    queue = queue_of(runtime(request))
    make = partial(_transition, queue, who.actor(), ExceptionStatus.SNOOZED, snooze=body.model())
    # this body is the snooze itself: the workflow's "snooze.until" is its "until"
    return await queue.change_one(exception_id, body.version, _renaming(make, "snooze."))


@router.post("/{exception_id}/resolve", responses=_CHANGE)
async def resolve(request: Request, exception_id: uuid.UUID, body: ResolveRequest, who: Worker) -> ExceptionState:
    queue = queue_of(runtime(request))
    make = partial(_transition, queue, who.actor(), ExceptionStatus.RESOLVED, resolution=body.model())
    return await queue.change_one(exception_id, body.version, _renaming(make, "resolution."))


@router.post("/{exception_id}/callback/replay", responses=_CHANGE)
async def replay_callback(request: Request, exception_id: uuid.UUID, body: _Versioned, who: Worker) -> ExceptionState:
    """Publish the kept payment callback to the payments topic again, for processing; recorded."""
    queue = queue_of(runtime(request))
    make = lambda s, now: workflow.replay_callback(s, who.actor(), now)  # noqa: E731
    return await queue.replay(exception_id, body.version, make)


@router.post("/{exception_id}/callback/accept", responses=_CHANGE)
async def accept_callback(request: Request, exception_id: uuid.UUID, body: ResolveRequest, who: Worker
                          ) -> ExceptionState:
    """Close a callback failure, accepting the callback as it is; recorded with its reason."""
    queue = queue_of(runtime(request))
    make = lambda s, now: workflow.accept_callback(s, body.model(), who.actor(), now, queue.sla)  # noqa: E731
    return await queue.change_one(exception_id, body.version, _renaming(make, "resolution."))


# --- working on many ----------------------------------------------------------------


@router.post("/bulk", response_model_exclude_none=True)
async def bulk(request: Request, body: BulkBody, who: Worker) -> BulkResult:
    """Resolve, snooze, reassign or change the status of up to ``exceptions.bulk_max`` exceptions
    (default 1,000; more is 422 naming ``items``), each at the version its author read.

    Answered 200 with one result per id, in the order given:
    ``{"id", "outcome": "done", "status_code": 200, "version": <the new version>}`` or
    ``{"id", "outcome": "refused", "status_code": 404|409|422, "version": <the one that stands>,
    "errors": [{"field", "error"}], "allowed": [...]}``: a refused item carries the status
    and the error body the single-exception route would have answered with (``allowed``
    only for a move the workflow does not allow). Fields name the item's ``id`` (no
    such exception), its ``version`` (stale) or the body part at fault (``status``,
    ``snooze.until``...).
    """
    queue = queue_of(runtime(request))
    if len(body.items) > queue.config.bulk_max:
        raise Invalid("items", f"at most {queue.config.bulk_max} ids in one request, not {len(body.items)}")
    if body.action == "reassign":
        make = lambda s, now: workflow.assign(s, body.assignee, who.actor(), now, "bulk request")  # noqa: E731
    elif body.action == "resolve":
        make = _status_change(queue, who, body, ExceptionStatus.RESOLVED)
    elif body.action == "snooze":
        make = _status_change(queue, who, body, ExceptionStatus.SNOOZED)
    else:
        assert body.status is not None
        make = _status_change(queue, who, body, body.status)
    outcomes = await queue.change_many([(i.id, i.version) for i in body.items], make)
    done = sum(1 for o in outcomes if o.done)
    return BulkResult(done=done, refused=len(outcomes) - done, results=[_result(o) for o in outcomes])


# --- helpers -------------------------------------------------------------------------


def _status_change(queue: Queue, who: Principal, body: StatusBody | BulkBody, to: ExceptionStatus) -> Any:
    return partial(
        _transition, queue, who.actor(), to,
        snooze=body.snooze.model() if body.snooze else None,
        resolution=body.resolution.model() if body.resolution else None,
        cause="bulk request" if isinstance(body, BulkBody) else "request",
    )


def _transition(
    queue: Queue, actor: Actor, to: ExceptionStatus, state: ExceptionState, now: datetime, **kw: Any
) -> Change:
    return workflow.transition(state, to, actor, now, queue.sla, **kw)


def _renaming(make: MakeChange, prefix: str) -> MakeChange:
    """For a route whose body is the snooze or the resolution itself: the workflow's
    ``snooze.until`` is the body's ``until`` (and ``snooze`` the body as a whole)."""

    def renamed(state: ExceptionState, now: datetime) -> Change:
        try:
            return make(state, now)
        except Invalid as exc:
            errors = [{**e, "field": _unprefixed(e["field"], prefix)} for e in exc.errors]
            raise Invalid(None, errors=errors, **exc.extra) from exc

    return renamed


def _unprefixed(field: str, prefix: str) -> str:
    if field == prefix.rstrip("."):
        return "(body)"
    return field.removeprefix(prefix)


def _result(o: Outcome) -> BulkItemResult:
    if o.refusal is None:
        return BulkItemResult(id=o.id, outcome="done", status_code=200, version=o.version)
    return BulkItemResult(id=o.id, outcome="refused", status_code=status_of(o.refusal), version=o.version,
                          **_item_body(o.refusal))


def _item_body(refusal: StoreopsError) -> dict[str, Any]:
    """The refusal's error body; a missing exception is named by the item's ``id``."""
    body = refusal.body()
    if isinstance(refusal, NotFound):
        body["errors"] = [{**e, "field": "id" if e["field"] == "exception_id" else e["field"]} for e in body["errors"]]
    return body
