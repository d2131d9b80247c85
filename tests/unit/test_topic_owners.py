"""Each registered topic has one owner: the service that dead-letters its unreadable records."""

from __future__ import annotations

from collections import Counter

from schemas.registry import REGISTRY
from services import SERVICES, load_spec


def test_every_topic_is_owned_by_exactly_one_service_and_read_by_audit() -> None:
    specs = [load_spec(name) for name in SERVICES]
    owners = Counter(t.name for spec in specs for t in spec.consumes)
    assert {t.name: owners[t.name] for t in REGISTRY} == {t.name: 1 for t in REGISTRY}
    audit = load_spec("audit")
    assert {t.name for t in (*audit.consumes, *audit.watches)} == {t.name for t in REGISTRY}


def test_no_service_both_owns_and_watches_a_topic() -> None:
    for name in SERVICES:
        spec = load_spec(name)
        assert not {t.name for t in spec.consumes} & {t.name for t in spec.watches}, name
