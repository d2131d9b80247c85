"""``storeops bench rules``: what evaluating rule conditions costs per event, against rule-engine.

Worst case for the rules worker: ``--rules`` active rules all triggered by
OrderPlaced, so every order event runs every condition. The conditions are of
the kinds operators write (thresholds on the total, currency lists, tags,
channel, customer, line count and first line, nested any/not, a FieldRef),
1-4 comparisons each and mostly false, as real rules are.

Ours: ``compile_condition`` once per rule; per event, all predicates called on
the decoded OrderPlaced model, the worker's input. Peer: the ``rule-engine``
library (pure Python, like ours) on the same conditions translated into its
language, each compiled once into a ``rule_engine.Rule`` and evaluated with
``rule.matches(event_dict)``, the dict from ``model_dump(mode="python")`` (its
natural input; the dump is not timed). Before any timing both engines evaluate
every rule on every event and must agree.

Per run, for each engine: one event (``schemas/examples/OrderPlaced.json``)
evaluated ``--repeat`` times, then one pass over ``--events`` distinct seeded
orders. The peer is some hundred times slower, so it times a share of that:
``--repeat`` / 20 repeats and ``--peer-events`` of the orders (every k-th; 0:
all), which still gives steady medians; it is checked on all of them. Each event's pass over all rules is timed on its own
(``perf_counter_ns``: median, p99); the whole pass once more without per-event
timers (batch mean). Figures are medians over ``--runs``. Broker throughput is
``storeops bench pipeline``'s business; this is evaluation cost only.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

import schemas
from schemas.events import OrderPlaced
from schemas.registry import ORDERS
from schemas.rules import AllOf, AnyOf, Compare, Condition, FieldRef, NotOf
from services.rules.conditions import MISSING, compile_condition
from services.rules.paths import resolve
from storeops_cli.bench.report import emit, median, percentile, table
from storeops_cli.demo import CATALOGUE

TARGET_MEDIAN_US = 20.0  # per event, all rules
TRIGGER = ("OrderPlaced",)
PEER_REPEAT_SHARE = 20  # the peer repeats the single event this many times fewer
CONDITION = TypeAdapter(Condition)

# --- the rules ------------------------------------------------------------------------

SKUS = sorted(CATALOGUE)
RARE_TAGS = ("vip", "wholesale", "fraud-check", "b2b", "gift")


def _c(path: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"path": path, "op": op, **({} if value is None else {"value": value})}


def _money(rng: random.Random, lo: int, hi: int) -> str:
    return f"{rng.randint(lo, hi)}.{rng.choice(('00', '50', '90', '99'))}"


# Each builds one rule's condition; most rarely hold on ordinary orders.
TEMPLATES: tuple[Callable[[random.Random], dict[str, Any]], ...] = (
    lambda r: _c("data.total", "ge", _money(r, 2000, 9000)),
    lambda r: {"all": [_c("data.total", "ge", _money(r, 800, 4000)),
                       _c("data.currency", "in", r.sample(["USD", "GBP", "CHF", "SEK", "JPY"], 2))]},
    lambda r: _c("data.tags", "contains", r.choice(RARE_TAGS)),
    lambda r: _c("data.channel", "eq", r.choice(("marketplace", "pos", "phone"))),
    lambda r: {"all": [_c("data.customer_id", "ne", f"cus-{r.randint(1, 50_000)}"),
                       _c("data.total", "gt", _money(r, 3000, 9000))]},
    lambda r: {"all": [_c(f"data.lines.{r.randint(3, 4)}", "exists"), _c("data.total", "lt", _money(r, 40, 120))]},
    lambda r: {"all": [_c("data.lines.0.sku", "eq", r.choice(SKUS)), _c("data.lines.0.quantity", "ge", r.randint(4, 12))]},
    lambda r: {"any": [_c("data.currency", "eq", "JPY"), _c("data.tags", "contains", "fraud-check")]},
    lambda r: {"all": [_c("data.total", "gt", _money(r, 500, 1500)),
                       {"not": {"any": [_c("data.channel", "in", ["web", "app"]), _c("data.tags", "contains", "b2b")]}}]},
    lambda r: _c("data.total", "lt", {"path": "data.lines.0.unit_price", "factor": f"0.{r.randint(5, 9)}"}),
    lambda r: {"all": [{"not": _c("data.channel", "exists")}, _c("data.total", "ge", _money(r, 300, 2000))]},
    lambda r: {"all": [_c("data.order_id", "contains", "test"), _c("source", "ne", "shop.example/checkout")]},
    lambda r: {"all": [_c("data.tags", "contains", "first-order"), _c("data.currency", "ne", "EUR"),
                       _c("data.total", "ge", _money(r, 400, 1500)), _c("data.lines.1", "exists")]},
    lambda r: {"any": [_c("time", "lt", "2026-01-01T00:00:00Z"), _c("data.lines.0.quantity", "gt", r.randint(20, 50))]},
)


def rule_conditions(n: int, seed: int = 1) -> list[Condition]:
    """``n`` validated condition trees, cycling through the templates."""
    rng = random.Random(seed)
    return [CONDITION.validate_python(TEMPLATES[i % len(TEMPLATES)](rng)) for i in range(n)]


# --- the events -----------------------------------------------------------------------

CURRENCIES = {"EUR": 80, "USD": 8, "GBP": 6, "CHF": 4, "SEK": 1, "JPY": 1}
CHANNELS = {"web": 55, "app": 30, "marketplace": 8, "pos": 4, None: 3}
TAG_SHARES = {"first-order": 0.2, "repeat": 0.5, "promo": 0.1, "gift": 0.05, "b2b": 0.03, "vip": 0.02,
              "wholesale": 0.01, "fraud-check": 0.005}
START = datetime(2026, 11, 1, tzinfo=UTC)


def _pick(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def order_body(rng: random.Random, n: int) -> dict[str, Any]:
    """One realistic OrderPlaced as a client posts it."""
    lines = [{"sku": sku, "quantity": rng.choice((1, 1, 1, 1, 2, 2, 3, 5, 10)), "unit_price": str(CATALOGUE[sku])}
             for sku in rng.sample(SKUS, rng.choice((1, 1, 1, 2, 2, 3, 4, 5)))]
    total = sum(Decimal(li["unit_price"]) * li["quantity"] for li in lines)
    if rng.random() < 0.1:  # a promotion
        total = (total * Decimal(rng.choice(("0.9", "0.8", "0.5")))).quantize(Decimal("0.01"))
    test = rng.random() < 0.002
    return {"type": "OrderPlaced", "source": "shop.example/pos" if rng.random() < 0.05 else "shop.example/checkout",
            "time": (START + timedelta(seconds=rng.randint(0, 30 * 86400))).isoformat(),
            "data": {"order_id": f"ord-{'test-' if test else ''}{n}", "customer_id": f"cus-{rng.randint(1, 50_000)}",
                     "total": str(total), "currency": _pick(rng, CURRENCIES), "lines": lines,
                     "channel": _pick(rng, CHANNELS),
                     "tags": [t for t, share in TAG_SHARES.items() if rng.random() < share]}}


def order_events(n: int, seed: int = 1) -> list[OrderPlaced]:
    """``n`` distinct orders, decoded from their wire bytes as the worker decodes them."""
    rng = random.Random(seed)
    events = [ORDERS.decode(json.dumps(order_body(rng, i)).encode()) for i in range(n)]
    assert all(isinstance(e, OrderPlaced) for e in events)
    return events  # type: ignore[return-value]


def example_event() -> OrderPlaced:
    path = Path(schemas.__file__).parent / "examples" / "OrderPlaced.json"
    return ORDERS.decode(path.read_bytes())  # type: ignore[return-value]


# --- the peer's language ----------------------------------------------------------------

_RE_OPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def rule_engine_text(cond: Any, event_types: Sequence[str] = TRIGGER) -> str:
    """``cond`` in rule-engine's language, with the same MISSING semantics (no stateful operators)."""
    if isinstance(cond, AllOf):
        return "(" + " and ".join(rule_engine_text(c, event_types) for c in cond.all) + ")"
    if isinstance(cond, AnyOf):
        return "(" + " or ".join(rule_engine_text(c, event_types) for c in cond.any) + ")"
    if isinstance(cond, NotOf):
        return f"not {rule_engine_text(cond.not_, event_types)}"
    assert isinstance(cond, Compare)
    field = resolve(event_types, cond.path)
    guards, left = _re_access(cond.path, event_types)
    if cond.op == "exists":
        return "(" + " and ".join([*guards, f"{left} != null"]) + ")"
    if isinstance(cond.value, (FieldRef, dict)):
        ref = FieldRef.model_validate(cond.value)
        more, right = _re_access(ref.path, event_types)
        guards += [*more, f"{right} != null"]
        if ref.factor is not None:
            right = f"({right} * {format(ref.factor, 'f')})"
    else:
        kind = field.item_kind if cond.op == "contains" and field.kind == "list" else field.kind
        right = _re_literal(str(kind), cond.value)
    guards.append(f"{left} != null")
    test = {"in": f"{left} in {right}", "contains": f"{right} in {left}"}.get(cond.op)
    if test is None and cond.op not in _RE_OPS:
        raise ValueError(f"rule-engine has no previous values: {cond.op!r} has no translation")
    return "(" + " and ".join([*guards, test or f"{left} {_RE_OPS[cond.op]} {right}"]) + ")"


