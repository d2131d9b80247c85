"""The rules API: write rules as data, version them, move them through their
lifecycle, try them on one event or a past window, and read their runs.

Every change names its ``actor``, leaves a history row and an audit record
(published once committed), and reloads the rules this process runs. A
definition is checked in full before it is saved; each problem is answered with
a pointer into the body (``definition.conditions.all[0].op``).
"""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator,
)

from schemas.actions import RuleMode, RuleRunData, RunStatus
from schemas.audit import ManualChangeData, ManualChangeRecorded
from schemas.common import Actor, EntityType
from schemas.envelope import Envelope
from schemas.events import EVENT_CLASSES
from schemas.registry import AUDIT
from schemas.rules import RuleDefinition, RuleId, RuleStatus, RuleSummary
from services.rules import backtest, checks, lifecycle, store
from services.rules.compiler import CompiledRule
from services.rules.conditions import MISSING
from services.rules.engine import simulate
from services.rules.errors import DefinitionError
from services.rules.lifecycle import Change, Entry, Refused, RuleState
from services.rules.registry import RulesState, reload_rules
from services.rules.settings import RulesConfig
from storeops.errors import field_errors, field_path
from storeops.http import field_error_route
from storeops.service import Runtime, runtime

log = logging.getLogger(__name__)
Person = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
_EVENTS: TypeAdapter[Envelope] = TypeAdapter(Annotated[Union[EVENT_CLASSES], Field(discriminator="type")])
_SOURCES = frozenset({"body", "query", "path", "header"})
_NAMED = re.compile(r"^([a-z_]+): (.+)$", re.DOTALL)


def _request_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    out = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        loc = loc[1:] if loc and loc[0] in _SOURCES else loc
        message = error["msg"].removeprefix("Value error, ")
        named = _NAMED.match(message) if not loc else None  # a check across fields names its field first
        if error.get("type") == "json_invalid":
            out.append({"field": "(body)", "error": "not valid JSON"})
        elif named:
            out.append({"field": named[1], "error": named[2]})
        else:
            out.append({"field": field_path(loc), "error": message})
    return out


# Validation failures answered as ``{"detail": [{"field", "error"}]}``.
router = APIRouter(prefix="/v1/rules", tags=["rules"], route_class=field_error_route(_request_errors))


# --- bodies and answers ------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Change(_Body):
    actor: Person = Field(description="Who is making the change (a person's name)")


class RuleCreate(_Change):
    id: RuleId | None = Field(default=None, description="Default: a slug of the name and a short suffix")
    definition: dict[str, Any]
    status: Literal["draft", "active"] = "draft"


class RuleEdit(_Change):
    definition: dict[str, Any]
    version: int = Field(ge=1, description="The version you read; a stale one is refused with 409")


class StatusBody(_Change):
    status: RuleStatus


class ModeBody(_Change):
    mode: RuleMode
    note: str | None = Field(default=None, max_length=2000)


class _RuleOrDraft(_Body):
    rule_id: RuleId | None = Field(default=None, description="A stored rule, at its current version")
    definition: dict[str, Any] | None = Field(default=None, description="Or a definition not saved yet")

    @model_validator(mode="after")
    def _one(self) -> _RuleOrDraft:
        if (self.rule_id is None) == (self.definition is None):
            raise ValueError("give exactly one of rule_id and definition")
        return self


class TryBody(_RuleOrDraft):
    event: dict[str, Any] = Field(description="A store event as ingest accepts it")
    previous: dict[str, Any] | None = Field(default=None, description="Previous values by path, for stateful operators")


class BacktestBody(_RuleOrDraft):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: AwareDatetime = Field(alias="from", description="Events that happened at or after this time...")
    end: AwareDatetime = Field(alias="to", description="...and before this one")
    limit: int = Field(default=100_000, ge=1, le=1_000_000, description="Records to read at most")
    sample: int = Field(default=50, ge=0, le=1000, description="How many of the runs to return")

    @model_validator(mode="after")
    def _window(self) -> BacktestBody:
        if self.end <= self.start:
            raise ValueError("to: must be after from")
        return self


class RuleVersionPublic(BaseModel):
    rule_id: str
    version: int
    definition: RuleDefinition
    created_at: datetime
    created_by: str


