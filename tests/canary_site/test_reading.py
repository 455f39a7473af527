"""The shared reader of untrusted definitions: one spelling of field paths, one idea of each
JSON kind, and errors raised with the full path of the field at fault."""

from __future__ import annotations

import pytest

from canary_site.reading import (
    Fields,
    index_path,
    is_integer,
    is_list,
    is_number,
    key_path,
    kind_of,
    nested_path,
)


class Invalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def test_paths__join_keys_with_dots_and_positions_with_brackets() -> None:
    assert key_path("", "rules") == "rules"
    assert index_path("rules", 0) == "rules[0]"
    assert key_path(index_path("rules", 0), "serve") == "rules[0].serve"
    assert nested_path("rules[0]", "serve.variant") == "rules[0].serve.variant"
    assert nested_path("targets", "[1]") == "targets[1]"
    assert nested_path("", "key") == "key"
    assert nested_path("default_rule", "") == "default_rule"


@pytest.mark.parametrize(
    ("value", "integer", "number", "listed", "kind"),
    [
        (True, False, False, False, "a boolean"),
        (3, True, True, False, "a number"),
        (2.5, False, True, False, "a number"),
        ("3", False, False, False, "a string"),
        ([1], False, False, True, "a list"),
        ((1,), False, False, True, "a list"),
        ({}, False, False, False, "an object"),
        (None, False, False, False, "null"),
    ],
)
def test_kinds__a_boolean_is_never_a_number(
    value: object, integer: bool, number: bool, listed: bool, kind: str
) -> None:
    assert (is_integer(value), is_number(value), is_list(value), kind_of(value)) == (
        integer,
        number,
        listed,
        kind,
    )


def test_fields__not_an_object__names_the_path_or_the_document() -> None:
    with pytest.raises(Invalid) as nested:
        Fields([], "rules[2]", Invalid)
    with pytest.raises(Invalid) as top:
        Fields("text", "", Invalid, top="policy")

    assert (nested.value.field, nested.value.message) == ("rules[2]", "must be an object")
    assert top.value.field == "policy"


def test_fields__a_missing_value__is_required_unless_it_has_a_default() -> None:
    rule = Fields({"name": None}, "rules[0]", Invalid)

    assert rule.value("name", "unnamed") == "unnamed"
    with pytest.raises(Invalid) as caught:
        rule.value("priority")
    assert (caught.value.field, caught.value.message) == ("rules[0].priority", "is required")


def test_fields__items_of_a_list__carry_their_paths() -> None:
    rule = Fields({"conditions": [{"source": "path"}, "oops"]}, "rules[1]", Invalid)

    assert [path for path, _item in rule.items("conditions")] == [
        "rules[1].conditions[0]",
        "rules[1].conditions[1]",
    ]
    assert Fields({}, "", Invalid).items("conditions") == []
    with pytest.raises(Invalid) as not_objects:
        rule.objects("conditions")
    assert not_objects.value.field == "rules[1].conditions[1]"
    with pytest.raises(Invalid) as not_a_list:
        Fields({"conditions": "path"}, "rules[1]", Invalid).items("conditions")
    assert (not_a_list.value.field, not_a_list.value.message) == (
        "rules[1].conditions",
        "must be a list",
    )


def test_fields__unknown_keys_and_nested_objects__read_from_the_top() -> None:
    policy = Fields({"trend": {"windows": 3, "typo": 1}}, "", Invalid)
    trend = policy.object("trend")

    assert trend.path == "trend"
    assert trend.unknown({"windows"}) == "typo"
    assert policy.object("comparison").data == {}
    with pytest.raises(Invalid) as caught:
        trend.fail("typo", "is not a known field")
    assert caught.value.field == "trend.typo"
