"""Validation failures as field paths and messages (storeops/errors.py)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from storeops.errors import describe, field_errors, field_path


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("data", "lines", 0, "sku"), "data.lines[0].sku"),
        (("OrderPlaced", "data", "total"), "data.total"),
        (("data",), "data"),
        (("id",), "id"),
        ((), "(body)"),
        (("OrderPlaced",), "(body)"),
        ((0, "sku"), "[0].sku"),
        (("lines", 0, 1), "lines[0][1]"),
        (("data", "Inner"), "data.Inner"),       # a capitalised name is only dropped in first place
        (("Upper_case", "x"), "Upper_case.x"),   # not alphanumeric: a field, not a tag
    ],
)
def test_field_path(loc: tuple, path: str):
    assert field_path(loc) == path


class Line(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class Data(BaseModel):
    total: int = Field(ge=0)
    lines: list[Line] = []


class Cat(BaseModel):
    type: Literal["Cat"]
    data: Data


class Dog(BaseModel):
    type: Literal["Dog"]
    data: Data


Pet = TypeAdapter(Annotated[Union[Cat, Dog], Field(discriminator="type")])


class Owner(BaseModel):
    pet: Annotated[Union[Cat, Dog], Field(discriminator="type")]


def failure(adapter: TypeAdapter, value: object) -> ValidationError:
    with pytest.raises(ValidationError) as exc_info:
        adapter.validate_python(value)
    return exc_info.value


def test_field_errors_one_per_problem_in_order_without_the_tag():
    exc = failure(Pet, {"type": "Cat", "data": {"total": -1, "lines": [{"sku": "", "quantity": 1}]}})
    assert field_errors(exc) == [
        {"field": "data.total", "error": "Input should be greater than or equal to 0"},
        {"field": "data.lines[0].sku", "error": "String should have at least 1 character"},
    ]


def test_field_errors_missing_field():
    exc = failure(Pet, {"type": "Dog"})
    assert field_errors(exc) == [{"field": "data", "error": "Field required"}]


def test_field_errors_top_level_shape():
    exc = failure(Pet, ["not", "an", "object"])
    [error] = field_errors(exc)
    assert error["field"] == "(body)"


def test_field_errors_unknown_tag_names_type():
    exc = failure(Pet, {"type": "Fish", "data": {"total": 1}})
    [error] = field_errors(exc)
    assert error["field"] == "type"
    assert "'Fish'" in error["error"]


def test_field_errors_missing_tag_names_type():
    [error] = field_errors(failure(Pet, {"data": {"total": 1}}))
    assert error["field"] == "type"


def test_field_errors_nested_tag_error_names_the_nested_type():
    [error] = field_errors(failure(TypeAdapter(Owner), {"pet": {"type": "Fish"}}))
    assert error["field"] == "pet.type"


def test_field_errors_messages_have_no_urls():
    exc = failure(Pet, {"type": "Cat", "data": {"total": "x"}})
    assert all("errors.pydantic.dev" not in e["error"] for e in field_errors(exc))


def test_describe_joins_every_problem_on_one_line():
    exc = failure(Pet, {"type": "Cat", "data": {"total": -1, "lines": [{"sku": "a", "quantity": 0}]}})
    assert describe(exc) == (
        "data.total: Input should be greater than or equal to 0; "
        "data.lines[0].quantity: Input should be greater than 0"
    )
    assert "\n" not in describe(exc)


def test_describe_single_problem_has_no_separator():
    assert describe(failure(Pet, {"type": "Dog"})) == "data: Field required"
