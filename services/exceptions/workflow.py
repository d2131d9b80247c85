"""The queue's state machine: every change an exception can go through. Pure: no I/O;
the clock comes in as ``now``.

Each function takes the state a caller read and returns a ``Change`` (before,
after, actor, cause) or raises a platform error naming the field at fault:
``Conflict`` when the change does not fit the state the exception is in (for a
move the workflow does not allow, with the moves that are allowed), ``Invalid``
when the request lacks what the change needs (a snooze, a resolution...).
``after.version`` is always ``before.version + 1``: the store writes it only if
the row still holds ``before.version``, so two operators never silently
overwrite each other.

SLA: every New exception has a due time, Critical ones included. Past it, a
Low, Medium or High exception is escalated one level; a Critical one cannot go
higher, so its breach is recorded as an escalation at Critical (``escalations``
counts it, the notifier tells everyone again) and its due time starts over, so
it is raised again every SLA period for as long as nobody picks it up.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.actions import CreateException, RuleRef
from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import Envelope, deterministic_id
from schemas.exceptions import (
    CHANGE_RECORDS,
    CallbackReplay,
    ChangeKind,
    ExceptionChange,
    ExceptionChangeRecord,
    ExceptionState,
    ExceptionStatus,
    Resolution,
    ResolutionReason,
    Snooze,
)
from storeops.errors import Conflict, Invalid

NEW, IN_PROGRESS, SNOOZED, RESOLVED = (
    ExceptionStatus.NEW, ExceptionStatus.IN_PROGRESS, ExceptionStatus.SNOOZED, ExceptionStatus.RESOLVED,
)
ALLOWED: Mapping[ExceptionStatus, frozenset[ExceptionStatus]] = {
    NEW: frozenset({IN_PROGRESS, SNOOZED, RESOLVED}),
    IN_PROGRESS: frozenset({NEW, SNOOZED, RESOLVED}),
    SNOOZED: frozenset({NEW, IN_PROGRESS, RESOLVED}),
    RESOLVED: frozenset({NEW}),  # reopen
}
OPEN = frozenset({NEW, IN_PROGRESS, SNOOZED})
SYSTEM = Actor(kind="system", name="storeops/exceptions", role="service")  # the queue, on an event's evidence
SWEEP = Actor(kind="system", name="storeops/exceptions:sweep", role="service")  # escalations and wake-ups on time


def rule_actor(rule: RuleRef) -> Actor:
    """A change a rule's action made: the system, naming the rule and the version that acted."""
    return Actor(kind="system", name=f"rule:{rule.rule_id}@{rule.rule_version}", role="service")
EVIDENCE_KEPT = 20  # the latest event ids an exception carries; the audit log keeps them all

Sla = Mapping[Severity, timedelta]


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    before: ExceptionState | None
    after: ExceptionState
    actor: Actor
    cause: str

    def record(self, caused_by: Envelope | None = None) -> ExceptionChangeRecord:
        """The record on the exceptions topic; one id per (exception, version)."""
        cls = CHANGE_RECORDS[self.kind]
        chain = caused_by.child() if caused_by is not None else {}
        return cls(
            **chain,
            id=deterministic_id("exception-change", self.after.id, self.after.version),
            type=cls.__name__,
            source="storeops/exceptions",
            time=self.after.updated_at,
            subject=str(self.after.id),
            data=ExceptionChange(
                exception_id=self.after.id, kind=self.kind, before=self.before, after=self.after,
                actor=self.actor, cause=self.cause,
            ),
        )


def sla_due(severity: Severity, since: datetime, sla: Sla) -> datetime:
    """When a New exception of ``severity``, New since ``since``, is past its SLA."""
    return since + sla[severity]


def _moves(status: ExceptionStatus) -> list[str]:
    return sorted(s.value for s in ALLOWED[status])


def _reopen_first(what: str) -> Conflict:
    return Conflict("status", f"a resolved exception {what}; reopen it first", allowed=[NEW.value])


