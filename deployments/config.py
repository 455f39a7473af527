"""Deployment configuration: the camelCase JSON/YAML vocabulary, parsed into frozen dataclasses.

Pure Python (no Django), shared by the REST API (``POST /api/v1/deployments/``), the YAML export
(``GET /api/v1/deployments/{id}/config.yaml``), the creation wizard and the validator
(`deployments.validation`). Parsing checks the schema only: known keys, types, required fields
and enumerated values. Whether a configuration makes sense (traffic rising to 100%, criteria
that can pass, durations that fit) is the validator's job.

Shape (``?`` marks an optional key, shown with its default)::

    name: "Progressive Service Rollout"
    description?: ""
    serviceName: "user-service"
    stableVersion: "1.2.0"               # strings: quote numeric-looking versions in YAML
    canaryVersion: "2.0.0"
    stableEndpoint?: null                # URLs of the two versions' targets, when known
    canaryEndpoint?: null
    initialTrafficPercentage?: <first phase's trafficPercentage>
    trafficShiftStrategy?: phased        # linear | exponential | phased | manual | custom
    phases:
      - id?: "phase-<n>"                 # unique within the configuration
        name?: "<trafficPercentage>% traffic"
        trafficPercentage: 5             # 0 to 100, two decimals
        durationMs: 300000               # the phase's minimum duration
        status?: pending                 # accepted for the seed guide's examples; only pending
        successCriteria?:                # all must hold, each for its durationMs, to advance
          - metric: availability         # availability | error_rate | response_time
                                         # | throughput | latency_p50 | latency_p95
                                         # | latency_p99 | custom:<name>
            operator: greater_than       # greater_than | less_than | equals
            threshold: 99
            durationMs?: 0               # how long it must hold without a break
        rollbackThresholds?:             # any of the three; a breach rolls back
          errorRate: 5                   # percent; breached above
          latencyP95: 1000               # milliseconds; breached above
          availability: 95               # percent; breached below
    autoPromote?: true
    autoRollback?: true
    maxDeploymentTimeMs?: 3600000
    notifications?: {onStart: true, onPhaseComplete: true, onFailure: true,
                     onComplete: true, onRollback: true}
    rollbackPlan?: checkout-careful     # a rollback plan by name; else the service's default
    webhooks?:                           # Flagger's webhooks: gates and news (deployments.webhooks)
      - name: qa                         # unique; letters, digits, "-", "_", "."
        type: confirm-promotion          # pre-rollout | rollout | confirm-rollout
                                         # | confirm-promotion | post-rollout | rollback | event
        url: "https://qa.example.com/gate"
        timeoutMs?: 5000                 # 1 to 30000
        metadata?: {}                    # strings to strings, sent with every call
        failureThreshold?: 5             # rollout hooks only: failures in a row that roll back

Units: percentages 0 to 100, latencies and durations in milliseconds, throughput in requests
per second. Traffic shift strategies name how the phase percentages were chosen; the phases run
as written whatever the strategy, except that ``manual`` makes every advance wait for a person:

- ``phased`` (default): a hand-written list of phases, each with its own criteria.
- ``linear``: equal steps from the first phase's share to 100 (see `traffic_steps`).
- ``exponential``: each step multiplies the share by the same factor, ending at 100.
- ``manual``: a person promotes every phase; ``autoPromote`` is ignored.
- ``custom``: a hand-made list with no shape promised; runs like ``phased``.

Round trip: ``parse_config(config.to_dict()) == config`` always, and ``to_dict`` of a parsed
dictionary gives it back with every default written out (and a phase's ``status`` dropped).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import pairwise
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from canary_site.reading import is_list, is_number, key_path, kind_of
from health import analysis

# --------------------------------------------------------------------------- vocabulary


class TrafficShiftStrategy(StrEnum):
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    PHASED = "phased"
    MANUAL = "manual"
    CUSTOM = "custom"


class Operator(StrEnum):
    """How a success criterion compares a metric with its threshold: the value that passes."""

    GREATER_THAN = "greater_than"
    LESS_THAN = "less_than"
    EQUALS = "equals"


class Metric(StrEnum):
    """Metrics a success criterion can name, besides ``custom:<name>``: the health app's words
    (`health.analysis.METRICS`), and the seed guide's ``response_time``."""

    AVAILABILITY = analysis.AVAILABILITY
    ERROR_RATE = analysis.ERROR_RATE
    RESPONSE_TIME = "response_time"
    THROUGHPUT = analysis.THROUGHPUT
    LATENCY_P50 = analysis.LATENCY_P50
    LATENCY_P95 = analysis.LATENCY_P95
    LATENCY_P99 = analysis.LATENCY_P99


CUSTOM_PREFIX = analysis.CUSTOM_PREFIX

# The seed guide says response_time; the health app measures latency percentiles. The median is
# what "the response time" of a service usually means, and p95 has its own rollback threshold.
_HEALTH_METRIC: dict[str, str] = {Metric.RESPONSE_TIME: Metric.LATENCY_P50}

PERCENT_METRICS = analysis.PERCENT_METRICS


