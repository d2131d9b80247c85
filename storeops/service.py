"""The shape every service shares: one process with a FastAPI app and, for the
consuming services, one batch consumer loop in the same event loop.

A service declares a ``ServiceSpec``; ``build_app`` wires settings, database,
producer, consumer, ``/healthz``, ``/readyz`` and ``/metrics`` around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from aiokafka import AIOKafkaProducer
from alembic.config import Config
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from schemas.registry import Topic
from storeops import logs
from storeops.auth import Authenticator, Role, install_roles, requires, tokens
from storeops.auth.http import OPEN_PATHS
from storeops.consumer import BatchConsumer, Decoding, Emitter, Handler
from storeops.db import alembic_config, database_reachable, make_engine, make_sessionmaker, upgrade
from storeops.http import GUARD_RESPONSES, RequestGuard, install_docs, install_error_handlers
from storeops.kafka import make_consumer, make_producer
from storeops.metrics import ConsumerMetrics
from storeops.outbox import Outbox, Publisher
from storeops.settings import Settings

log = logging.getLogger(__name__)


S = TypeVar("S")


@dataclass
class Runtime(Generic[S]):
    """What a running service holds; API routes reach it through ``runtime(request)``.

    ``state`` is the service's own typed object (its queue, its rule set, its
    cipher), built once by ``ServiceSpec.state`` when the runtime is up.
    """

    name: str
    settings: Settings
    producer: AIOKafkaProducer
    emitter: Emitter
    metrics: ConsumerMetrics
    engine: AsyncEngine | None = None
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    consumer: BatchConsumer | None = None
    auth: Authenticator | None = None
    outbox: Publisher | None = None  # the service's transactional outbox (``ServiceSpec.outbox``)
    publishers: list[Publisher] = field(default_factory=list)  # it, and the token list's (token.created...)
    _state: S | None = None

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The service's database sessions; only a service that declares ``metadata`` has them."""
        if self.sessionmaker is None:
            raise RuntimeError(f"service {self.name!r} keeps no tables")
        return self.sessionmaker

    @property
    def state(self) -> S:
        if self._state is None:
            raise RuntimeError(f"service {self.name!r} has no state yet (ServiceSpec.state builds it at start)")
        return self._state


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    name: str
    settings: Callable[[], Settings]
    routers: tuple[APIRouter, ...] = ()
    metadata: MetaData | None = None
    consumes: tuple[Topic, ...] = ()
    watches: tuple[Topic, ...] = ()  # read too, but their unreadable records are their owner's to dead-letter
    handler: Callable[[Runtime[S]], Handler] | None = None
    decoding: Decoding = "contract"
    description: str = ""
    # long-running work besides the consumer (a sweep on a timer, say); a crash ends the process
    background: Callable[[Runtime[S]], Coroutine[Any, Any, None]] | None = None
    # builds the service's own state once the runtime is up, before the consumer starts
    state: Callable[[Runtime[S]], S] | None = None
    # the largest request body the service reads (default: settings.max_body_bytes)
    max_body_bytes: Callable[[Settings], int] | None = None
    # the service's Alembic scripts (env.py, versions/); required with ``metadata``
    migrations: Path | None = None
    # records its Outbox.put writes in a change's transaction are published by the runtime
    outbox: Outbox | None = None

    def __post_init__(self) -> None:
        if (self.metadata is None) != (self.migrations is None):
            raise ValueError(f"service {self.name!r}: give both metadata and migrations, or neither")
        if self.outbox is not None and (self.metadata is None or self.outbox.name not in self.metadata.tables):
            raise ValueError(f"service {self.name!r}: its outbox's table belongs in its metadata")

    def migrate(self, url: str, revision: str = "head") -> None:
        """Apply the service's migrations up to ``revision`` (synchronous; before its loop starts)."""
        if self.migrations is not None:
            upgrade(self.name, self.migrations, url, revision)

    def alembic_config(self, url: str) -> Config:
        if self.migrations is None:
            raise ValueError(f"service {self.name!r} keeps no tables")
        return alembic_config(self.name, self.migrations, url)


def runtime(request: Request) -> Runtime[Any]:
    return request.app.state.runtime


async def _start(spec: ServiceSpec[S], settings: Settings) -> Runtime[S]:
    metrics = ConsumerMetrics.for_service(spec.name)
    producer = make_producer(settings.kafka, spec.name)
    await producer.start()
    rt: Runtime[S] = Runtime(spec.name, settings, producer, Emitter(producer, metrics), metrics)
    rt.auth = Authenticator(settings, spec.name)
    await rt.auth.refresh()
    if spec.metadata is not None:
        rt.engine = make_engine(settings.database_url_for(spec.name))
        rt.sessionmaker = make_sessionmaker(rt.engine)
    if spec.outbox is not None:
        rt.outbox = Publisher(spec.outbox, rt.sessions, producer)
        rt.publishers.append(rt.outbox)
    # every service publishes the token list's outbox (the command line that changed it has no producer);
    # a record published twice carries one id, which the audit trail keeps once
    rt.publishers.append(Publisher(tokens.OUTBOX, make_sessionmaker(rt.auth.engine), producer))
    if spec.state is not None:
        rt._state = spec.state(rt)
    if spec.consumes and spec.handler is not None:
        consumer = make_consumer(settings.kafka, f"{settings.kafka.client_id_prefix}-{spec.name}", spec.name)
        rt.consumer = BatchConsumer(
            spec.name, consumer, spec.consumes, rt.emitter, spec.handler(rt), metrics,
            max_records=settings.kafka.max_poll_records, decoding=spec.decoding, watched=spec.watches,
        )
        await rt.consumer.start()
    return rt


