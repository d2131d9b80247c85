"""Is a definition fit to save? Its shape, what the compiler checks, and the credentials its
webhooks name, which only the notifier knows (asked with the rules service's own ``service``
token). Every problem is reported with a pointer into the request body
(``definition.conditions.all[0].op``), all of them in one answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from schemas.rules import CallWebhookStep, RuleDefinition
from services.rules.compiler import CompiledRule, compile_rule
from services.rules.errors import DefinitionError
from services.rules.notifier_client import refusal
from storeops import outbound
from storeops.errors import Unavailable
from storeops.outbound import Network

PREFIX = "definition."
NOTIFIER_TIMEOUT = 5.0


class NotifierUnavailable(Unavailable):
    """The notifier could not say whether a credential exists; names the step's ``credential``."""


def parse(raw: dict[str, Any]) -> RuleDefinition:
    """The definition's shape; DefinitionError points into the body."""
    try:
        return RuleDefinition.model_validate(raw)
    except ValidationError as exc:
        raise DefinitionError.of(exc, raw, PREFIX) from exc


def compiled(rule_id: str, version: int, mode: str, definition: RuleDefinition) -> CompiledRule:
    """``compile_rule`` with its pointers made relative to the request body."""
    try:
        return compile_rule(rule_id, version, mode, definition)
    except DefinitionError as exc:
        raise DefinitionError(None, errors=[_prefixed(e) for e in exc.errors]) from exc


def _prefixed(error: dict[str, str]) -> dict[str, str]:
    field = error["field"]
    return error if field.startswith(PREFIX) else {**error, "field": PREFIX + field}


async def checked(raw: dict[str, Any], rule_id: str, version: int, notifier_url: str,
                  token: Callable[[], str], allow: Sequence[Network] = ()) -> RuleDefinition:
    """The definition, checked in full: shape, then what the compiler checks, then where its
    webhooks go (``allow``: networks they may reach although internal), then its credentials
    (``token`` gives the service token the notifier is asked with).

    DefinitionError lists every problem found. NotifierUnavailable only when the
    credentials could not be checked and nothing else is wrong.
    """
    definition = parse(raw)
    errors: list[dict[str, str]] = []
    try:
        compiled(rule_id, version, "DRY_RUN", definition)
    except DefinitionError as exc:
        errors = exc.errors
    errors += await asyncio.to_thread(webhook_refusals, definition, allow)
    try:
        errors += await unknown_credentials(notifier_url, definition, token)
    except NotifierUnavailable:
        if not errors:
            raise
    if errors:
        raise DefinitionError(None, errors=errors)
    return definition


def webhook_refusals(definition: RuleDefinition, allow: Sequence[Network] = ()) -> list[dict[str, str]]:
    """One error per webhook step whose URL may not be called: not http(s), or a host that is
    or resolves to an internal address (storeops.outbound). The scheme and host must be written
    out: a template there would let an event's data choose where the request goes. The URL is
    checked again when the request is sent."""
    errors = []
    for i, step in enumerate(definition.actions):
        if not isinstance(step, CallWebhookStep):
            continue
        url = str(step.url)
        cut = min((i for i in (url.find("{{"), url.find("{%")) if i >= 0), default=len(url))
        head = url[:cut]  # all of it, or what comes before the first template
        _, has_scheme, rest = head.partition("://")
        why: str | None
        if cut < len(url) and (not has_scheme or "/" not in rest):
            why = "write the scheme and host out: a template there lets an event's data choose where the request goes"
        else:
            why = outbound.refusal(head, allow)
        if why is not None:
            errors.append({"field": f"{PREFIX}actions[{i}].url", "error": why})
    return errors


async def unknown_credentials(notifier_url: str, definition: RuleDefinition,
                              token: Callable[[], str]) -> list[dict[str, str]]:
    """One error per webhook step naming a credential the notifier does not hold (it answers 404).

    A notifier that refuses the service token (401, 403: a different signing key, a clock far
    off) cannot say; that is NotifierUnavailable naming the step, with the notifier's reason."""
    steps: dict[str, list[int]] = {}
    for i, step in enumerate(definition.actions):
        if isinstance(step, CallWebhookStep) and step.credential:
            steps.setdefault(step.credential, []).append(i)
    if not steps:
        return []
    base = notifier_url.rstrip("/")
    async with httpx.AsyncClient(timeout=NOTIFIER_TIMEOUT, headers={"Authorization": f"Bearer {token()}"}) as client:
        answers = await asyncio.gather(
            *(client.get(f"{base}/v1/credentials/{quote(name, safe='')}") for name in steps), return_exceptions=True)
    unknown = set()
    for name, answer in zip(steps, answers, strict=True):
        field = f"{PREFIX}actions[{steps[name][0]}].credential"
        if isinstance(answer, BaseException):
            raise NotifierUnavailable(
                field, f"cannot check credential {name!r}: the notifier at {base} is unreachable ({type(answer).__name__})")
        if answer.status_code == 404:
            unknown.add(name)
        elif answer.status_code in (401, 403):
            raise NotifierUnavailable(
                field, f"cannot check credential {name!r}: the notifier at {base} refused the rules service's token "
                       f"({answer.status_code}: {refusal(answer)})")
        elif answer.status_code != 200:
            raise NotifierUnavailable(
                field, f"cannot check credential {name!r}: the notifier at {base} answered {answer.status_code}")
    return [{"field": f"{PREFIX}actions[{i}].credential", "error": f"unknown credential {name!r}"}
            for i, name in sorted((i, name) for name in unknown for i in steps[name])]