def is_metric(name: str) -> bool:
    """Whether a success criterion may name ``name``: a metric of the health app, or
    ``response_time``."""
    return name == Metric.RESPONSE_TIME or analysis.is_metric(name)


def health_metric(name: str) -> str:
    """The health app's name for a criterion's metric (``response_time`` is ``latency_p50``)."""
    return _HEALTH_METRIC.get(name, name)


def metric_range(name: str) -> tuple[float, float]:
    """The values a metric can take: percentages 0 to 100, latencies and rates from 0 up.

    A custom metric can be anything, so nothing about it is impossible.
    """
    if name in PERCENT_METRICS:
        return (0.0, 100.0)
    if name.startswith(CUSTOM_PREFIX):
        return (-math.inf, math.inf)
    return (0.0, math.inf)


DEFAULT_MAX_DEPLOYMENT_TIME_MS = 3_600_000
"""The seed guide's default maximum deployment time: one hour."""


class WebhookType(StrEnum):
    """When a webhook is called, in Flagger's words (see `deployments.webhooks`)."""

    PRE_ROLLOUT = "pre-rollout"
    ROLLOUT = "rollout"
    CONFIRM_ROLLOUT = "confirm-rollout"
    CONFIRM_PROMOTION = "confirm-promotion"
    POST_ROLLOUT = "post-rollout"
    ROLLBACK = "rollback"
    EVENT = "event"


GATE_TYPES = frozenset(
    {
        WebhookType.PRE_ROLLOUT,
        WebhookType.ROLLOUT,
        WebhookType.CONFIRM_ROLLOUT,
        WebhookType.CONFIRM_PROMOTION,
    }
)
"""The webhooks whose answer the tick waits for: a gate holds, or fails, the deployment."""

ENTRY_TYPES = frozenset({WebhookType.PRE_ROLLOUT, WebhookType.CONFIRM_ROLLOUT})
"""The gates a start waits for: the canary gets no traffic until they are open."""

DEFAULT_WEBHOOK_TIMEOUT_MS = 5_000
MAX_WEBHOOK_TIMEOUT_MS = 30_000
DEFAULT_FAILURE_THRESHOLD = 5
MAX_FAILURE_THRESHOLD = 100
WEBHOOK_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Criterion:
    """A success criterion: ``metric operator threshold`` must hold for ``duration_ms``."""

    metric: str
    operator: Operator
    threshold: float
    duration_ms: int = 0

    def passes(self, value: float) -> bool:
        if self.operator == Operator.GREATER_THAN:
            return value > self.threshold
        if self.operator == Operator.LESS_THAN:
            return value < self.threshold
        return math.isclose(value, self.threshold, rel_tol=1e-9, abs_tol=1e-9)

    def predicate(self) -> Callable[[float], bool]:
        """`passes` as one callable, for checking many values in a row: a comparison made in C
        for the inequalities (the phase judgement runs it over every observation it holds)."""
        if self.operator == Operator.GREATER_THAN:
            return partial(operator.lt, self.threshold)  # threshold < value
        if self.operator == Operator.LESS_THAN:
            return partial(operator.gt, self.threshold)  # threshold > value
        return self.passes

    def describe(self) -> str:
        """``availability > 99``: the criterion as people read it."""
        symbol = {Operator.GREATER_THAN: ">", Operator.LESS_THAN: "<", Operator.EQUALS: "="}
        return f"{self.metric} {symbol[self.operator]} {_num_out(self.threshold)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": str(self.metric),
            "operator": str(self.operator),
            "threshold": _num_out(self.threshold),
            "durationMs": self.duration_ms,
        }


@dataclass(frozen=True)
class RollbackThresholds:
    """Bounds whose breach rolls a phase back; None means the metric is not watched."""

    error_rate: float | None = None
    latency_p95: float | None = None
    availability: float | None = None

    def items(self) -> list[tuple[str, float]]:
        """The set thresholds as (camelCase field name, value), in a fixed order."""
        pairs = [
            ("errorRate", self.error_rate),
            ("latencyP95", self.latency_p95),
            ("availability", self.availability),
        ]
        return [(name, value) for name, value in pairs if value is not None]

    def __bool__(self) -> bool:
        return bool(self.items())

    def to_dict(self) -> dict[str, Any]:
        return {name: _num_out(value) for name, value in self.items()}


@dataclass(frozen=True)
class RollbackRule:
    """How one rollback threshold is read: which metric, and on which side it is breached."""

    field: str
    metric: str
    breached_above: bool

    def breached(self, value: float, threshold: float) -> bool:
        return value > threshold if self.breached_above else value < threshold


ROLLBACK_RULES: dict[str, RollbackRule] = {
    "errorRate": RollbackRule("errorRate", Metric.ERROR_RATE, breached_above=True),
    "latencyP95": RollbackRule("latencyP95", Metric.LATENCY_P95, breached_above=True),
    "availability": RollbackRule("availability", Metric.AVAILABILITY, breached_above=False),
}


