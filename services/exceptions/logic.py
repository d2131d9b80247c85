"""From an action to a queued exception and its change record. Pure: no I/O, no clock."""

from __future__ import annotations

from schemas.actions import CreateException
from schemas.common import Actor
from schemas.envelope import deterministic_id
from schemas.exceptions import ExceptionChange, ExceptionCreated, ExceptionState

SYSTEM = Actor(kind="system", name="storeops/exceptions")


def exception_from_action(action: CreateException) -> ExceptionState:
    """The exception an action asks for; its id is derived from the action's id,
    so the same action delivered twice names the same exception."""
    spec = action.data.exception
    return ExceptionState(
        id=deterministic_id("exception", action.id),
        type=spec.type,
        severity=spec.severity,
        status="New",
        title=spec.title,
        entity_type=spec.entity_type,
        entity_id=spec.entity_id,
        impact=spec.impact,
        currency=spec.currency,
        source=action.data.rule,
        evidence=list(action.data.evidence),
        assignee=None,
        created_at=action.time,
    )


def created_change(state: ExceptionState, action: CreateException) -> ExceptionCreated:
    """The ExceptionCreated record; same inputs, same record (id and time included)."""
    return ExceptionCreated(
        **action.child(
            id=deterministic_id("exception-change", state.id, "created"),
            type="ExceptionCreated",
            source="storeops/exceptions",
            time=state.created_at,
            subject=str(state.id),
            data=ExceptionChange(exception_id=state.id, before=None, after=state, actor=SYSTEM, cause=f"action {action.id}"),
        )
    )
