"""``storeops bench ingest``: requests/s and events/s through ingest, against a bare endpoint.

Two servers run side by side, each in its own process with uvicorn's settings
of ``storeops serve`` (one worker, no access log):

- ingest, the real service (``storeops serve ingest``) on the launcher's
  broker (``KAFKA_BOOTSTRAP_SERVERS``, else Docker, else embedded): validates
  every event, produces it with acks=all and answers 202 after the acks;
- bare (``storeops_cli.bench.bare``): parses the same JSON body and answers 202.

One load generator, a separate process, drives both with the same requests:
``--concurrency`` asyncio workers, each with its own ``httpx.AsyncClient``
(one HTTP/1.1 keep-alive connection, TCP_NODELAY) posting back to back. Every
request carries the bench's admin token (``Authorization: Bearer``, made in the
servers' data directory like any client's); ingest verifies it on each request,
the bare endpoint has no auth and ignores the header, so both get the same bytes
and verifying the token is part of what ingest does more. A
phase warms up for ``WARMUP_SECONDS``, then counts for ``--seconds`` every
request that completed inside that window: 202s, other answers and transport errors, and each 202's
latency (p50, p99). Phases: single-event POSTs, then batched POSTs
(``--batch-size`` events of one kind per request), each against bare and
ingest (the order alternates from run to run), ``--runs`` times; the figures
are medians over the runs and the ratio ingest/bare of those medians.

Events are ``Mix`` events (orders and stock changes, 300-800 bytes of JSON),
a fixed pool reused round-robin. During each window the CPU seconds of the
server process (and, for ingest, of the broker when it runs here) are
sampled, and the load generator reports its own: on a 2-core machine a side
near 100% of a core is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson

from storeops.auth import Role
from storeops.settings import Settings
from storeops_cli import access
from storeops_cli.bench.bare import bare_server
from storeops_cli.bench.broker import broker_process
from storeops_cli.bench.load import Mix
from storeops_cli.bench.report import emit, median, percentile, table
from storeops_cli.bench.stack import ProcessSampler
from storeops_cli.broker import RunningBroker, free_port, start_broker
from storeops_cli.runner import Child, StartupError, wait_ready

WARMUP_SECONDS = 1.0
SINGLE_POOL = 2000  # distinct single-event bodies
BATCH_POOL_EVENTS = 20_000  # events spread over the distinct batched bodies
MESSAGE_TIMEOUT = 60.0  # seconds beyond a phase's length before the generator counts as stuck
HEADERS = {"content-type": "application/json"}
# httpx writes a request's headers and body separately: with Nagle's algorithm on, the body
# waits for the server's delayed ACK (up to 40 ms on Linux), which would be measured instead.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
MODES = ("single", "batched")
TARGETS = ("bare", "ingest")

Body = tuple[str, bytes]  # (path, JSON body)


# --- request bodies -------------------------------------------------------------


def single_bodies(count: int = SINGLE_POOL) -> list[Body]:
    """One event per body, posted to its kind's endpoint."""
    mix = Mix(exception_share=0.1, seed=1)
    return [(f"/v1/events/{kind}", orjson.dumps(event)) for kind, event in map(mix.event, range(count))]


