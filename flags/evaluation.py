r"""Pure feature-flag evaluation: a flag snapshot and a context in, an OpenFeature result out.

This module imports no Django and touches no database. The web process, OFREP, the proxy and the
tests build snapshots from the JSON stored with each flag and segment, keep them in memory, and
call :func:`evaluate` on the hot path. Everything that can be worked out ahead of time (regular
expressions, semantic versions, dates, lookup sets, case-folded values, bucket thresholds and
the results of fixed outcomes) is worked out when a snapshot is built, so an evaluation is a few
dictionary lookups, at most one hash and, for fixed outcomes, no allocation at all.

Stored shape
------------
:func:`build_flag_snapshot` takes the flag as stored (unknown keys are ignored)::

    {
        "key": "new-checkout",                      # required
        "status": "enabled",                        # enabled | disabled | killed
        "value_type": "boolean",                    # boolean | string | number | object
        "variants": [{"name": "on", "value": true}, {"name": "off", "value": false}],
        "off_variant": "off",                       # served while disabled or killed
        "targets": [{"variant": "on", "values": ["alice", "bob"]}],
        "rules": [
            {
                "name": "beta testers",
                "segments": ["beta"],
                "constraints": [
                    {"attribute": "country", "operator": "in", "values": ["NL", "BE"],
                     "case_insensitive": false, "negate": false}
                ],
                "serve": {"rollout": {"percentage": 10.0, "variant": "on"}}
            }
        ],
        "default_rule": {"variant": "off"},         # a serve; defaults to the off variant
        "stickiness": "targetingKey",               # the context attribute that is bucketed
        "salt": "new-checkout",                     # defaults to the key
        "version": 3
    }

A serve is exactly one of ``{"variant": name}``, ``{"rollout": {"percentage": p, "variant":
name}}`` (``p`` from 0 to 100 with at most two decimals) or ``{"split": [{"variant": name,
"weight": w}, ...]}`` (weights in basis points, whole numbers summing to 10000).

:func:`build_segment_snapshot` takes ``{"key": "beta", "name": "Beta", "constraints": [...]}``.
Both builders validate and raise :class:`InvalidFlagDefinition` naming the offending field
(``rules[0].constraints[1].operator``); :func:`validate_flag`, :func:`validate_segment` and
:func:`validate_constraint` run the same checks for callers that only want to know.

Evaluation order and semantics
------------------------------
1. A disabled or killed flag serves its off variant, reason ``DISABLED``.
2. Individual targets: if the context's ``targetingKey`` (the user id, whatever the stickiness
   attribute is) is listed, its variant is served, reason ``TARGETING_MATCH``. Keeping a user
   out means targeting them to the off variant.
3. Rules in order. A rule matches when every segment it names and every constraint it holds
   matches (a rule with neither matches everyone). A segment key missing from the ``segments``
   mapping never matches, so a deleted segment cannot widen a rule. What a matching rule serves:

   * a fixed variant: served, reason ``TARGETING_MATCH``;
   * a rollout: the subject is hashed into one of 10,000 buckets (``canary_site.bucketing``,
     salt = the flag's salt); the first ``percentage * 100`` buckets get the variant, reason
     ``TARGETING_MATCH``. Everyone else falls through to the next rule, as with Unleash's
     gradual rollout strategy, so "10% of beta testers get it, everyone else gets the default"
     is one rule plus the default rule;
   * a split: every matching subject gets one of the variants, in proportion to the weights,
     reason ``TARGETING_MATCH``. Splits hash under ``"<salt>/split"`` so which variant a subject
     gets is independent of whether a rollout of the same flag let them in.

   A rule whose rollout or split needs the stickiness attribute that the context lacks is
   skipped (it falls through), as Unleash's gradual rollout is: anonymous traffic is simply not
   part of a percentage.
4. The default rule. A fixed variant is reason ``STATIC`` when the flag has no rules and no
   targets (nothing dynamic happened) and ``DEFAULT`` otherwise. A rollout serves its variant
   inside the percentage and the off variant outside it, and a split picks a variant; both
   are reason ``SPLIT``. When the default rule needs the stickiness attribute and the context
   lacks it there is nothing sensible to fall through to, so the result is the off variant with
   reason ``ERROR`` and error code ``TARGETING_KEY_MISSING``, which OFREP reports as such.

Results: :class:`EvaluationResult` carries ``value``, ``variant``, ``reason``, ``error_code``,
``error_message``, ``flag_key``, ``bucket`` (when a rollout or split decided) and ``metadata``,
a flat read-only dict: ``flag_version`` always, then ``rule_index`` (0-based), ``rule_name``,
``segment_key`` (comma-separated when a rule names several), ``rollout_percentage``,
``split_weight``, ``default_rule``, ``targeted`` or ``status`` as they apply.
``explain()`` turns a result into a sentence for the dashboard. Results of fixed outcomes are
built once and shared, and variant values of object flags are frozen (read-only dicts, tuples)
so no caller can change what the next one gets.

Constraints: the attribute is read from the context with ``context.get(attribute)``; a missing
attribute and an explicit ``None`` are the same. A missing attribute makes every operator false,
and ``negate`` flips the outcome of every operator, missing attribute included: ``country in
[US]`` negated matches a context without a country. ``exists`` is true exactly when the
attribute is present and not ``None``, so negated it means "is absent". A value of the wrong
type (a list for ``in``, ``"abc"`` for ``num_gt``, a malformed version for ``semver_lt``)
counts as no match, then ``negate`` applies.

* ``in``, ``not_in``, ``equals``, ``contains``, ``starts_with``, ``ends_with`` compare text.
  Strings are used as they are, integers and integral floats as their decimal digits, booleans
  as ``true``/``false``; lists, objects and other types never match. ``equals`` takes one
  value; the others take one or more and match if any value does. ``case_insensitive``
  compares case-folded text.
* ``regex`` searches (``re.search``) the text, so anchor with ``^`` and ``$`` to match the
  whole value; ``case_insensitive`` adds ``re.IGNORECASE``. Python's backtracking engine can
  take exponential or high polynomial time on hostile input, and contexts come from clients,
  so patterns are screened when the flag is saved, by the screen that routing conditions share
  (``canary_site.regex_guard``): at most 256 characters, no backreferences, no quantifier that
  can match what follows it inside an unbounded repeated group (``(a+)+`` is refused,
  ``^([a-z]+\.)+com$`` is fine), no alternatives inside a repeated group that can start with
  the same character (``(a|ab)+`` is refused, ``(?:foo|bar)+`` is fine), and a pessimistic
  count of the character tests a search makes on the worst input of 256 characters must stay
  within ``MAX_REGEX_BACKTRACKING``: it admits one unbounded quantifier that can match what
  follows it in an unanchored pattern (``.*@example\.com$``), two in a pattern anchored with
  ``^`` (``^.*-.*$``), and any number that cannot (``\w+@\w+\.com``). At evaluation a value
  longer than 256 characters never matches. Together these bound the worst case to a few
  milliseconds per constraint.
* ``num_eq`` (one or more values), ``num_gt``, ``num_gte``, ``num_lt``, ``num_lte`` (one
  value) compare numbers. Context numbers and numeric strings count; booleans and NaN do not.
* ``semver_eq`` (one or more), ``semver_gt``, ``semver_lt`` (one value) compare Semantic
  Versioning 2.0.0 precedence, prerelease included and build metadata ignored
  (``1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0``). Parsing is strict: ``v1.2``, ``1.2``
  and leading zeros are not versions.
* ``date_before``, ``date_after`` (one value) compare instants. Values are ISO 8601 strings
  (``2024-05-01``, ``2024-05-01T12:00:00Z``, ``...+02:00``) or ``datetime``/``date`` objects;
  a time without an offset is UTC. Numbers are not dates.
* ``exists`` takes no values.

Errors: :func:`evaluate` never raises for anything in a context. Unexpected failures give reason
``ERROR`` with ``GENERAL``; ``expected_type`` that differs from the flag's gives
``TYPE_MISMATCH``; :func:`flag_not_found` and :func:`evaluation_error` build the results for a
missing flag or a stored definition that no longer parses (``PARSE_ERROR``). Error results carry
the off variant where the flag is known and its type is the one asked for, ``None`` otherwise.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn, TypeVar

from canary_site import regex_guard
from canary_site.bucketing import BUCKET_COUNT, bucket_with_prefix, percentage_to_buckets
from canary_site.reading import Fields, nested_path

__all__ = [
    "MAX_REGEX_BACKTRACKING",
    "MAX_REGEX_INPUT_LENGTH",
    "MAX_REGEX_PATTERN_LENGTH",
    "Constraint",
    "ErrorCode",
    "EvaluationResult",
    "FixedServe",
    "FlagSnapshot",
    "FlagStatus",
    "InvalidFlagDefinition",
    "Operator",
    "Outcome",
    "ReadOnlyDict",
    "Reason",
    "RolloutServe",
    "Rule",
    "SegmentSnapshot",
    "Serve",
    "SplitServe",
    "Target",
    "ValueType",
    "WeightedVariant",
    "build_constraint",
    "build_flag_snapshot",
    "build_segment_snapshot",
    "build_serve",
    "evaluate",
    "evaluation_error",
    "flag_not_found",
    "parse_semver",
    "validate_constraint",
    "validate_flag",
    "validate_segment",
]

DEFAULT_STICKINESS = "targetingKey"
TARGETING_KEY = "targetingKey"
SPLIT_SALT_SUFFIX = "/split"

MAX_REGEX_PATTERN_LENGTH = regex_guard.MAX_PATTERN_LENGTH
MAX_REGEX_INPUT_LENGTH = 256
# The most character tests a regex may need on the worst input of the capped length, as the
# shared screen (canary_site.regex_guard) counts them: a few milliseconds of sre.
MAX_REGEX_BACKTRACKING = regex_guard.MAX_BACKTRACKING


class FlagStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    KILLED = "killed"


class ValueType(StrEnum):
    BOOLEAN = "boolean"
    STRING = "string"
    NUMBER = "number"
    OBJECT = "object"


class Operator(StrEnum):
    IN = "in"
    NOT_IN = "not_in"
    EQUALS = "equals"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    REGEX = "regex"
    NUM_EQ = "num_eq"
    NUM_GT = "num_gt"
    NUM_GTE = "num_gte"
    NUM_LT = "num_lt"
    NUM_LTE = "num_lte"
    SEMVER_EQ = "semver_eq"
    SEMVER_GT = "semver_gt"
    SEMVER_LT = "semver_lt"
    DATE_BEFORE = "date_before"
    DATE_AFTER = "date_after"
    EXISTS = "exists"


class Reason(StrEnum):
    """OpenFeature resolution reasons."""

    STATIC = "STATIC"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DISABLED = "DISABLED"
    DEFAULT = "DEFAULT"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """OpenFeature error codes."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"


