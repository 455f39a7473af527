"""Tests for the pure flag evaluation engine: semantics, operators, validation and properties."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary_site.bucketing import bucket
from flags.evaluation import (
    MAX_REGEX_INPUT_LENGTH,
    Constraint,
    ErrorCode,
    FixedServe,
    FlagSnapshot,
    InvalidFlagDefinition,
    Operator,
    Reason,
    Rule,
    SegmentSnapshot,
    build_flag_snapshot,
    build_segment_snapshot,
    evaluate,
    evaluation_error,
    flag_not_found,
    parse_semver,
    validate_constraint,
    validate_flag,
    validate_segment,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KEY_COUNT = 100_000
KEYS = [f"user-{index}" for index in range(KEY_COUNT)]


def flag_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": "new-checkout",
        "status": "enabled",
        "value_type": "boolean",
        "variants": [{"name": "on", "value": True}, {"name": "off", "value": False}],
        "off_variant": "off",
        "rules": [],
        "default_rule": {"variant": "off"},
        "version": 7,
    }
    data.update(overrides)
    return data


def make_flag(**overrides: Any) -> FlagSnapshot:
    return build_flag_snapshot(flag_data(**overrides))


def rule(serve: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"serve": serve, **fields}


def constraint(operator: str, values: list[Any] | None = None, **fields: Any) -> dict[str, Any]:
    attribute = fields.pop("attribute", "value")
    return {"attribute": attribute, "operator": operator, "values": values or [], **fields}


def with_constraint(condition: dict[str, Any]) -> dict[str, Any]:
    """Flag fields for one rule, serving "on", that holds ``condition``."""
    return {"rules": [rule({"variant": "on"}, constraints=[condition])]}


def serving(serve: dict[str, Any]) -> dict[str, Any]:
    """Flag fields for one rule, for everyone, serving ``serve``."""
    return {"rules": [rule(serve)]}


def split(*weights: tuple[str, Any]) -> dict[str, Any]:
    return {"split": [{"variant": variant, "weight": weight} for variant, weight in weights]}


def holds(condition: dict[str, Any], context: Mapping[str, Any]) -> bool:
    """Whether a rule made of ``condition`` alone matches ``context``."""
    return evaluate(make_flag(**with_constraint(condition)), context).variant == "on"


def raises_on_field(field: str) -> Any:
    return pytest.raises(InvalidFlagDefinition, match=f"^{re.escape(field)}: ")


BETA = build_segment_snapshot(
    {
        "key": "beta",
        "name": "Beta testers",
        "constraints": [{"attribute": "plan", "operator": "equals", "values": ["pro"]}],
    }
)
SEGMENTS = {"beta": BETA}


# --- status, targets, rules and the default rule ------------------------------------------------


@pytest.mark.parametrize("status", ["disabled", "killed"])
def test_evaluate__when_flag_is_not_enabled__serves_off_variant_as_disabled(status: str) -> None:
    flag = make_flag(
        status=status,
        default_rule={"variant": "on"},
        targets=[{"variant": "on", "values": ["alice"]}],
    )

    result = evaluate(flag, {"targetingKey": "alice"})

    assert (result.value, result.variant, result.reason) == (False, "off", Reason.DISABLED)
    assert result.error_code is None
    assert result.metadata["status"] == status
    assert status in result.explain()


def test_evaluate__with_no_rules_and_a_fixed_default__is_static() -> None:
    flag = make_flag(default_rule={"variant": "on"})

    result = evaluate(flag, {})

    assert (result.value, result.variant, result.reason) == (True, "on", Reason.STATIC)
    assert result.metadata["flag_version"] == 7


def test_evaluate__when_no_rule_matches__serves_the_default_rule_as_default() -> None:
    flag = make_flag(rules=[rule({"variant": "on"}, segments=["beta"])])

    result = evaluate(flag, {"targetingKey": "u1", "plan": "free"}, SEGMENTS)

    assert (result.variant, result.reason) == ("off", Reason.DEFAULT)
    assert result.explain() == (
        "Served variant 'off' because no rule matched, so the default rule applies."
    )


def test_evaluate__without_a_default_rule__serves_the_off_variant() -> None:
    data = flag_data()
    del data["default_rule"]

    result = evaluate(build_flag_snapshot(data), {})

    assert (result.variant, result.reason) == ("off", Reason.STATIC)


def test_evaluate__with_a_default_rollout__is_split_on_both_sides_of_it() -> None:
    flag = make_flag(default_rule={"rollout": {"percentage": 50, "variant": "on"}})

    results = [evaluate(flag, {"targetingKey": key}) for key in KEYS[:200]]

    assert {result.reason for result in results} == {Reason.SPLIT}
    assert {result.variant for result in results} == {"on", "off"}
    for result in results:
        assert result.variant == ("on" if result.bucket < 5000 else "off")
    outside = next(result for result in results if result.variant == "off")
    assert "outside the 50% rollout (buckets 0-4999)" in outside.explain()


def test_evaluate__when_default_rule_needs_the_missing_stickiness__reports_missing_key() -> None:
    flag = make_flag(default_rule={"rollout": {"percentage": 50, "variant": "on"}})

    result = evaluate(flag, {"country": "NL"})

    assert (result.value, result.variant) == (False, "off")
    assert (result.reason, result.error_code) == (Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING)
    assert "targetingKey" in result.explain()


def test_evaluate__individual_target__wins_over_rules() -> None:
    flag = make_flag(
        targets=[{"variant": "on", "values": ["alice"]}, {"variant": "off", "values": ["bob"]}],
        rules=[rule({"variant": "on"})],
    )

    alice = evaluate(flag, {"targetingKey": "alice"})
    bob = evaluate(flag, {"targetingKey": "bob"})

    assert (alice.variant, alice.reason) == ("on", Reason.TARGETING_MATCH)
    assert (bob.variant, bob.reason) == ("off", Reason.TARGETING_MATCH)
    assert bob.metadata["targeted"] is True
    assert bob.explain() == "Served variant 'off' because the user is individually targeted."


def test_evaluate__first_matching_rule__wins() -> None:
    flag = make_flag(
        value_type="string",
        variants=[{"name": name, "value": name} for name in ("a", "b", "c")],
        off_variant="c",
        default_rule={"variant": "c"},
        rules=[
            rule({"variant": "a"}, constraints=[constraint("equals", ["x"])]),
            rule({"variant": "b"}, name="everyone"),
        ],
    )

    assert evaluate(flag, {"value": "x"}).variant == "a"
    result = evaluate(flag, {"value": "y"})
    assert (result.variant, result.metadata["rule_index"]) == ("b", 1)
    assert result.explain() == "Served variant 'b' because rule 2 'everyone' matched."


def test_evaluate__rule__needs_every_segment_and_constraint_to_hold() -> None:
    flag = make_flag(
        rules=[
            rule(
                {"variant": "on"},
                segments=["beta"],
                constraints=[constraint("in", ["NL"], attribute="country")],
            )
        ]
    )

    assert evaluate(flag, {"plan": "pro", "country": "NL"}, SEGMENTS).variant == "on"
    assert evaluate(flag, {"plan": "pro", "country": "BE"}, SEGMENTS).variant == "off"
    assert evaluate(flag, {"plan": "free", "country": "NL"}, SEGMENTS).variant == "off"


def test_evaluate__rule_naming_an_unknown_segment__does_not_match() -> None:
    flag = make_flag(rules=[rule({"variant": "on"}, segments=["deleted"])])

    assert evaluate(flag, {"plan": "pro"}, SEGMENTS).variant == "off"


def test_evaluate__rollout_rule__explains_the_bucket_and_the_range() -> None:
    flag = make_flag(
        rules=[
            rule(
                {"rollout": {"percentage": 10, "variant": "on"}},
                name="beta testers",
                segments=["beta"],
            )
        ]
    )
    key = next(key for key in KEYS if bucket("new-checkout", key) < 1000)

    result = evaluate(flag, {"targetingKey": key, "plan": "pro"}, SEGMENTS)

    assert (result.variant, result.reason) == ("on", Reason.TARGETING_MATCH)
    assert result.bucket == bucket("new-checkout", key)
    assert dict(result.metadata) == {
        "flag_version": 7,
        "rule_index": 0,
        "rule_name": "beta testers",
        "segment_key": "beta",
        "rollout_percentage": 10.0,
    }
    assert result.explain() == (
        "Served variant 'on' because rule 1 'beta testers' matched (segment 'beta'), "
        f"and user bucket {result.bucket} is within the 10% rollout (buckets 0-999)."
    )


def test_evaluate__when_outside_a_rule_rollout__falls_through_to_the_next_rule() -> None:
    flag = make_flag(
        value_type="string",
        variants=[{"name": name, "value": name} for name in ("early", "late", "off")],
        rules=[
            rule({"rollout": {"percentage": 10, "variant": "early"}}),
            rule({"variant": "late"}),
        ],
    )

    variants = {evaluate(flag, {"targetingKey": key}).variant for key in KEYS[:500]}

    assert variants == {"early", "late"}


def test_evaluate__rollout_rule_without_the_stickiness_attribute__falls_through() -> None:
    flag = make_flag(rules=[rule({"rollout": {"percentage": 100, "variant": "on"}})])

    result = evaluate(flag, {"plan": "pro"})

    assert (result.variant, result.reason, result.error_code) == ("off", Reason.DEFAULT, None)


def test_evaluate__with_custom_stickiness__buckets_on_that_attribute() -> None:
    flag = make_flag(
        stickiness="accountId",
        salt="checkout-salt",
        default_rule={"rollout": {"percentage": 30, "variant": "on"}},
    )

    results = [evaluate(flag, {"targetingKey": key, "accountId": "acme"}) for key in KEYS[:50]]

    assert {result.bucket for result in results} == {bucket("checkout-salt", "acme")}


def test_evaluate__with_a_numeric_targeting_key__buckets_its_decimal_text() -> None:
    flag = make_flag(default_rule={"rollout": {"percentage": 30, "variant": "on"}})

    assert evaluate(flag, {"targetingKey": 42}).bucket == bucket("new-checkout", "42")


@settings(max_examples=50, deadline=None)
@given(
    key=st.text(min_size=1),
    low=st.integers(0, 10_000),
    high=st.integers(0, 10_000),
)
def test_rollout__when_percentage_raised__keeps_users_in(key: str, low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    lower = make_flag(default_rule={"rollout": {"percentage": low / 100, "variant": "on"}})
    higher = make_flag(default_rule={"rollout": {"percentage": high / 100, "variant": "on"}})

    if evaluate(lower, {"targetingKey": key}).value:
        assert evaluate(higher, {"targetingKey": key}).value


@pytest.mark.parametrize("percentage", [10, 50])
@settings(max_examples=2, deadline=None)
@given(salt=st.text(min_size=1, max_size=16))
def test_rollout__over_100000_users__serves_the_percentage_within_one_point(
    salt: str, percentage: int
) -> None:
    flag = make_flag(
        salt=salt, default_rule={"rollout": {"percentage": percentage, "variant": "on"}}
    )

    served = sum(evaluate(flag, {"targetingKey": key}).value for key in KEYS)

    assert abs(served / KEY_COUNT * 100 - percentage) < 1


weights = st.lists(st.integers(1, 100), min_size=2, max_size=4).map(
    lambda parts: [part * 10_000 // sum(parts) for part in parts]
)


@settings(max_examples=3, deadline=None)
@given(raw_weights=weights, salt=st.text(min_size=1, max_size=16))
def test_split__over_100000_users__honours_weights_within_one_point(
    raw_weights: list[int], salt: str
) -> None:
    raw_weights[0] += 10_000 - sum(raw_weights)
    names = [f"v{index}" for index in range(len(raw_weights))]
    flag = make_flag(
        value_type="string",
        variants=[{"name": name, "value": name} for name in names],
        off_variant=names[0],
        salt=salt,
        default_rule={
            "split": [
                {"variant": name, "weight": weight}
                for name, weight in zip(names, raw_weights, strict=True)
            ]
        },
    )
    counts = dict.fromkeys(names, 0)

    for key in KEYS:
        counts[evaluate(flag, {"targetingKey": key}).variant] += 1

    for name, weight in zip(names, raw_weights, strict=True):
        assert abs(counts[name] / KEY_COUNT - weight / 10_000) < 0.01


def test_split__in_another_process_with_another_hash_seed__assigns_the_same_variants() -> None:
    data = flag_data(
        value_type="string",
        variants=[{"name": name, "value": name} for name in ("a", "b", "c")],
        off_variant="a",
        default_rule=split(("a", 2000), ("b", 3000), ("c", 5000)),
    )
    program = (
        "import json, sys\n"
        "from flags.evaluation import build_flag_snapshot, evaluate\n"
        "flag = build_flag_snapshot(json.loads(sys.argv[1]))\n"
        "print(json.dumps([evaluate(flag, {'targetingKey': f'user-{i}'}).variant"
        " for i in range(500)]))\n"
    )
    flag = build_flag_snapshot(data)
    expected = [evaluate(flag, {"targetingKey": key}).variant for key in KEYS[:500]]

    completed = subprocess.run(
        [sys.executable, "-c", program, json.dumps(data)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        capture_output=True,
        text=True,
        check=True,
    )

    assert json.loads(completed.stdout) == expected


def test_split__assigns_variants_independently_of_rollout_inclusion() -> None:
    rollout = make_flag(salt="same", default_rule={"rollout": {"percentage": 50, "variant": "on"}})
    halves = make_flag(salt="same", default_rule=split(("on", 5000), ("off", 5000)))

    included = [key for key in KEYS[:20_000] if evaluate(rollout, {"targetingKey": key}).value]
    share_on = sum(evaluate(halves, {"targetingKey": key}).value for key in included) / len(
        included
    )

    assert abs(share_on - 0.5) < 0.02


def test_split__with_a_zero_weight_variant__never_serves_it() -> None:
    flag = make_flag(default_rule=split(("on", 0), ("off", 10_000)))

    results = [evaluate(flag, {"targetingKey": key}) for key in KEYS[:1000]]

    assert {result.variant for result in results} == {"off"}
    assert "share of variant 'off' (buckets 0-9999)" in results[0].explain()


# --- results and errors -------------------------------------------------------------------------


def test_result_metadata__is_read_only_and_serialisable() -> None:
    result = evaluate(make_flag(), {})

    with pytest.raises(TypeError):
        result.metadata["flag_version"] = 1  # type: ignore[index]
    assert json.loads(json.dumps(result.metadata)) == {"flag_version": 7, "default_rule": True}
    assert pickle.loads(pickle.dumps(result)) == result
    assert copy.deepcopy(result.metadata) == result.metadata


def test_object_variant_value__is_read_only_and_serialisable() -> None:
    flag = make_flag(
        value_type="object",
        variants=[{"name": "limits", "value": {"max": 10, "tiers": ["a", {"b": 1}]}}],
        off_variant="limits",
        default_rule={"variant": "limits"},
    )

    value = evaluate(flag, {}).value

    with pytest.raises(TypeError):
        value["max"] = 11
    with pytest.raises(TypeError):
        value["tiers"][1]["b"] = 2
    assert json.loads(json.dumps(value)) == {"max": 10, "tiers": ["a", {"b": 1}]}


def test_evaluate__when_the_caller_expects_another_type__is_a_type_mismatch() -> None:
    result = evaluate(make_flag(), {}, expected_type="string")

    assert (result.value, result.reason) == (None, Reason.ERROR)
    assert result.error_code == ErrorCode.TYPE_MISMATCH
    assert "boolean" in result.explain()


def test_evaluate__when_the_context_misbehaves__returns_a_general_error() -> None:
    class BrokenContext(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    flag = make_flag(rules=[rule({"variant": "on"}, constraints=[constraint("exists")])])

    result = evaluate(flag, BrokenContext())

    assert (result.variant, result.reason, result.error_code) == (
        "off",
        Reason.ERROR,
        ErrorCode.GENERAL,
    )
    assert "boom" in result.explain()


@pytest.mark.parametrize("subject", ["\ud800", "user-\udfff", "caf\u00e9\ud83d"])
def test_evaluate__with_a_lone_surrogate_to_bucket__is_a_general_error_not_a_crash(
    subject: str,
) -> None:
    # The hash library crashes the process on such strings; the engine must never pass one on.
    rollout = make_flag(default_rule={"rollout": {"percentage": 50, "variant": "on"}})
    split = make_flag(default_rule={"split": [{"variant": "on", "weight": 10000}]})

    for flag in (rollout, split):
        result = evaluate(flag, {"targetingKey": subject})
        assert (result.reason, result.error_code) == (Reason.ERROR, ErrorCode.GENERAL)


def test_evaluate__with_valid_non_ascii_subjects__buckets_them() -> None:
    flag = make_flag(default_rule={"rollout": {"percentage": 100, "variant": "on"}})

    assert evaluate(flag, {"targetingKey": "caf\u00e9 \U0001f600"}).variant == "on"


def test_flag_not_found__is_an_error_without_a_value() -> None:
    result = flag_not_found("nope")

    assert (result.value, result.variant, result.reason) == (None, None, Reason.ERROR)
    assert result.error_code == ErrorCode.FLAG_NOT_FOUND
    assert result.explain() == (
        "Served no variant because evaluation failed (FLAG_NOT_FOUND): no flag named 'nope'."
    )


def test_evaluation_error__carries_the_code_and_message() -> None:
    result = evaluation_error("broken", ErrorCode.PARSE_ERROR, "rules[0]: bad")

    assert (result.flag_key, result.error_code, result.error_message) == (
        "broken",
        ErrorCode.PARSE_ERROR,
        "rules[0]: bad",
    )


def test_snapshot__cannot_be_changed_after_it_is_built() -> None:
    flag = make_flag()

    with pytest.raises(AttributeError):
        flag.status = "killed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        flag.variants["on"] = False  # type: ignore[index]


def test_snapshots__built_directly__work_like_built_from_dicts() -> None:
    segment = SegmentSnapshot(
        key="dutch", constraints=(Constraint("country", Operator.IN, ("NL",)),)
    )
    flag = FlagSnapshot(
        key="direct",
        variants={"on": True, "off": False},
        off_variant="off",
        rules=(Rule(FixedServe("on"), segments=("dutch",)),),
    )

    assert evaluate(flag, {"country": "NL"}, {"dutch": segment}).variant == "on"
    assert segment.matches({"country": "NL"})
    assert flag.salt == "direct"


# --- operators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        # in / not_in
        (constraint("in", ["US", "CA"]), "US", True),
        (constraint("in", ["US", "CA"]), "FR", False),
        (constraint("in", ["US"]), "us", False),
        (constraint("in", ["US"], case_insensitive=True), "us", True),
        (constraint("in", ["straße"], case_insensitive=True), "STRASSE", True),
        (constraint("in", ["42"]), 42, True),
        (constraint("in", [42]), "42", True),
        (constraint("in", ["1"]), 1.0, True),
        (constraint("in", ["true"]), True, True),
        (constraint("in", ["US"]), ["US"], False),
        (constraint("in", ["US"]), {"country": "US"}, False),
        (constraint("not_in", ["US"]), "FR", True),
        (constraint("not_in", ["US"]), "US", False),
        (constraint("not_in", ["us"], case_insensitive=True), "US", False),
        (constraint("not_in", ["US"]), ["FR"], False),
        # equals
        (constraint("equals", ["pro"]), "pro", True),
        (constraint("equals", ["pro"]), "Pro", False),
        (constraint("equals", ["pro"], case_insensitive=True), "PRO", True),
        (constraint("equals", ["3"]), 3, True),
        (constraint("equals", ["pro"]), None, False),
        # contains / starts_with / ends_with
        (constraint("contains", ["lo w"]), "hello world", True),
        (constraint("contains", ["zzz", "wor"]), "hello world", True),
        (constraint("contains", ["WORLD"]), "hello world", False),
        (constraint("contains", ["WORLD"], case_insensitive=True), "hello world", True),
        (constraint("contains", ["1"]), 123, True),
        (constraint("starts_with", ["user-"]), "user-42", True),
        (constraint("starts_with", ["admin-", "user-"]), "user-42", True),
        (constraint("starts_with", ["USER-"], case_insensitive=True), "user-42", True),
        (constraint("starts_with", ["user-"]), "superuser-1", False),
        (constraint("ends_with", ["@example.com"]), "ada@example.com", True),
        (constraint("ends_with", ["@EXAMPLE.COM"]), "ada@example.com", False),
        (constraint("ends_with", ["@EXAMPLE.COM"], case_insensitive=True), "ada@example.com", True),
        (constraint("ends_with", ["@example.com"]), ["ada@example.com"], False),
        # regex
        (constraint("regex", [r"^user-\d+$"]), "user-42", True),
        (constraint("regex", [r"^user-\d+$"]), "user-42x", False),
        (constraint("regex", [r"example\.com"]), "ada@example.com", True),
        (constraint("regex", [r"^ADA"]), "ada@example.com", False),
        (constraint("regex", [r"^ADA"], case_insensitive=True), "ada@example.com", True),
        (constraint("regex", [r"^4\d$"]), 42, True),
        (constraint("regex", [r".*"]), {"a": 1}, False),
        # numbers
        (constraint("num_eq", [3]), 3, True),
        (constraint("num_eq", [3, 4.5]), 4.5, True),
        (constraint("num_eq", [3]), "3.0", True),
        (constraint("num_eq", ["3"]), 3, True),
        (constraint("num_eq", [1]), True, False),
        (constraint("num_gt", [10]), 10.5, True),
        (constraint("num_gt", [10]), 10, False),
        (constraint("num_gte", [10]), 10, True),
        (constraint("num_lt", [10]), 9, True),
        (constraint("num_lt", [10]), 10, False),
        (constraint("num_lte", [10]), 10, True),
        (constraint("num_lte", [10]), " 7 ", True),
        (constraint("num_gt", [10]), "lots", False),
        (constraint("num_gt", [10]), "nan", False),
        (constraint("num_lt", [10]), float("-inf"), True),
        (constraint("num_gt", [0]), [1], False),
        (constraint("num_gt", [10]), 10**400, True),
        (constraint("num_lt", [10]), -(10**400), True),
        pytest.param(constraint("in", ["1"]), 10**5000, False, id="in-int-too-long-to-print"),
        # semantic versions
        (constraint("semver_eq", ["1.2.3"]), "1.2.3", True),
        (constraint("semver_eq", ["1.2.3"]), "1.2.3+build.7", True),
        (constraint("semver_eq", ["1.2.3", "2.0.0"]), "2.0.0", True),
        (constraint("semver_eq", ["1.2.3"]), "1.2.3-rc.1", False),
        (constraint("semver_gt", ["1.2.3"]), "1.10.0", True),
        (constraint("semver_gt", ["1.2.3"]), "1.2.3", False),
        (constraint("semver_gt", ["1.0.0-alpha"]), "1.0.0-alpha.1", True),
        (constraint("semver_lt", ["2.0.0"]), "2.0.0-rc.1", True),
        (constraint("semver_lt", ["2.0.0"]), "10.0.0", False),
        (constraint("semver_gt", ["1.0.0"]), "v2.0.0", False),
        (constraint("semver_gt", ["1.0.0"]), "2.0", False),
        (constraint("semver_gt", ["1.0.0"]), "02.0.0", False),
        (constraint("semver_gt", ["1.0.0"]), 2, False),
        # dates
        (constraint("date_before", ["2024-06-01T00:00:00Z"]), "2024-05-31T23:59:59Z", True),
        (constraint("date_before", ["2024-06-01T00:00:00Z"]), "2024-06-01T01:00:00+02:00", True),
        (constraint("date_before", ["2024-06-01"]), "2024-06-01T00:00:00Z", False),
        (constraint("date_after", ["2024-06-01"]), "2024-06-01T00:00:01", True),
        (constraint("date_after", ["2024-06-01"]), datetime(2024, 6, 2, tzinfo=UTC), True),
        (constraint("date_after", ["2024-06-01"]), date(2024, 5, 1), False),
        (constraint("date_after", ["2024-06-01"]), "yesterday", False),
        (constraint("date_after", ["2024-06-01"]), "2024-13-01", False),
        (constraint("date_after", ["2024-06-01"]), 1_900_000_000, False),
        # exists
        (constraint("exists"), "anything", True),
        (constraint("exists"), "", True),
        (constraint("exists"), False, True),
        (constraint("exists"), None, False),
    ],
)
def test_operator__compares_as_documented(
    condition: dict[str, Any], value: Any, expected: bool
) -> None:
    assert holds(condition, {"value": value}) is expected
    assert holds({**condition, "negate": True}, {"value": value}) is not expected


@pytest.mark.parametrize("operator", [operator.value for operator in Operator])
def test_operator__when_attribute_is_missing__is_false_and_negate_makes_it_true(
    operator: str,
) -> None:
    values = {
        "exists": [],
        "regex": ["x"],
        "semver_eq": ["1.0.0"],
        "semver_gt": ["1.0.0"],
        "semver_lt": ["1.0.0"],
        "date_before": ["2024-01-01"],
        "date_after": ["2024-01-01"],
    }.get(operator, ["1"])
    condition = constraint(operator, values)

    assert holds(condition, {"other": "1"}) is False
    assert holds({**condition, "negate": True}, {"other": "1"}) is True


def test_semver__orders_prereleases_as_the_specification_does() -> None:
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    keys = [parse_semver(version) for version in chain]

    assert all(key is not None for key in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    "text", ["1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "1.2.3-a..b", " 1.2.3", ""]
)
def test_semver__rejects_what_is_not_a_semantic_version(text: str) -> None:
    assert parse_semver(text) is None


@given(
    numbers=st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)),
    other=st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)),
)
def test_semver__orders_releases_like_their_numbers(
    numbers: tuple[int, int, int], other: tuple[int, int, int]
) -> None:
    first = parse_semver(".".join(map(str, numbers)))
    second = parse_semver(".".join(map(str, other)))

    assert (first < second) is (numbers < other)  # type: ignore[operator]


# --- regular expressions on hostile input -------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+$",
        r"(a*)*b",
        r"(x+x+)+y",
        r"(\w+\s?)+$",
        r"(a|ab)+c",
        r"(?:a|a)+?c",
        r"(.*a){12}",
        r".*.*x",
        r"^.*.*.*x",
        r"[ab]*[a-z]*.{2}\d$",
        r"(a{1,2}){32}",
        r"(a)\1",
        "a" * 300,
        # Each way .* can stop tries the whole run of a's after it.
        ".*" + "a" * 100 + "b",
    ],
)
def test_regex__with_catastrophic_backtracking__is_rejected_at_validation(pattern: str) -> None:
    with raises_on_field("rules[0].constraints[0].values[0]"):
        make_flag(rules=[rule({"variant": "on"}, constraints=[constraint("regex", [pattern])])])


@pytest.mark.parametrize(
    "pattern",
    [
        r"^user-\d+@example\.com$",
        r".*@example\.com$",
        r"\d+\.\d+",
        r"\w+@\w+\.com",
        r"[^@]+@.*",
        r"^.*.*x",
        r"^(?:foo|bar)+$",
        r"(ab)+",
        r"^([a-z]+\.)+[a-z]+$",
        r"^\d{1,3}(\.\d{1,3}){3}$",
    ],
)
def test_regex__without_backtracking_risk__is_accepted(pattern: str) -> None:
    validate_constraint(constraint("regex", [pattern]))


def test_regex__on_a_hostile_input_within_the_length_cap__answers() -> None:
    condition = constraint("regex", [r"^.*.*x"])

    assert holds(condition, {"value": "a" * MAX_REGEX_INPUT_LENGTH}) is False
    assert holds(condition, {"value": "a" * (MAX_REGEX_INPUT_LENGTH - 1) + "x"}) is True


def test_regex__on_an_input_longer_than_the_cap__does_not_match() -> None:
    condition = constraint("regex", [r"^(?:foo|bar)+$"])

    assert holds(condition, {"value": "foo" * 80}) is True
    assert holds(condition, {"value": "foo" * 100_000}) is False
    assert holds(condition, {"value": "foo" * 100_000 + "!"}) is False


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"key": ""}, "key"),
        ({"status": "paused"}, "status"),
        ({"value_type": "json"}, "value_type"),
        ({"off_variant": "nope"}, "off_variant"),
        ({"variants": []}, "variants"),
        ({"stickiness": ""}, "stickiness"),
        ({"version": "three"}, "version"),
        ({"variants": [{"name": "on", "value": True}, {"name": "on", "value": False}]},
         "variants[1].name"),
        ({"variants": [{"name": "on", "value": True}, {"name": "off", "value": "no"}]},
         "variants[1].value"),
        ({"variants": [{"name": "on", "value": True}, {"value": False}]}, "variants[1].name"),
        ({"rules": [rule({"variant": "on"}, constraints=[
            constraint("in", ["a"]), constraint("like", ["a"])])]},
         "rules[0].constraints[1].operator"),
        (with_constraint({"operator": "in", "values": ["a"]}), "rules[0].constraints[0].attribute"),
        (with_constraint(constraint("regex", ["(unclosed"])), "rules[0].constraints[0].values[0]"),
        (with_constraint(constraint("equals", ["a", "b"])), "rules[0].constraints[0].values"),
        (with_constraint(constraint("in")), "rules[0].constraints[0].values"),
        (with_constraint(constraint("exists", ["x"])), "rules[0].constraints[0].values"),
        (with_constraint(constraint("num_gt", ["ten"])), "rules[0].constraints[0].values[0]"),
        (with_constraint(constraint("num_eq", [1, True])), "rules[0].constraints[0].values[1]"),
        (with_constraint(constraint("semver_gt", ["1.2"])), "rules[0].constraints[0].values[0]"),
        (with_constraint(constraint("date_after", ["soon"])), "rules[0].constraints[0].values[0]"),
        (with_constraint(constraint("in", [["a"]])), "rules[0].constraints[0].values[0]"),
        (with_constraint(constraint("in", ["a"], negate="yes")), "rules[0].constraints[0].negate"),
        ({"rules": [rule({"variant": "on"}, segments=[""])]}, "rules[0].segments[0]"),
        (serving({"variant": "maybe"}), "rules[0].serve.variant"),
        (serving({"variant": ["on"]}), "rules[0].serve.variant"),
        ({"off_variant": ["off"]}, "off_variant"),
        (with_constraint({"attribute": "a", "operator": ["in"], "values": ["a"]}),
         "rules[0].constraints[0].operator"),
        (with_constraint({"attribute": "a", "operator": "in", "values": "a"}),
         "rules[0].constraints[0].values"),
        ({"rules": [{"name": "no serve"}]}, "rules[0].serve"),
        (serving({"variant": "on", "split": []}), "rules[0].serve"),
        (serving({"rollout": {"percentage": 101, "variant": "on"}}),
         "rules[0].serve.rollout.percentage"),
        (serving({"rollout": {"percentage": 12.345, "variant": "on"}}),
         "rules[0].serve.rollout.percentage"),
        (serving({"rollout": {"percentage": "10", "variant": "on"}}),
         "rules[0].serve.rollout.percentage"),
        (serving({"rollout": {"percentage": 10, "variant": "maybe"}}),
         "rules[0].serve.rollout.variant"),
        (serving({"rollout": {"percentage": 10**400, "variant": "on"}}),
         "rules[0].serve.rollout.percentage"),
        ({"default_rule": split((["on"], 10000))}, "default_rule.split[0].variant"),
        (serving(split(("on", 50), ("off", 50))), "rules[0].serve.split"),
        ({"default_rule": split(("on", 5000), ("off", 50.5))}, "default_rule.split[1].weight"),
        ({"default_rule": split(("on", 5000), ("on", 5000))}, "default_rule.split[1].variant"),
        ({"default_rule": split(("on", 5000), ("gone", 5000))}, "default_rule.split[1].variant"),
        ({"default_rule": split()}, "default_rule.split"),
        ({"targets": [{"variant": "gone", "values": ["a"]}]}, "targets[0].variant"),
        ({"targets": [{"variant": "on", "values": ["a"]}, {"variant": "off", "values": ["a"]}]},
         "targets[1].values[0]"),
        ({"targets": [{"variant": "on", "values": [7]}]}, "targets[0].values[0]"),
        ({"salt": "s\ud800"}, "salt"),
    ],
)  # fmt: skip
def test_validate_flag__with_a_bad_definition__names_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with raises_on_field(field) as caught:
        validate_flag(flag_data(**overrides))

    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("value_type", "variants"),
    [
        ("boolean", [True, False]),
        ("string", ["red", ""]),
        ("number", [1, 2.5]),
        ("object", [{"limit": 10}, {}]),
    ],
)
def test_validate_flag__accepts_values_of_the_flags_type(
    value_type: str, variants: list[Any]
) -> None:
    validate_flag(
        flag_data(
            value_type=value_type,
            variants=[
                {"name": f"v{index}", "value": value} for index, value in enumerate(variants)
            ],
            off_variant="v0",
            default_rule={"variant": "v1"},
        )
    )


@pytest.mark.parametrize(
    ("value_type", "value"),
    [
        ("boolean", 1),
        ("string", 3),
        ("number", True),
        ("number", float("inf")),
        ("number", 10**400),
        ("object", []),
    ],
)
def test_validate_flag__with_a_value_of_the_wrong_type__names_the_variant(
    value_type: str, value: Any
) -> None:
    with raises_on_field("variants[0].value"):
        validate_flag(
            flag_data(
                value_type=value_type, variants=[{"name": "v", "value": value}], off_variant="v"
            )
        )


def test_validate_constraint__prefixes_the_field_it_is_given() -> None:
    with raises_on_field("rules[2].constraints[0].operator"):
        validate_constraint(constraint("bogus", ["a"]), field="rules[2].constraints[0]")


def test_validate_segment__names_the_constraint_at_fault() -> None:
    with raises_on_field("constraints[1].values[0]"):
        validate_segment(
            {
                "key": "s",
                "constraints": [constraint("in", ["a"]), constraint("regex", ["(a+)+"])],
            }
        )


def test_validate_segment__needs_a_key() -> None:
    with raises_on_field("key"):
        validate_segment({"constraints": []})


def test_segment_without_constraints__matches_everyone() -> None:
    flag = make_flag(rules=[rule({"variant": "on"}, segments=["all"])])
    everyone = build_segment_snapshot({"key": "all"})

    assert evaluate(flag, {}, {"all": everyone}).variant == "on"
