"""The rules worker: events in; runs planned, executed and recorded; actions, commands
and notifier requests out.

Per batch:
1. evaluate every event against the active rules of its type, in offset order,
   with the previous value of each stateful path per entity;
2. drop matches whose run is already finished (a redelivered or replayed event:
   at most one run per (event, rule, version));
3. cancel, on record, runs the guardrails stop (chain too deep, rate limit);
4. plan the rest (those waiting on the notifier are stored as running); execute
   LIVE steps in order,
   step k of every run together (notifier requests in one POST, the price
   limits checked again against today's moves, actions and commands produced
   and acknowledged); a failed step cancels the steps after it;
5. store the finished runs and the remembered values in one transaction, then
   publish the runs on the rule-runs topic (today's price moves are stored as
   they are checked).
A crash anywhere before 5 redelivers the batch; the plans come out the same,
with the same ids, so what was handed on already is recognised downstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from schemas.actions import AdjustPrice, CreateException, RuleRunData, RuleRunRecorded, UpdateInventory
from schemas.envelope import Envelope, utcnow
from schemas.notifications import NotifyRequest
from schemas.registry import ACTIONS, COMMANDS, RULE_RUNS
from services.rules import metrics, store
from services.rules.compiler import CompiledRule
from services.rules.engine import FINISHED, PlannedRun, PreviousValues, cancelled, finish, plan, price_refusal, price_text
from services.rules.notifier_client import NotifierClient
from services.rules.registry import RulesState, ensure_loaded, reload_rules, state_of, watch
from services.rules.settings import RulesConfig, rules_config
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def state(rt: Runtime[RulesState]) -> RulesState:
    """The rules service's state: its rule set, rate windows and notifier client (ServiceSpec.state).

    The notifier takes requests from services only: the client presents this service's own token."""
    config = rules_config(rt.settings)
    if rt.auth is None:
        raise RuntimeError("the rules service has no Authenticator (storeops.service sets rt.auth before the state)")
    return RulesState(notifier=NotifierClient(config.notifier_url, rt.auth.service_token))


async def background(rt: Runtime[RulesState]) -> None:
    """Seed the store's rules once, load them, then keep them fresh."""
    try:
        async with rt.sessions.begin() as session:
            await store.load_seeds(session)
        await reload_rules(rt)
        state_of(rt).ready.set()
        await watch(rt)
    finally:  # cancelled at shutdown
        await state_of(rt).notifier.close()


def handler(rt: Runtime[RulesState]) -> Handler:
    config = rules_config(rt.settings)

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        ruleset = await ensure_loaded(rt)
        events = [item.event for item in batch]
        metrics.EVALUATED.inc(len(events))
        stateful = {(e.subject, p) for e in events for r in ruleset.for_type(e.type) for p in r.stateful_paths}
        loaded = {}
        if stateful:
            async with rt.sessions() as session:
                loaded = await store.previous_values(session, sorted(stateful))
        values = PreviousValues(loaded)

        matched: list[tuple[Envelope, CompiledRule]] = []
        for event in events:
            rules = ruleset.for_type(event.type)
            if not rules:
                continue
            prev = values.lookup(event)
            paths: set[str] = set()
            for rule in rules:
                paths |= rule.stateful_paths
                if rule.triggered(event) and rule.predicate(event, prev):
                    matched.append((event, rule))
            if paths:
                values.remember(event, paths)

        finished: list[RuleRunData] = []
        if matched:
            finished = await _run(rt, config, matched, values)
        by_id = {e.id: e for e in events}
        if finished or values.changed:
            async with rt.sessions.begin() as session:
                if finished:
                    await store.record_runs(session, finished, [by_id[r.event_id].time for r in finished])
                if values.changed:
                    await store.remember_values(
                        session, [(s, p, v, t, i) for (s, p), (v, t, i) in values.changed.items()])
        if finished:
            await rt.emitter.emit(RULE_RUNS, [_record(run, by_id[run.event_id]) for run in finished])
            for run in finished:
                metrics.RUNS.labels(run.rule.mode, run.status).inc()
                metrics.MATCHES.labels(run.rule.rule_id).inc()
                for step in run.steps:
                    metrics.STEPS.labels(step.action, step.status).inc()
        return []

    return handle


async def _run(rt: Runtime[RulesState], config: RulesConfig, matched: list[tuple[Envelope, CompiledRule]], values: PreviousValues
               ) -> list[RuleRunData]:
    keys = [(e.id, r.id, r.version) for e, r in matched]
    async with rt.sessions() as session:
        known = await store.run_statuses(session, keys)
    now = utcnow()
    state = state_of(rt)
    clock = time.monotonic()
    planned: list[PlannedRun] = []
    done: list[RuleRunData] = []
    dumps: dict[Any, dict[str, Any]] = {}
    for (event, rule), key in zip(matched, keys, strict=True):
        if known.get(key) in FINISHED:
            metrics.REPLAYED.inc()
            continue
        depth_limit = rule.max_chain_depth if rule.max_chain_depth is not None else config.max_chain_depth
        limit = rule.rate_limit
        max_runs, per = (limit.max_runs, limit.per_seconds) if limit else (config.rate_limit_max_runs,
                                                                           config.rate_limit_per_seconds)
        if event.depth > depth_limit:
            metrics.GUARDRAIL.labels("chain_depth").inc()
            done.append(cancelled(rule, event, now, f"loop guard: the event is {event.depth} records deep in its chain; "
                                                    f"this rule fires up to depth {depth_limit}"))
            continue
        if max_runs is not None and not state.limiter.allow(rule.id, max_runs, per, clock):
            metrics.GUARDRAIL.labels("rate_limit").inc()
            done.append(cancelled(rule, event, now, f"rate limit: more than {max_runs} runs in {per} s"))
            continue
        dump = dumps.get(event.id)
        if dump is None:
            dump = dumps[event.id] = event.model_dump(mode="python")
        planned.append(plan(rule, event, values.lookup(event), now, live=rule.mode == "LIVE", dump=dump))
    # A run that waits on the notifier is on record as running while it waits; the rest go
    # straight to their final record (a crash before it re-plans them, with the same ids).
    waiting = [p for p in planned if p.rule.mode == "LIVE" and any(isinstance(s.effect, NotifyRequest) for s in p.steps)]
    if waiting:
        async with rt.sessions.begin() as session:
            await store.start_runs(session, [p.run for p in waiting], [p.event.time for p in waiting])
    live = [p for p in planned if p.rule.mode == "LIVE"]
    if live:
        await _execute(rt, live)
    finished_at = utcnow()
    return done + [finish(p, finished_at) for p in planned]


