"""Write every topic's JSON Schema to ``schemas/jsonschema`` (committed, drift-tested)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.registry import REGISTRY

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
EXAMPLES_DIR = Path(__file__).parent / "examples"


def render() -> dict[str, str]:
    """File name → exact file text for every topic's schema."""
    return {f"{t.name}.json": json.dumps(t.json_schema(), indent=2, sort_keys=True) + "\n" for t in REGISTRY}


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Rewrite the schema files; returns the paths written. Stale files are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
