"""The rules API: write rules as data, version them, move them through their
lifecycle, try them on one event or a past window, and read their runs.

Every route declares its role: a viewer reads rules, versions, history and runs; an
operator tries rules (``test``, ``backtest``), creates them (they dry-run) and edits
those that are not LIVE; an admin edits a LIVE rule and moves status and mode. The
authenticated principal makes the change: its name is on the rule and its history
(a body cannot name an ``actor``), its name, role and token id on the audit record.
Every change leaves a history row and an audit record (published once committed),
and reloads the rules this process runs. A definition is checked in full before it
is saved; each problem is answered with a pointer into the body
(``definition.conditions.all[0].op``).

Every refusal is answered in the platform's one error shape, each problem naming
its field: 401 ``Authorization`` (no token, or one that does not verify); 403
``Authorization`` with the ``needed_role``; 404 ``rule_id``, ``run_id`` or
``version`` (nothing there); 409 ``status`` with the moves ``allowed`` from where
the rule is, ``mode`` (with ``live_allowed_at`` when LIVE comes too early),
``version`` (a stale version) or ``id`` (taken: an id is never reused, not even an
archived rule's); 422 for a bad body or parameter
(``definition.conditions.all[0].op``, ``cursor``, ``limit``, ``actor``); 503 when
the notifier (``definition.actions[i].credential``) or the broker (a backtest)
cannot be asked. Lists are pages, ``{"items": [...], "next_cursor"}``:
pass ``cursor=next_cursor`` for the next one; it is null on the last.
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
from fastapi import APIRouter, Path, Query, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from schemas import audit
from schemas.actions import RULE_VERSION_MAX, RuleMode, RuleRunData, RunStatus
from schemas.common import EntityType
from schemas.envelope import Envelope
from schemas.events import EVENT_CLASSES
from schemas.registry import AUDIT
from schemas.rules import RuleDefinition, RuleId, RuleStatus, RuleSummary
from services.rules import backtest, checks, lifecycle, store
from services.rules.compiler import CompiledRule
from services.rules.conditions import MISSING
from services.rules.engine import simulate
from services.rules.lifecycle import Change, Entry, RuleState
from services.rules.registry import RulesState, reload_rules, state_of
from services.rules.settings import rules_config
from storeops.auth import Principal, Role, requires
from storeops.auth.verify import FIELD
from storeops.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from storeops.http import (
    CursorQuery,
    Page,
    UtcTime,
    answers,
    decode_cursor,
    encode_cursor,
    encode_time_cursor,
    int_cursor,
    time_cursor,
)
from storeops.service import Runtime, runtime

log = logging.getLogger(__name__)
# A union of the classes in a tuple, built at runtime: no static type form spells it, so it is held as Any
# and the adapter is declared by what it returns.
_EVENT_UNION: Any = Annotated[Union[EVENT_CLASSES], Field(discriminator="type")]
_EVENTS: TypeAdapter[Envelope] = TypeAdapter(_EVENT_UNION)
# Versions are stored in a 32-bit column: a larger one cannot exist (and the database would refuse it).
VERSION_MAX = RULE_VERSION_MAX
Version = Annotated[int, Field(ge=1, le=VERSION_MAX)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page")]
_NOT_OURS = "not a cursor this service gave; use next_cursor of the previous page"
_NO_RULE = "No rule with this id"
_STALE = "The rule changed since it was read (version), or it cannot make this move from where it is (status, mode)"
_NOTIFIER_AWAY = "The notifier, which the definition's credentials are checked with, cannot be reached"

router = APIRouter(prefix="/v1/rules", tags=["rules"])


# --- bodies and answers ------------------------------------------------------------


class _Body(BaseModel):
    """A request body. Who makes a change is the authenticated principal, never a field."""

    model_config = ConfigDict(extra="forbid")


class RuleCreate(_Body):
    id: RuleId | None = Field(default=None, description="Default: a slug of the name and a short suffix")
    definition: dict[str, Any]
    status: Literal["draft", "active"] = "draft"


class RuleEdit(_Body):
    definition: dict[str, Any]
    version: Version = Field(description="The version you read; a stale one is refused with 409")


class StatusBody(_Body):
    status: RuleStatus


class ModeBody(_Body):
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

    start: UtcTime = Field(alias="from", description="Events that happened at or after this time...")
    end: UtcTime = Field(alias="to", description="...and before this one")
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


class TryResult(BaseModel):
    matched: bool
    reason: str | None
    run: RuleRunData | None


# --- runs (before /{rule_id}, which would take "runs" for an id) --------------------


@router.get("/runs")
async def all_runs(
    request: Request, rule_id: str | None = None, status: RunStatus | None = None, mode: RuleMode | None = None,
    since: UtcTime | None = Query(None, description="Event time at or after"),
    until: UtcTime | None = Query(None, description="Event time before"),
    limit: Limit = 100, cursor: CursorQuery = None, _: Principal = requires(Role.viewer),
) -> Page[RuleRunData]:
    """Recorded runs of every rule (or one), newest event first; paged by cursor."""
    return await _runs_page(runtime(request), store.RunFilters(rule_id, status, mode, since, until), limit, cursor)


@router.get("/runs/{run_id}", responses=answers(not_found="No run with this id"))
async def one_run(request: Request, run_id: uuid.UUID, _: Principal = requires(Role.viewer)) -> RuleRunData:
    async with runtime(request).sessions() as session:
        run = await store.get_run(session, run_id)
    if run is None:
        raise NotFound("run_id", f"no run {run_id}")
    return run


async def _runs_page(rt: Runtime[RulesState], filters: store.RunFilters, limit: int, cursor: str | None,
                     must_exist: str | None = None) -> Page[RuleRunData]:
    after = time_cursor(cursor)
    async with rt.sessions() as session:
        if must_exist is not None and await store.get_rule(session, must_exist) is None:
            raise NotFound("rule_id", f"no rule {must_exist}")
        found = await store.list_runs(session, filters, limit + 1, after)
    page = found[:limit]
    next_cursor = None
    if len(found) > limit:
        last_time, last_run = page[-1]
        next_cursor = encode_time_cursor(last_time, last_run.run_id)
    return Page(items=[run for _, run in page], next_cursor=next_cursor)


# --- trying a rule ------------------------------------------------------------------


@router.post("/test", responses=answers(not_found="No rule with this rule_id"))
async def try_rule(request: Request, body: TryBody, _: Principal = requires(Role.operator)) -> TryResult:
    """Evaluate a stored rule or a draft against one event, as a DRY_RUN: nothing is written or emitted."""
    try:
        event = _EVENTS.validate_python(body.event)
    except ValidationError as exc:
        raise Invalid.of(exc, body.event, "event.") from None
    rule = await _rule_to_try(runtime(request), body)
    previous = {path: _number(value) for path, value in (body.previous or {}).items()}
    run, reason = simulate(rule, event, lambda path: previous.get(path, MISSING), datetime.now(UTC))
    return TryResult(matched=run is not None, reason=reason, run=run)


@router.post("/backtest", responses=answers(not_found="No rule with this rule_id",
                                               unavailable="The broker's event topics cannot be read"))
async def backtest_rule(request: Request, body: BacktestBody, _: Principal = requires(Role.operator)) -> dict[str, Any]:
    """What a rule would have done over a past window of the event topics; nothing is written or emitted.

    503 (naming ``(body)``, with Retry-After) when the broker cannot be read."""
    rt = runtime(request)
    rule = await _rule_to_try(rt, body)
    config = rules_config(rt.settings)
    replay = backtest.Replay(rule, body.start, body.end, body.sample)
    try:
        tally = await backtest.scan(rt.settings.kafka, replay, body.limit, timedelta(seconds=config.backtest_late_seconds))
    except KafkaError as exc:
        raise Unavailable("(body)", f"cannot read the event topics from the broker at "
                                    f"{rt.settings.kafka.bootstrap_servers}: {type(exc).__name__}", retry_after=5) from None
    return tally.answer()


async def _rule_to_try(rt: Runtime[RulesState], body: _RuleOrDraft) -> CompiledRule:
    """The draft, or the stored rule at its current version; DefinitionError (422) if it cannot run."""
    if body.definition is not None:
        return checks.compiled("draft", 1, "DRY_RUN", checks.parse(body.definition))
    assert body.rule_id is not None  # _RuleOrDraft holds exactly one of rule_id and definition
    async with rt.sessions() as session:
        found = await store.get_summary(session, body.rule_id)
    if found is None:
        raise NotFound("rule_id", f"no rule {body.rule_id}")
    # a simulation: the run says DRY_RUN whatever mode the rule is in; a rule stored before a
    # check it now fails is refused like a draft that fails it
    return checks.compiled(found.id, found.version, "DRY_RUN", found.definition)


def _number(value: Any) -> Any:
    """JSON numbers with a fraction become Decimals, as on an event."""
    return Decimal(str(value)) if isinstance(value, float) else value


# --- rules ----------------------------------------------------------------------------


@router.get("")
async def rules(request: Request, status: RuleStatus | None = None, mode: RuleMode | None = None,
                limit: Limit = 100, cursor: CursorQuery = None, _: Principal = requires(Role.viewer)) -> Page[RuleSummary]:
    """Every rule (or those of a status, a mode), by id; paged by cursor."""
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise Invalid("cursor", _NOT_OURS)
    async with runtime(request).sessions() as session:
        found = await store.list_rules(session, status, mode, after, limit + 1)
    page = found[:limit]
    return Page(items=page, next_cursor=encode_cursor(page[-1].id) if len(found) > limit else None)


@router.post("", status_code=201, responses=answers(conflict="The id is taken", unavailable=_NOTIFIER_AWAY))
async def create_rule(request: Request, body: RuleCreate, who: Principal = requires(Role.operator)) -> RuleSummary:
    """A new rule at version 1, dry-running; 409 naming ``id`` if the id is taken (archived rules keep theirs)."""
    rt = runtime(request)
    definition = await checks.checked(body.definition, body.id or "draft", 1, rules_config(rt.settings).notifier_url,
                                      _service_token(rt), rt.settings.outbound.networks)
    now = datetime.now(UTC)
    entry = lifecycle.created(body.status)
    async with rt.sessions.begin() as session:
        rule_id = await _insert(session, body.id, definition, body.status, who.name, now)
        if rule_id is None:
            raise Conflict("id", f"rule {body.id} exists already (an id is never reused, not even an archived rule's)")
        await store.add_changes(session, [_history_row(rule_id, entry, who.name, now)])
        await store.OUTBOX.put(session, AUDIT, _audit_entries(rule_id, who, [entry], now))
        created = await store.get_summary(session, rule_id)
    assert created is not None  # inserted in the same transaction
    await reload_rules(rt)
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


@router.get("/{rule_id}", responses=answers(not_found=_NO_RULE))
async def one_rule(request: Request, rule_id: str, _: Principal = requires(Role.viewer)) -> RuleSummary:
    async with runtime(request).sessions() as session:
        found = await store.get_summary(session, rule_id)
    if found is None:
        raise NotFound("rule_id", f"no rule {rule_id}")
    return found


@router.get("/{rule_id}/versions", responses=answers(not_found=_NO_RULE))
async def rule_versions(request: Request, rule_id: str, limit: Limit = 100, cursor: CursorQuery = None,
                        _: Principal = requires(Role.viewer)) -> Page[RuleVersionPublic]:
    """Every saved version, newest first; paged by cursor."""
    before = int_cursor(cursor)
    if before is not None and before > VERSION_MAX:
        raise Invalid("cursor", _NOT_OURS)
    async with runtime(request).sessions() as session:
        rows = await store.versions(session, rule_id, before, limit + 1)
        if not rows and await store.get_rule(session, rule_id) is None:
            raise NotFound("rule_id", f"no rule {rule_id}")
    page = rows[:limit]
    return Page(items=[_version(r) for r in page], next_cursor=encode_cursor(page[-1].version) if len(rows) > limit else None)


@router.get("/{rule_id}/versions/{version}", responses=answers(not_found="No such rule, or no such version of it"))
async def rule_version(request: Request, rule_id: str, version: Annotated[int, Path(ge=1, le=VERSION_MAX)],
                       _: Principal = requires(Role.viewer)) -> RuleVersionPublic:
    async with runtime(request).sessions() as session:
        row = await store.get_version(session, rule_id, version)
        if row is None and await store.get_rule(session, rule_id) is None:
            raise NotFound("rule_id", f"no rule {rule_id}")
    if row is None:
        raise NotFound("version", f"no version {version} of rule {rule_id}")
    return _version(row)


def _version(row: store.RuleVersionRow) -> RuleVersionPublic:
    return RuleVersionPublic(rule_id=row.rule_id, version=row.version, definition=row.definition,
                             created_at=row.created_at, created_by=row.created_by)


@router.get("/{rule_id}/history", responses=answers(not_found=_NO_RULE))
async def rule_history(request: Request, rule_id: str, limit: Limit = 100, cursor: CursorQuery = None,
                       _: Principal = requires(Role.viewer)) -> Page[RuleChangePublic]:
    """Every change, newest first; paged by cursor."""
    before = int_cursor(cursor)
    async with runtime(request).sessions() as session:
        rows = await store.history(session, rule_id, before, limit + 1)
        if not rows and await store.get_rule(session, rule_id) is None:
            raise NotFound("rule_id", f"no rule {rule_id}")
    page = rows[:limit]
    return Page(items=[RuleChangePublic.model_validate(r, from_attributes=True) for r in page],
                next_cursor=encode_cursor(page[-1].seq) if len(rows) > limit else None)


@router.get("/{rule_id}/runs", responses=answers(not_found=_NO_RULE))
async def rule_runs(
    request: Request, rule_id: str, status: RunStatus | None = None, mode: RuleMode | None = None,
    since: UtcTime | None = Query(None, description="Event time at or after"),
    until: UtcTime | None = Query(None, description="Event time before"),
    limit: Limit = 50, cursor: CursorQuery = None, _: Principal = requires(Role.viewer),
) -> Page[RuleRunData]:
    """A rule's runs, newest event first; paged by cursor."""
    filters = store.RunFilters(rule_id, status, mode, since, until)
    return await _runs_page(runtime(request), filters, limit, cursor, must_exist=rule_id)