def _crash_on_failure(task: asyncio.Task) -> None:
    """A bug in the consumer loop (or a background task) ends the process, so a supervisor restarts it clean."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("consumer loop crashed", exc_info=task.exception())
    logging.shutdown()
    os._exit(70)


def build_app(spec: ServiceSpec[Any], settings: Settings | None = None) -> FastAPI:
    settings = settings or spec.settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(spec.name, settings.log_level)
        t0 = time.monotonic()
        rt = await _start(spec, settings)
        app.state.runtime = rt
        app.state.auth = rt.auth
        assert rt.auth is not None
        refresh = asyncio.create_task(rt.auth.run(), name=f"{spec.name}-tokens")
        refresh.add_done_callback(_crash_on_failure)
        task = None
        if rt.consumer:
            task = asyncio.create_task(rt.consumer.run(), name=f"{spec.name}-consumer")
            task.add_done_callback(_crash_on_failure)
        publishing = []  # before the API: what a crash left goes out first
        for n, publisher in enumerate(rt.publishers):
            publishing.append(asyncio.create_task(publisher.run(), name=f"{spec.name}-outbox-{n}"))
            publishing[-1].add_done_callback(_crash_on_failure)
        background = None
        if spec.background is not None:
            background = asyncio.create_task(spec.background(rt), name=f"{spec.name}-background")
            background.add_done_callback(_crash_on_failure)
        log.info("service started", extra={"seconds": round(time.monotonic() - t0, 3)})
        try:
            yield
        finally:
            refresh.remove_done_callback(_crash_on_failure)
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
            if background is not None:
                background.remove_done_callback(_crash_on_failure)
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            if rt.consumer and task:
                rt.consumer.stop()
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 10)
                task.remove_done_callback(_crash_on_failure)
                task.cancel()
                await rt.consumer.close()
            for publisher, running in zip(rt.publishers, publishing, strict=True):
                running.remove_done_callback(_crash_on_failure)
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                with contextlib.suppress(Exception):  # what the last answers committed; the next start sends the rest
                    await asyncio.wait_for(publisher.flush(), 5)
            await rt.auth.close()
            await rt.producer.stop()
            if rt.engine:
                await rt.engine.dispose()
            log.info("service stopped")

    app = FastAPI(title=f"storeops {spec.name}", description=spec.description, lifespan=lifespan,
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  responses=GUARD_RESPONSES)
    install_error_handlers(app)
    install_docs(app)
    limit = spec.max_body_bytes(settings) if spec.max_body_bytes else settings.max_body_bytes
    open_paths = OPEN_PATHS if settings.auth.metrics_require_token else OPEN_PATHS | {"/metrics"}
    app.add_middleware(RequestGuard, max_body_bytes=limit, open_paths=open_paths)
    app.include_router(_ops_router(settings))
    for router in spec.routers:
        app.include_router(router)
    install_roles(app, open_paths)
    return app


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool] = Field(description="broker, database (if the service has one), consumer (if it consumes)")


def _ops_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["operations"])
    # /metrics is open unless STOREOPS_AUTH__METRICS_REQUIRE_TOKEN: scrapers often cannot send a token
    metrics_guard = [requires(Role.viewer)] if settings.auth.metrics_require_token else []

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up and its event loop answers."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=Readiness, responses={
        503: {"model": Readiness, "description": "Not ready: ``checks`` says what does not answer yet"}})
    async def readyz(request: Request) -> JSONResponse:
        """Ready when the broker and the database answer and the consumer has joined its group."""
        rt = runtime(request)
        checks: dict[str, bool] = {"broker": await _broker_answers(rt.producer)}
        if rt.engine is not None:
            checks["database"] = await database_reachable(rt.engine)
        if rt.consumer is not None:
            checks["consumer"] = rt.consumer.joined and rt.consumer.healthy
        ready = all(checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)

    # response_class Response, not PlainTextResponse: FastAPI documents every other status of a
    # route in its response class' media type, and the errors here are JSON like everywhere
    @router.get("/metrics", response_class=Response, dependencies=metrics_guard,
                responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}})
    async def metrics() -> Response:
        """Every metric of this process, in Prometheus' text format."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


async def _broker_answers(producer: AIOKafkaProducer) -> bool:
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False
