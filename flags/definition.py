"""The stored form of a flag's definition and its translation into the engine's form.

What the API accepts and the database keeps is the engine's shape (``flags.evaluation``'s module
docstring) with one difference: split weights are percentages, like every other share in Canary
(0 to 100 with at most two decimals, summing to 100), where the engine counts basis points. This
module converts one into the other and says what a serve does in words. Pure: no Django.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from flags.evaluation import InvalidFlagDefinition

FULL = 100.0

DEFINITION_FIELDS = (
    "value_type",
    "variants",
    "off_variant",
    "rules",
    "default_rule",
    "targets",
    "stickiness",
    "salt",
)
"""The stored fields that say what a flag serves, besides its key and status: what
:func:`engine_flag` hands the engine, and what a person edits as the flag's definition."""


def percent_to_basis_points(value: Any, field: str) -> int:
    """A percentage (0 to 100, two decimals) as a whole number of basis points (0 to 10000)."""
    if type(value) is bool or not isinstance(value, int | float | Decimal):
        raise InvalidFlagDefinition(field, f"must be a number from 0 to 100, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise InvalidFlagDefinition(field, f"must be from 0 to 100, got {value!r}")
    scaled = number * 100
    if abs(scaled - round(scaled)) > 1e-6:
        raise InvalidFlagDefinition(field, f"may have at most two decimals, got {value!r}")
    return round(scaled)


def engine_serve(serve: Any, field: str) -> Any:
    """The engine's form of a stored serve (split weights in basis points).

    Anything that is not a well-formed split passes through unchanged for the engine to judge,
    so every other error keeps the engine's wording and field.
    """
    if not isinstance(serve, Mapping) or not isinstance(serve.get("split"), list):
        return serve
    converted: list[Any] = []
    total = 0
    for index, item in enumerate(serve["split"]):
        if isinstance(item, Mapping) and "weight" in item:
            points = percent_to_basis_points(item["weight"], f"{field}.split[{index}].weight")
            total += points
            converted.append({**item, "weight": points})
        else:
            converted.append(item)
    if converted and total != 10_000:
        raise InvalidFlagDefinition(
            f"{field}.split", f"weights must sum to 100, they sum to {total / 100:g}"
        )
    return {**serve, "split": converted}


def engine_flag(data: Mapping[str, Any]) -> dict[str, Any]:
    """The dict :func:`flags.evaluation.build_flag_snapshot` takes, from a flag's stored fields."""
    engine = dict(data)
    rules = data.get("rules")
    if isinstance(rules, list):
        engine["rules"] = [
            {**rule, "serve": engine_serve(rule["serve"], f"rules[{index}].serve")}
            if isinstance(rule, Mapping) and "serve" in rule
            else rule
            for index, rule in enumerate(rules)
        ]
    default_rule = data.get("default_rule")
    # An empty default rule is "serve the off variant", which is the engine's own default.
    engine["default_rule"] = engine_serve(default_rule, "default_rule") if default_rule else None
    return engine


def rollout_percentage(default_rule: Any, off_variant: str) -> float | None:
    """The share of subjects the default rule serves something other than the off variant.

    None for a split, which is an experiment rather than a rollout.
    """
    if not isinstance(default_rule, Mapping) or not default_rule:
        return 0.0
    if "variant" in default_rule:
        return 0.0 if default_rule["variant"] == off_variant else FULL
    rollout = default_rule.get("rollout")
    if isinstance(rollout, Mapping):
        percentage = rollout.get("percentage")
        if isinstance(percentage, int | float) and not isinstance(percentage, bool):
            return 0.0 if rollout.get("variant") == off_variant else float(percentage)
    return None


def rollout_variant(default_rule: Any, variants: list[Any], off_variant: str) -> str | None:
    """The variant a rollout of the default rule serves: the one it serves now if it is a
    rollout or a fixed "on" variant, else the first variant that is not the off variant."""
    if isinstance(default_rule, Mapping):
        rollout = default_rule.get("rollout")
        if isinstance(rollout, Mapping) and rollout.get("variant") not in (None, off_variant):
            return str(rollout["variant"])
        if default_rule.get("variant") not in (None, off_variant):
            return str(default_rule["variant"])
    for variant in variants:
        if isinstance(variant, Mapping) and variant.get("name") != off_variant:
            return str(variant.get("name"))
    return None


def describe_serve(serve: Any, off_variant: str) -> str:
    """A serve in words: "variant 'on'", "10% get 'on'", "50% 'a', 50% 'b'"."""
    if not isinstance(serve, Mapping) or not serve:
        return f"variant {off_variant!r}"
    if "variant" in serve:
        return f"variant {serve['variant']!r}"
    rollout = serve.get("rollout")
    if isinstance(rollout, Mapping):
        return f"{_percent(rollout.get('percentage'))} get {rollout.get('variant')!r}"
    split = serve.get("split")
    if isinstance(split, list):
        return ", ".join(
            f"{_percent(item.get('weight'))} {item.get('variant')!r}"
            for item in split
            if isinstance(item, Mapping)
        )
    return "nothing"


def describe_constraint(constraint: Any) -> str:
    """A constraint in words: "country in NL, BE (any case)"."""
    if not isinstance(constraint, Mapping):
        return "?"
    operator = str(constraint.get("operator", "")).replace("_", " ")
    values = constraint.get("values") or []
    text = f"{constraint.get('attribute')} {operator}"
    if values:
        text += " " + ", ".join(str(value) for value in values)
    if constraint.get("case_insensitive"):
        text += " (any case)"
    if constraint.get("negate"):
        text = f"not ({text})"
    return text


def _percent(value: Any) -> str:
    try:
        return f"{float(value):g}%"
    except (TypeError, ValueError):
        return f"{value}%"