@router.put("/{rule_id}", responses=answers(not_found=_NO_RULE, conflict=_STALE, unavailable=_NOTIFIER_AWAY))
async def edit_rule(request: Request, rule_id: str, body: RuleEdit, who: Principal = requires(Role.operator)
                    ) -> RuleSummary:
    """Save a new version. With a minimum dry-run period set, a LIVE rule dry-runs its new version first.

    A rule that is not LIVE an operator may edit; a LIVE one acts on the store, so its edit
    needs an admin (403 naming ``needed_role``, decided on the row the edit is written against)."""
    rt = runtime(request)
    config = rules_config(rt.settings)
    definition = await checks.checked(body.definition, rule_id, body.version + 1, config.notifier_url, _service_token(rt),
                                      rt.settings.outbound.networks)

    def make(state: RuleState, now: datetime) -> Change:
        if state.mode == "LIVE" and not who.may(Role.admin):
            raise Forbidden(FIELD, f"rule {state.id} is LIVE: editing it needs the role admin; this token's role is "
                                   f"{who.role.value}", needed_role=Role.admin.value)
        return lifecycle.edit(state, body.version, who.name, now, config.min_dry_run_hours)

    return await _apply(rt, rule_id, who, make, definition)


@router.post("/{rule_id}/status", responses=answers(not_found=_NO_RULE, conflict=_STALE))
async def set_status(request: Request, rule_id: str, body: StatusBody, who: Principal = requires(Role.admin)
                     ) -> RuleSummary:
    """Activate, pause, archive, or restore an archived rule to draft (a LIVE one goes back to DRY_RUN);
    409 names the moves ``allowed`` from where it is."""
    make = lambda s, now: lifecycle.move_status(s, body.status, who.name, now)  # noqa: E731
    return await _apply(runtime(request), rule_id, who, make)


