"""Rule conditions compiled to Python functions: checked once, then cheap per event.

``compile_condition`` checks a condition tree against the trigger's event types
(every path exists on each, every operator fits its field's kind, every value
fits) and answers with all problems at once. What passes becomes the source of
one function: ``and`` / ``or`` / ``not`` short-circuit; a path is a lookup in
the event's (or its data's) field dict, then attributes and list indexes, with
a guard where a value may be None or a list may be short; literal values are
converted once (numbers to Decimal, times to aware datetimes) and bound as
closure variables, never written into the source text. Only path segments
reach the source, after the path pattern and the model walk accepted them.

Absent values: a path that does not exist on an event (a list too short) or an
optional field that is None is MISSING. Every comparison with MISSING is False,
``ne`` included; ``exists`` tests presence, so ``{"not": {"path": ..., "op":
"exists"}}`` expresses absence. A FieldRef to a MISSING value is False too.
"""

from __future__ import annotations

import math
import textwrap
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, cast

from pydantic import ValidationError

from schemas.envelope import Envelope
from schemas.rules import STATEFUL_OPERATORS, AllOf, AnyOf, Compare, Condition, FieldRef, NotOf
from services.rules.errors import DefinitionError
from services.rules.paths import MISSING, Resolved, getter, path_kind, resolve
from services.rules.paths import an as _an
from storeops.errors import field_errors

__all__ = ["MISSING", "PrevLookup", "Predicate", "compile_condition", "getter", "path_kind"]

PrevLookup = Callable[[str], Any]  # path -> the previous value of that path for the event's subject, or MISSING
MAX_DEPTH = 32  # nested all/any/not; far past any real rule, well short of the parser's limits
MAX_EXPONENT = 30  # |number| below 10**31 and not below 10**-30: arithmetic on it can never overflow

SCALARS = frozenset({"number", "string", "datetime", "bool", "uuid"})
ORDERING = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
SYMBOLS = {"eq": "==", "ne": "!=", **ORDERING}
_BAD_REF = object()  # a FieldRef-shaped value whose problems are already recorded

# The event the predicates saw last, with its field dict and its data's. BaseModel defines
# __getattr__, which keeps CPython off its fast attribute path (an attribute costs several
# dict lookups); every rule runs on the same event, so the first one reads the two dicts
# and the others take them from here: the fields are then plain dict items. A tuple,
# replaced whole, so a reader never pairs one event with another's fields.
_SEEN: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [(None, {}, {})]
_PROLOGUE = ("        s = SEEN[0]\n"
             "        if s[0] is not e:\n"
             "            s = SEEN[0] = (e, e.__dict__, e.data.__dict__)\n")
_ROOTS = {"f": 1, "d": 2}


class Predicate(Protocol):
    """A compiled condition: ``predicate(event, prev) -> bool``, for events of the types it was compiled for
    (another type is the caller's bug, and raises)."""

    stateful_paths: frozenset[str]  # paths read through ``prev`` (changed_by_more_than_pct, crossed_*)
    source: str  # the generated Python source

    def __call__(self, event: Envelope, prev: PrevLookup) -> bool: ...


def compile_condition(cond: Condition | None, event_types: Sequence[str], where: str = "conditions") -> Predicate:
    """A predicate for ``cond`` on events of ``event_types``; None always holds.

    Raises DefinitionError listing every problem, each with a pointer such as
    ``conditions.all[0].op``.
    """
    compiler = _Compiler(tuple(event_types))
    body = "True" if cond is None else compiler.node(cond, where, 0)
    if compiler.errors:
        raise DefinitionError(None, errors=compiler.errors)
    return compiler.build(body)