class InvalidFlagDefinition(ValueError):
    """A flag, segment or constraint definition that cannot be saved, and the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> InvalidFlagDefinition:
        """The same error, its field placed under ``prefix`` (``rules[0]`` + ``serve``)."""
        return InvalidFlagDefinition(nested_path(prefix, self.field), self.message)


@contextmanager
def _under(prefix: str) -> Iterator[None]:
    """Report validation errors raised inside the block as fields of ``prefix``."""
    try:
        yield
    except InvalidFlagDefinition as error:
        raise error.within(prefix) from None


def _invalid(field: str, message: str) -> NoReturn:
    raise InvalidFlagDefinition(field, message)


_Word = TypeVar("_Word", bound=StrEnum)


def _one_of(enum: type[_Word], value: Any, field: str) -> _Word:
    try:
        return enum(value)
    except ValueError:
        words = ", ".join(member.value for member in enum)
        _invalid(field, f"must be one of {words}; got {value!r}")


class ReadOnlyDict(dict[str, Any]):
    """A dict that refuses changes, so one metadata dict can be shared by many results.

    A dict subclass rather than a ``MappingProxyType`` because ``json.dumps`` and DRF serialise it
    as they are.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("evaluation metadata is read-only; copy it with dict(...) to change it")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[ReadOnlyDict], tuple[dict[str, Any]]]:
        # The default pickling of dict subclasses replays __setitem__, which refuses.
        return (ReadOnlyDict, (dict(self),))


_NO_METADATA = ReadOnlyDict()
_NO_SEGMENTS: Mapping[str, SegmentSnapshot] = MappingProxyType({})