def _re_access(path: str, event_types: Sequence[str]) -> tuple[list[str], str]:
    steps = resolve(event_types, path).steps
    guards: list[str] = []
    expr = ""
    for i, step in enumerate(steps):
        if isinstance(step.key, int):
            guards.append(f"{expr}.length > {step.key}")
            expr = f"{expr}[{step.key}]"
        else:
            expr = f"{expr}['{step.key}']" if i else step.key
        if step.maybe_none and i < len(steps) - 1:
            guards.append(f"{expr} != null")
    return guards, expr


def _re_literal(kind: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_re_literal(kind, v) for v in value) + "]"
    if kind == "number":
        return format(Decimal(str(value)), "f")
    if kind == "datetime":
        return f"d'{value}'"
    if kind == "bool":
        return "true" if value else "false"
    if kind == "string":
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise ValueError(f"no rule-engine literal for a {kind}")


# --- measuring --------------------------------------------------------------------------

Evaluate = Callable[[Any], int]  # one event (as the engine takes it) -> matching rules


def engines(conditions: Sequence[Condition]) -> tuple[Evaluate, Evaluate]:
    """(ours, peer): each evaluates every rule on one event and counts the matches."""
    import rule_engine

    predicates = [compile_condition(c, TRIGGER) for c in conditions]
    context = rule_engine.Context()
    rules = [rule_engine.Rule(rule_engine_text(c), context=context) for c in conditions]

    def no_prev(path: str) -> Any:
        return MISSING

    def ours(event: Any) -> int:
        matched = 0
        for predicate in predicates:
            if predicate(event, no_prev):
                matched += 1
        return matched

    def peer(event: Any) -> int:
        matched = 0
        for rule in rules:
            if rule.matches(event):
                matched += 1
        return matched

    return ours, peer