def batched_bodies(batch_size: int, events: int = BATCH_POOL_EVENTS) -> list[Body]:
    """Arrays of ``batch_size`` events of one kind (the endpoint is per kind)."""
    mix = Mix(exception_share=0.1, seed=2)
    buckets: dict[str, list[dict[str, Any]]] = {}
    bodies: list[Body] = []
    n = 0
    while len(bodies) < max(4, events // batch_size):
        kind, event = mix.event(n)
        n += 1
        bucket = buckets.setdefault(kind, [])
        bucket.append(event)
        if len(bucket) == batch_size:
            bodies.append((f"/v1/events/{kind}", orjson.dumps(bucket)))
            buckets[kind] = []
    return bodies


# --- the load generator (runs in its own process) --------------------------------


@dataclass
class Window:
    start: float
    end: float


@dataclass
class Tally:
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def add(self, status: int | str, seconds: float) -> None:
        if status == 202:
            self.ok += 1
            self.latencies.append(seconds)
        else:
            self.errors[str(status)] += 1


def client(url: str, token: str) -> httpx.AsyncClient:
    """One keep-alive HTTP/1.1 connection, sending ``token`` with every request.

    One client per worker, not one shared pool: httpcore's pool rechecks every
    connection under one lock for each request, so a shared pool of 16+
    connections spends the generator's CPU on itself. ``verify=False`` and
    ``trust_env=False`` because the URL is plain HTTP on loopback: the default
    builds a TLS context from the CA bundle for each client (~30 ms of CPU).
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=NODELAY, verify=False)
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=30.0, verify=False, trust_env=False,
                             headers=access.bearer(token))


async def worker(http: httpx.AsyncClient, bodies: list[Body], first: int, stride: int, window: Window,
                 tally: Tally) -> None:
    """Post back to back until the window closes; count what completed inside it."""
    i = first
    while time.perf_counter() < window.end:
        path, body = bodies[i % len(bodies)]
        i += stride
        t0 = time.perf_counter()
        try:
            status: int | str = (await http.post(path, content=body, headers=HEADERS)).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        done = time.perf_counter()
        if window.start <= done <= window.end:
            tally.add(status, done - t0)


async def drive(conn: Connection, job: dict[str, Any], bodies: list[Body]) -> dict[str, Any]:
    """One phase: warm up, tell the parent the window opened, count, tell it the window closed."""
    n, tally = job["concurrency"], Tally()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(job["url"], job["token"])) for _ in range(n)]
        now = time.perf_counter()
        window = Window(now + job["warmup"], now + job["warmup"] + job["seconds"])
        tasks = [asyncio.create_task(worker(c, bodies, i, n, window, tally)) for i, c in enumerate(clients)]
        await asyncio.sleep(window.start - time.perf_counter())
        conn.send("measuring")
        cpu0 = time.process_time()
        await asyncio.sleep(window.end - time.perf_counter())
        cpu = time.process_time() - cpu0
        conn.send("done")
        await asyncio.gather(*tasks)
    return summarize(tally, window.end - window.start, cpu, job["events_per_request"])


def summarize(tally: Tally, seconds: float, cpu: float, per_request: int) -> dict[str, Any]:
    ms = [s * 1000 for s in tally.latencies]
    return {"requests": tally.ok, "rps": round(tally.ok / seconds, 1),
            "eps": round(tally.ok * per_request / seconds, 1),
            "errors": sum(tally.errors.values()), "error_kinds": dict(tally.errors),
            "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "seconds": round(seconds, 3), "loadgen_cpu_s": round(cpu, 3),
            "loadgen_cpu_percent": round(100 * cpu / seconds, 1)}


def generator_main(conn: Connection, pools: dict[str, list[Body]]) -> None:
    """The generator process: run each job sent by the parent until it sends None."""
    while (job := conn.recv()) is not None:
        conn.send(asyncio.run(drive(conn, job, pools[job["mode"]])))


class LoadGenerator:
    """The generator process, started once (spawn) with every body it will send."""

    def __init__(self, pools: dict[str, list[Body]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=generator_main, args=(child, pools), name="bench-loadgen", daemon=True)
        self.proc.start()
        child.close()

    def phase(self, job: dict[str, Any], pids: dict[str, int | None]) -> dict[str, Any]:
        """Run one phase; the servers' CPU is sampled over the generator's counting window."""
        self.conn.send(job)
        self._expect("measuring", job["warmup"] + MESSAGE_TIMEOUT)
        with ProcessSampler(pids) as sampler:
            self._expect("done", job["seconds"] + MESSAGE_TIMEOUT)
        return {**self._expect(None, MESSAGE_TIMEOUT), "cpu": sampler.figures()}

    def _expect(self, wanted: str | None, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"load generator silent for {timeout:.0f} s (waiting for {wanted or 'results'})")
        message = self.conn.recv()
        if wanted is not None and message != wanted:
            raise RuntimeError(f"load generator said {message!r}, expected {wanted!r}")
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


# --- the servers ----------------------------------------------------------------


@dataclass
class Servers:
    broker: RunningBroker
    ingest: Child
    bare: Child
    token: str  # the bench's admin token, which every request to either server carries

    def target(self, name: str) -> tuple[str, dict[str, int | None]]:
        """(base URL, processes to sample) of ``bare`` or ``ingest``."""
        if name == "bare":
            return self.bare.url, {"server": _pid(self.bare.proc)}
        broker = broker_process(self.broker.bootstrap_servers)
        return self.ingest.url, {"server": _pid(self.ingest.proc), "broker": broker.pid if broker else None}


def _pid(proc: Any) -> int | None:
    return proc.pid if proc is not None and proc.poll() is None else None


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """The broker, ingest (``storeops serve ingest``) and the bare endpoint; all stopped on exit.

    Ingest verifies tokens as it does anywhere: the signing key and the token list are
    made ready in the folder (or where ``STOREOPS_AUTH__*`` points) and the bench's
    admin token ("bench") is kept there."""
    with tempfile.TemporaryDirectory(prefix="storeops-bench-ingest-") as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data)
        access.prepare(settings)
        token = access.kept_token(settings, "bench", Role.admin, "bench ingest")[0]
        broker = start_broker(log_file=data / "broker.log")
        port = free_port()
        env = {**os.environ, **broker.env(), "STOREOPS_DATA_DIR": tmp, "STOREOPS_INGEST__PORT": str(port)}
        ingest = Child("ingest", port, data / "ingest.log", env)
        running = Servers(broker, ingest, bare_server(free_port(), data / "bare.log"), token)
        try:
            running.ingest.start()
            running.bare.start()
            _wait_ready(running.ingest, running.bare)
            yield running
        finally:
            running.bare.stop()
            running.ingest.stop()
            broker.stop()


def _wait_ready(*children: Any) -> None:
    """``wait_ready``, with the end of each log in the error (the folder is deleted on exit)."""
    try:
        wait_ready(list(children), timeout=60)
    except StartupError as exc:
        tails = "\n".join(f"--- {c.name}:\n{c.log_tail(20)}" for c in children)
        raise StartupError(f"{exc}\n{tails}") from None


# --- runs and figures -----------------------------------------------------------


def one_run(gen: LoadGenerator, running: Servers, args: argparse.Namespace, index: int) -> dict[str, Any]:
    """Every mode against both targets; the target order alternates from run to run."""
    order = TARGETS if index % 2 == 0 else TARGETS[::-1]
    figures: dict[str, Any] = {}
    for mode in MODES:
        figures[mode] = {}
        for target in order:
            url, pids = running.target(target)
            job = {"url": url, "token": running.token, "mode": mode, "seconds": args.seconds, "warmup": WARMUP_SECONDS,
                   "concurrency": args.concurrency, "events_per_request": 1 if mode == "single" else args.batch_size}
            figures[mode][target] = gen.phase(job, pids)
        figures[mode]["ratio_rps"] = _ratio(figures[mode]["ingest"]["rps"], figures[mode]["bare"]["rps"])
    return figures


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


FIELDS = ("rps", "eps", "p50_ms", "p99_ms", "errors", "loadgen_cpu_percent")


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        out[mode] = {}
        for target in TARGETS:
            phases = [r[mode][target] for r in runs]
            mid = {k: median([p[k] for p in phases]) for k in FIELDS}
            for proc in phases[0]["cpu"]:
                mid[f"{proc}_cpu_percent"] = median([p["cpu"][proc]["cpu_percent"] for p in phases if proc in p["cpu"]])
            out[mode][target] = mid
        out[mode]["ratio_rps"] = _ratio(out[mode]["ingest"]["rps"], out[mode]["bare"]["rps"])
    return out


def render(mid: dict[str, Any], args: argparse.Namespace) -> str:
    headers = ["phase (median of runs)", "req/s", "events/s", "p50 ms", "p99 ms", "errors",
               "server CPU %", "broker CPU %", "loadgen CPU %"]
    rows = []
    for mode in MODES:
        label = "single event" if mode == "single" else f"batch of {args.batch_size}"
        for target in TARGETS:
            m = mid[mode][target]
            rows.append([f"{label}, {target}", m["rps"], m["eps"], m["p50_ms"], m["p99_ms"], m["errors"],
                         m["server_cpu_percent"], m.get("broker_cpu_percent", float("nan")), m["loadgen_cpu_percent"]])
    ratios = ", ".join(f"{mode} {mid[mode]['ratio_rps']}" for mode in MODES)
    note = (f"ingest/bare (req/s): {ratios}\n"
            f"{args.concurrency} concurrent keep-alive connections, {args.seconds:g} s per phase after "
            f"{WARMUP_SECONDS:g} s warm-up; CPU % is of one core")
    return table(headers, rows) + "\n" + note


def run(args: argparse.Namespace) -> int:
    pools = {"single": single_bodies(), "batched": batched_bodies(args.batch_size)}
    gen = LoadGenerator(pools)
    try:
        with servers() as running:
            print(f"broker: {running.broker.kind} at {running.broker.bootstrap_servers}; ingest {running.ingest.url}, "
                  f"bare {running.bare.url}", flush=True)
            runs = [one_run(gen, running, args, i) for i in range(args.runs)]
            kind = running.broker.kind
    finally:
        gen.close()
    mid = medians(runs)
    settings = {"seconds": args.seconds, "runs": args.runs, "batch_size": args.batch_size,
                "concurrency": args.concurrency, "warmup_seconds": WARMUP_SECONDS, "http": "HTTP/1.1 keep-alive",
                "server": "uvicorn, 1 worker, no access log", "bodies": {m: len(p) for m, p in pools.items()},
                "auth": "every request carries a bearer token: ingest verifies it, bare ignores it"}
    figures = {"bench": "ingest", "broker": kind, "settings": settings, "median": mid,
               "ratio": {mode: mid[mode]["ratio_rps"] for mode in MODES}, "runs": runs}
    emit(render(mid, args), figures)
    return 0
