"""Handing requests to the notifier: one POST per batch, retried while it is away.

A request counts as done when the notifier answered that it stored it
(``accepted``, or ``duplicate`` for a retry of one it already has). Every POST carries
the rules service's own ``service`` token; a notifier that refuses it (401, 403) is a
failure of the batch, not retried, its reason on record.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

import httpx

from schemas.notifications import NotifyRequest, NotifyRequestBatch, NotifyResult
from storeops.errors import excerpt

log = logging.getLogger(__name__)
BATCH = 500  # NotifyRequestBatch's limit


class NotifierClient:
    """``token`` gives the bearer token each POST carries (the service's own, renewed as it expires)."""

    def __init__(self, base_url: str, token: Callable[[], str], *, attempts: int = 3, backoff: float = 0.2,
                 timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.attempts = attempts
        self.backoff = backoff
        self._client = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, requests: Sequence[NotifyRequest]) -> tuple[dict[uuid.UUID, NotifyResult], int, str | None]:
        """(answers by request id, attempts made, error if the notifier could not be reached or answered badly)."""
        answers: dict[uuid.UUID, NotifyResult] = {}
        attempt, error = 0, None
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            body = NotifyRequestBatch(requests=list(chunk)).model_dump_json()
            for attempt in range(1, self.attempts + 1):
                try:
                    response = await self._client.post(f"{self.base_url}/v1/requests", content=body, headers={
                        "content-type": "application/json", "Authorization": f"Bearer {self.token()}"})
                except httpx.HTTPError as exc:
                    error = f"notifier unreachable at {self.base_url}: {type(exc).__name__}: {exc}".rstrip(": ")
                else:
                    if response.status_code == 200:
                        for item in response.json()["results"]:
                            result = NotifyResult.model_validate(item)
                            answers[result.request_id] = result
                        error = None
                        break
                    if response.status_code in (401, 403):
                        error = (f"the notifier at {self.base_url} refused the rules service's token "
                                 f"({response.status_code}: {refusal(response)})")
                    else:
                        error = f"notifier answered {response.status_code}: {response.text[:300]}"
                    if response.status_code < 500:
                        break  # a request it refuses whole will not improve with a retry
                if attempt < self.attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            if error is not None:
                log.warning("notifier hand-over failed", extra={"error": error, "requests": len(chunk)})
                return answers, attempt, error
        return answers, attempt, None


def refusal(response: httpx.Response) -> str:
    """The reason in a refusal's error body (the platform's shape), else a short excerpt of it."""
    try:
        return "; ".join(str(e["error"]) for e in response.json()["errors"])
    except (ValueError, KeyError, TypeError):
        return excerpt(response.text)
