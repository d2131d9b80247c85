"""What is wrong with a rule definition, each problem naming its part (``conditions.all[0].op``).

A ``DefinitionError`` is an ``Invalid``: an API answers it 422 in the one error shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from storeops.errors import NO_INPUT, Invalid, field_errors

# The condition kinds whose union tag is also the name of their one field: {"all": [...]}.
_TAG_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found"})


class DefinitionError(Invalid):
    """A definition that cannot run; ``errors`` is ``[{"field": "conditions.all[0].op", "error": "..."}]``."""

    @classmethod
    def of(cls, exc: ValidationError, data: Any = NO_INPUT, prefix: str = "") -> DefinitionError:
        """Every problem of validating the definition ``data`` (fields start with ``prefix``),
        named by the platform's translator, with one adjustment for rule definitions: a step
        of no known type is named as the step, ``actions[1]``, not ``actions[1].type``: its
        message names the type it got and the ones there are.
        """
        raw = exc.errors(include_url=False)
        fields = field_errors(raw, data, prefix)
        for e, out in zip(raw, fields, strict=True):
            if e["type"] in _TAG_ERRORS:
                tag = str((e.get("ctx") or {}).get("discriminator", "type")).strip("'")
                out["field"] = out["field"].removesuffix(f".{tag}")
        return cls(None, errors=fields)