# --- context values -----------------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    """The text a string operator compares, or None for values no string operator accepts."""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        try:
            return str(value)
        except ValueError:  # more digits than Python will print (sys.int_info)
            return None
    if kind is float:
        if value.is_integer():
            return str(int(value))
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)
    return None


def _as_number(value: Any) -> float | None:
    kind = type(value)
    if kind is bool:
        return None
    if kind is int or kind is float or kind is Decimal:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            return math.inf if value > 0 else -math.inf
    elif kind is str:
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number


_SEMVER_PATTERN = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)

SemverKey = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]


def parse_semver(text: str) -> SemverKey | None:
    """Parse a Semantic Versioning 2.0.0 version into a key that sorts by precedence.

    Returns None for anything that is not a version. Build metadata is dropped, since it does not
    take part in precedence. A release sorts after its prereleases; prerelease identifiers
    compare numerically when numeric, in ASCII order otherwise, numeric before alphanumeric, and
    a longer list after its own prefix.
    """
    if type(text) is not str or len(text) > 256:
        return None
    return _parse_semver_cached(text)


@lru_cache(maxsize=4096)
def _parse_semver_cached(text: str) -> SemverKey | None:
    # App versions repeat across users, so most context values are parsed once.
    match = _SEMVER_PATTERN.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, prerelease = match.groups()
    if prerelease is None:
        return (int(major), int(minor), int(patch), 1, ())
    identifiers = tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in prerelease.split(".")
    )
    return (int(major), int(minor), int(patch), 0, identifiers)