@router.post("/{rule_id}/mode", responses=answers(not_found=_NO_RULE, conflict=_STALE))
async def set_mode(request: Request, rule_id: str, body: ModeBody, who: Principal = requires(Role.admin)) -> RuleSummary:
    """DRY_RUN or LIVE. LIVE waits for the store's minimum dry-run period (409 says when it is allowed)."""
    rt = runtime(request)
    config = rules_config(rt.settings)
    make = lambda s, now: lifecycle.switch_mode(  # noqa: E731
        s, body.mode, who.name, now, config.min_dry_run_hours, body.note)
    return await _apply(rt, rule_id, who, make)


# --- changing a rule -----------------------------------------------------------------


def _service_token(rt: Runtime[RulesState]) -> Callable[[], str]:
    """The token the notifier is asked with about the credentials a definition names: the
    service's own, as its notifier client presents it."""
    return state_of(rt).notifier.token


async def _apply(rt: Runtime[RulesState], rule_id: str, who: Principal, make: Callable[[RuleState, datetime], Change],
                 definition: RuleDefinition | None = None) -> RuleSummary:
    """Read the rule, work out the change (which may refuse it), write it if nothing changed
    meanwhile, then publish it. ``who`` is on the version, the history and the audit record."""
    now = datetime.now(UTC)
    async with rt.sessions.begin() as session:
        row = await store.get_rule(session, rule_id)
        if row is None:
            raise NotFound("rule_id", f"no rule {rule_id}")
        state = RuleState.of(row)
        change = make(state, now)
        if not await store.update_rule(session, rule_id, state.expected, change.values):
            raise Conflict("version", f"rule {rule_id} changed meanwhile; read it again and retry")
        if definition is not None:
            await store.add_version(session, rule_id, change.values["version"], definition, who.name, now)
        await store.add_changes(session, [_history_row(rule_id, e, who.name, now) for e in change.entries])
        await store.OUTBOX.put(session, AUDIT, _audit_entries(rule_id, who, change.entries, now))
        changed = await store.get_summary(session, rule_id)
    assert changed is not None  # updated in the same transaction
    await reload_rules(rt)
    return changed


def _history_row(rule_id: str, entry: Entry, actor: str, now: datetime) -> dict[str, Any]:
    return {"rule_id": rule_id, "version": entry.version, "kind": entry.kind, "actor": actor, "at": now,
            "before": entry.before, "after": entry.after, "note": entry.note}


def _audit_entries(rule_id: str, who: Principal, entries: Sequence[Entry], now: datetime) -> list[Envelope]:
    """The audit entries of a change, naming the principal (name, role, token id); written in the
    change's transaction (storeops.outbox), so a change committed is a change audited."""
    return [audit.entry(source="storeops/rules", action=e.action, actor=who.actor(), entities=[(EntityType.RULE, rule_id)],
                        before=e.before, after=e.after, at=now) for e in entries]
