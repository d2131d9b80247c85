"""A bare FastAPI endpoint shaped like ingest's, the baseline of ``storeops bench ingest``.

``POST /v1/events/{kind}`` reads the body, parses it as JSON (orjson, as
ingest does) and answers 202 with the number of events: no validation, no
broker. Served by uvicorn in its own process with ingest's settings (one
worker, ``log_config=None``, no access log), so the difference between the two
is what ingest does per request: validating against the contract, encoding,
producing with acks=all and waiting for the acks, and its fuller answer.

Run it alone with ``python -m storeops.bench.bare --port 8101``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import FastAPI, Request, Response

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


@dataclass
class BareServer:
    """The bare endpoint in a child process of its own (shaped like ``runner.Child`` for ``wait_ready``)."""

    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    name: str = "bare"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "storeops.bench.bare", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