def _parse_instant(value: Any) -> float | None:
    """Seconds since the epoch for an ISO 8601 string, a datetime or a date; None otherwise."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif type(value) is str:
        return _parse_iso_instant(value)
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@lru_cache(maxsize=4096)
def _parse_iso_instant(text: str) -> float | None:
    if len(text) > 64:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- constraint compilation ---------------------------------------------------------------------

Predicate = Callable[[Any], bool]

_TEXT_OPERATORS = frozenset(
    {
        Operator.IN,
        Operator.NOT_IN,
        Operator.EQUALS,
        Operator.CONTAINS,
        Operator.STARTS_WITH,
        Operator.ENDS_WITH,
        Operator.REGEX,
    }
)
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


def _compile_predicate(
    operator: Operator, values: tuple[Any, ...], case_insensitive: bool
) -> Predicate:
    """Turn a constraint into a function of the (present, non-None) attribute value.

    Raises InvalidFlagDefinition with a field relative to the constraint.
    """
    if operator is Operator.EXISTS:
        if values:
            _invalid("values", "exists takes no values")
        return _always_true
    if not values:
        _invalid("values", f"{operator} needs at least one value")
    if operator in SINGLE_VALUE_OPERATORS and len(values) != 1:
        _invalid("values", f"{operator} takes exactly one value, got {len(values)}")

    if operator in _TEXT_OPERATORS:
        texts = [_constraint_text(value, index) for index, value in enumerate(values)]
        if operator is Operator.REGEX:
            return _compile_regex(texts[0], case_insensitive)
        if case_insensitive:
            texts = [text.casefold() for text in texts]
        return _compile_text(operator, texts, case_insensitive)

    if operator in (
        Operator.NUM_EQ,
        Operator.NUM_GT,
        Operator.NUM_GTE,
        Operator.NUM_LT,
        Operator.NUM_LTE,
    ):
        numbers = [_constraint_number(value, index) for index, value in enumerate(values)]
        return _compile_number(operator, numbers)

    if operator in (Operator.SEMVER_EQ, Operator.SEMVER_GT, Operator.SEMVER_LT):
        versions = [_constraint_semver(value, index) for index, value in enumerate(values)]
        return _compile_semver(operator, versions)

    instant = _constraint_instant(values[0])
    if operator is Operator.DATE_BEFORE:
        return lambda value: (moment := _parse_instant(value)) is not None and moment < instant
    return lambda value: (moment := _parse_instant(value)) is not None and moment > instant


def _always_true(value: Any) -> bool:
    return True


def _constraint_text(value: Any, index: int) -> str:
    text = _as_text(value)
    if text is None:
        _invalid(f"values[{index}]", f"must be a string, number or boolean, got {value!r}")
    return text


def _constraint_number(value: Any, index: int) -> float:
    number = _as_number(value)
    if number is None or not math.isfinite(number):
        _invalid(f"values[{index}]", f"must be a finite number, got {value!r}")
    return number


def _constraint_semver(value: Any, index: int) -> SemverKey:
    version = parse_semver(value) if type(value) is str else None
    if version is None:
        _invalid(f"values[{index}]", f"must be a semantic version like 1.4.0, got {value!r}")
    return version


def _constraint_instant(value: Any) -> float:
    instant = _parse_instant(value)
    if instant is None:
        _invalid("values[0]", f"must be an ISO 8601 date or date-time, got {value!r}")
    return instant


def _compile_text(operator: Operator, texts: list[str], fold: bool) -> Predicate:
    # One closure per (operator, case) pair so the hot path has no branches left to take.
    if operator is Operator.IN or operator is Operator.NOT_IN:
        members = frozenset(texts)
        wanted = operator is Operator.IN

        if fold:

            def in_folded(value: Any) -> bool:
                text = value if type(value) is str else _as_text(value)
                return text is not None and (text.casefold() in members) is wanted

            return in_folded

        def in_exact(value: Any) -> bool:
            text = value if type(value) is str else _as_text(value)
            return text is not None and (text in members) is wanted

        return in_exact

    if operator is Operator.EQUALS:
        expected = texts[0]
        if fold:
            return lambda value: (
                (text := _as_text(value)) is not None and (text.casefold() == expected)
            )
        return lambda value: (value if type(value) is str else _as_text(value)) == expected

    needles = tuple(texts)
    if operator is Operator.STARTS_WITH or operator is Operator.ENDS_WITH:
        method = str.startswith if operator is Operator.STARTS_WITH else str.endswith
        if fold:
            return lambda value: (
                (text := _as_text(value)) is not None and method(text.casefold(), needles)
            )
        return lambda value: (text := _as_text(value)) is not None and method(text, needles)

    def contains(value: Any) -> bool:
        text = _as_text(value)
        if text is None:
            return False
        if fold:
            text = text.casefold()
        return any(needle in text for needle in needles)

    return contains


def _compile_number(operator: Operator, numbers: list[float]) -> Predicate:
    if operator is Operator.NUM_EQ:
        members = frozenset(numbers)
        return lambda value: _as_number(value) in members
    bound = numbers[0]
    if operator is Operator.NUM_GT:
        return lambda value: (number := _as_number(value)) is not None and number > bound
    if operator is Operator.NUM_GTE:
        return lambda value: (number := _as_number(value)) is not None and number >= bound
    if operator is Operator.NUM_LT:
        return lambda value: (number := _as_number(value)) is not None and number < bound
    return lambda value: (number := _as_number(value)) is not None and number <= bound


def _compile_semver(operator: Operator, versions: list[SemverKey]) -> Predicate:
    if operator is Operator.SEMVER_EQ:
        members = frozenset(versions)
        return lambda value: type(value) is str and parse_semver(value) in members
    bound = versions[0]
    if operator is Operator.SEMVER_GT:
        return lambda value: (version := parse_semver(value)) is not None and version > bound
    return lambda value: (version := parse_semver(value)) is not None and version < bound


def _compile_regex(pattern: str, case_insensitive: bool) -> Predicate:
    try:
        compiled = regex_guard.compile_screened(
            pattern, ignore_case=case_insensitive, max_input=MAX_REGEX_INPUT_LENGTH
        )
    except regex_guard.UnsafeRegex as error:
        _invalid("values[0]", error.message)
    search = compiled.search
    limit = MAX_REGEX_INPUT_LENGTH

    def matches(value: Any) -> bool:
        text = value if type(value) is str else _as_text(value)
        return text is not None and len(text) <= limit and search(text) is not None

    return matches


# --- snapshots ----------------------------------------------------------------------------------


def _set(instance: object, name: str, value: Any) -> None:
    # Frozen dataclasses fill their derived, precompiled fields once, in __post_init__.
    object.__setattr__(instance, name, value)


@dataclass(frozen=True, slots=True)
class Constraint:
    """One test of one context attribute."""

    attribute: str
    operator: Operator
    values: tuple[Any, ...] = ()
    case_insensitive: bool = False
    negate: bool = False
    predicate: Predicate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.attribute, str) or not self.attribute:
            _invalid("attribute", "must be a non-empty string")
        try:
            operator = Operator(self.operator)
        except ValueError:
            choices = ", ".join(operator.value for operator in Operator)
            _invalid("operator", f"unknown operator {self.operator!r}; expected one of {choices}")
        if isinstance(self.values, str | bytes) or not isinstance(self.values, Sequence):
            _invalid("values", "must be a list")
        if type(self.case_insensitive) is not bool:
            _invalid("case_insensitive", "must be true or false")
        if type(self.negate) is not bool:
            _invalid("negate", "must be true or false")
        values = tuple(self.values)
        _set(self, "operator", operator)
        _set(self, "values", values)
        _set(self, "predicate", _compile_predicate(operator, values, self.case_insensitive))

    def matches(self, context: Mapping[str, Any]) -> bool:
        """Whether this constraint holds for ``context`` (negation included)."""
        value = context.get(self.attribute)
        if value is None:
            return self.negate
        return self.predicate(value) is not self.negate


# (attribute, predicate, negate): unpacked in the hot loop without attribute lookups.
_Check = tuple[str, Predicate, bool]


def _checks(constraints: tuple[Constraint, ...]) -> tuple[_Check, ...]:
    return tuple((c.attribute, c.predicate, c.negate) for c in constraints)


@dataclass(frozen=True, slots=True)
class SegmentSnapshot:
    """A reusable, named set of constraints; a context is in it when all of them hold."""

    key: str
    constraints: tuple[Constraint, ...] = ()
    name: str = ""
    checks: tuple[_Check, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            _invalid("key", "must be a non-empty string")
        _set(self, "constraints", tuple(self.constraints))
        _set(self, "checks", _checks(self.constraints))

    def matches(self, context: Mapping[str, Any]) -> bool:
        return _all_hold(self.checks, context.get)


@dataclass(frozen=True, slots=True)
class FixedServe:
    """Serve one variant to everyone the rule matches."""

    variant: str


@dataclass(frozen=True, slots=True)
class RolloutServe:
    """Serve ``variant`` to ``percentage`` (0 to 100) of subjects; the rest fall through."""

    percentage: float
    variant: str

    def __post_init__(self) -> None:
        percentage = self.percentage
        if type(percentage) is bool or not isinstance(percentage, int | float | Decimal):
            _invalid("percentage", f"must be a number from 0 to 100, got {percentage!r}")
        try:
            percentage = float(percentage)
        except OverflowError:  # an integer beyond the float range
            _invalid("percentage", f"must be from 0 to 100, got {percentage!r}")
        if not 0 <= percentage <= 100:
            _invalid("percentage", f"must be from 0 to 100, got {percentage!r}")
        if abs(percentage * 100 - round(percentage * 100)) > 1e-6:
            _invalid("percentage", f"may have at most two decimals, got {percentage!r}")
        _set(self, "percentage", percentage)


@dataclass(frozen=True, slots=True)
class WeightedVariant:
    variant: str
    weight: int


@dataclass(frozen=True, slots=True)
class SplitServe:
    """Give every subject one variant, in proportion to weights in basis points (sum 10000)."""

    variants: tuple[WeightedVariant, ...]

    def __post_init__(self) -> None:
        variants = tuple(self.variants)
        if not variants:
            _invalid("split", "needs at least one variant")
        seen: set[str] = set()
        for index, weighted in enumerate(variants):
            weight = weighted.weight
            if type(weight) is not int or not 0 <= weight <= BUCKET_COUNT:
                _invalid(
                    f"split[{index}].weight",
                    f"must be a whole number of basis points from 0 to 10000, got {weight!r}",
                )
            if not isinstance(weighted.variant, str):
                _invalid(
                    f"split[{index}].variant", f"must be a variant name, got {weighted.variant!r}"
                )
            if weighted.variant in seen:
                _invalid(f"split[{index}].variant", f"{weighted.variant!r} appears twice")
            seen.add(weighted.variant)
        total = sum(weighted.weight for weighted in variants)
        if total != BUCKET_COUNT:
            _invalid("split", f"weights must sum to 10000 basis points (100%), they sum to {total}")
        _set(self, "variants", variants)


Serve = FixedServe | RolloutServe | SplitServe


@dataclass(frozen=True, slots=True)
class Rule:
    """Segments and constraints that must all hold, and what to serve when they do."""

    serve: Serve
    name: str = ""
    constraints: tuple[Constraint, ...] = ()
    segments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            _invalid("name", "must be a string")
        _set(self, "constraints", tuple(self.constraints))
        _set(self, "segments", tuple(self.segments))
        for index, segment_key in enumerate(self.segments):
            if not isinstance(segment_key, str) or not segment_key:
                _invalid(f"segments[{index}]", "must be a non-empty segment key")


@dataclass(frozen=True, slots=True)
class Target:
    """Subjects (by ``targetingKey``) who always get ``variant``."""

    variant: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        values = tuple(self.values)
        for index, value in enumerate(values):
            if not isinstance(value, str) or not value:
                _invalid(f"values[{index}]", "must be a non-empty string")
        _set(self, "values", values)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One result a flag can give and why, worked out with the snapshot."""

    variant: str | None
    value: Any
    reason: Reason
    metadata: Mapping[str, Any]
    because: str
    """Completes "Served variant 'x' because ..."."""
    bucket_clause: str = ""
    """Completes "and user bucket N is ..." for outcomes decided by a bucket."""


