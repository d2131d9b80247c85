"""The queue's API: read it, filter it, count it, and work on it one exception or a
thousand at a time. Every change carries the version its author read."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import Currency, Key, Money
from schemas.events import EVENT_CLASSES
from schemas.exceptions import ExceptionState, ExceptionStatus, Resolution, ResolutionReason, Snooze
from services.exceptions import store, workflow
from services.exceptions.agents import queue_of
from services.exceptions.queue import Outcome
from services.exceptions.workflow import OPEN, Refused
from storeops.service import runtime

router = APIRouter(prefix="/v1/exceptions", tags=["exceptions"])
_EVENT_TYPES = sorted(cls.__name__ for cls in EVENT_CLASSES)
Person = Annotated[str, Field(min_length=1, max_length=200, description="Who is making the change")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: Person

    @property
    def person(self) -> Actor:
        return Actor(kind="person", name=self.actor)


class _Versioned(_Body):
    version: int = Field(ge=1, description="The version you read; a stale one is refused with 409")


class SnoozeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: AwareDatetime | None = None
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
    version: int = Field(ge=1)


class BulkBody(_Body):
    action: Literal["resolve", "snooze", "reassign", "status"]
    items: list[BulkItem] = Field(min_length=1, max_length=1000)
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


class ExceptionPage(BaseModel):
    items: list[ExceptionState]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last one")


class BulkResult(BaseModel):
    done: int
    refused: int
    results: list[dict[str, Any]]


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
    since: AwareDatetime | None = Query(None, description="Last seen at or after"),
    until: AwareDatetime | None = Query(None, description="Last seen before"),
) -> dict[str, Any]:
    return {
        "status": status or sorted(OPEN), "type": type, "severity": severity, "assignee": assignee,
        "unassigned": unassigned, "entity_type": entity_type, "entity_id": entity_id, "q": q,
        "since": since, "until": until,
    }


Filters = Annotated[dict[str, Any], Depends(_filters)]


@router.get("")
async def queue(
    request: Request, filters: Filters, cursor: str | None = None, limit: int = Query(50, ge=1, le=500)
) -> ExceptionPage:
    """The queue: most severe first, then largest impact, then oldest; cursor-paginated."""
    try:
        after = store.decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        return _error(422, str(exc))
    async with runtime(request).sessions() as session:
        items = await store.page(session, filters, after, limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return ExceptionPage(items=items, next_cursor=store.encode_cursor(items[-1]) if more else None)


@router.get("/counts")
async def counts(request: Request, filters: Filters) -> dict[str, Any]:
    """How many, per bucket (type) and severity, for a dashboard."""
    async with runtime(request).sessions() as session:
        rows = await store.counts(session, filters)
    by_type: dict[str, dict[str, int]] = {}
    by_severity = {s.value: 0 for s in Severity}
    for type_, severity, n in rows:
        by_type.setdefault(type_, {})[severity] = n
        by_severity[severity] += n
    return {"total": sum(by_severity.values()), "by_severity": by_severity, "by_type": by_type}


@router.get("/{exception_id}")
async def one(request: Request, exception_id: uuid.UUID) -> ExceptionState:
    async with runtime(request).sessions() as session:
        state = await store.get_state(session, exception_id)
    if state is None:
        return _error(404, f"no exception {exception_id}")
    return state


@router.get("/{exception_id}/history")
async def history(request: Request, exception_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every change, oldest first, as published on the exceptions topic."""
    async with runtime(request).sessions() as session:
        records = await store.history(session, exception_id)
    if not records:
        return _error(404, f"no exception {exception_id}")
    return [json.loads(r) for r in records]


# --- working on one -----------------------------------------------------------------


@router.post("", status_code=201)
async def raise_exception(request: Request, body: ExceptionCreate) -> ExceptionState:
    """Raise an exception by hand; 409 names the open one for the same type and entity."""
    rt = runtime(request)
    queue = queue_of(rt)
    fields = body.model_dump(exclude={"actor"})
    change = workflow.create_by_person(fields, body.person, queue.clock(), queue.sla)
    return await _answer(queue.create(change))


@router.patch("/{exception_id}")
async def edit(request: Request, exception_id: uuid.UUID, body: ExceptionEdit) -> ExceptionState:
    """Correct severity, title or impact."""
    queue = queue_of(runtime(request))
    fields = body.model_dump(exclude={"actor", "version"}, exclude_unset=True)
    if not fields:
        return _error(422, "give at least one of severity, title, impact")
    make = lambda s, now: workflow.edit(s, fields, body.person, now, queue.sla)  # noqa: E731
    return await _answer(queue.change_one(exception_id, body.version, make))