class _Compiler:
    def __init__(self, event_types: tuple[str, ...]) -> None:
        self.event_types = event_types
        self.errors: list[dict[str, str]] = []
        self.consts: list[Any] = []
        self.temps = 0
        self.roots: set[str] = set()  # "f": the event's field dict, "d": its data's
        self.stateful: set[str] = set()

    # --- output ------------------------------------------------------------------

    def build(self, body: str) -> Predicate:
        names = ["MISSING", "SEEN", *(f"c{i}" for i in range(len(self.consts)))]
        prologue = _PROLOGUE + "".join(f"        {r} = s[{_ROOTS[r]}]\n" for r in sorted(self.roots)) if self.roots else ""
        source = (f"def _make({', '.join(names)}):\n"
                  f"    def predicate(e, prev):\n{prologue}"
                  f"        return True if {textwrap.indent(body, '        ').lstrip()} else False\n"
                  f"    return predicate\n")
        namespace: dict[str, Any] = {"__builtins__": {"len": len, "abs": abs}}
        exec(compile(source, "<condition>", "exec"), namespace)
        fn = namespace["_make"](MISSING, _SEEN, *self.consts)
        fn.stateful_paths = frozenset(self.stateful)
        fn.source = source
        return cast(Predicate, fn)

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"c{len(self.consts) - 1}"

    def temp(self) -> str:
        self.temps += 1
        return f"t{self.temps}"

    def error(self, field: str, message: str) -> str:
        self.errors.append({"field": field, "error": message})
        return "False"

    # --- tree ----------------------------------------------------------------------

    def node(self, cond: Any, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            return self.error(where, f"conditions nest deeper than {MAX_DEPTH} levels")
        if isinstance(cond, AllOf):
            return self.join(" and", cond.all, f"{where}.all", depth, "True")
        if isinstance(cond, AnyOf):
            return self.join(" or", cond.any, f"{where}.any", depth, "False")
        if isinstance(cond, NotOf):
            return f"not {self.node(cond.not_, f'{where}.not', depth + 1)}"
        if isinstance(cond, Compare):
            return self.compare(cond, where)
        return self.error(where, "a condition is {\"all\": [...]}, {\"any\": [...]}, {\"not\": {...}} or a comparison")

    def join(self, op: str, children: Sequence[Any], where: str, depth: int, empty: str) -> str:
        parts = [self.node(c, f"{where}[{i}]", depth + 1) for i, c in enumerate(children)]
        if not parts:
            return empty
        if len(parts) == 1:
            return parts[0]
        return "(\n" + textwrap.indent(f"{op}\n".join(parts), "    ") + "\n)"

    # --- one comparison ------------------------------------------------------------

    def compare(self, c: Compare, where: str) -> str:
        try:
            field = resolve(self.event_types, c.path)
        except ValueError as exc:
            return self.error(f"{where}.path", str(exc))
        if not _fits(c.op, field):
            return self.error(f"{where}.op", _misfit(c.op, field))
        ref = self.field_ref(c.value, where)
        if ref is not None:
            return "False" if ref is _BAD_REF else self.compare_ref(c, field, ref, where)
        try:
            value = _literal(c.op, field, c.value)
        except _ValueProblem as exc:
            return self.error(f"{where}.value{exc.suffix}", exc.message)
        guards, expr, maybe_none = self.access(field)
        if c.op == "exists":
            return _conj([*guards, f"{expr} is not None"] if maybe_none else guards)
        if c.op in STATEFUL_OPERATORS:
            return self.stateful_test(c.op, field.path, guards, expr, maybe_none, self.const(value))
        k = self.const(value)
        if c.op in ("eq", "in") and maybe_none:  # None never equals nor is in a converted constant
            maybe_none = False
        left = self.present(guards, expr, maybe_none)
        test = {"in": f"{left[1]} in {k}", "contains": f"{k} in {left[1]}"}.get(c.op)
        return _conj([*left[0], test or f"{left[1]} {SYMBOLS[c.op]} {k}"])

    def field_ref(self, value: Any, where: str) -> Any:
        """The FieldRef in ``value``, if any. Built from Python (not JSON), ``FieldRef | Any``
        keeps a dict with a ``factor`` as a dict; such a dict is read as the FieldRef it spells."""
        if isinstance(value, FieldRef) or not (isinstance(value, dict) and "path" in value):
            return value if isinstance(value, FieldRef) else None
        try:
            return FieldRef.model_validate(value)
        except ValidationError as exc:
            # located from the comparison's "value": a reference's own field "path" first in a
            # location would be read as the request part "path" and dropped
            located = [{**e, "loc": ("value", *e["loc"])} for e in exc.errors(include_url=False)]
            for e in field_errors(located, {"value": value}, f"{where}."):
                self.error(e["field"], e["error"])
            return _BAD_REF

    def compare_ref(self, c: Compare, field: Resolved, ref: FieldRef, where: str) -> str:
        if c.op == "exists" or c.op in STATEFUL_OPERATORS:
            return self.error(f"{where}.value", f"'{c.op}' takes a literal value, not another field")
        try:
            other = resolve(self.event_types, ref.path)
        except ValueError as exc:
            return self.error(f"{where}.value.path", str(exc))
        wanted = _ref_kind(c.op, field)
        got = f"list of {other.item_kind}s" if other.kind == "list" else other.kind
        if got != wanted:
            return self.error(f"{where}.value.path", f"'{c.op}' on {field.path} needs {_an(wanted)} to compare with; "
                                                     f"{other.path} is {_an(got)}")
        if ref.factor is not None and other.kind != "number":
            return self.error(f"{where}.value.factor", f"factor scales numbers; {other.path} is {_an(other.kind)}")
        if ref.factor is not None and not _in_range(ref.factor):
            return self.error(f"{where}.value.factor", _OUT_OF_RANGE)
        lg, lv = self.present(*self.access(field))
        rg, rv = self.present(*self.access(other))
        if ref.factor is not None:
            rv = f"{rv} * {self.const(ref.factor)}"
        test = {"in": f"{lv} in {rv}", "contains": f"{rv} in {lv}"}.get(c.op) or f"{lv} {SYMBOLS[c.op]} {rv}"
        return _conj([*lg, *rg, test])

    def stateful_test(self, op: str, path: str, guards: list[str], expr: str, maybe_none: bool, k: str) -> str:
        self.stateful.add(path)
        g, v = self.present(guards, expr, maybe_none)
        p = self.temp()
        fetched = f"({p} := prev({self.const(path)})) is not MISSING and {p} is not None"
        if op == "changed_by_more_than_pct":  # |new - prev| / |prev| * 100 > pct, without dividing by zero
            return _conj([*g, fetched, f"abs({v} - {p}) * 100 > {k} * abs({p})"])
        now, before = ("<", ">=") if op == "crossed_below" else (">", "<=")
        return _conj([*g, f"{v} {now} {k}", fetched, f"{p} {before} {k}"])  # the event's side first: no lookup

    def present(self, guards: list[str], expr: str, maybe_none: bool) -> tuple[list[str], str]:
        """Guards plus an expression for the value that is never None where it is read."""
        if maybe_none:
            t = self.temp()
            return [*guards, f"({t} := {expr}) is not None"], t
        return guards, expr

    def access(self, field: Resolved) -> tuple[list[str], str, bool]:
        """(guards, expression, whether the expression may be None) reading ``field`` from ``e``."""
        steps = list(field.steps)
        root = "d" if steps[0].key == "data" and len(steps) > 1 else "f"
        self.roots.add(root)
        if root == "d":
            steps = steps[1:]
        first = steps.pop(0)
        expr, maybe_none = f"{root}[{first.key!r}]", first.maybe_none
        guards: list[str] = []
        for step in steps:
            if maybe_none:  # the value so far may be None: name it, test it, go on from the name
                t = self.temp()
                guards.append(f"({t} := {expr}) is not None")
                expr = t
            if isinstance(step.key, int):
                t = self.temp()
                # a list's truth is its length: no call for the first item (the return makes it a bool)
                guards.append(f"({t} := {expr})" if step.key == 0 else f"len({t} := {expr}) > {step.key}")
                expr = f"{t}[{step.key}]"
            else:
                expr = f"{expr}.{step.key}"
            maybe_none = step.maybe_none
        return guards, expr, maybe_none


def _conj(parts: list[str]) -> str:
    if not parts:
        return "True"
    if len(parts) == 1:
        return parts[0]
    return "(" + " and ".join(parts) + ")"


# --- fit of operator, kind and value ------------------------------------------------


def _fits(op: str, field: Resolved) -> bool:
    if op in ("eq", "ne", "in"):
        return field.kind in SCALARS
    if op in ORDERING:
        return field.kind in ("number", "datetime")
    if op == "contains":
        return field.kind == "string" or (field.kind == "list" and field.item_kind in SCALARS)
    if op in STATEFUL_OPERATORS:
        return field.kind == "number"
    return op == "exists"


def _misfit(op: str, field: Resolved) -> str:
    what = f"{field.path} is {_an(field.kind)}"
    if op in ("eq", "ne", "in"):
        return f"'{op}' compares single values; {what}"
    if op in ORDERING:
        return f"'{op}' compares numbers or times; {what}"
    if op == "contains":
        if field.kind == "list":
            return f"'contains' needs a list of single values; {field.path} holds {field.item_kind}s"
        return f"'contains' looks in a string or a list; {what}"
    if op in STATEFUL_OPERATORS:
        return f"'{op}' follows a number; {what}"
    return f"unknown operator {op!r}"


def _ref_kind(op: str, field: Resolved) -> str:
    """The kind another field must have to be compared with ``field`` by ``op``."""
    if op == "in":
        return f"list of {field.kind}s"
    if op == "contains":
        return "string" if field.kind == "string" else str(field.item_kind)
    return field.kind


class _ValueProblem(Exception):
    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.message, self.suffix = message, suffix


def _literal(op: str, field: Resolved, value: Any) -> Any:
    """The compare's value, converted once to what the field holds at run time."""
    if op == "exists":
        if value is not None:
            raise _ValueProblem("'exists' takes no value")
        return None
    if op == "changed_by_more_than_pct":
        pct = _convert("number", value)
        if pct < 0:
            raise _ValueProblem("value must be a percentage ≥ 0")
        return pct
    if op == "in":
        if not isinstance(value, (list, tuple)):
            raise _ValueProblem("'in' needs a list")
        if not value:
            raise _ValueProblem("'in' needs at least one value")
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_convert(field.kind, item))
            except _ValueProblem as exc:
                raise _ValueProblem(exc.message, f"[{i}]") from None
        return frozenset(items)
    if op == "contains" and field.kind == "list":
        return _convert(str(field.item_kind), value)
    return _convert(field.kind, value)


