"""Every record type on every topic reads as an audit entry whose action is in the trail's vocabulary,
and a record of any shape reads as something (the recorder keeps it whatever its shape)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.audit import ACTIONS, AUTOMATED_ACTIONS
from schemas.export import EXAMPLES_DIR
from schemas.registry import EXCEPTIONS, REGISTRY, RULE_RUNS
from services.audit.entries import MAX_ENTITIES, describe
from tests.unit.test_contracts import topic_of_type, types_on

VOCABULARY = ACTIONS | AUTOMATED_ACTIONS
EVERY_TYPE = sorted((t.name, kind) for t in REGISTRY for kind in types_on(t))


def test_the_vocabularies_do_not_overlap() -> None:
    assert not ACTIONS & AUTOMATED_ACTIONS


@pytest.mark.parametrize(("topic", "kind"), EVERY_TYPE, ids=[f"{t}:{k}" for t, k in EVERY_TYPE])
def test_every_record_type_has_an_action_of_the_vocabulary(topic: str, kind: str) -> None:
    data: dict[str, Any] = {"status": "failed"} if topic == RULE_RUNS.name else {}
    if kind == "AuditEntryRecorded":
        data = {"action": "credential.deleted", "actor": {"kind": "person", "name": "a"},
                "entities": [{"type": "credential", "id": "c"}]}
    if kind == "ManualChangeRecorded":
        data = {"action": "rule.mode", "actor": {"kind": "person", "name": "a"}, "entity_type": "rule", "entity_id": "r"}
    if topic == EXCEPTIONS.name:
        data = {"kind": kind.removeprefix("Exception").lower().replace("statuschanged", "status_changed")}
    entry = describe(topic, {"type": kind, "subject": "s-1", "source": "storeops/x", "data": data})
    assert entry.action in VOCABULARY, entry
    assert entry.entities and entry.actor and entry.actor_kind in ("person", "system")


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_a_store_event_concerns_its_entity_with_its_source_as_actor(path: Path) -> None:
    raw = json.loads(path.read_text())
    topic = topic_of_type(raw["type"])
    record = topic.adapter.validate_python(raw).model_dump(mode="json")  # as on the topic: the subject filled in
    entry = describe(topic.name, record)
    assert entry.action in AUTOMATED_ACTIONS
    assert entry.entities[0] == ("sku" if record["type"] in ("PriceChanged", "StockChanged") else "order", record["subject"])
    assert (entry.actor_kind, entry.actor) == ("system", record["source"])


@pytest.mark.parametrize("data", [[], "x", 7, None, {"actor": "someone", "entities": "all", "before": [1]},
                                  {"actor": {"kind": "robot", "name": 5}, "entities": [{"type": None}, 3]},
                                  {"rule": "r", "exception": [], "sku": {"a": 1}, "after": "x", "kind": 9}])
@pytest.mark.parametrize("topic", sorted({t.name for t in REGISTRY}))
def test_a_record_of_any_shape_reads_as_an_entry(topic: str, data: Any) -> None:
    entry = describe(topic, {"type": 5, "subject": None, "data": data})
    assert entry.action and entry.actor_kind in ("person", "system") and len(entry.entities) <= MAX_ENTITIES
    json.dumps(entry.as_json())  # it serialises


def test_an_entry_names_at_most_twenty_entities_each_once() -> None:
    refs = [{"type": "order", "id": f"o-{n % 30}"} for n in range(60)]
    entry = describe("storeops.audit.v1", {"type": "AuditEntryRecorded", "subject": "o-0",
                                           "data": {"action": "exception.edited", "entities": refs}})
    assert entry.entities == [("order", f"o-{n}") for n in range(MAX_ENTITIES)]