class EvaluationResult(NamedTuple):
    """The answer for one flag and one context.

    A named tuple rather than a frozen dataclass: a frozen dataclass sets each field through
    ``object.__setattr__``, which costs more than the rest of an evaluation.
    """

    value: Any
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    metadata: Mapping[str, Any] = _NO_METADATA
    flag_key: str = ""
    bucket: int | None = None
    outcome: Outcome | None = None

    def explain(self) -> str:
        """One or two plain-English sentences saying what was served and why."""
        served = f"variant {self.variant!r}" if self.variant is not None else "no variant"
        if self.error_code is not None:
            detail = f": {self.error_message}" if self.error_message else ""
            return f"Served {served} because evaluation failed ({self.error_code}){detail}."
        if self.outcome is None:
            return f"Served {served} ({self.reason})."
        text = f"Served {served} because {self.outcome.because}"
        if self.bucket is not None and self.outcome.bucket_clause:
            text += f", and user bucket {self.bucket} is {self.outcome.bucket_clause}"
        return text + "."


def _result(flag_key: str, outcome: Outcome) -> EvaluationResult:
    return EvaluationResult(
        value=outcome.value,
        variant=outcome.variant,
        reason=outcome.reason,
        metadata=outcome.metadata,
        flag_key=flag_key,
        outcome=outcome,
    )


_tuple_new = tuple.__new__


def _bucketed_result(flag_key: str, outcome: Outcome, bucket: int) -> EvaluationResult:
    # tuple.__new__ skips the generated __new__'s argument parsing: this runs per evaluation.
    return _tuple_new(
        EvaluationResult,
        (
            outcome.value,
            outcome.variant,
            outcome.reason,
            None,
            None,
            outcome.metadata,
            flag_key,
            bucket,
            outcome,
        ),
    )


_FIXED, _ROLLOUT, _SPLIT = 0, 1, 2


class _ServePlan:
    """What a rule (or the default rule) serves, in the form the hot path wants."""

    __slots__ = ("bounds", "kind", "outcome", "outcomes", "result", "threshold")

    def __init__(
        self,
        kind: int,
        *,
        result: EvaluationResult | None = None,
        outcome: Outcome | None = None,
        threshold: int = 0,
        bounds: tuple[int, ...] = (),
        outcomes: tuple[Outcome, ...] = (),
    ) -> None:
        self.kind = kind
        self.result = result  # the whole answer, for a fixed variant
        self.outcome = outcome  # inside a rollout
        self.threshold = threshold  # buckets below it are inside the rollout
        self.bounds = bounds  # split: cumulative upper bounds of each variant's buckets
        self.outcomes = outcomes  # split: the outcome of each bound, and for a default
        # rollout, (outside,)


class _RulePlan:
    __slots__ = ("checks", "segment_keys", "serve")

    def __init__(
        self, checks: tuple[_Check, ...], segment_keys: tuple[str, ...], serve: _ServePlan
    ) -> None:
        self.checks = checks
        self.segment_keys = segment_keys
        self.serve = serve