def dedup_key(type_: ExceptionType, entity_type: EntityType, entity_id: str) -> str:
    """While open, one exception per (type, entity)."""
    return f"{type_.value}|{entity_type.value}|{entity_id}"


def _next(state: ExceptionState, now: datetime, **fields: Any) -> ExceptionState:
    return state.model_copy(update={"version": state.version + 1, "updated_at": now, **fields})


def _entering_new(severity: Severity, now: datetime, sla: Sla) -> dict[str, Any]:
    return {"status": NEW, "sla_due_at": sla_due(severity, now, sla), "snooze": None}


# --- raised by rules or by people ---------------------------------------------


def create_from_action(action: CreateException, now: datetime, sla: Sla) -> Change:
    """A new exception; its id derives from the action, so a redelivered action names the same one."""
    spec = action.data.exception
    state = ExceptionState(
        id=deterministic_id("exception", action.id), version=1, type=spec.type, severity=spec.severity,
        status=NEW, title=spec.title, entity_type=spec.entity_type, entity_id=spec.entity_id,
        impact=spec.impact, currency=spec.currency, source=action.data.rule, evidence=list(action.data.evidence),
        occurrences=1, first_seen=action.time, last_seen=action.time, created_at=now, updated_at=now,
        # a rule may set when it must be handled (a review date, a promised ship date)
        sla_due_at=spec.due_at or sla_due(spec.severity, now, sla), heal=spec.heal, callback=spec.callback,
    )
    cause = f"action {action.id} from rule {action.data.rule.rule_id}"
    return Change("created", None, state, rule_actor(action.data.rule), cause)


def create_by_person(fields: Mapping[str, Any], actor: Actor, now: datetime, sla: Sla) -> Change:
    """An exception a person raised by hand (type, severity, title, entity, impact, note)."""
    severity = Severity(fields["severity"])
    state = ExceptionState(
        id=uuid.uuid4(), version=1, status=NEW, raised_by=actor, occurrences=1, first_seen=now, last_seen=now,
        created_at=now, updated_at=now, sla_due_at=sla_due(severity, now, sla), **fields,
    )
    return Change("created", None, state, actor, "raised by hand")


def occurrence(state: ExceptionState, action: CreateException, now: datetime, sla: Sla) -> Change:
    """The same problem again: counted on the open exception, or reopening one that healed on its own."""
    spec = action.data.exception
    severity = spec.severity if spec.severity.rank < state.severity.rank else state.severity
    impact = max((i for i in (state.impact, spec.impact) if i is not None), default=None)
    seen = {
        "occurrences": state.occurrences + 1,
        "last_seen": max(state.last_seen, action.time),
        "evidence": list(dict.fromkeys([*state.evidence, *action.data.evidence]))[-EVIDENCE_KEPT:],
        "severity": severity,
        "impact": impact,
        "callback": spec.callback or state.callback,
    }
    cause = f"action {action.id} from rule {action.data.rule.rule_id}"
    if state.status is RESOLVED:
        after = _next(state, now, **seen, **_entering_new(severity, now, sla), resolution=None,
                      flap_count=state.flap_count + 1)
        return Change("reopened", state, after, rule_actor(action.data.rule), f"the problem came back: {cause}")
    if state.status is NEW and severity is not state.severity:
        seen["sla_due_at"] = sla_due(severity, now, sla)
    return Change("updated", state, _next(state, now, **seen), rule_actor(action.data.rule), f"occurred again: {cause}")


def reopenable(state: ExceptionState) -> bool:
    """Only an automatic resolution reopens when the problem returns; a person's verdict stands."""
    return state.status is RESOLVED and state.resolution is not None and state.resolution.automatic


# --- people at work ------------------------------------------------------------


