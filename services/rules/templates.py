"""Templates in rule actions: Jinja, sandboxed, strict about names.

A template sees the triggering event (``event``, and ``data`` and ``subject``
as shortcuts), the rule (``rule``), the event's time (``now``) and the steps
that ran before it (``steps.<id>.output.<field>``). A name outside these, or a
syntax error, is refused when the rule is saved; a field the event lacks is an
error of the step that renders it, on record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markdown_it import MarkdownIt

from services.rules.errors import DefinitionError

NAMES = frozenset({"event", "data", "subject", "rule", "now", "steps"})


def _days(value: Any, days: float | int | str | Decimal) -> datetime:
    """``{{ now | add_days(2) }}``: a date some days after another."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value + timedelta(days=float(days))


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=autoescape, keep_trailing_newline=False)
    env.filters["add_days"] = _days
    env.filters["isodate"] = lambda v: v.isoformat() if isinstance(v, datetime) else str(v)
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)  # event fields in an HTML e-mail are escaped
_MARKDOWN = MarkdownIt("commonmark", {"html": False})  # raw HTML in Markdown source is shown, not rendered


class RenderError(Exception):
    """A template that failed on this event: a missing field, a bad operation."""


@dataclass(frozen=True)
class CompiledTemplate:
    text: str
    template: jinja2.Template
    constant: bool  # no placeholders: rendering is the text itself

    def render(self, context: Mapping[str, Any]) -> str:
        if self.constant:
            return self.text
        try:
            return self.template.render(context)
        except jinja2.UndefinedError as exc:
            raise RenderError(f"template {self.text!r}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"template {self.text!r}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise RenderError(f"template {self.text!r}: {type(exc).__name__}: {exc}") from None

    def render_number(self, context: Mapping[str, Any]) -> Decimal:
        out = self.render(context).strip()
        try:
            value = Decimal(out)
        except InvalidOperation:
            raise RenderError(f"template {self.text!r} rendered {out!r}, not a number") from None
        if not value.is_finite():
            raise RenderError(f"template {self.text!r} rendered {out!r}, not a finite number")
        return value


def compile_template(text: str, where: str, *, html: bool = False) -> CompiledTemplate:
    """Parse ``text``; DefinitionError (pointing at ``where``) for bad syntax or an unknown name."""
    env = _HTML if html else _PLAIN
    try:
        ast = env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise DefinitionError(where, f"bad template: {exc.message} (line {exc.lineno})") from None
    unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - NAMES)
    if unknown:
        raise DefinitionError(
            where, f"bad template: unknown name {unknown[0]!r}; a template may use {', '.join(sorted(NAMES))}")
    constant = "{{" not in text and "{%" not in text and "{#" not in text
    return CompiledTemplate(text, env.from_string(text), constant)


def markdown_to_html(source: str) -> str:
    return _MARKDOWN.render(source)