def _convert(kind: str, value: Any) -> Any:
    converter = _CONVERTERS[kind]
    try:
        converted = converter(value)
    except (TypeError, ValueError, InvalidOperation):
        converted = None
    if converted is None:
        raise _ValueProblem(_EXPECTED[kind])
    if kind == "number" and not _in_range(converted):
        raise _ValueProblem(_OUT_OF_RANGE)
    return converted


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        value = value.strip()
    if isinstance(value, (int, str, Decimal)):
        number = Decimal(value)
        return number if number.is_finite() else None
    return None


def _in_range(number: Decimal) -> bool:
    return not number or abs(number.adjusted()) <= MAX_EXPONENT


def _time(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None:
        return value
    return None


def _uuid(value: Any) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(value) if isinstance(value, str) else None


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "number": _number,
    "string": lambda v: v if isinstance(v, str) else None,
    "datetime": _time,
    "bool": lambda v: v if isinstance(v, bool) else None,
    "uuid": _uuid,
}
_OUT_OF_RANGE = f"out of range: at most {MAX_EXPONENT + 1} digits either side of the point"
_EXPECTED = {
    "number": "value must be a number",
    "string": "value must be a string",
    "datetime": "value must be a time with a timezone, like 2026-11-23T09:30:00Z",
    "bool": "value must be true or false",
    "uuid": "value must be a uuid",
}
