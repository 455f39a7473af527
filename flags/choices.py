"""Choices (TextChoices) of the flags app.

The values of status, value type and operator are the engine's own (``flags.evaluation``), so a
stored flag feeds the engine without translation.
"""

from django.db import models

from flags import evaluation


class FlagType(models.TextChoices):
    """What a flag is for; it changes nothing in evaluation, only how people treat the flag."""

    RELEASE = "release", "Release"
    EXPERIMENT = "experiment", "Experiment"
    OPERATIONAL = "operational", "Operational"
    KILL_SWITCH = "kill-switch", "Kill switch"
    PERMISSION = "permission", "Permission"


class FlagStatus(models.TextChoices):
    ENABLED = evaluation.FlagStatus.ENABLED.value, "Enabled"
    DISABLED = evaluation.FlagStatus.DISABLED.value, "Disabled"
    KILLED = evaluation.FlagStatus.KILLED.value, "Killed"


class ValueType(models.TextChoices):
    BOOLEAN = evaluation.ValueType.BOOLEAN.value, "Boolean"
    STRING = evaluation.ValueType.STRING.value, "String"
    NUMBER = evaluation.ValueType.NUMBER.value, "Number"
    OBJECT = evaluation.ValueType.OBJECT.value, "Object"


class Operator(models.TextChoices):
    IN = "in", "is one of"
    NOT_IN = "not_in", "is not one of"
    EQUALS = "equals", "equals"
    CONTAINS = "contains", "contains"
    STARTS_WITH = "starts_with", "starts with"
    ENDS_WITH = "ends_with", "ends with"
    REGEX = "regex", "matches regex"
    NUM_EQ = "num_eq", "= (number)"
    NUM_GT = "num_gt", "> (number)"
    NUM_GTE = "num_gte", ">= (number)"
    NUM_LT = "num_lt", "< (number)"
    NUM_LTE = "num_lte", "<= (number)"
    SEMVER_EQ = "semver_eq", "= (semver)"
    SEMVER_GT = "semver_gt", "> (semver)"
    SEMVER_LT = "semver_lt", "< (semver)"
    DATE_BEFORE = "date_before", "before (date)"
    DATE_AFTER = "date_after", "after (date)"
    EXISTS = "exists", "exists"


class ServeKind(models.TextChoices):
    """What a rule (or the default rule) serves: one variant, a rollout, or a weighted split."""

    VARIANT = "variant", "A variant"
    ROLLOUT = "rollout", "A percentage rollout"
    SPLIT = "split", "A weighted split of variants"


# Operators that take one value, so the dashboard does not split it on commas (a regex may hold
# one); the engine enforces the same.
SINGLE_VALUE_OPERATORS = frozenset(
    {
        Operator.EQUALS,
        Operator.REGEX,
        Operator.NUM_GT,
        Operator.NUM_GTE,
        Operator.NUM_LT,
        Operator.NUM_LTE,
        Operator.SEMVER_GT,
        Operator.SEMVER_LT,
        Operator.DATE_BEFORE,
        Operator.DATE_AFTER,
    }
)