class RuleChangePublic(BaseModel):
    seq: int
    rule_id: str
    version: int
    kind: str
    actor: str
    at: datetime
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None


class RunPage(BaseModel):
    items: list[RuleRunData]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last one")


class TryResult(BaseModel):
    matched: bool
    reason: str | None
    run: RuleRunData | None


# --- runs (before /{rule_id}, which would take "runs" for an id) --------------------


@router.get("/runs")
async def all_runs(
    request: Request, rule_id: str | None = None, status: RunStatus | None = None, mode: RuleMode | None = None,
    since: AwareDatetime | None = None, until: AwareDatetime | None = None, limit: int = Query(100, ge=1, le=1000),
) -> list[RuleRunData]:
    """Recorded runs of every rule (or one), newest event first."""
    filters = store.RunFilters(rule_id, status, mode, since, until)
    async with runtime(request).sessions() as session:
        return [run for _, run in await store.list_runs(session, filters, limit)]


@router.get("/runs/{run_id}")
async def one_run(request: Request, run_id: uuid.UUID) -> RuleRunData:
    async with runtime(request).sessions() as session:
        run = await store.get_run(session, run_id)
    return run if run is not None else _error(404, f"no run {run_id}")


# --- trying a rule ------------------------------------------------------------------


@router.post("/test")
async def try_rule(request: Request, body: TryBody) -> TryResult:
    """Evaluate a stored rule or a draft against one event, as a DRY_RUN: nothing is written or emitted."""
    try:
        event = _EVENTS.validate_python(body.event)
    except ValidationError as exc:
        return _invalid([{"field": f"event.{e['field']}", "error": e["error"]} for e in field_errors(exc)])
    rule = await _rule_to_try(runtime(request), body)
    if isinstance(rule, Response):
        return rule
    previous = {path: _number(value) for path, value in (body.previous or {}).items()}
    run, reason = simulate(rule, event, lambda path: previous.get(path, MISSING), datetime.now(UTC))
    return TryResult(matched=run is not None, reason=reason, run=run)


@router.post("/backtest")
async def backtest_rule(request: Request, body: BacktestBody) -> dict[str, Any]:
    """What a rule would have done over a past window of the event topics; nothing is written or emitted."""
    rt = runtime(request)
    rule = await _rule_to_try(rt, body)
    if isinstance(rule, Response):
        return rule
    config: RulesConfig = rt.settings.rules
    replay = backtest.Replay(rule, body.start, body.end, body.sample)
    try:
        tally = await backtest.scan(rt.settings.kafka, replay, body.limit, timedelta(seconds=config.backtest_late_seconds))
    except KafkaError as exc:
        return _error(503, f"cannot read the event topics from the broker at {rt.settings.kafka.bootstrap_servers}: "
                           f"{type(exc).__name__}")
    return tally.answer()


async def _rule_to_try(rt: Runtime[RulesState], body: _RuleOrDraft) -> CompiledRule | Response:
    if body.definition is not None:
        try:
            return checks.compiled("draft", 1, "DRY_RUN", checks.parse(body.definition))
        except DefinitionError as exc:
            return _invalid(exc.errors)
    async with rt.sessions() as session:
        found = await store.get_summary(session, body.rule_id)
    if found is None:
        return _error(404, f"no rule {body.rule_id}")
    try:  # a simulation: the run says DRY_RUN whatever mode the rule is in
        return checks.compiled(found.id, found.version, "DRY_RUN", found.definition)
    except DefinitionError as exc:  # stored before a check it now fails
        return _invalid(exc.errors)


def _number(value: Any) -> Any:
    """JSON numbers with a fraction become Decimals, as on an event."""
    return Decimal(str(value)) if isinstance(value, float) else value


# --- rules ----------------------------------------------------------------------------


@router.get("")
async def rules(request: Request, status: RuleStatus | None = None, mode: RuleMode | None = None) -> list[RuleSummary]:
    async with runtime(request).sessions() as session:
        return await store.list_rules(session, status, mode)


