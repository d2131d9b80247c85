"""POST /v1/events/{kind}: one event or an array; 202 only after the broker's ack.

Answers: 202 all accepted; 207 some accepted and some rejected (the accepted
ones are on the topic); 422 none accepted (``errors`` names each field from the
body's root, ``rejected`` says which event); 413 body too large and 415 not JSON
(the platform's guard); 503 the broker did not acknowledge (the body says which
events were acknowledged, if any).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas.registry import ORDERS, PAYMENTS, PRICES, STOCK, Topic
from services.ingest import metrics
from services.ingest.logic import BodyError, parse_body, sort_events
from services.ingest.settings import ingest_config
from storeops.auth import Principal, Role, requires
from storeops.errors import Invalid, Unavailable
from storeops.http import FieldError, answers
from storeops.service import runtime

router = APIRouter(prefix="/v1/events", tags=["ingest"])

TOPICS: dict[str, Topic] = {"orders": ORDERS, "prices": PRICES, "stock": STOCK, "payments": PAYMENTS}


_EVENT = {"type": "object", "required": ["type", "data"],
          "properties": {"type": {"type": "string", "example": "OrderPlaced"}, "data": {"type": "object"}}}
# The body is read raw (its events are validated one by one, so one bad event does not
# refuse the others); declared here for the OpenAPI document.
_BODY = {"requestBody": {"required": True, "description": (
    "One event, or an array of up to max_events_per_request of them, each an envelope of a type the topic "
    "carries (schemas/jsonschema/). id, time, source and the other envelope fields have defaults; type and "
    "data are required."), "content": {"application/json": {
        "schema": {"oneOf": [_EVENT, {"type": "array", "items": _EVENT, "minItems": 1}]},
        "example": {"type": "OrderPlaced", "data": {"order_id": "ord-1", "customer_id": "c-1", "total": "2500.00",
                                                    "currency": "EUR"}}}}}}


class AcceptedEvent(BaseModel):
    index: int = Field(description="Its place in the body (0 for a single event)")
    id: str
    topic: str
    partition: int
    offset: int


class RejectedEvent(BaseModel):
    index: int
    id: Any = Field(description="The id the event gave, if any")
    errors: list[FieldError]


class Answer(BaseModel):
    accepted: list[AcceptedEvent]
    rejected: list[RejectedEvent]


_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": Answer, "description": "Every event accepted: on the topic, acknowledged by the broker"},
    207: {"model": Answer, "description": "Some events accepted (on the topic), some rejected (each with its errors)"},
    **answers(unavailable="The broker did not acknowledge every event: the body says which were"),
}


@router.post("/{kind}", status_code=202, openapi_extra=_BODY, responses=_ANSWERS)
async def post_events(kind: Literal["orders", "prices", "stock", "payments"], request: Request,
                      _: Principal = requires(Role.service)) -> JSONResponse:
    """The store's events, from its platform's connector (a ``service`` token) or an admin."""
    rt = runtime(request)
    config = ingest_config(rt.settings)
    topic = TOPICS[kind]
    body = await request.body()  # its size, content type and NUL characters are checked by the platform's guard
    try:
        items, many = parse_body(body, config.max_events_per_request)
    except BodyError as exc:
        raise Invalid(exc.field, exc.error) from None
    sorted_ = sort_events(topic, items)
    accepted, failed = await _produce(rt.producer, topic, sorted_.valid)
    _count(topic, len(accepted), len(sorted_.rejected), len(failed))
    content: dict[str, Any] = {"accepted": accepted, "rejected": sorted_.rejected}
    if failed:
        raise Unavailable("(broker)", "the broker did not acknowledge every event; send the failed ones again",
                          accepted=accepted, rejected=sorted_.rejected, failed=failed)
    if sorted_.rejected and not accepted:
        # the one error shape, with each event's fields named from the body's root
        raise Invalid(None, errors=[{"field": f"[{r['index']}].{e['field']}" if many else e["field"], "error": e["error"]}
                                    for r in sorted_.rejected for e in r["errors"]], **content)
    return JSONResponse(content, status_code=202 if not sorted_.rejected else 207)


async def _produce(producer: Any, topic: Topic, valid: list) -> tuple[list[dict], list[dict]]:
    """Send every valid event, then wait for every acknowledgement (acks=all)."""
    t0 = time.perf_counter()
    futures: list[Any] = []
    try:
        for _, event in valid:
            key, value = topic.encode(event)
            futures.append(await producer.send(topic.name, value=value, key=key))
    except KafkaError as exc:  # no metadata or buffer full: the rest was never sent
        unsent = [exc] * (len(valid) - len(futures))
    else:
        unsent = []
    results = [*await asyncio.gather(*futures, return_exceptions=True), *unsent]
    metrics.PRODUCE_SECONDS.observe(time.perf_counter() - t0)
    accepted, failed = [], []
    for (index, event), result in zip(valid, results, strict=True):
        if isinstance(result, BaseException):
            failed.append({"index": index, "id": str(event.id), "error": f"broker did not acknowledge: {result!r}"})
        else:
            accepted.append({"index": index, "id": str(event.id), "topic": topic.name,
                             "partition": result.partition, "offset": result.offset})
    return accepted, failed


def _count(topic: Topic, accepted: int, rejected: int, failed: int) -> None:
    for outcome, n in (("accepted", accepted), ("rejected", rejected), ("failed", failed)):
        if n:
            metrics.EVENTS.labels(topic.short_name, outcome).inc(n)
