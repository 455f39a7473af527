"""Choices (TextChoices) of the flags app.

Status, value type and operator are derived from the engine's enums (``flags.evaluation``), so a
stored flag feeds the engine without translation.
"""

from django.db import models

from canary_site.choices import mirror, phrase, worded, words
from flags import evaluation

FlagType = worded(
    "FlagType",
    "release experiment operational kill-switch permission",
    doc="What a flag is for; it changes nothing in evaluation, only how people treat the flag.",
)


FlagStatus = mirror(evaluation.FlagStatus, label=words)

ValueType = mirror(evaluation.ValueType, label=words)

# A typed comparison is named <type>_<comparison> (num_gte) and reads ">= (number)".
_TYPES = {"num": "number", "semver": "semver", "date": "date"}
_SIGNS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _operator_label(value: str) -> str:
    kind, _, comparison = value.partition("_")
    if kind not in _TYPES:
        return phrase(value)
    return f"{_SIGNS.get(comparison, comparison)} ({_TYPES[kind]})"


Operator = mirror(
    evaluation.Operator,
    label=_operator_label,
    IN="is one of",
    NOT_IN="is not one of",
    REGEX="matches regex",
)


class ServeKind(models.TextChoices):
    """What a rule (or the default rule) serves: one variant, a rollout, or a weighted split."""

    VARIANT = "variant", "A variant"
    ROLLOUT = "rollout", "A percentage rollout"
    SPLIT = "split", "A weighted split of variants"


# Operators that take one value, so the dashboard does not split it on commas (a regex may hold
# one); the engine refuses more than one.
SINGLE_VALUE_OPERATORS = evaluation.SINGLE_VALUE_OPERATORS