@router.post("", status_code=201)
async def create_rule(request: Request, body: RuleCreate) -> RuleSummary:
    """A new rule at version 1, dry-running; 409 if the id is taken."""
    rt = runtime(request)
    try:
        definition = await checks.checked(body.definition, body.id or "draft", 1, rt.settings.rules.notifier_url)
    except DefinitionError as exc:
        return _invalid(exc.errors)
    except checks.NotifierUnavailable as exc:
        return _error(503, str(exc))
    now = datetime.now(UTC)
    entry = lifecycle.created(body.status)
    async with rt.sessions.begin() as session:
        rule_id = await _insert(session, body.id, definition, body.status, body.actor, now)
        if rule_id is None:
            return _error(409, f"rule {body.id} exists already")
        await store.add_changes(session, [_history_row(rule_id, entry, body.actor, now)])
        created = await store.get_summary(session, rule_id)
    await _changed(rt, rule_id, body.actor, [entry], now)
    return created


async def _insert(session: Any, rule_id: str | None, definition: RuleDefinition, status: str, actor: str,
                  now: datetime) -> str | None:
    """The new rule's id, or None if the id asked for is taken (a generated one is tried anew)."""
    for _ in range(3):
        candidate = rule_id or _new_id(definition.name)
        if await store.add_rule(session, store.new_rule_row(candidate, status, actor, now), definition):
            return candidate
        if rule_id:
            return None
    raise RuntimeError("three generated rule ids in a row were taken")


def _new_id(name: str) -> str:
    """``High-value orders`` → ``high-value-orders-3f9a1c``."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", plain).strip("-")[:72].strip("-") or "rule"
    return f"{slug}-{secrets.token_hex(3)}"


@router.get("/{rule_id}")
async def one_rule(request: Request, rule_id: str) -> RuleSummary:
    async with runtime(request).sessions() as session:
        found = await store.get_summary(session, rule_id)
    return found if found is not None else _error(404, f"no rule {rule_id}")


@router.get("/{rule_id}/versions")
async def rule_versions(request: Request, rule_id: str) -> list[RuleVersionPublic]:
    """Every saved version, newest first."""
    async with runtime(request).sessions() as session:
        rows = await store.versions(session, rule_id)
    if not rows:
        return _error(404, f"no rule {rule_id}")
    return [_version(r) for r in rows]


@router.get("/{rule_id}/versions/{version}")
async def rule_version(request: Request, rule_id: str, version: int) -> RuleVersionPublic:
    async with runtime(request).sessions() as session:
        row = await store.get_version(session, rule_id, version)
    return _version(row) if row is not None else _error(404, f"no version {version} of rule {rule_id}")


def _version(row: store.RuleVersionRow) -> RuleVersionPublic:
    return RuleVersionPublic(rule_id=row.rule_id, version=row.version, definition=row.definition,
                             created_at=row.created_at, created_by=row.created_by)


@router.get("/{rule_id}/history")
async def rule_history(request: Request, rule_id: str) -> list[RuleChangePublic]:
    """Every change, newest first."""
    async with runtime(request).sessions() as session:
        rows = await store.history(session, rule_id)
    if not rows:
        return _error(404, f"no rule {rule_id}")
    return [RuleChangePublic.model_validate(r, from_attributes=True) for r in rows]


@router.get("/{rule_id}/runs")
async def rule_runs(
    request: Request, rule_id: str, status: RunStatus | None = None, mode: RuleMode | None = None,
    since: AwareDatetime | None = Query(None, description="Event time at or after"),
    until: AwareDatetime | None = Query(None, description="Event time before"),
    limit: int = Query(50, ge=1, le=1000), cursor: str | None = None,
) -> RunPage:
    """A rule's runs, newest event first; cursor-paginated."""
    try:
        after = store.decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        return _invalid([{"field": "cursor", "error": str(exc).removeprefix("cursor: ")}])
    async with runtime(request).sessions() as session:
        if await store.get_rule(session, rule_id) is None:
            return _error(404, f"no rule {rule_id}")
        found = await store.list_runs(session, store.RunFilters(rule_id, status, mode, since, until), limit + 1, after)
    page = found[:limit]
    more = len(found) > limit
    return RunPage(items=[run for _, run in page],
                   next_cursor=store.encode_cursor(page[-1][0], page[-1][1].run_id) if more else None)


