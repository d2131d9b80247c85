"""A bare FastAPI endpoint shaped like ingest's, the baseline of ``storeops bench ingest``.

``POST /v1/events/{kind}`` reads the body, parses it as JSON (orjson, as
ingest does) and answers 202 with the number of events: no validation, no
broker. Served by uvicorn in its own process with ingest's settings (one
worker, ``log_config=None``, no access log), so the difference between the two
is what ingest does per request: verifying the bearer token, validating against
the contract, encoding, producing with acks=all and waiting for the acks, and its
fuller answer.

It has no auth, on purpose: it is the baseline. The load generator sends it the
same requests as ingest, ``Authorization`` header included, and it ignores the
header.

Run it alone with ``python -m storeops_cli.bench.bare --port 8101``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson
from fastapi import FastAPI, Request, Response

from storeops_cli.runner import Child

app = FastAPI(title="bare endpoint (benchmark baseline)")


@app.post("/v1/events/{kind}", status_code=202)
async def post_events(kind: str, request: Request) -> Response:
    doc = orjson.loads(await request.body())
    count = len(doc) if isinstance(doc, list) else 1
    return Response(orjson.dumps({"accepted": count}), status_code=202, media_type="application/json")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


def serve(port: int, host: str = "127.0.0.1") -> None:
    """uvicorn with the same settings as ``storeops serve``."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                timeout_graceful_shutdown=10)


def bare_server(port: int, log_path: Path) -> Child:
    """The bare endpoint as a child process, started and stopped like a service."""
    return Child("bare", port, log_path, dict(os.environ),
                 argv=(sys.executable, "-m", "storeops_cli.bench.bare", "--port", str(port)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