class _FlagPlan:
    __slots__ = (
        "default",
        "inactive_result",
        "key",
        "missing_key_result",
        "rollout_prefix",
        "rules",
        "split_prefix",
        "stickiness",
        "targets",
    )

    def __init__(self) -> None:
        self.key = ""
        self.inactive_result: EvaluationResult | None = None
        self.targets: dict[str, EvaluationResult] = {}
        self.rules: tuple[_RulePlan, ...] = ()
        self.default: _ServePlan = _ServePlan(_FIXED)
        self.missing_key_result: EvaluationResult | None = None
        self.stickiness = DEFAULT_STICKINESS
        self.rollout_prefix = ""
        self.split_prefix = ""


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """Everything needed to evaluate one flag, validated and precompiled."""

    key: str
    variants: Mapping[str, Any]
    off_variant: str
    default_rule: Serve | None = None
    status: FlagStatus = FlagStatus.ENABLED
    value_type: ValueType = ValueType.BOOLEAN
    rules: tuple[Rule, ...] = ()
    targets: tuple[Target, ...] = ()
    stickiness: str = DEFAULT_STICKINESS
    salt: str = ""
    version: int = 1
    plan: _FlagPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            _invalid("key", "must be a non-empty string")
        status = _one_of(FlagStatus, self.status, "status")
        value_type = _one_of(ValueType, self.value_type, "value_type")
        if not isinstance(self.stickiness, str) or not self.stickiness:
            _invalid("stickiness", "must be the name of a context attribute")
        if not isinstance(self.salt, str) or not _encodable(self.salt):
            _invalid("salt", "must be a string of valid text")
        if not _encodable(self.key):
            _invalid("key", "must be valid text")
        if type(self.version) is not int or self.version < 0:
            _invalid("version", f"must be a whole number, got {self.version!r}")
        if not isinstance(self.variants, Mapping) or not self.variants:
            _invalid("variants", "a flag needs at least one variant")
        for index, (name, value) in enumerate(self.variants.items()):
            if not isinstance(name, str) or not name:
                _invalid(f"variants[{index}].name", "must be a non-empty string")
            _check_value_type(value, value_type, f"variants[{index}].value")
        self._check_variant(self.off_variant, "off_variant")

        _set(self, "status", status)
        _set(self, "value_type", value_type)
        # Results hand out these very objects, so a caller must not be able to change them.
        frozen = {name: _freeze(value) for name, value in self.variants.items()}
        _set(self, "variants", MappingProxyType(frozen))
        _set(self, "salt", self.salt or self.key)
        _set(self, "rules", tuple(self.rules))
        _set(self, "targets", tuple(self.targets))
        if self.default_rule is None:
            _set(self, "default_rule", FixedServe(self.off_variant))

        targeted: dict[str, int] = {}
        for index, target in enumerate(self.targets):
            self._check_variant(target.variant, f"targets[{index}].variant")
            for value_index, value in enumerate(target.values):
                if value in targeted:
                    _invalid(
                        f"targets[{index}].values[{value_index}]",
                        f"{value!r} is already targeted in targets[{targeted[value]}]",
                    )
                targeted[value] = index
        for index, rule in enumerate(self.rules):
            with _under(f"rules[{index}].serve"):
                self._check_serve(rule.serve)
        with _under("default_rule"):
            self._check_serve(self.default_rule)
        _set(self, "plan", self._build_plan())

    def _check_variant(self, name: Any, field: str) -> None:
        if not isinstance(name, str) or name not in self.variants:
            _invalid(field, f"{name!r} is not one of the flag's variants")

    def _check_serve(self, serve: Any) -> None:
        if isinstance(serve, FixedServe):
            self._check_variant(serve.variant, "variant")
        elif isinstance(serve, RolloutServe):
            self._check_variant(serve.variant, "rollout.variant")
        elif isinstance(serve, SplitServe):
            for index, weighted in enumerate(serve.variants):
                self._check_variant(weighted.variant, f"split[{index}].variant")
        else:
            _invalid("", "must serve a variant, a rollout or a split")

    # The plan: every fixed answer built once, every rollout and split reduced to thresholds.

    def _outcome(
        self,
        variant: str,
        reason: Reason,
        because: str,
        metadata: Mapping[str, Any],
        bucket_clause: str = "",
    ) -> Outcome:
        return Outcome(
            variant=variant,
            value=self.variants[variant],
            reason=reason,
            metadata=ReadOnlyDict({"flag_version": self.version, **metadata}),
            because=because,
            bucket_clause=bucket_clause,
        )

    def _build_plan(self) -> _FlagPlan:
        plan = _FlagPlan()
        plan.key = self.key
        plan.stickiness = self.stickiness
        plan.rollout_prefix = f"{self.salt}:"
        plan.split_prefix = f"{self.salt}{SPLIT_SALT_SUFFIX}:"

        if self.status is not FlagStatus.ENABLED:
            because = (
                "the flag has been killed"
                if self.status is FlagStatus.KILLED
                else "the flag is disabled"
            )
            outcome = self._outcome(
                self.off_variant, Reason.DISABLED, because, {"status": self.status.value}
            )
            plan.inactive_result = _result(self.key, outcome)

        # One result per target, shared by its users: target lists can be long.
        for target in self.targets:
            outcome = self._outcome(
                target.variant,
                Reason.TARGETING_MATCH,
                "the user is individually targeted",
                {"targeted": True},
            )
            result = _result(self.key, outcome)
            plan.targets.update(dict.fromkeys(target.values, result))

        plan.rules = tuple(self._rule_plan(index, rule) for index, rule in enumerate(self.rules))
        plan.default = self._default_plan()
        if plan.default.kind != _FIXED:
            outcome = self._outcome(
                self.off_variant,
                Reason.ERROR,
                f"the context has no {self.stickiness!r} to place the user in a bucket",
                {},
            )
            plan.missing_key_result = EvaluationResult(
                value=outcome.value,
                variant=outcome.variant,
                reason=Reason.ERROR,
                error_code=ErrorCode.TARGETING_KEY_MISSING,
                error_message=(
                    f"the default rule buckets on {self.stickiness!r}, "
                    "which the context does not have"
                ),
                metadata=outcome.metadata,
                flag_key=self.key,
                outcome=outcome,
            )
        return plan

    def _rule_plan(self, index: int, rule: Rule) -> _RulePlan:
        label = f"rule {index + 1}" + (f" {rule.name!r}" if rule.name else "")
        metadata: dict[str, Any] = {"rule_index": index}
        if rule.name:
            metadata["rule_name"] = rule.name
        because = f"{label} matched"
        if rule.segments:
            metadata["segment_key"] = ",".join(rule.segments)
            noun = "segment" if len(rule.segments) == 1 else "segments"
            because += f" ({noun} " + ", ".join(repr(key) for key in rule.segments) + ")"
        checks = _checks(rule.constraints)
        serve = self._serve_plan(rule.serve, Reason.TARGETING_MATCH, because, metadata)
        return _RulePlan(checks, rule.segments, serve)

    def _default_plan(self) -> _ServePlan:
        serve = self.default_rule
        if isinstance(serve, FixedServe):
            dynamic = bool(self.rules or self.targets)
            reason = Reason.DEFAULT if dynamic else Reason.STATIC
            because = (
                "no rule matched, so the default rule applies"
                if dynamic
                else "the flag has no targeting and its default rule serves it to everyone"
            )
            return self._serve_plan(serve, reason, because, {"default_rule": True})
        because = (
            "no rule matched, so the default rule applies"
            if self.rules
            else "the default rule applies"
        )
        plan = self._serve_plan(serve, Reason.SPLIT, because, {"default_rule": True})
        if isinstance(serve, RolloutServe):
            # Unlike a rule's rollout, the default rule has nothing to fall through to.
            outside = self._outcome(
                self.off_variant,
                Reason.SPLIT,
                because,
                {"default_rule": True, "rollout_percentage": serve.percentage},
                f"outside the {_percent(serve.percentage)} rollout "
                f"({_bucket_range(0, plan.threshold)})",
            )
            plan.outcomes = (outside,)
        return plan

    def _serve_plan(
        self, serve: Serve, reason: Reason, because: str, metadata: Mapping[str, Any]
    ) -> _ServePlan:
        if isinstance(serve, FixedServe):
            outcome = self._outcome(serve.variant, reason, because, metadata)
            return _ServePlan(_FIXED, result=_result(self.key, outcome))
        if isinstance(serve, RolloutServe):
            threshold = percentage_to_buckets(serve.percentage)
            outcome = self._outcome(
                serve.variant,
                reason,
                because,
                {**metadata, "rollout_percentage": serve.percentage},
                f"within the {_percent(serve.percentage)} rollout ({_bucket_range(0, threshold)})",
            )
            return _ServePlan(_ROLLOUT, outcome=outcome, threshold=threshold)
        bounds: list[int] = []
        outcomes: list[Outcome] = []
        low = 0
        for weighted in serve.variants:
            if weighted.weight == 0:
                continue
            high = low + weighted.weight
            outcomes.append(
                self._outcome(
                    weighted.variant,
                    reason,
                    because,
                    {**metadata, "split_weight": weighted.weight},
                    f"in the {_percent(weighted.weight / 100)} share of variant "
                    f"{weighted.variant!r} ({_bucket_range(low, high)})",
                )
            )
            bounds.append(high)
            low = high
        # bisect_right(bounds, b) is the index of the first share whose (exclusive) upper bound
        # lies above bucket b.
        return _ServePlan(_SPLIT, bounds=tuple(bounds), outcomes=tuple(outcomes))