@dataclass(frozen=True)
class PhaseConfig:
    id: str
    name: str
    traffic_percentage: float
    duration_ms: int
    success_criteria: tuple[Criterion, ...] = ()
    rollback_thresholds: RollbackThresholds = field(default_factory=RollbackThresholds)

    @property
    def longest_hold_ms(self) -> int:
        return max((c.duration_ms for c in self.success_criteria), default=0)

    @property
    def minimum_time_ms(self) -> int:
        """The least time the phase can take: its duration or its longest hold, if longer."""
        return max(self.duration_ms, self.longest_hold_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "trafficPercentage": _num_out(self.traffic_percentage),
            "durationMs": self.duration_ms,
            "successCriteria": [c.to_dict() for c in self.success_criteria],
            "rollbackThresholds": self.rollback_thresholds.to_dict(),
        }


@dataclass(frozen=True)
class Notifications:
    on_start: bool = True
    on_phase_complete: bool = True
    on_failure: bool = True
    on_complete: bool = True
    on_rollback: bool = True

    def to_dict(self) -> dict[str, bool]:
        return {
            "onStart": self.on_start,
            "onPhaseComplete": self.on_phase_complete,
            "onFailure": self.on_failure,
            "onComplete": self.on_complete,
            "onRollback": self.on_rollback,
        }


@dataclass(frozen=True)
class Webhook:
    """A webhook: a gate the tick waits for, or news it tells (`WebhookType`)."""

    name: str
    type: WebhookType
    url: str
    timeout_ms: int = DEFAULT_WEBHOOK_TIMEOUT_MS
    # Pairs rather than a dict, so the configuration stays hashable and ordered as written.
    metadata: tuple[tuple[str, str], ...] = ()
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD

    @property
    def is_gate(self) -> bool:
        return self.type in GATE_TYPES

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "type": str(self.type),
            "url": self.url,
            "timeoutMs": self.timeout_ms,
            "metadata": dict(self.metadata),
        }
        if self.type == WebhookType.ROLLOUT:
            data["failureThreshold"] = self.failure_threshold
        return data