def agreement(conditions: Sequence[Condition], events: Sequence[OrderPlaced], dumps: Sequence[dict]) -> dict[str, int]:
    """Rule by rule on every event: both engines must say the same; AssertionError naming the first difference."""
    import rule_engine

    predicates = [compile_condition(c, TRIGGER) for c in conditions]
    rules = [rule_engine.Rule(rule_engine_text(c), context=rule_engine.Context()) for c in conditions]
    agree = matches = 0
    first: str | None = None
    for event, dump in zip(events, dumps, strict=True):
        ours = [p(event, lambda path: MISSING) for p in predicates]
        peer = [r.matches(dump) for r in rules]
        if ours == peer:
            agree += 1
        elif first is None:
            i = next(i for i, (a, b) in enumerate(zip(ours, peer, strict=True)) if a != b)
            first = f"rule {i} ({rule_engine_text(conditions[i])}) on {event.data.order_id}: ours {ours[i]}, peer {peer[i]}"
        matches += sum(ours)
    if first is not None:
        raise AssertionError(f"engines disagree on {len(events) - agree} of {len(events)} events; first: {first}")
    return {"events": len(events), "agree": agree, "matches": matches, "pairs": len(events) * len(conditions)}


def timed(evaluate: Evaluate, events: Sequence[Any]) -> dict[str, float]:
    """Per-event µs (median, p99) and the batch mean of one pass without per-event timers."""
    clock = time.perf_counter_ns
    gc.collect()
    per_event = []
    for event in events:
        t0 = clock()
        evaluate(event)
        per_event.append(clock() - t0)
    gc.collect()
    t0 = clock()
    for event in events:
        evaluate(event)
    batch = clock() - t0
    us = [ns / 1000 for ns in per_event]
    return {"median_us": round(median(us), 3), "p99_us": round(percentile(us, 99), 3),
            "batch_mean_us": round(batch / 1000 / len(events), 3), "events": len(events)}