def transition(
    state: ExceptionState,
    to: ExceptionStatus,
    actor: Actor,
    now: datetime,
    sla: Sla,
    *,
    snooze: Snooze | None = None,
    resolution: Resolution | None = None,
    cause: str = "request",
) -> Change:
    """Move to ``to``. Conflict on ``status`` (with the allowed moves) for a move the
    workflow does not allow; Invalid naming ``snooze``, ``snooze.until``, ``resolution``
    or ``resolution.automatic`` when what the move needs is missing or wrong."""
    if to is state.status:
        raise Conflict("status", f"already {to.value}", allowed=_moves(state.status))
    if to not in ALLOWED[state.status]:
        raise Conflict("status", f"cannot go from {state.status.value} to {to.value}", allowed=_moves(state.status))
    if to is SNOOZED:
        if snooze is None:
            raise Invalid("snooze", "required to snooze (until, until_event or both)")
        if snooze.until is not None and snooze.until <= now:
            raise Invalid("snooze.until", f"{snooze.until.isoformat()} is not in the future")
        return Change("snoozed", state, _next(state, now, status=SNOOZED, snooze=snooze, sla_due_at=None), actor, cause)
    if to is RESOLVED:
        if resolution is None:
            raise Invalid("resolution", "a reason is required to resolve")
        if resolution.automatic and actor.kind != "system":
            raise Invalid("resolution.automatic", "only the system resolves automatically, with evidence")
        after = _next(state, now, status=RESOLVED, resolution=resolution, snooze=None, sla_due_at=None)
        return Change("resolved", state, after, actor, cause)
    if to is NEW:
        after = _next(state, now, **_entering_new(state.severity, now, sla), resolution=None)
        kind: ChangeKind = "reopened" if state.status is RESOLVED else "status_changed"
        return Change(kind, state, after, actor, cause)
    return Change("status_changed", state, _next(state, now, status=to, snooze=None, sla_due_at=None), actor, cause)


def assign(state: ExceptionState, assignee: str | None, actor: Actor, now: datetime, cause: str = "request") -> Change:
    """Assign, reassign or (with None) unassign."""
    if state.status is RESOLVED:
        raise _reopen_first("cannot be assigned")
    if assignee == state.assignee:
        raise Conflict("assignee", f"already assigned to {assignee}" if assignee else "already unassigned")
    return Change("assigned", state, _next(state, now, assignee=assignee), actor, cause)


def edit(
    state: ExceptionState, fields: Mapping[str, Any], actor: Actor, now: datetime, sla: Sla, cause: str = "request"
) -> Change:
    """A person corrects severity, title or impact."""
    if state.status is RESOLVED:
        raise _reopen_first("cannot be edited")
    for name in ("severity", "title"):
        if name in fields and fields[name] is None:
            raise Invalid(name, "may be left out but not set to null")
    changed = {k: v for k, v in fields.items() if getattr(state, k) != v}
    if not changed:
        raise Invalid("(body)", "nothing to change: every field given already has that value")
    if "severity" in changed and state.status is NEW:
        changed["sla_due_at"] = sla_due(changed["severity"], now, sla)
    return Change("updated", state, _next(state, now, **changed), actor, cause)


def replay_callback(state: ExceptionState, actor: Actor, now: datetime) -> tuple[Change, CallbackReplay]:
    """Record a replay of the kept callback; the caller publishes it to the payments topic."""
    if state.callback is None:
        raise Invalid("exception_id", "this exception holds no payment callback to replay")
    if state.status is RESOLVED:
        raise _reopen_first("cannot have its callback replayed")
    replay = CallbackReplay(
        replay_id=deterministic_id("callback-replay", state.id, state.version), requested_by=actor, requested_at=now
    )
    fields: dict[str, Any] = {"replays": [*state.replays, replay]}
    if state.status is not IN_PROGRESS:
        fields.update(status=IN_PROGRESS, snooze=None, sla_due_at=None)
    kind: ChangeKind = "status_changed" if "status" in fields else "updated"
    return Change(kind, state, _next(state, now, **fields), actor, f"callback replay {replay.replay_id}"), replay


