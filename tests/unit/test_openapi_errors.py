"""Every service's OpenAPI document says which errors each operation can answer, in the one shape."""

from __future__ import annotations

from typing import Any

import pytest

from services import SERVICES, load_spec
from storeops.http import answers
from storeops.service import build_app

DOCUMENTS = {service: build_app(load_spec(service)).openapi() for service in SERVICES}
OPERATIONS = [pytest.param(service, method, path, operation, id=f"{service} {method.upper()} {path}")
              for service, document in DOCUMENTS.items() for path, methods in document["paths"].items()
              for method, operation in methods.items()]


def _schema(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ref = response["content"]["application/json"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


@pytest.mark.parametrize(("service", "method", "path", "operation"), OPERATIONS)
def test_each_operation_documents_the_errors_it_can_answer(service: str, method: str, path: str,
                                                            operation: dict[str, Any]) -> None:
    document = DOCUMENTS[service]
    responses = operation["responses"]
    expected = {"413", "415", "422"}  # the guard, in front of every route
    if operation.get("security"):
        expected |= {"401", "403", "503"}
    names = [p for p in operation.get("parameters", []) if p["in"] == "path" and "enum" not in p["schema"]]
    if names and method != "put":
        expected.add("404")  # a path naming a thing that may not exist (a PUT makes it)
    assert expected <= set(responses), f"{method.upper()} {path}: {sorted(responses)}"
    for status in expected - {"503"} if path == "/readyz" else expected:
        assert "errors" in _schema(document, responses[status])["required"], f"{method.upper()} {path} {status}"
    if "401" in responses:
        assert "WWW-Authenticate" in responses["401"]["headers"]
        assert "needed_role" in _schema(document, responses["403"])["properties"]
        assert "Retry-After" in responses["503"]["headers"]


def test_answers_names_only_the_errors_a_route_raises() -> None:
    declared = answers(not_found="No rule with this id", conflict="A stale version")
    assert set(declared) == {404, 409} and declared[404]["description"] == "No rule with this id"
    assert "allowed" in declared[409]["model"].model_json_schema()["properties"]
    with pytest.raises(TypeError, match="not teapot"):
        answers(teapot="I am one")


def test_a_time_cursor_comes_back_as_its_position_and_anything_else_is_refused() -> None:
    import uuid
    from datetime import UTC, datetime

    from storeops.errors import Invalid
    from storeops.http import encode_cursor, encode_time_cursor, time_cursor

    at, last = datetime(2026, 12, 3, 12, 0, tzinfo=UTC), uuid.uuid4()
    assert time_cursor(encode_time_cursor(at, last)) == (at, last) and time_cursor(None) is None
    for bad in (encode_cursor(["2026-12-03T12:00:00", str(last)]),   # a time without its zone
                encode_cursor([at.isoformat(), "not-an-id"]), encode_cursor(7), "garbage!"):
        with pytest.raises(Invalid) as refused:
            time_cursor(bad)
        assert refused.value.errors[0]["field"] == "cursor"
