"""JSON logs, configured once per process, with context bound per record batch."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_configured = False


def configure(service: str, level: str = "INFO") -> None:
    """One JSON object per line on stderr, with the service name on every line."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every failed connection attempt at ERROR while a broker restarts;
    # the consumer loop reports the state change once instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.DEBUG)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    _configured = True


class _Bound(logging.LoggerAdapter):
    """Merges bound fields with a call's own ``extra`` (Python 3.11's adapter replaces them)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **fields: Any) -> logging.LoggerAdapter:
    """A logger that adds ``fields`` (topic, partition, offset, rule id...) to each line."""
    return _Bound(logger, fields)
