"""What is wrong with a rule definition, each problem with a pointer to its part."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas.rules import ACTION_TYPES

# Tags pydantic puts in an error's location for the union member it tried; they are not fields.
_TAGS = frozenset({"all", "any", "not", "compare"}) | frozenset(ACTION_TYPES)


class DefinitionError(Exception):
    """A definition that cannot run; ``errors`` is ``[{"field": "conditions.all[0].op", "error": "..."}]``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['error']}" for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str, error: str) -> DefinitionError:
        return cls([{"field": field, "error": error}])


def pointer(loc: tuple[Any, ...]) -> str:
    """``('conditions', 'all', 'all', 0, 'compare', 'op')`` → ``conditions.all[0].op``.

    A union tag follows the field that holds the union (or a list index), and
    comes before the member's own fields; it is dropped there.
    """
    out = ""
    container = False  # the previous part holds a union: a list index, conditions, when or not
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            container = True
            continue
        if container and part in _TAGS and i + 1 < len(loc):
            container = False
            continue
        out += f".{part}" if out else str(part)
        container = part in ("conditions", "when", "not")
    return out or "(definition)"


def from_validation(exc: ValidationError, prefix: str = "") -> DefinitionError:
    errors = []
    for e in exc.errors(include_url=False):
        field = pointer(e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        errors.append({"field": f"{prefix}{field}" if prefix else field, "error": message})
    return DefinitionError(errors)
