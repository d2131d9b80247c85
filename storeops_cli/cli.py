"""The ``storeops`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from services import SERVICES, load_spec, service_port
from storeops_cli import audit_export, reaper


def _up(args: argparse.Namespace) -> int:
    from storeops.settings import Settings
    from storeops_cli.runner import up

    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    return up(settings, args.rate if args.demo else None)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from storeops.service import build_app

    spec = load_spec(args.service)
    settings = spec.settings()
    if args.migrate:
        from storeops_cli import access

        access.prepare(settings)
        spec.migrate(settings.database_url_for(spec.name))
    uvicorn.run(
        build_app(spec, settings), host=settings.host, port=args.port or service_port(spec, settings),
        log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10,
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from storeops.settings import Settings
    from storeops_cli import access

    if not args.services:
        access.prepare(Settings())
        print("auth: signing key ready, token list migrated")
    for name in args.services or SERVICES:
        spec = load_spec(name)
        if spec.metadata is not None:
            spec.migrate(spec.settings().database_url_for(name))
            print(f"{name}: migrated")
    return 0


def _token(args: argparse.Namespace) -> int:
    from storeops.auth import Role
    from storeops.settings import Settings
    from storeops_cli import access

    settings = Settings()
    if args.action == "create":
        try:
            expires = access.duration(args.expires) if args.expires else None
            token, row = access.create(settings, args.name, Role(args.role), args.by, expires)
        except ValueError as exc:
            print(f"storeops token create: {exc}", file=sys.stderr)
            return 2
        print(f"token {row.id} for {row.name} ({row.role.value}), expires {row.expires_at or 'never'}", file=sys.stderr)
        print(token)  # alone on the last line of stdout: TOKEN=$(storeops token create ...)
        return 0
    if args.action == "list":
        print(access.table(access.listed(settings)))
        return 0
    revoked = access.revoke(settings, args.token, args.by)
    if not revoked:
        print(f"storeops token revoke: no active token named or with id {args.token!r}", file=sys.stderr)
        return 1
    for row in revoked:
        print(f"revoked {row.id} ({row.name}, {row.role.value}); every service refuses it within "
              f"{settings.auth.refresh_seconds:g} s")
    return 0


def _topics(args: argparse.Namespace) -> int:
    from schemas.registry import REGISTRY
    from storeops.kafka import ensure_topics
    from storeops.settings import Settings

    bootstrap = Settings().kafka.bootstrap_servers
    created = asyncio.run(ensure_topics(bootstrap, REGISTRY, args.replication_factor))
    print(f"{len(created)} topics created on {bootstrap}; {len(REGISTRY) - len(created)} existed")
    return 0


def _broker(args: argparse.Namespace) -> int:
    from storeops_cli.broker import start_embedded

    broker = start_embedded()
    print(f"embedded broker ready in {broker.ready_seconds:.2f} s at {broker.bootstrap_servers}", flush=True)
    print(f"use it with: export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers} STOREOPS_KAFKA__FLAVOR=embedded")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def _rebuild(args: argparse.Namespace) -> int:
    from services.exceptions.rebuild import NotEmpty, read_changes, rebuild
    from storeops.db import make_engine, make_sessionmaker

    spec = load_spec("exceptions")
    settings = spec.settings()
    url = settings.database_url_for("exceptions")
    spec.migrate(url)

    async def go() -> int:
        records = await read_changes(settings.kafka.bootstrap_servers, args.idle_seconds)
        engine = make_engine(url)
        try:
            done = await rebuild(make_sessionmaker(engine), records)
        except NotEmpty as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        finally:
            await engine.dispose()
        print(f"{done.records} change records read; {done.exceptions} exceptions and {done.actions} applied actions restored")
        return 0

    return asyncio.run(go())


def _schemas(args: argparse.Namespace) -> int:
    from schemas.export import SCHEMA_DIR, export, render

    if args.action == "export":
        for path in export():
            print(path)
        return 0
    stale = [name for name, text in render().items() if not (SCHEMA_DIR / name).is_file() or (SCHEMA_DIR / name).read_text() != text]
    for name in stale:
        print(f"out of date: {name}")
    return 1 if stale else 0


def _bench(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"storeops_cli.bench.{args.bench}").run(args)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure speed; prints a table and, last, one JSON line")
    kinds = bench.add_subparsers(dest="bench", required=True)

    broker = kinds.add_parser("broker", help="raw aiokafka produce and consume rates: the ceiling")
    broker.add_argument("--events", type=int, default=100_000)
    broker.add_argument("--runs", type=int, default=3)

    pipeline = kinds.add_parser("pipeline", help="throughput and latency through all five services")
    pipeline.add_argument("--events", type=int, default=20_000)
    pipeline.add_argument("--runs", type=int, default=3)
    pipeline.add_argument("--exception-share", type=float, default=0.1, help="share of events that raise an exception")
    pipeline.add_argument("--entry", choices=["topics", "http", "both"], default="both",
                          help="events produced straight onto the topics, posted to ingest, or both")
    pipeline.add_argument("--latency-seconds", type=float, default=20.0, help="length of the fixed-load latency phase")
    pipeline.add_argument("--latency-rate", type=float, help="offered load of the latency phase (default: half the maximum)")
    pipeline.add_argument("--attach", action="store_true", help="use services already running on their ports")

    ingest = kinds.add_parser("ingest", help="ingest requests/s and events/s against a bare FastAPI endpoint")
    ingest.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    ingest.add_argument("--runs", type=int, default=3)
    ingest.add_argument("--batch-size", type=int, default=100)
    ingest.add_argument("--concurrency", type=int, default=16)

    queue = kinds.add_parser("queue", help="exception queue reads (p50/p95/p99) and bulk actions over a large backlog")
    queue.add_argument("--exceptions", type=int, default=100_000, help="open exceptions seeded before measuring")
    queue.add_argument("--queries", type=int, default=200, help="timed requests per read, after a few warm-up ones")
    queue.add_argument("--runs", type=int, default=3)
    queue.add_argument("--bulk", type=int, default=1000, help="exceptions per bulk request (resolve, then reassign)")

    rules = kinds.add_parser("rules", help="condition evaluation cost per event, ours against the rule-engine library")
    rules.add_argument("--rules", type=int, default=50, help="active rules, all triggered by OrderPlaced")
    rules.add_argument("--events", type=int, default=10_000, help="distinct seeded orders")
    rules.add_argument("--runs", type=int, default=3)
    rules.add_argument("--repeat", type=int, default=10_000, help="evaluations of one event (the peer: a twentieth)")
    rules.add_argument("--peer-events", type=int, default=2_000,
                       help="of the distinct events, how many the slower peer is timed on (0: all); it is checked on all")
    rules.add_argument("--seed", type=int, default=1)
    rules.add_argument("--json", action="store_true", help="print only the JSON object")

    auth = kinds.add_parser("auth", help="what verifying a bearer token costs per request, against the same route open")
    auth.add_argument("--requests", type=int, default=5000, help="requests per kind and run")
    auth.add_argument("--runs", type=int, default=3)

    notifier = kinds.add_parser("notifier", help="webhooks and e-mails per second from one notifier, hand-over -> webhook latency")
    notifier.add_argument("--events", type=int, default=50, help="requests timed one at a time, for the latency")
    notifier.add_argument("--burst", type=int, default=2000, help="webhook requests per throughput run")
    notifier.add_argument("--emails", type=int, default=500, help="e-mail requests per throughput run")
    notifier.add_argument("--runs", type=int, default=3)
    notifier.add_argument("--sse-clients", type=int, default=500, help="live streams connected at once (0: no fan-out figure)")
    notifier.add_argument("--sse-rounds", type=int, default=10, help="notifications timed until every stream has one")
    notifier.add_argument("--databases", default="both", help="where to measure: sqlite, postgresql or both")
    notifier.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                          help="a database on the server the bench makes its own in")

    audit = kinds.add_parser("audit", help="the audit trail at size: sink rate with the chain, search p95 per filter, "
                             "export rate and RSS, verify time")
    audit.add_argument("--entries", type=int, default=1_000_000)
    audit.add_argument("--queries", type=int, default=50, help="requests per filter")
    audit.add_argument("--databases", default="both", help="where to measure: sqlite, postgresql or both")
    audit.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                       help="a database on the server the bench makes its own in")

    for p in (broker, pipeline, ingest, queue, rules, auth, notifier, audit):
        p.set_defaults(func=_bench)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storeops", description="Operations automation for online stores.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the broker, migrate, run every service; Ctrl-C stops")
    up.add_argument("--demo", action="store_true", help="post a steady, realistic stream of store events")
    up.add_argument("--rate", type=float, default=5.0, help="demo events per second (default 5)")
    up.add_argument("--data-dir", type=Path, help="where SQLite files and logs go (default .storeops-data)")
    up.set_defaults(func=_up)

    serve = sub.add_parser("serve", help="run one service (API and consumer) in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--port", type=int)
    serve.add_argument("--migrate", action="store_true", help="apply its migrations first")
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="apply the services' database migrations")
    migrate.add_argument("services", nargs="*", choices=[*SERVICES, []])
    migrate.set_defaults(func=_migrate)

    token = sub.add_parser("token", help="storeops' own API tokens: create, list, revoke")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token (alone on stdout's last line)")
    create.add_argument("--name", required=True, help="who it is for: a person, a connector, a script")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin", "service"])
    create.add_argument("--expires", help="e.g. 30d, 12h, 2w (default: never)")
    create.add_argument("--by", default=os.environ.get("USER", "storeops token"), help="who made it (recorded)")
    actions.add_parser("list", help="every token: id, name, role, state (never the token itself)")
    revoke = actions.add_parser("revoke", help="revoke a token by id, or every token of a name")
    revoke.add_argument("token", metavar="NAME_OR_ID")
    revoke.add_argument("--by", default=os.environ.get("USER", "storeops token"), help="who revoked it (recorded)")
    token.set_defaults(func=_token)

    topics = sub.add_parser("topics", help="create every registered topic on KAFKA_BOOTSTRAP_SERVERS")
    topics.add_argument("--replication-factor", type=int, default=1)
    topics.set_defaults(func=_topics)

    broker = sub.add_parser("broker", help="run only the embedded broker")
    broker.set_defaults(func=_broker)

    _add_bench(sub)

    chaos = sub.add_parser("chaos", help="kill -9 each worker in turn under load; count lost and doubled effects")
    chaos.add_argument("--events", type=int, default=20_000)
    chaos.add_argument("--rate", type=float, default=1000.0, help="events per second offered to ingest")
    chaos.add_argument("--exception-share", type=float, default=0.1)
    chaos.set_defaults(func=lambda a: __import__("storeops_cli.bench.chaos", fromlist=["run"]).run(a))

    rebuild = sub.add_parser("rebuild", help="rebuild a service's tables by replaying its topic")
    rebuild.add_argument("service", choices=["exceptions"])
    rebuild.add_argument("--idle-seconds", type=float, default=3.0, help="stop reading after this long without a record")
    rebuild.set_defaults(func=_rebuild)

    audit = sub.add_parser("audit", help="the audit trail: export it, verify its hash chains and signed checkpoints")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    audit_export.add_parser(audit_actions)
    verify = audit_actions.add_parser(
        "verify", help="walk every chain and checkpoint; exit 1 at the first entry that does not verify")
    verify.add_argument("--since", metavar="SEQ_OR_TIME", help="start each chain at this chain_seq, or at its last "
                        "checkpoint at or before this time (ISO 8601 with a zone); default: each chain's first entry")
    verify.add_argument("--database-url", help="default: the audit service's (DATABASE_URL, else <data dir>/audit.db)")
    verify.add_argument("--public-key", type=Path, action="append", metavar="FILE", help="a public key (PEM) checkpoints "
                        "may be signed with; repeat for several; default: audit-signing.pub next to the signing key")
    verify.set_defaults(func=lambda a: __import__("storeops_cli.audit", fromlist=["run"]).run(a))

    schemas = sub.add_parser("schemas", help="export the topics' JSON Schemas, or check them")
    schemas.add_argument("action", choices=["export", "check"])
    schemas.set_defaults(func=_schemas)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("bench", "chaos"):
        # SIGTERM (a timeout, a CI runner) must stop the services and the broker
        # the command started; see storeops/reaper.py for why it is not sys.exit.
        signal.signal(signal.SIGTERM, lambda *_: reaper.stop_all_and_exit(143))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
