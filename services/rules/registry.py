"""The active rules, compiled, indexed by event type; reloaded when they change.

The API reloads them after every change it makes; a background check notices
changes made through another instance (``store.latest_change``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from services.rules import metrics, store
from services.rules.compiler import CompiledRule, compile_rule
from services.rules.errors import DefinitionError
from services.rules.notifier_client import NotifierClient
from storeops.service import Runtime

log = logging.getLogger(__name__)
RECHECK_SECONDS = 2.0


@dataclass
class RuleSet:
    rules: tuple[CompiledRule, ...] = ()
    by_type: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    loaded_at: datetime | None = None  # the latest change it reflects

    @classmethod
    def of(cls, rules: Iterable[CompiledRule], loaded_at: datetime | None = None) -> RuleSet:
        rules = tuple(sorted(rules, key=lambda r: r.id))
        by_type: dict[str, tuple[CompiledRule, ...]] = {}
        for rule in rules:
            for event_type in rule.event_types:
                by_type[event_type] = (*by_type.get(event_type, ()), rule)
        return cls(rules, by_type, loaded_at)

    def for_type(self, event_type: str) -> tuple[CompiledRule, ...]:
        return self.by_type.get(event_type, ())


class RateLimiter:
    """Runs per rule in a sliding window of wall-clock time (per process)."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def allow(self, rule_id: str, max_runs: int, per_seconds: float, now: float) -> bool:
        window = self._seen.setdefault(rule_id, deque())
        while window and window[0] <= now - per_seconds:
            window.popleft()
        if len(window) >= max_runs:
            return False
        window.append(now)
        return True


@dataclass
class RulesState:
    """What the rules service keeps in its process: the active rules and the rate windows."""

    notifier: NotifierClient
    ruleset: RuleSet = field(default_factory=RuleSet)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    loaded: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once the seeds are in and the rules loaded


def state_of(rt: Runtime[RulesState]) -> RulesState:
    return rt.state


async def reload_rules(rt: Runtime[RulesState]) -> None:
    """Compile the active rules anew. A stored rule that no longer compiles is left out and logged."""
    state = state_of(rt)
    async with state.lock:
        async with rt.sessions() as session:
            rows = await store.active_definitions(session)
            latest = await store.latest_change(session)
        compiled = []
        for row, definition in rows:
            try:
                compiled.append(compile_rule(row.id, row.version, row.mode, definition))
            except DefinitionError as exc:
                metrics.BROKEN.inc()
                log.error("stored rule does not compile; left out", extra={"rule_id": row.id, "error": str(exc)})
        state.ruleset = RuleSet.of(compiled, latest)
        state.loaded = True
        metrics.ACTIVE.set(len(compiled))


async def ensure_loaded(rt: Runtime[RulesState]) -> RuleSet:
    """The active rules; the first batch waits until the start-up load is done."""
    state = state_of(rt)
    await state.ready.wait()
    return state.ruleset


async def watch(rt: Runtime[RulesState]) -> None:
    """Reload when another instance changed a rule (its updated_at moved)."""
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        try:
            async with rt.sessions() as session:
                latest = await store.latest_change(session)
        except Exception as exc:  # noqa: BLE001 - the database may be away; the next tick tries again
            log.warning("could not check for rule changes", extra={"error": repr(exc)})
            continue
        state = state_of(rt)
        if latest is not None and latest != state.ruleset.loaded_at:
            await reload_rules(rt)
