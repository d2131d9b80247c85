"""How a stored rule may change, and what each change leaves on record. Pure: no I/O, no clock.

Status moves: draft → active | archived, active → paused | archived,
paused → active | archived, archived → draft (a restore). An archived rule is
neither edited nor switched between modes until it is restored; a restored LIVE
rule goes back to DRY_RUN. A rule goes LIVE only after dry-running for the
store's minimum period; every edit is a new version, and with a minimum period
set an edit of a LIVE rule dry-runs first.

A refusal is a ``Conflict`` naming what stands in the way: ``status`` (with the
moves ``allowed`` from there), ``mode`` (with ``live_allowed_at`` when it is too
early for LIVE) or ``version`` (with the ``version`` the rule is at).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from storeops.errors import Conflict

MOVES: dict[str, tuple[str, ...]] = {
    "draft": ("active", "archived"),
    "active": ("paused", "archived"),
    "paused": ("active", "archived"),
    "archived": ("draft",),
}
EDITED_NOTE = "edited: a new version dry-runs first"
RESTORED_NOTE = "restored from archived: dry-runs first"
Kind = Literal["created", "edited", "status", "mode"]


@dataclass(frozen=True)
class RuleState:
    """The part of a stored rule a change depends on."""

    id: str
    version: int
    status: str
    mode: str
    dry_run_since: datetime | None = None
    live_since: datetime | None = None
    live_by: str | None = None

    @classmethod
    def of(cls, row: Any) -> RuleState:
        return cls(row.id, row.version, row.status, row.mode, row.dry_run_since, row.live_since, row.live_by)

    @property
    def expected(self) -> dict[str, Any]:
        """What the row must still hold for a change made from this state to apply."""
        return {"version": self.version, "status": self.status, "mode": self.mode}


@dataclass(frozen=True)
class Entry:
    """One line of a rule's history (and one audit record)."""

    kind: Kind
    version: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None = None

    @property
    def action(self) -> str:
        return f"rule.{self.kind}"


@dataclass(frozen=True)
class Change:
    """The columns a change sets on the rule's row and the history it leaves."""

    values: dict[str, Any]
    entries: tuple[Entry, ...] = field(default_factory=tuple)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def created(status: str, mode: str = "DRY_RUN", note: str | None = None) -> Entry:
    return Entry("created", 1, None, {"version": 1, "status": status, "mode": mode}, note)


def _touch(actor: str, now: datetime, **values: Any) -> dict[str, Any]:
    return {"updated_at": now, "updated_by": actor, **values}


def _not_archived(state: RuleState, what: str) -> None:
    if state.status == "archived":
        raise Conflict("status", f"rule {state.id} is archived; archived rules cannot {what} (restore it to draft "
                                 "first)", allowed=list(MOVES["archived"]))


def edit(state: RuleState, read_version: int, actor: str, now: datetime, min_dry_run_hours: float) -> Change:
    """A new version. With a minimum dry-run period set, a LIVE rule goes back to DRY_RUN."""
    _not_archived(state, "be edited")
    if read_version != state.version:
        raise Conflict("version", f"rule {state.id} is at version {state.version}, not {read_version}: "
                                  "read it again and re-apply your edit", version=state.version)
    version = state.version + 1
    values = _touch(actor, now, version=version)
    entries = [Entry("edited", version, {"version": state.version}, {"version": version})]
    if state.mode == "LIVE" and min_dry_run_hours > 0:
        values.update(_to_dry_run(now))
        entries.append(Entry("mode", version, _mode_view(state), {"mode": "DRY_RUN", "dry_run_since": _iso(now)},
                             EDITED_NOTE))
    return Change(values, tuple(entries))


def move_status(state: RuleState, to: str, actor: str, now: datetime) -> Change:
    """A move of ``MOVES``. Restoring an archived LIVE rule to draft also takes it back to DRY_RUN,
    so it dry-runs again before it acts (a second history entry, of kind ``mode``)."""
    allowed = MOVES[state.status]
    if to not in allowed:
        raise Conflict("status", f"rule {state.id} cannot move from {state.status} to {to}; "
                                 f"allowed: {', '.join(allowed)}", allowed=list(allowed))
    values = _touch(actor, now, status=to)
    entries = [Entry("status", state.version, {"status": state.status}, {"status": to})]
    if state.status == "archived" and state.mode == "LIVE":
        values.update(_to_dry_run(now))
        entries.append(Entry("mode", state.version, _mode_view(state), {"mode": "DRY_RUN", "dry_run_since": _iso(now)},
                             RESTORED_NOTE))
    return Change(values, tuple(entries))


def live_allowed_at(state: RuleState, min_dry_run_hours: float) -> datetime | None:
    """When the rule has dry-run long enough to go LIVE (None: it is not dry-running)."""
    if state.dry_run_since is None:
        return None
    return state.dry_run_since + timedelta(hours=min_dry_run_hours)


def switch_mode(state: RuleState, to: str, actor: str, now: datetime, min_dry_run_hours: float,
                note: str | None = None) -> Change:
    """DRY_RUN → LIVE once the minimum period has passed; LIVE → DRY_RUN at any time."""
    _not_archived(state, "change mode")
    if to == state.mode:
        raise Conflict("mode", f"rule {state.id} is already {to}")
    if to == "LIVE":
        allowed_at = live_allowed_at(state, min_dry_run_hours)
        if allowed_at is not None and now < allowed_at:
            raise Conflict("mode", f"rule {state.id} must dry-run for {min_dry_run_hours:g} hours before going LIVE; "
                                   f"LIVE is allowed from {allowed_at.isoformat()}", live_allowed_at=allowed_at)
        values = {"mode": "LIVE", "live_since": now, "live_by": actor, "dry_run_since": None}
        after = {"mode": "LIVE", "live_since": _iso(now), "live_by": actor}
    else:
        values = _to_dry_run(now)
        after = {"mode": "DRY_RUN", "dry_run_since": _iso(now)}
    entry = Entry("mode", state.version, _mode_view(state), after, note)
    return Change(_touch(actor, now, **values), (entry,))


def _to_dry_run(now: datetime) -> dict[str, Any]:
    return {"mode": "DRY_RUN", "dry_run_since": now, "live_since": None, "live_by": None}


def _mode_view(state: RuleState) -> dict[str, Any]:
    if state.mode == "LIVE":
        return {"mode": "LIVE", "live_since": _iso(state.live_since), "live_by": state.live_by}
    return {"mode": "DRY_RUN", "dry_run_since": _iso(state.dry_run_since)}
