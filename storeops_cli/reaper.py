"""What this process started (a broker, service processes), so a SIGTERM can stop them before it exits.

Raising SystemExit from a signal handler does not work for this: the exception
surfaces wherever the main thread happens to be, and when that is Python code
called back from pydantic's Rust core (a serializer), it comes out as a
serialization error, or not at all. The handler stops what is tracked here,
newest first, and ends the process itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

_stops: dict[int, Callable[[], None]] = {}


def track(key: int, stop: Callable[[], None]) -> None:
    _stops[key] = stop


def untrack(key: int) -> None:
    _stops.pop(key, None)


def stop_all_and_exit(code: int) -> None:
    for key in reversed(list(_stops)):
        stop = _stops.pop(key, None)
        if stop is not None:
            with contextlib.suppress(Exception):
                stop()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