async def _execute(rt: Runtime[RulesState], runs: list[PlannedRun]) -> None:
    """LIVE steps in order: step k of every run together; a failure cancels the rest of its run."""
    notifier = state_of(rt).notifier
    depth = max(len(p.steps) for p in runs)
    for k in range(depth):
        wave = [(p, p.steps[k]) for p in runs if len(p.steps) > k and p.steps[k].record.status == "pending"]
        if not wave:
            continue
        failures: dict[int, tuple[str, int]] = {}  # id(planned step) -> (error, attempts)

        requests = [(s, s.effect) for _, s in wave if isinstance(s.effect, NotifyRequest)]
        if requests:
            answers, attempts, error = await notifier.send([effect for _, effect in requests])
            for s, effect in requests:
                answer = answers.get(effect.request_id)
                if answer is None:
                    failures[id(s)] = (error or "the notifier gave no answer for this request", attempts)
                elif answer.status == "refused":
                    failures[id(s)] = (f"the notifier refused it: {answer.error}", attempts)
                else:
                    s.record = s.record.model_copy(update={"attempts": attempts, "logs": [
                        *s.record.logs, f"notifier: {answer.status}"]})

        prices = [(p, s) for p, s in wave if isinstance(s.effect, AdjustPrice) and s.guard is not None]
        if prices:
            refused = await _check_prices(rt, prices)
            failures.update({k2: (v, 1) for k2, v in refused.items()})

        to_emit = [s for _, s in wave if isinstance(s.effect, Envelope) and id(s) not in failures]
        actions = [s.effect for s in to_emit if isinstance(s.effect, CreateException)]
        commands = [s.effect for s in to_emit if isinstance(s.effect, (AdjustPrice, UpdateInventory))]
        await asyncio.gather(rt.emitter.emit(ACTIONS, actions), rt.emitter.emit(COMMANDS, commands))

        for p, s in wave:
            if id(s) in failures:
                error, attempts = failures[id(s)]
                s.record = s.record.model_copy(update={"status": "failed", "error": error, "attempts": attempts})
                for later in p.steps[k + 1:]:
                    if later.record.status == "pending":
                        later.record = later.record.model_copy(update={
                            "status": "cancelled", "logs": [*later.record.logs, f"cancelled: step {s.step.id} failed"]})
            else:
                update: dict[str, Any] = {"status": "succeeded", "attempts": max(s.record.attempts, 1)}
                if isinstance(s.effect, Envelope):
                    update["logs"] = [*s.record.logs, f"emitted {s.effect.type} {s.effect.id}"]
                s.record = s.record.model_copy(update=update)


async def _check_prices(rt: Runtime[RulesState], prices: list) -> dict[int, str]:
    """The price limits again, at emission, against the moves already made today per sku.

    The day's reference is the price before its first move; every later move
    that day is measured from it, so small steps cannot add up past the limit.
    """
    today = datetime.now(UTC).date()
    keys = sorted({(s.guard.sku, today) for _, s in prices})
    async with rt.sessions() as session:
        days = await store.price_days(session, keys)
    moves: dict[tuple[str, date], tuple[Decimal, Decimal]] = dict(days)
    refused: dict[int, str] = {}
    touched: set[tuple[str, date]] = set()
    for _, s in prices:
        g = s.guard
        key = (g.sku, today)
        reference = moves[key][0] if key in moves else g.old_price
        reason = price_refusal(g.new_price, g.floor, g.max_change_pct, reference)
        if reason:
            metrics.GUARDRAIL.labels("price").inc()
            since = f" (today's moves for {g.sku} count from {price_text(reference)})" if reference is not None else ""
            refused[id(s)] = f"guardrail at emission: {reason}{since}"
            continue
        moves[key] = (reference if reference is not None else g.new_price, g.new_price)
        touched.add(key)
    if touched:
        async with rt.sessions.begin() as session:
            await store.record_prices(session, [(sku, day, *moves[(sku, day)]) for sku, day in sorted(touched)])
    return refused


def _record(run: RuleRunData, event: Envelope) -> RuleRunRecorded:
    """The run on the rule-runs topic; its id is the run's, so a re-published run is recognised."""
    return RuleRunRecorded(**event.child(id=run.run_id, type="RuleRunRecorded", source="storeops/rules",
                                         time=run.finished_at or run.started_at, subject=run.rule.rule_id, data=run))

