"""``storeops bench auth``: what verifying a bearer token costs per request.

Two routes of one app, identical but for ``requires(Role.viewer)``: the app is
built the way every service's is (error handlers, the request guard, an
Authenticator on a token list of its own in a temporary SQLite file and a fresh
signing key), called in-process through httpx's ASGI transport, so the figure is
the server's work and not a network's. Per run: ``--requests`` requests to each
route, interleaved in blocks of 100 so both see the same machine; each timed on
its own (``perf_counter_ns``), median and p99. The auth cost is the guarded
route's median minus the open one's. Tokens: a listed storeops token (the usual
case) and a service's own short-lived token (not listed). Figures are medians
over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI

from storeops import auth
from storeops.auth import Authenticator, Principal, Role, requires
from storeops.auth import tokens as auth_tokens
from storeops.db import make_engine
from storeops.http import RequestGuard, install_error_handlers
from storeops.settings import Settings
from storeops_cli.bench.report import emit, median, percentile, table

BLOCK = 100


def _app(settings: Settings) -> tuple[FastAPI, Authenticator]:
    router = APIRouter()

    @router.get("/v1/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    @router.get("/v1/guarded")
    async def guarded(_: Principal = requires(Role.viewer)) -> dict[str, str]:
        return {"ok": "yes"}

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    app.include_router(router)
    authenticator = Authenticator(settings, "bench-auth")
    app.state.auth = authenticator
    return app, authenticator


async def _timed(client: httpx.AsyncClient, path: str, headers: dict[str, str], count: int) -> list[float]:
    took = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        response = await client.get(path, headers=headers)
        took.append((time.perf_counter_ns() - t0) / 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text}")
    return took


async def _one_run(requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="storeops-bench-auth-") as tmp:
        settings = Settings(data_dir=Path(tmp), auth={"key_file": Path(tmp) / "auth.key",
                                                      "tokens_database_url": f"sqlite+aiosqlite:///{tmp}/auth.db"})
        key = auth.ensure_key(settings.auth_key_file())
        await asyncio.to_thread(auth.migrate, settings.tokens_database_url())
        engine = make_engine(settings.tokens_database_url())
        try:
            listed, _ = await auth_tokens.issue(engine, key, "bench", Role.viewer, "bench auth")
        finally:
            await engine.dispose()
        app, authenticator = _app(settings)
        await authenticator.refresh()
        service = authenticator.service_token()
        kinds = {"open": ("/v1/open", {}), "listed token": ("/v1/guarded", {"Authorization": f"Bearer {listed}"}),
                 "service token": ("/v1/guarded", {"Authorization": f"Bearer {service}"})}
        took: dict[str, list[float]] = {k: [] for k in kinds}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            for path, headers in kinds.values():  # warm-up
                await _timed(client, path, headers, BLOCK)
            gc.collect()
            for _ in range(max(1, requests // BLOCK)):
                for kind, (path, headers) in kinds.items():
                    took[kind] += await _timed(client, path, headers, BLOCK)
        await authenticator.close()
    return {kind: {"median_us": round(median(v), 1), "p99_us": round(percentile(v, 99), 1), "requests": len(v)}
            for kind, v in took.items()}


def bench(requests: int, runs: int) -> dict[str, Any]:
    per_run = [asyncio.run(_one_run(requests)) for _ in range(runs)]
    kinds = per_run[0].keys()
    medians = {k: {m: round(median([r[k][m] for r in per_run]), 1) for m in ("median_us", "p99_us")} for k in kinds}
    cost = {k: round(medians[k]["median_us"] - medians["open"]["median_us"], 1) for k in kinds if k != "open"}
    return {"bench": "auth", "requests": requests, "runs": runs, "median": medians, "auth_cost_us": cost, "per_run": per_run}


def render(fig: dict[str, Any]) -> str:
    rows = [(kind, m["median_us"], m["p99_us"], fig["auth_cost_us"].get(kind, 0.0)) for kind, m in fig["median"].items()]
    return (table(["request", "median µs", "p99 µs", "auth cost µs (median - open)"], rows)
            + f"\n{fig['requests']:,} requests per kind and run, in-process ASGI, median of {fig['runs']} runs")


def run(args: argparse.Namespace) -> int:
    fig = bench(args.requests, args.runs)
    emit(render(fig), fig)
    return 0