@router.put("/{rule_id}")
async def edit_rule(request: Request, rule_id: str, body: RuleEdit) -> RuleSummary:
    """Save a new version. With a minimum dry-run period set, a LIVE rule dry-runs its new version first."""
    rt = runtime(request)
    try:
        definition = await checks.checked(body.definition, rule_id, body.version + 1, rt.settings.rules.notifier_url)
    except DefinitionError as exc:
        return _invalid(exc.errors)
    except checks.NotifierUnavailable as exc:
        return _error(503, str(exc))
    config: RulesConfig = rt.settings.rules
    make = lambda s, now: lifecycle.edit(s, body.version, body.actor, now, config.min_dry_run_hours)  # noqa: E731
    return await _apply(rt, rule_id, body.actor, make, definition)


@router.post("/{rule_id}/status")
async def set_status(request: Request, rule_id: str, body: StatusBody) -> RuleSummary:
    """Activate, pause or archive; 409 names the moves allowed from where it is."""
    make = lambda s, now: lifecycle.move_status(s, body.status, body.actor, now)  # noqa: E731
    return await _apply(runtime(request), rule_id, body.actor, make)


@router.post("/{rule_id}/mode")
async def set_mode(request: Request, rule_id: str, body: ModeBody) -> RuleSummary:
    """DRY_RUN or LIVE. LIVE waits for the store's minimum dry-run period (409 says when it is allowed)."""
    rt = runtime(request)
    config: RulesConfig = rt.settings.rules
    make = lambda s, now: lifecycle.switch_mode(  # noqa: E731
        s, body.mode, body.actor, now, config.min_dry_run_hours, body.note)
    return await _apply(rt, rule_id, body.actor, make)


# --- changing a rule -----------------------------------------------------------------


async def _apply(rt: Runtime[RulesState], rule_id: str, actor: str, make: Callable[[RuleState, datetime], Change],
                 definition: RuleDefinition | None = None) -> Any:
    """Read the rule, work out the change, write it if nothing changed meanwhile, then publish it."""
    now = datetime.now(UTC)
    try:
        async with rt.sessions.begin() as session:
            row = await store.get_rule(session, rule_id)
            if row is None:
                return _error(404, f"no rule {rule_id}")
            state = RuleState.of(row)
            change = make(state, now)
            if not await store.update_rule(session, rule_id, state.expected, change.values):
                raise Refused(409, f"rule {rule_id} changed meanwhile; read it again and retry")
            if definition is not None:
                await store.add_version(session, rule_id, change.values["version"], definition, actor, now)
            await store.add_changes(session, [_history_row(rule_id, e, actor, now) for e in change.entries])
            changed = await store.get_summary(session, rule_id)
    except Refused as exc:
        return JSONResponse(exc.body(), status_code=exc.status_code)
    await _changed(rt, rule_id, actor, list(change.entries), now)
    return changed


def _history_row(rule_id: str, entry: Entry, actor: str, now: datetime) -> dict[str, Any]:
    return {"rule_id": rule_id, "version": entry.version, "kind": entry.kind, "actor": actor, "at": now,
            "before": entry.before, "after": entry.after, "note": entry.note}


async def _changed(rt: Runtime[RulesState], rule_id: str, actor: str, entries: list[Entry], now: datetime) -> None:
    """Once committed: the audit records out, and this process's rules reloaded."""
    records = [
        ManualChangeRecorded(
            type="ManualChangeRecorded", source="storeops/rules", time=now, subject=rule_id,
            data=ManualChangeData(actor=Actor(kind="person", name=actor), entity_type=EntityType.RULE,
                                  entity_id=rule_id, action=e.action, before=e.before, after=e.after))
        for e in entries
    ]
    try:
        await rt.emitter.emit(AUDIT, records)
    except Exception:  # noqa: BLE001 - the change is committed and in the rule's history; say so loudly
        log.error("rule changed but its audit record was not published",
                  extra={"rule_id": rule_id, "actions": [e.action for e in entries]}, exc_info=True)
    await reload_rules(rt)


# --- answers ------------------------------------------------------------------------


def _invalid(errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"detail": errors}, status_code=422)


def _error(status_code: int, detail: str) -> Any:
    return JSONResponse({"detail": detail}, status_code=status_code)