@dataclass(frozen=True)
class DeploymentConfig:
    name: str
    service_name: str
    stable_version: str
    canary_version: str
    phases: tuple[PhaseConfig, ...]
    initial_traffic_percentage: float
    traffic_shift_strategy: TrafficShiftStrategy = TrafficShiftStrategy.PHASED
    auto_promote: bool = True
    auto_rollback: bool = True
    max_deployment_time_ms: int = DEFAULT_MAX_DEPLOYMENT_TIME_MS
    notifications: Notifications = field(default_factory=Notifications)
    rollback_plan: str | None = None
    description: str = ""
    stable_endpoint: str | None = None
    canary_endpoint: str | None = None
    webhooks: tuple[Webhook, ...] = ()

    @property
    def minimum_time_ms(self) -> int:
        """The least time all phases take, each its duration or its longest hold."""
        return sum(phase.minimum_time_ms for phase in self.phases)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentConfig:
        return parse_config(data)

    def to_dict(self) -> dict[str, Any]:
        """The camelCase dictionary of the seed guide's vocabulary, every default written out."""
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["serviceName"] = self.service_name
        data["stableVersion"] = self.stable_version
        data["canaryVersion"] = self.canary_version
        if self.stable_endpoint is not None:
            data["stableEndpoint"] = self.stable_endpoint
        if self.canary_endpoint is not None:
            data["canaryEndpoint"] = self.canary_endpoint
        data["initialTrafficPercentage"] = _num_out(self.initial_traffic_percentage)
        data["trafficShiftStrategy"] = str(self.traffic_shift_strategy)
        data["phases"] = [phase.to_dict() for phase in self.phases]
        data["autoPromote"] = self.auto_promote
        data["autoRollback"] = self.auto_rollback
        data["maxDeploymentTimeMs"] = self.max_deployment_time_ms
        data["notifications"] = self.notifications.to_dict()
        if self.rollback_plan:
            data["rollbackPlan"] = self.rollback_plan
        if self.webhooks:
            data["webhooks"] = [hook.to_dict() for hook in self.webhooks]
        return data

    def to_yaml(self) -> str:
        return dump_config(self, "yaml")

    def to_json(self) -> str:
        return dump_config(self, "json")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class FieldError:
    """One problem with a configuration: where (a path such as ``phases[0].durationMs``)."""

    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class ConfigError(ValueError):
    """A configuration that does not fit the schema; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0] if self.errors else FieldError("config", INVALID_VALUE, "invalid")
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"{first.message}{more}")

    @property
    def field(self) -> str:
        return self.errors[0].field if self.errors else "config"


# Error codes of the schema, shared with the validator's report.
REQUIRED = "required"
UNKNOWN_FIELD = "unknown_field"
INVALID_TYPE = "invalid_type"
INVALID_CHOICE = "invalid_choice"
INVALID_VALUE = "invalid_value"
UNPARSEABLE = "unparseable"


# --------------------------------------------------------------------------- reading


class _Missing:
    """Marks a value that was absent or could not be read (its error is already recorded)."""


_MISSING = _Missing()


def is_missing(value: Any) -> bool:
    """Whether a `FieldReader` could not read this value (its error is already recorded)."""
    return isinstance(value, _Missing)


class FieldReader:
    """Reads untrusted JSON-like data, collecting every error rather than stopping at the first.

    Each reader returns the value, or a marker (see `is_missing`) once the error is recorded,
    so that a form can show every problem at once.
    """

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def error(self, path: str, code: str, message: str) -> _Missing:
        # The message names its field, so it reads on its own in a toast or a log line.
        self.errors.append(FieldError(path, code, f"{path} {message}"))
        return _MISSING

    def mapping(self, value: Any, path: str) -> Mapping[str, Any] | _Missing:
        if not isinstance(value, Mapping):
            return self.error(path, INVALID_TYPE, f"must be an object, got {kind_of(value)}.")
        for key in value:
            if not isinstance(key, str):
                return self.error(path, INVALID_TYPE, f"has a key that is not a string: {key!r}.")
        return value

    def record(
        self, value: Any, path: str, allowed: Sequence[str], *, fields_at: str | None = None
    ) -> Mapping[str, Any] | _Missing:
        """An object whose keys are all ``allowed``; an unknown key is an error, and the object
        is still returned so that its known keys are read too. ``fields_at`` is the path the
        keys' errors start from where it differs from ``path``: a document's top names its
        fields bare (``name``, not ``config.name``)."""
        data = self.mapping(value, path)
        if not isinstance(data, _Missing):
            self.keys(data, allowed, path if fields_at is None else fields_at)
        return data

    def keys(self, data: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in data:
            if key not in allowed:
                self.error(
                    key_path(path, key),
                    UNKNOWN_FIELD,
                    f"is not a known field; expected one of {', '.join(allowed)}.",
                )

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        read: Callable[[Any, str], Any],
        *,
        default: Any = _MISSING,
    ) -> Any:
        where = key_path(path, key)
        if key not in data or data[key] is None:
            if default is _MISSING:
                return self.error(where, REQUIRED, "is required.")
            return default
        return read(data[key], where)

    def string(self, value: Any, path: str) -> str | _Missing:
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, int | float) else ""
            return self.error(path, INVALID_TYPE, f"must be a string{hint}, got {value!r}.")
        if not value.strip():
            return self.error(path, INVALID_VALUE, "must not be empty.")
        return value

    def string_or_empty(self, value: Any, path: str) -> str | _Missing:
        """A string that may be empty, numbers refused with the YAML hint."""
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, int | float) else ""
            return self.error(path, INVALID_TYPE, f"must be a string{hint}, got {value!r}.")
        return value

    def text(self, value: Any, path: str) -> str | _Missing:
        """A string that may be empty (a description)."""
        if not isinstance(value, str):
            return self.error(path, INVALID_TYPE, f"must be a string, got {value!r}.")
        return value

    def number(self, value: Any, path: str) -> float | _Missing:
        if not is_number(value):
            return self.error(path, INVALID_TYPE, f"must be a number, got {value!r}.")
        if not math.isfinite(value):
            return self.error(path, INVALID_VALUE, f"must be a finite number, got {value!r}.")
        return float(value)

    def milliseconds(self, value: Any, path: str) -> int | _Missing:
        if not is_number(value):
            return self.error(
                path, INVALID_TYPE, f"must be a whole number of milliseconds, got {value!r}."
            )
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return self.error(
                path, INVALID_TYPE, f"must be a whole number of milliseconds, got {value!r}."
            )
        return int(value)

    def boolean(self, value: Any, path: str) -> bool | _Missing:
        if not isinstance(value, bool):
            return self.error(path, INVALID_TYPE, f"must be true or false, got {value!r}.")
        return value

    def choice(self, enum: type[StrEnum], value: Any, path: str) -> Any:
        choices = [str(member) for member in enum]
        if not isinstance(value, str) or value not in choices:
            return self.error(
                path, INVALID_CHOICE, f"must be one of {', '.join(choices)}, got {value!r}."
            )
        return enum(value)

    def metric(self, value: Any, path: str) -> str | _Missing:
        if not isinstance(value, str) or not is_metric(value):
            names = ", ".join(str(m) for m in Metric)
            return self.error(
                path, INVALID_CHOICE, f"must be one of {names} or custom:<name>, got {value!r}."
            )
        return value

    def uniform(
        self,
        value: Any,
        path: str,
        allowed: Sequence[str],
        read: Callable[[Any, str], Any],
        *,
        default: Any,
    ) -> dict[str, Any] | _Missing:
        """An object whose keys are all optional and read alike: the values given, by key, or
        the marker once any of them failed."""
        before = len(self.errors)
        data = self.mapping(value, path)
        if isinstance(data, _Missing):
            return data
        self.keys(data, allowed, path)
        values = {
            key: self.get(data, key, path, read, default=default) for key in allowed if key in data
        }
        return _MISSING if len(self.errors) > before else values

    def sequence(self, value: Any, path: str) -> Sequence[Any] | _Missing:
        if not is_list(value):
            return self.error(path, INVALID_TYPE, f"must be a list, got {kind_of(value)}.")
        return value


_TOP_KEYS = (
    "name",
    "description",
    "serviceName",
    "stableVersion",
    "canaryVersion",
    "stableEndpoint",
    "canaryEndpoint",
    "initialTrafficPercentage",
    "trafficShiftStrategy",
    "phases",
    "autoPromote",
    "autoRollback",
    "maxDeploymentTimeMs",
    "notifications",
    "rollbackPlan",
    "webhooks",
)
_PHASE_KEYS = (
    "id",
    "name",
    "trafficPercentage",
    "durationMs",
    "successCriteria",
    "rollbackThresholds",
    "status",
)
_CRITERION_KEYS = ("metric", "operator", "threshold", "durationMs")
_THRESHOLD_KEYS = ("errorRate", "latencyP95", "availability")
_NOTIFICATION_KEYS = ("onStart", "onPhaseComplete", "onFailure", "onComplete", "onRollback")
_WEBHOOK_KEYS = ("name", "type", "url", "timeoutMs", "metadata", "failureThreshold")


@dataclass(frozen=True)
class ConfigReading:
    """What could be read of a configuration, for the validator to check even when it is broken.

    ``config`` is None when anything failed. ``phases`` holds each phase that read cleanly (None
    for one that did not); ``fields`` holds each top-level value that read cleanly, by its
    camelCase name (``phases`` excluded).
    """

    config: DeploymentConfig | None
    phases: tuple[PhaseConfig | None, ...]
    fields: Mapping[str, Any]
    errors: tuple[FieldError, ...]


def read_config(data: Any) -> ConfigReading:
    """Read a configuration dictionary, collecting every schema error rather than raising."""
    reader = FieldReader()
    top = reader.record(data, "config", _TOP_KEYS, fields_at="")
    if isinstance(top, _Missing):
        return ConfigReading(None, (), {}, tuple(reader.errors))

    fields: dict[str, Any] = {}
    for key in ("name", "serviceName", "stableVersion", "canaryVersion"):
        fields[key] = reader.get(top, key, "", reader.string)
    optional: tuple[tuple[str, Callable[[Any, str], Any], Any], ...] = (
        ("description", reader.text, ""),
        ("stableEndpoint", reader.string, None),
        ("canaryEndpoint", reader.string, None),
        ("initialTrafficPercentage", reader.number, None),
        (
            "trafficShiftStrategy",
            lambda v, p: reader.choice(TrafficShiftStrategy, v, p),
            TrafficShiftStrategy.PHASED,
        ),
        ("autoPromote", reader.boolean, True),
        ("autoRollback", reader.boolean, True),
        ("maxDeploymentTimeMs", reader.milliseconds, DEFAULT_MAX_DEPLOYMENT_TIME_MS),
        ("notifications", lambda v, p: _read_notifications(reader, v, p), Notifications()),
        ("rollbackPlan", reader.string, None),
        ("webhooks", lambda v, p: _read_webhooks(reader, v, p), ()),
    )
    for key, read, default in optional:
        fields[key] = reader.get(top, key, "", read, default=default)

    phases: list[PhaseConfig | None] = []
    raw_phases = reader.get(top, "phases", "", reader.sequence)
    if not isinstance(raw_phases, _Missing):
        if not raw_phases:
            reader.error("phases", REQUIRED, "must list at least one phase.")
        for index, raw in enumerate(raw_phases):
            phases.append(_read_phase(reader, raw, index))

    good = {key: value for key, value in fields.items() if not isinstance(value, _Missing)}
    config = None
    if not reader.errors:
        initial = good["initialTrafficPercentage"]
        config = DeploymentConfig(
            name=good["name"],
            description=good["description"],
            service_name=good["serviceName"],
            stable_version=good["stableVersion"],
            canary_version=good["canaryVersion"],
            stable_endpoint=good["stableEndpoint"],
            canary_endpoint=good["canaryEndpoint"],
            phases=tuple(p for p in phases if p is not None),
            # The guide's multi-phase example leaves it out: the first phase's share is meant.
            initial_traffic_percentage=(
                initial if initial is not None else phases[0].traffic_percentage  # type: ignore[union-attr]
            ),
            traffic_shift_strategy=good["trafficShiftStrategy"],
            auto_promote=good["autoPromote"],
            auto_rollback=good["autoRollback"],
            max_deployment_time_ms=good["maxDeploymentTimeMs"],
            notifications=good["notifications"],
            rollback_plan=good["rollbackPlan"] or None,
            webhooks=good["webhooks"],
        )
    return ConfigReading(config, tuple(phases), good, tuple(reader.errors))


def parse_config(data: Any) -> DeploymentConfig:
    """Parse a camelCase configuration dictionary; raises `ConfigError` naming every problem."""
    reading = read_config(data)
    if reading.config is None:
        raise ConfigError(reading.errors)
    return reading.config


def _read_phase(reader: FieldReader, raw: Any, index: int) -> PhaseConfig | None:
    path = f"phases[{index}]"
    before = len(reader.errors)
    data = reader.record(raw, path, _PHASE_KEYS)
    if isinstance(data, _Missing):
        return None
    traffic = reader.get(data, "trafficPercentage", path, reader.number)
    phase_id = reader.get(data, "id", path, reader.string, default=f"phase-{index + 1}")
    default_name = (
        f"{_num_out(traffic)}% traffic" if not isinstance(traffic, _Missing) else phase_id
    )
    name = reader.get(data, "name", path, reader.string, default=default_name)
    duration = reader.get(data, "durationMs", path, reader.milliseconds)
    reader.get(data, "status", path, _read_phase_status(reader), default="pending")

    criteria: list[Criterion] = []
    raw_criteria = reader.get(data, "successCriteria", path, reader.sequence, default=())
    if not isinstance(raw_criteria, _Missing):
        for number, item in enumerate(raw_criteria):
            criterion = _read_criterion(reader, item, f"{path}.successCriteria[{number}]")
            if criterion is not None:
                criteria.append(criterion)
    thresholds = reader.get(
        data,
        "rollbackThresholds",
        path,
        lambda v, p: _read_thresholds(reader, v, p),
        default=RollbackThresholds(),
    )
    if len(reader.errors) > before:
        return None
    return PhaseConfig(
        id=phase_id,
        name=name,
        traffic_percentage=traffic,
        duration_ms=duration,
        success_criteria=tuple(criteria),
        rollback_thresholds=thresholds,
    )


def _read_phase_status(reader: FieldReader) -> Callable[[Any, str], Any]:
    def read(value: Any, path: str) -> Any:
        # The guide's examples carry `status: 'pending'`; any other status is run-time state
        # that a configuration cannot set.
        if value != "pending":
            return reader.error(
                path,
                INVALID_VALUE,
                f"must be pending, got {value!r}: a configuration describes phases not yet run.",
            )
        return value

    return read


def _read_criterion(reader: FieldReader, raw: Any, path: str) -> Criterion | None:
    before = len(reader.errors)
    data = reader.record(raw, path, _CRITERION_KEYS)
    if isinstance(data, _Missing):
        return None
    metric = reader.get(data, "metric", path, reader.metric)
    operator = reader.get(data, "operator", path, lambda v, p: reader.choice(Operator, v, p))
    threshold = reader.get(data, "threshold", path, reader.number)
    duration = reader.get(data, "durationMs", path, reader.milliseconds, default=0)
    if len(reader.errors) > before:
        return None
    return Criterion(metric=metric, operator=operator, threshold=threshold, duration_ms=duration)


def _read_thresholds(reader: FieldReader, raw: Any, path: str) -> RollbackThresholds | _Missing:
    values = reader.uniform(raw, path, _THRESHOLD_KEYS, reader.number, default=None)
    if isinstance(values, _Missing):
        return values
    return RollbackThresholds(
        error_rate=values.get("errorRate"),
        latency_p95=values.get("latencyP95"),
        availability=values.get("availability"),
    )


def _read_notifications(reader: FieldReader, raw: Any, path: str) -> Notifications | _Missing:
    flags = reader.uniform(raw, path, _NOTIFICATION_KEYS, reader.boolean, default=True)
    if isinstance(flags, _Missing):
        return flags
    return Notifications(
        on_start=flags.get("onStart", True),
        on_phase_complete=flags.get("onPhaseComplete", True),
        on_failure=flags.get("onFailure", True),
        on_complete=flags.get("onComplete", True),
        on_rollback=flags.get("onRollback", True),
    )


def read_webhooks(raw: Any) -> tuple[Webhook, ...]:
    """The webhooks of a stored configuration's ``webhooks`` list (it was valid when stored);
    raises `ConfigError` on one that does not read."""
    if not raw:
        return ()
    reader = FieldReader()
    hooks = _read_webhooks(reader, raw, "webhooks")
    if reader.errors or isinstance(hooks, _Missing):
        raise ConfigError(reader.errors)
    return hooks


def _read_webhooks(reader: FieldReader, raw: Any, path: str) -> tuple[Webhook, ...] | _Missing:
    before = len(reader.errors)
    items = reader.sequence(raw, path)
    if isinstance(items, _Missing):
        return items
    hooks: list[Webhook] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        hook = _read_webhook(reader, item, where)
        if hook is None:
            continue
        if hook.name in seen:
            # A gate is opened by name (gates/{name}/open), so two of one name are one too many.
            reader.error(
                f"{where}.name", INVALID_VALUE, f"repeats {hook.name!r}; names are unique."
            )
            continue
        seen.add(hook.name)
        hooks.append(hook)
    return _MISSING if len(reader.errors) > before else tuple(hooks)


def _read_webhook(reader: FieldReader, raw: Any, path: str) -> Webhook | None:
    before = len(reader.errors)
    data = reader.record(raw, path, _WEBHOOK_KEYS)
    if isinstance(data, _Missing):
        return None
    name = reader.get(data, "name", path, _read_webhook_name(reader))
    kind = reader.get(data, "type", path, lambda v, p: reader.choice(WebhookType, v, p))
    url = reader.get(data, "url", path, _read_webhook_url(reader))
    timeout = reader.get(
        data,
        "timeoutMs",
        path,
        _bounded(reader, 1, MAX_WEBHOOK_TIMEOUT_MS),
        default=DEFAULT_WEBHOOK_TIMEOUT_MS,
    )
    metadata = reader.get(
        data, "metadata", path, lambda v, p: _read_metadata(reader, v, p), default=()
    )
    threshold = reader.get(
        data,
        "failureThreshold",
        path,
        _bounded(reader, 1, MAX_FAILURE_THRESHOLD),
        default=DEFAULT_FAILURE_THRESHOLD,
    )
    if (
        data.get("failureThreshold") is not None
        and not is_missing(kind)
        and kind != WebhookType.ROLLOUT
    ):
        reader.error(
            key_path(path, "failureThreshold"),
            INVALID_VALUE,
            f"applies to rollout hooks only, not to {kind} hooks.",
        )
    if len(reader.errors) > before:
        return None
    return Webhook(
        name=name,
        type=kind,
        url=url,
        timeout_ms=timeout,
        metadata=metadata,
        failure_threshold=threshold,
    )


def _read_webhook_name(reader: FieldReader) -> Callable[[Any, str], Any]:
    def read(value: Any, path: str) -> Any:
        text = reader.string(value, path)
        if isinstance(text, _Missing):
            return text
        if not WEBHOOK_NAME_PATTERN.fullmatch(text):
            return reader.error(
                path,
                INVALID_VALUE,
                f"must be 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or "
                f"a digit, got {text!r}.",
            )
        return text

    return read


def _read_webhook_url(reader: FieldReader) -> Callable[[Any, str], Any]:
    def read(value: Any, path: str) -> Any:
        text = reader.string(value, path)
        if isinstance(text, _Missing):
            return text
        try:
            parts = urlsplit(text)
            _ = parts.port  # a port that is not a number raises here
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or len(text) > 2000
            or any(c.isspace() for c in text)
        ):
            return reader.error(
                path, INVALID_VALUE, f"must be an http:// or https:// URL, got {text!r}."
            )
        return text

    return read


def _bounded(reader: FieldReader, low: int, high: int) -> Callable[[Any, str], Any]:
    def read(value: Any, path: str) -> Any:
        number = reader.milliseconds(value, path)
        if isinstance(number, _Missing):
            return number
        if not low <= number <= high:
            return reader.error(path, INVALID_VALUE, f"must be from {low} to {high}, got {number}.")
        return number

    return read


def _read_metadata(
    reader: FieldReader, raw: Any, path: str
) -> tuple[tuple[str, str], ...] | _Missing:
    data = reader.mapping(raw, path)
    if isinstance(data, _Missing):
        return data
    before = len(reader.errors)
    pairs = [
        (key, reader.string_or_empty(value, key_path(path, key))) for key, value in data.items()
    ]
    if len(reader.errors) > before:
        return _MISSING
    return tuple(pairs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- text formats

Format = Literal["json", "yaml"]


class _StrictYamlLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, which plain YAML silently lets the last win."""


