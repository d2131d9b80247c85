"""The committed JSON Schemas in schemas/jsonschema must equal what the models render."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.export import SCHEMA_DIR, export, render
from schemas.registry import REGISTRY


def drift(directory: Path) -> list[str]:
    """Every difference between ``directory`` and ``render()``, as readable lines."""
    expected = render()
    present = {p.name: p.read_text() for p in directory.glob("*.json")}
    problems = [f"missing: {name}" for name in sorted(expected.keys() - present.keys())]
    problems += [f"stale: {name}" for name in sorted(present.keys() - expected.keys())]
    problems += [f"differs: {name}" for name in sorted(expected.keys() & present.keys()) if expected[name] != present[name]]
    return problems


def test_committed_schemas_match_the_models():
    assert drift(SCHEMA_DIR) == [], "run `storeops schemas export` and commit the result"


def test_render_has_one_file_per_topic():
    assert sorted(render()) == sorted(f"{t.name}.json" for t in REGISTRY)


def test_rendered_schemas_are_json_with_id_and_title():
    for name, text in render().items():
        schema = json.loads(text)
        topic = name.removesuffix(".json")
        assert schema["$id"] == f"https://storeops.dev/schemas/{topic}.json"
        assert schema["title"] == topic
        assert text.endswith("}\n")


def test_render_is_deterministic():
    assert render() == render()


def test_money_is_a_string_in_the_serialized_schema():
    schema = json.loads(render()["storeops.events.orders.v1.json"])
    total = schema["$defs"]["OrderPlacedData"]["properties"]["total"]
    assert total["type"] == "string"


def test_export_into_a_fresh_directory_has_no_drift(tmp_path: Path):
    written = export(tmp_path)
    assert sorted(p.name for p in written) == sorted(render())
    assert drift(tmp_path) == []


def test_drift_finds_a_changed_file(tmp_path: Path):
    export(tmp_path)
    path = tmp_path / "storeops.events.orders.v1.json"
    schema = json.loads(path.read_text())
    schema["$defs"]["OrderPlacedData"]["properties"]["total"]["type"] = "number"
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    assert drift(tmp_path) == ["differs: storeops.events.orders.v1.json"]


def test_drift_finds_a_whitespace_only_change(tmp_path: Path):
    export(tmp_path)
    path = tmp_path / "storeops.audit.v1.json"
    path.write_text(path.read_text().rstrip("\n"))
    assert drift(tmp_path) == ["differs: storeops.audit.v1.json"]


def test_drift_finds_a_stale_and_a_missing_file(tmp_path: Path):
    export(tmp_path)
    (tmp_path / "storeops.old-topic.v1.json").write_text("{}\n")
    (tmp_path / "storeops.deadletter.v1.json").unlink()
    assert drift(tmp_path) == ["missing: storeops.deadletter.v1.json", "stale: storeops.old-topic.v1.json"]


def test_export_removes_stale_files_and_rewrites_changed_ones(tmp_path: Path):
    export(tmp_path)
    (tmp_path / "storeops.old-topic.v1.json").write_text("{}\n")
    (tmp_path / "storeops.actions.v1.json").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("kept")
    export(tmp_path)
    assert drift(tmp_path) == []
    assert (tmp_path / "notes.txt").read_text() == "kept"
