"""The five storeops services; each module ``services.<name>.app`` defines ``SPEC``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storeops.service import ServiceSpec

SERVICES: tuple[str, ...] = ("ingest", "rules", "exceptions", "notifier", "audit")


def load_spec(name: str) -> ServiceSpec:
    """The service's spec; ValueError names the known services."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    return importlib.import_module(f"services.{name}.app").SPEC


def service_port(spec: ServiceSpec, settings: object | None = None) -> int:
    settings = settings or spec.settings()
    return getattr(settings, spec.name).port