def _percent(percentage: float) -> str:
    return f"{percentage:g}%"


def _bucket_range(low: int, high: int) -> str:
    """Describe buckets ``[low, high)``."""
    if high <= low:
        return "no buckets"
    if high - low == 1:
        return f"bucket {low}"
    return f"buckets {low}-{high - 1}"


def _freeze(value: Any) -> Any:
    """A read-only copy of a JSON value: objects become ReadOnlyDicts, arrays tuples."""
    if isinstance(value, dict):
        return ReadOnlyDict({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _check_value_type(value: Any, value_type: ValueType, field: str) -> None:
    if value_type is ValueType.BOOLEAN:
        valid = type(value) is bool
    elif value_type is ValueType.STRING:
        valid = isinstance(value, str)
    elif value_type is ValueType.NUMBER:
        valid = type(value) is not bool and isinstance(value, int | float) and _finite(value)
    else:
        valid = isinstance(value, dict)
    if not valid:
        _invalid(field, f"must be a {value_type.value} value, got {value!r}")


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogates), as bucketing needs."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond the float range: finite, but no flag value
        return False


# --- evaluation ---------------------------------------------------------------------------------


def _all_hold(checks: tuple[_Check, ...], get: Callable[[str], Any]) -> bool:
    for attribute, predicate, negate in checks:
        value = get(attribute)
        if value is None:
            if not negate:
                return False
        elif predicate(value) is negate:
            return False
    return True


def _stickiness_text(value: Any) -> str | None:
    text = value if type(value) is str else _as_text(value)
    if text is not None and not text.isascii():
        # mmh3 crashes the whole process on a lone surrogate ("\ud800" is valid JSON); encoding
        # raises instead, which evaluate() turns into a GENERAL error.
        text.encode()
    return text


def evaluate(
    flag: FlagSnapshot,
    context: Mapping[str, Any],
    segments: Mapping[str, SegmentSnapshot] = _NO_SEGMENTS,
    *,
    expected_type: ValueType | str | None = None,
) -> EvaluationResult:
    """Evaluate ``flag`` for ``context``; see the module docstring for the order of things.

    ``segments`` maps segment keys to snapshots and needs to hold at least the segments the
    flag's rules name. ``expected_type``, when given, is the type the caller asked for (as an
    OpenFeature SDK does); a different flag type gives ``TYPE_MISMATCH``.
    """
    plan = flag.plan
    if expected_type is not None and expected_type != flag.value_type:
        return _type_mismatch(flag, expected_type)
    if plan.inactive_result is not None:
        return plan.inactive_result
    try:
        get = context.get
        if plan.targets:
            targeting_key = get(TARGETING_KEY)
            if targeting_key is not None:
                targeted = plan.targets.get(_stickiness_text(targeting_key))
                if targeted is not None:
                    return targeted

        subject: str | None = None
        subject_read = False
        for rule in plan.rules:
            for segment_key in rule.segment_keys:
                segment = segments.get(segment_key)
                if segment is None or not _all_hold(segment.checks, get):
                    break
            else:
                # Inlined _all_hold: this loop is the hottest code in the module.
                for attribute, predicate, negate in rule.checks:
                    value = get(attribute)
                    if value is None:
                        if not negate:
                            break
                    elif predicate(value) is negate:
                        break
                else:
                    serve = rule.serve
                    kind = serve.kind
                    if kind == _FIXED:
                        return serve.result
                    if not subject_read:
                        raw = get(plan.stickiness)
                        subject = None if raw is None else _stickiness_text(raw)
                        subject_read = True
                    if subject is None:
                        continue
                    if kind == _ROLLOUT:
                        bucket = bucket_with_prefix(plan.rollout_prefix, subject)
                        if bucket < serve.threshold:
                            return _bucketed_result(plan.key, serve.outcome, bucket)
                        continue
                    bucket = bucket_with_prefix(plan.split_prefix, subject)
                    outcome = serve.outcomes[bisect_right(serve.bounds, bucket)]
                    return _bucketed_result(plan.key, outcome, bucket)

        serve = plan.default
        kind = serve.kind
        if kind == _FIXED:
            return serve.result
        if not subject_read:
            raw = get(plan.stickiness)
            subject = None if raw is None else _stickiness_text(raw)
        if subject is None:
            return plan.missing_key_result
        if kind == _ROLLOUT:
            bucket = bucket_with_prefix(plan.rollout_prefix, subject)
            outcome = serve.outcome if bucket < serve.threshold else serve.outcomes[0]
            return _bucketed_result(plan.key, outcome, bucket)
        bucket = bucket_with_prefix(plan.split_prefix, subject)
        outcome = serve.outcomes[bisect_right(serve.bounds, bucket)]
        return _bucketed_result(plan.key, outcome, bucket)
    except Exception as error:
        # Whatever a client puts in its context, the answer is a result, never a 500.
        return EvaluationResult(
            value=flag.variants[flag.off_variant],
            variant=flag.off_variant,
            reason=Reason.ERROR,
            error_code=ErrorCode.GENERAL,
            error_message=f"{type(error).__name__}: {error}",
            metadata=ReadOnlyDict({"flag_version": flag.version}),
            flag_key=flag.key,
        )


def _type_mismatch(flag: FlagSnapshot, expected_type: ValueType | str) -> EvaluationResult:
    return EvaluationResult(
        value=None,
        variant=None,
        reason=Reason.ERROR,
        error_code=ErrorCode.TYPE_MISMATCH,
        error_message=f"flag {flag.key!r} is a {flag.value_type.value} flag, "
        f"not {getattr(expected_type, 'value', expected_type)}",
        metadata=ReadOnlyDict({"flag_version": flag.version}),
        flag_key=flag.key,
    )


def flag_not_found(flag_key: str) -> EvaluationResult:
    """The result for a flag key that names no flag."""
    return evaluation_error(flag_key, ErrorCode.FLAG_NOT_FOUND, f"no flag named {flag_key!r}")


def evaluation_error(flag_key: str, error_code: ErrorCode, message: str) -> EvaluationResult:
    """An error result without a value, e.g. PARSE_ERROR for a stored flag that no longer builds."""
    return EvaluationResult(
        value=None,
        variant=None,
        reason=Reason.ERROR,
        error_code=error_code,
        error_message=message,
        flag_key=flag_key,
    )


# --- building from stored dicts -----------------------------------------------------------------


# Each builder reads its object with paths relative to it; ``_under`` places an error under the
# path of the object that holds it, so the outermost caller reports the path from the top.


def _object(data: Any) -> Fields:
    return Fields(data, "", InvalidFlagDefinition)


def _require(item: Fields, key: str) -> Any:
    """``item[key]``, which must be present; null is the constructor's to refuse."""
    if key not in item.data:
        item.fail(key, "is required")
    return item.data[key]


def _values(item: Fields, key: str) -> list[Any]:
    return [value for _path, value in item.items(key)]


def build_constraint(data: Mapping[str, Any]) -> Constraint:
    """Build a :class:`Constraint` from ``{"attribute", "operator", "values", ...}``."""
    item = _object(data)
    values = item.data.get("values", [])
    return Constraint(
        attribute=_require(item, "attribute"),
        operator=_require(item, "operator"),
        values=[] if values is None else values,
        case_insensitive=item.data.get("case_insensitive", False),
        negate=item.data.get("negate", False),
    )


def _constraints(item: Fields) -> tuple[Constraint, ...]:
    constraints = []
    for path, constraint in item.items("constraints"):
        with _under(path):
            constraints.append(build_constraint(constraint))
    return tuple(constraints)


def build_segment_snapshot(data: Mapping[str, Any]) -> SegmentSnapshot:
    """Build a :class:`SegmentSnapshot` from ``{"key", "name", "constraints": [...]}``."""
    item = _object(data)
    constraints = _constraints(item)
    name = item.data.get("name") or ""
    if not isinstance(name, str):
        item.fail("name", "must be a string")
    return SegmentSnapshot(key=_require(item, "key"), constraints=constraints, name=name)


def build_serve(data: Mapping[str, Any]) -> Serve:
    """Build a serve from ``{"variant"}``, ``{"rollout": {...}}`` or ``{"split": [...]}``."""
    item = _object(data)
    given = [key for key in ("variant", "rollout", "split") if key in item.data]
    if len(given) != 1:
        _invalid("", "must have exactly one of variant, rollout or split")
    if given[0] == "variant":
        return FixedServe(variant=item.data["variant"])
    if given[0] == "rollout":
        with _under("rollout"):
            rollout = _object(item.data["rollout"])
            return RolloutServe(
                percentage=_require(rollout, "percentage"), variant=_require(rollout, "variant")
            )
    weighted = []
    for path, raw in item.items("split"):
        with _under(path):
            share = _object(raw)
            weighted.append(
                WeightedVariant(
                    variant=_require(share, "variant"), weight=_require(share, "weight")
                )
            )
    return SplitServe(variants=tuple(weighted))


def _build_rule(data: Mapping[str, Any]) -> Rule:
    item = _object(data)
    constraints = _constraints(item)
    serve_data = _require(item, "serve")
    with _under("serve"):
        serve = build_serve(serve_data)
    return Rule(
        serve=serve,
        name=item.data.get("name") or "",
        constraints=constraints,
        segments=tuple(_values(item, "segments")),
    )


def build_flag_snapshot(data: Mapping[str, Any]) -> FlagSnapshot:
    """Build and validate a :class:`FlagSnapshot` from the stored JSON (module docstring)."""
    flag = _object(data)
    variants: dict[str, Any] = {}
    for path, raw in flag.items("variants"):
        with _under(path):
            variant = _object(raw)
            name = _require(variant, "name")
            if not isinstance(name, str) or not name:
                variant.fail("name", "must be a non-empty string")
            if name in variants:
                variant.fail("name", f"duplicate variant name {name!r}")
            variants[name] = _require(variant, "value")

    targets = []
    for path, raw in flag.items("targets"):
        with _under(path):
            target = _object(raw)
            targets.append(
                Target(variant=_require(target, "variant"), values=tuple(_values(target, "values")))
            )

    rules = []
    for path, raw in flag.items("rules"):
        with _under(path):
            rules.append(_build_rule(raw))

    default_rule = None
    if flag.data.get("default_rule") is not None:
        with _under("default_rule"):
            default_rule = build_serve(flag.data["default_rule"])

    return FlagSnapshot(
        key=_require(flag, "key"),
        variants=variants,
        off_variant=_require(flag, "off_variant"),
        default_rule=default_rule,
        status=flag.value("status", FlagStatus.ENABLED),
        value_type=flag.value("value_type", ValueType.BOOLEAN),
        rules=tuple(rules),
        targets=tuple(targets),
        stickiness=flag.value("stickiness", DEFAULT_STICKINESS),
        salt=flag.data.get("salt") or "",
        version=flag.value("version", 1),
    )


def validate_constraint(data: Mapping[str, Any], *, field: str = "") -> None:
    """Raise :class:`InvalidFlagDefinition` if ``data`` is not a valid constraint.

    ``field`` prefixes the reported field, e.g. ``rules[0].constraints[1]``.
    """
    with _under(field):
        build_constraint(data)


def validate_segment(data: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidFlagDefinition` if ``data`` is not a valid segment."""
    build_segment_snapshot(data)


def validate_flag(data: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidFlagDefinition` if ``data`` is not a valid flag definition."""
    build_flag_snapshot(data)