def accept_callback(state: ExceptionState, resolution: Resolution, actor: Actor, now: datetime, sla: Sla) -> Change:
    """Close a callback failure, accepting the callback as it is."""
    if state.callback is None:
        raise Invalid("exception_id", "this exception holds no payment callback to accept")
    accepted = resolution.model_copy(update={"callback": "accepted"})
    return transition(state, RESOLVED, actor, now, sla, resolution=accepted, cause="callback accepted as it is")


# --- the system's own moves ----------------------------------------------------


def escalate(state: ExceptionState, now: datetime, sla: Sla) -> Change | None:
    """Still New past its SLA: one level up, with the reason recorded. Critical has
    nowhere higher to go: the breach is recorded at Critical (``escalations`` + 1) and
    the SLA starts over, so it is raised again each period while it stays New."""
    if state.status is not NEW or state.sla_due_at is None or state.sla_due_at > now:
        return None
    higher = state.severity.higher or state.severity
    due = sla_due(higher, now, sla)
    after = _next(state, now, severity=higher, escalations=state.escalations + 1, sla_due_at=due)
    minutes = int(sla[state.severity].total_seconds() // 60)
    if higher is state.severity:
        cause = (f"SLA breached: still New {minutes} min after its SLA started at {state.severity.value}, the highest "
                 f"severity; raised again now and at {due.isoformat()} if still New")
    else:
        cause = (f"still New {minutes} min after it entered the queue at {state.severity.value} (its SLA); "
                 f"now {higher.value}")
    return Change("escalated", state, after, SWEEP, cause)


def arm_sla(state: ExceptionState, now: datetime, sla: Sla) -> Change | None:
    """A New exception without a due time (a Critical one raised before Critical had an
    SLA) gets one, counted from its last change, so it can be escalated like the rest."""
    if state.status is not NEW or state.sla_due_at is not None:
        return None
    due = sla_due(state.severity, state.updated_at, sla)
    cause = f"New without an SLA: due {due.isoformat()}"
    return Change("updated", state, _next(state, now, sla_due_at=due), SWEEP, cause)


def wake_on_time(state: ExceptionState, now: datetime, sla: Sla) -> Change | None:
    """A snooze whose time has passed, checked whenever the sweep runs (start-up included)."""
    if state.status is not SNOOZED or state.snooze is None or state.snooze.until is None or state.snooze.until > now:
        return None
    after = _next(state, now, **_entering_new(state.severity, now, sla))
    return Change("woke", state, after, SWEEP, f"snoozed until {state.snooze.until.isoformat()}, which has passed")


def wake_on_event(state: ExceptionState, event: Envelope, now: datetime, sla: Sla) -> Change | None:
    """A snooze waiting for ``event``'s type, for this entity."""
    if state.status is not SNOOZED or state.snooze is None or state.snooze.until_event != event.type:
        return None
    if event.subject != state.entity_id:
        return None
    after = _next(state, now, **_entering_new(state.severity, now, sla))
    return Change("woke", state, after, SYSTEM, f"{event.type} {event.id} arrived for {state.entity_id}")


def heal(state: ExceptionState, event: Envelope, now: datetime) -> Change | None:
    """Resolve on the evidence of a later event that proves the problem healed."""
    condition = state.heal
    if condition is None or state.status is RESOLVED or event.type != condition.event_type:
        return None
    if event.subject != state.entity_id:
        return None
    if event.time < state.last_seen:
        return None  # older than the latest occurrence: proves nothing about it
    if condition.field is not None:
        value = _field(event.data, condition.field)
        if value is None or Decimal(str(value)) < condition.at_least:  # type: ignore[operator]
            return None
    note = f"{event.type} {event.id} proved it healed"
    if condition.field is not None:
        note += f" ({condition.field} {_field(event.data, condition.field)} >= {condition.at_least})"
    resolution = Resolution(reason=ResolutionReason.FIXED, note=note, automatic=True, evidence=event.id)
    after = _next(state, now, status=RESOLVED, resolution=resolution, snooze=None, sla_due_at=None)
    return Change("resolved", state, after, SYSTEM, note)


def _field(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = getattr(data, part, None)
        if data is None:
            return None
    return data