@router.post("/{exception_id}/assign")
async def assign(request: Request, exception_id: uuid.UUID, body: AssignBody) -> ExceptionState:
    queue = queue_of(runtime(request))
    make = lambda s, now: workflow.assign(s, body.assignee, body.person, now)  # noqa: E731
    return await _answer(queue.change_one(exception_id, body.version, make))


@router.post("/{exception_id}/status")
async def set_status(request: Request, exception_id: uuid.UUID, body: StatusBody) -> ExceptionState:
    """Move through the workflow; 409 names the moves allowed from where it is."""
    queue = queue_of(runtime(request))
    return await _answer(queue.change_one(exception_id, body.version, _status_change(queue, body, body.status)))


@router.post("/{exception_id}/snooze")
async def snooze(request: Request, exception_id: uuid.UUID, body: SnoozeRequest) -> ExceptionState:
    queue = queue_of(runtime(request))
    make = partial(_transition, queue, body.person, ExceptionStatus.SNOOZED, snooze=body.model())
    return await _answer(queue.change_one(exception_id, body.version, make))


@router.post("/{exception_id}/resolve")
async def resolve(request: Request, exception_id: uuid.UUID, body: ResolveRequest) -> ExceptionState:
    queue = queue_of(runtime(request))
    make = partial(_transition, queue, body.person, ExceptionStatus.RESOLVED, resolution=body.model())
    return await _answer(queue.change_one(exception_id, body.version, make))


@router.post("/{exception_id}/callback/replay")
async def replay_callback(request: Request, exception_id: uuid.UUID, body: _Versioned) -> ExceptionState:
    """Publish the kept payment callback to the payments topic again, for processing; recorded."""
    queue = queue_of(runtime(request))
    make = lambda s, now: workflow.replay_callback(s, body.person, now)  # noqa: E731
    return await _answer(queue.replay(exception_id, body.version, make))


@router.post("/{exception_id}/callback/accept")
async def accept_callback(request: Request, exception_id: uuid.UUID, body: ResolveRequest) -> ExceptionState:
    """Close a callback failure, accepting the callback as it is; recorded with its reason."""
    queue = queue_of(runtime(request))
    make = lambda s, now: workflow.accept_callback(s, body.model(), body.person, now, queue.sla)  # noqa: E731
    return await _answer(queue.change_one(exception_id, body.version, make))


# --- working on many ----------------------------------------------------------------


@router.post("/bulk")
async def bulk(request: Request, body: BulkBody) -> BulkResult:
    """Resolve, snooze, reassign or change the status of up to 1,000 exceptions; answered per id."""
    queue = queue_of(runtime(request))
    if body.action == "reassign":
        make = lambda s, now: workflow.assign(s, body.assignee, body.person, now, "bulk request")  # noqa: E731
    elif body.action == "resolve":
        make = _status_change(queue, body, ExceptionStatus.RESOLVED)
    elif body.action == "snooze":
        make = _status_change(queue, body, ExceptionStatus.SNOOZED)
    else:
        assert body.status is not None
        make = _status_change(queue, body, body.status)
    outcomes = await queue.change_many([(i.id, i.version) for i in body.items], make)
    done = sum(1 for o in outcomes if o.outcome == "done")
    return BulkResult(done=done, refused=len(outcomes) - done, results=[_result(o) for o in outcomes])


# --- helpers -------------------------------------------------------------------------


def _status_change(queue: Any, body: StatusBody | BulkBody, to: ExceptionStatus) -> Any:
    return partial(
        _transition, queue, body.person, to,
        snooze=body.snooze.model() if body.snooze else None,
        resolution=body.resolution.model() if body.resolution else None,
        cause="bulk request" if isinstance(body, BulkBody) else "request",
    )


def _transition(queue: Any, actor: Actor, to: ExceptionStatus, state: ExceptionState, now: datetime, **kw: Any):
    return workflow.transition(state, to, actor, now, queue.sla, **kw)


def _result(o: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {"id": str(o.id), "outcome": o.outcome, "status_code": o.status_code}
    if o.version is not None:
        result["version"] = o.version
    if o.detail:
        result["detail"] = o.detail
    if o.allowed is not None:
        result["allowed"] = o.allowed
    return result


async def _answer(work: Any) -> Any:
    try:
        return await work
    except Refused as exc:
        return JSONResponse(exc.body(), status_code=exc.status_code)


def _error(status_code: int, detail: str) -> Any:
    return JSONResponse({"detail": detail}, status_code=status_code)