def _construct_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} on line {line}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _no_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {key!r}")
        data[key] = value
    return data


def load_text(text: str | bytes, format: Format | None = None) -> Any:
    """Decode JSON or YAML text (guessed from its first character when ``format`` is None).

    Raises `ConfigError` (field ``config``, code ``unparseable``) on a syntax error or a
    duplicate key.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if format is None:
        format = "json" if text.lstrip().startswith(("{", "[")) else "yaml"
    try:
        if format == "json":
            return json.loads(text, object_pairs_hook=_no_duplicate_pairs)
        # A SafeLoader subclass: plain data only, no arbitrary Python objects.
        return yaml.load(text, Loader=_StrictYamlLoader)
    except (ValueError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(
            [FieldError("config", UNPARSEABLE, f"config is not valid {format.upper()}: {detail}")]
        ) from exc


def load_config(text: str | bytes, format: Format | None = None) -> DeploymentConfig:
    """Parse a configuration from JSON or YAML text; raises `ConfigError`."""
    return parse_config(load_text(text, format))


def dump_config(config: DeploymentConfig, format: Format = "yaml") -> str:
    """The configuration as YAML (keys in the vocabulary's order) or indented JSON."""
    data = config.to_dict()
    if format == "json":
        return json.dumps(data, indent=2) + "\n"
    # safe_dump quotes strings that would read back as numbers ("1.0"), so versions round-trip.
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


# --------------------------------------------------------------------------- building


def traffic_steps(
    initial_percentage: float,
    steps: int,
    strategy: TrafficShiftStrategy | str = TrafficShiftStrategy.LINEAR,
) -> list[float]:
    """Phase percentages from ``initial_percentage`` to 100 in ``steps`` phases (two decimals).

    ``linear`` adds the same amount each step; ``exponential`` multiplies by the same factor
    (5% in four steps: 5, 13.57, 36.84, 100), so early steps stay small while risk is unknown.
    """
    strategy = TrafficShiftStrategy(strategy)
    if strategy not in (TrafficShiftStrategy.LINEAR, TrafficShiftStrategy.EXPONENTIAL):
        raise ValueError(f"only linear and exponential have a shape to compute, not {strategy}")
    if not 0 < initial_percentage <= 100:
        raise ValueError(f"initial_percentage must be in (0, 100]: {initial_percentage}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1: {steps}")
    if initial_percentage == 100:
        if steps != 1:
            raise ValueError("starting at 100% leaves room for one step only")
        return [100.0]
    if steps == 1:
        raise ValueError("one step cannot both start at the initial percentage and end at 100%")
    values: list[float] = []
    for index in range(steps):
        progress = index / (steps - 1)
        if strategy == TrafficShiftStrategy.LINEAR:
            value = initial_percentage + (100 - initial_percentage) * progress
        else:
            value = initial_percentage * (100 / initial_percentage) ** progress
        values.append(round(value, 2))
    values[-1] = 100.0
    if any(later <= earlier for earlier, later in pairwise(values)):
        raise ValueError(
            f"{steps} steps from {initial_percentage}% to 100% do not fit two-decimal percentages"
        )
    return values


def simple_canary_config(
    name: str,
    service_name: str,
    stable_version: str,
    canary_version: str,
    *,
    initial_percentage: float = 5,
    steps: int = 4,
    strategy: TrafficShiftStrategy | str = TrafficShiftStrategy.LINEAR,
    phase_duration_ms: int = 300_000,
    criteria: Sequence[Criterion] | None = None,
    rollback_thresholds: RollbackThresholds | None = None,
    auto_promote: bool = True,
    auto_rollback: bool = True,
    max_deployment_time_ms: int | None = None,
    notifications: Notifications | None = None,
    description: str = "",
) -> DeploymentConfig:
    """A complete configuration from a few numbers, with the seed guide's defaults.

    The guide's ``createSimpleCanaryConfig`` gives one 5% phase of 5 minutes whose availability
    must stay above 99% for 3 minutes, rollback at 5% errors, 1,000 ms p95 or 95% availability,
    auto-promote and auto-rollback on, one hour at most. This keeps every one of those defaults
    and adds what that single phase lacks, the way to 100%: ``steps`` phases from
    ``initial_percentage`` to 100, ``linear`` or ``exponential`` (`traffic_steps`), each lasting
    ``phase_duration_ms``. Each phase's default criterion holds for three fifths of the phase
    (the guide's 3 of 5 minutes). The maximum time defaults to the guide's hour, or to twice the
    phases' total when that is longer, so that a slow criterion does not fail the deployment.

    The rollback thresholds are the second line, each breached only beyond doubt (a confidence
    bound of the canary's rate beyond it, not one window's average); the first is the health
    policy's comparison with stable, which the default policy acts on (a deployment that names
    no policy is rolled back when its canary is significantly and materially worse).
    """
    percentages = traffic_steps(initial_percentage, steps, strategy)
    if phase_duration_ms <= 0:
        raise ValueError(f"phase_duration_ms must be positive: {phase_duration_ms}")
    if criteria is None:
        criteria = (
            Criterion(
                metric=Metric.AVAILABILITY,
                operator=Operator.GREATER_THAN,
                threshold=99.0,
                duration_ms=phase_duration_ms * 3 // 5,
            ),
        )
    if rollback_thresholds is None:
        rollback_thresholds = RollbackThresholds(
            error_rate=5.0, latency_p95=1000.0, availability=95.0
        )
    phases = tuple(
        PhaseConfig(
            id=f"phase-{index + 1}",
            name=f"{_num_out(percentage)}% traffic",
            traffic_percentage=percentage,
            duration_ms=phase_duration_ms,
            success_criteria=tuple(criteria),
            rollback_thresholds=rollback_thresholds,
        )
        for index, percentage in enumerate(percentages)
    )
    total = sum(phase.minimum_time_ms for phase in phases)
    if max_deployment_time_ms is None:
        max_deployment_time_ms = max(DEFAULT_MAX_DEPLOYMENT_TIME_MS, 2 * total)
    return DeploymentConfig(
        name=name,
        description=description,
        service_name=service_name,
        stable_version=stable_version,
        canary_version=canary_version,
        phases=phases,
        initial_traffic_percentage=percentages[0],
        traffic_shift_strategy=TrafficShiftStrategy(strategy),
        auto_promote=auto_promote,
        auto_rollback=auto_rollback,
        max_deployment_time_ms=max_deployment_time_ms,
        notifications=notifications or Notifications(),
    )


# --------------------------------------------------------------------------- helpers


def format_duration(ms: int) -> str:
    """``5m``, ``2m 30s``, ``1h 5m``, ``45s``, ``250 ms``: short enough for a badge or prose."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if seconds and not hours:
        parts.append(f"{seconds}s")
    return " ".join(parts) or "0s"


def _num_out(value: float) -> int | float:
    """A whole number as an int, so YAML and JSON show ``5`` rather than ``5.0``."""
    return int(value) if float(value).is_integer() else value