def one_run(ours: Evaluate, peer: Evaluate, single: tuple[OrderPlaced, dict], events: Sequence[OrderPlaced],
            dumps: Sequence[dict], repeat: int) -> dict[str, Any]:
    """One run: ``dumps`` may be a sample of ``events``' dumps (the peer's share)."""
    return {
        "ours": {"single": timed(ours, [single[0]] * repeat), "distinct": timed(ours, events)},
        "peer": {"single": timed(peer, [single[1]] * max(1, repeat // PEER_REPEAT_SHARE)), "distinct": timed(peer, dumps)},
    }


def bench(rules: int = 50, events: int = 10_000, runs: int = 3, repeat: int = 10_000, peer_events: int = 2_000,
          seed: int = 1, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every figure of ``storeops bench rules``."""
    conditions = rule_conditions(rules, seed)
    orders = order_events(events, seed)
    dumps = [e.model_dump(mode="python") for e in orders]
    single = example_event()
    agreed = agreement(conditions, orders, dumps)
    progress(f"agreement: {agreed['agree']:,} of {agreed['events']:,} events, "
             f"{agreed['matches']:,} matches in {agreed['pairs']:,} (event, rule) pairs")
    ours, peer = engines(conditions)
    ours(single), peer(single.model_dump(mode="python"))  # warm up
    step = -(-events // peer_events) if 0 < peer_events < events else 1
    peer_dumps = dumps[::step]
    per_run = []
    for n in range(runs):
        per_run.append(one_run(ours, peer, (single, single.model_dump(mode="python")), orders, peer_dumps, repeat))
        progress(f"run {n + 1}/{runs} done")
    mid = {engine: {phase: {k: round(median([r[engine][phase][k] for r in per_run]), 3)
                            for k in ("median_us", "p99_us", "batch_mean_us")} for phase in ("single", "distinct")}
           for engine in ("ours", "peer")}
    ratio = {phase: round(mid["peer"][phase]["median_us"] / mid["ours"][phase]["median_us"], 1)
             for phase in ("single", "distinct")}
    return {"bench": "rules", "peer": "rule-engine 5.1.0",
            "settings": {"rules": rules, "events": events, "runs": runs, "repeat": repeat, "seed": seed,
                         "peer_repeat": max(1, repeat // PEER_REPEAT_SHARE), "peer_events": len(peer_dumps),
                         "trigger": TRIGGER[0]},
            "agreement": agreed, "target_median_us": TARGET_MEDIAN_US, "median": mid,
            "ratio_peer_to_ours": ratio, "per_run": per_run}


def render(fig: dict[str, Any]) -> str:
    m, s = fig["median"], fig["settings"]
    rows = []
    labels = {"ours": (f"one event x{s['repeat']:,}", f"{s['events']:,} distinct events"),
              "peer": (f"one event x{s['peer_repeat']:,}", f"{s['peer_events']:,} of the distinct events")}
    for engine, name in (("ours", "ours (compiled)"), ("peer", fig["peer"])):
        for phase, label in zip(("single", "distinct"), labels[engine], strict=True):
            f = m[engine][phase]
            rows.append((f"{name}: {label}", f["median_us"], f["p99_us"], f["batch_mean_us"]))
    a = fig["agreement"]
    return "\n".join([
        f"{s['rules']} rules on {s['trigger']}, all run per event; median of {s['runs']} runs",
        table([f"per event, all {s['rules']} rules", "median µs", "p99 µs", "batch mean µs"], rows),
        f"peer / ours (median): one event x{fig['ratio_peer_to_ours']['single']}, "
        f"distinct events x{fig['ratio_peer_to_ours']['distinct']}",
        f"target: median <= {fig['target_median_us']:.0f} µs per event; ours "
        f"{'meets' if m['ours']['distinct']['median_us'] <= fig['target_median_us'] else 'MISSES'} it",
        f"agreement: {a['agree']:,} of {a['events']:,} events; {a['matches']:,} of {a['pairs']:,} (event, rule) pairs match",
    ])


def run(args: argparse.Namespace) -> int:
    say = (lambda _: None) if args.json else (lambda line: print(line, flush=True))
    say(f"{args.rules} rules, {args.events:,} events, {args.runs} runs; building and checking agreement...")
    fig = bench(args.rules, args.events, args.runs, args.repeat, args.peer_events, args.seed, progress=say)
    if args.json:
        print(json.dumps(fig), flush=True)
    else:
        emit(render(fig), fig)
    return 0
