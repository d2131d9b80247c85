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
