"""Configuration validator: finds what would make a deployment configuration fail or mislead.

Pure Python (no Django), behind ``POST /api/v1/validate`` and the creation wizard; a deployment
whose report has errors cannot start. `validate()` takes a configuration (a camelCase dict, a
`DeploymentConfig`, or JSON/YAML text) and returns a `ValidationReport`: every error and warning
with the field it concerns and a stable code, advice, and two time estimates.

What is checked (codes in brackets; see docs/deployments.md for the full list):

- **Schema**: known keys, types, required fields, enumerated values (`deployments.config`).
- **Phases**: traffic above 0 and at most 100 with two decimals, never decreasing, ending at
  100 [traffic_decreases, final_phase_not_full, phase_without_traffic]; unique ids; the
  initial share equal to the first phase's; a linear or exponential strategy whose phases
  follow its shape.
- **Durations**: the phases' minimum time (each phase's duration or its longest hold, if longer)
  within ``maxDeploymentTimeMs`` [phases_exceed_max_time].
- **Thresholds and criteria**: thresholds within their metric's range [out_of_range]; criteria
  that can never pass (availability above 100, error rate below 0, a latency below 0)
  [criterion_never_passes]; a criterion every passing value of which breaches the phase's own
  rollback threshold [criterion_contradicts_rollback].
- **Resource constraints** (context): the largest traffic share automatic promotion may give,
  the longest time to a rollback, the longest deployment.
- **Security policies** (context): https endpoints and webhooks [insecure_endpoint,
  insecure_webhook: a warning in production, an error where https is required], approval in
  production, no credentials or secrets written into the configuration.
- **Cross-service** (context): another deployment of the same service, or of a dependency,
  under way.
- **Warnings**: very short phases, a big first step, no rollback thresholds, autoRollback off,
  criteria that always pass or outlast their phase, little time to spare, and more. Strict
  mode makes every warning an error.

Estimates (null when the phases could not be read, or when nothing bounds the time):

- ``estimatedTimeToFullPromotionMs``: the soonest the deployment can succeed, every criterion
  holding from its phase's start: the sum over phases of (the phase's minimum time + one tick),
  since the tick that advances a phase comes after its conditions are met. A person promoting
  (autoPromote off, or manual) adds their own delay, not counted.
- ``worstCaseTimeToRollbackMs``: from the fault's first bad bucket (the moment the canary
  starts failing) to the canary being out of traffic, for a fault beyond the thresholds over a
  whole window: the data delay (the proxy's flush, one metric bucket and the health app's
  settle time, before a bucket can be judged) + one evaluation window filled with the fault +
  the health evaluation interval + the tick interval (the tick that acts on it) + how long a
  breach must last (0: a rollback threshold acts on one look) + the rollback action's time
  budget. A gross fault shows in the fast window sooner; a subtle one can take longer than a
  window to be beyond doubt. Success criteria holds do not delay a rollback: a breach
  outranks them. Null when autoRollback is off (a person decides).

Context shape (every key optional)::

    environment: production              # "production" or "prod" is production
    region, cluster, namespace: ...      # accepted; nothing here depends on them
    serviceDependencies: [payments]      # services this one depends on
    deployingServices: [payments]        # services with a deployment under way now
    resourceConstraints:
      maxTrafficPercentage: 50           # the most traffic automatic promotion may give
      maxRollbackTimeMs: 600000          # also read as the guide's maxRollbackTime
      maxDeploymentTimeMs: 14400000
      maxMemoryPerInstance, maxCPUPerInstance, maxInstances: ...   # accepted, not applicable
    securityPolicies:                    # either this object ...
      requireHttps: true
      requireApprovalInProduction: true
    securityPolicies:                    # ... or the guide's list of policies
      - name: production-security
        rules: [{type: encryption, required: true}]   # encryption, network: https;
                                                      # authorization: approval in production;
                                                      # authentication, data: nothing to add
    complianceRequirements: [...]        # accepted, not checked

Other configuration types of the seed guide (health_monitor, rollback, traffic_rule,
kill_switch, feature_flag) belong to other apps, which may `register_validator()` theirs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from deployments.config import (
    INVALID_CHOICE,
    INVALID_TYPE,
    REQUIRED,
    ROLLBACK_RULES,
    ConfigError,
    Criterion,
    DeploymentConfig,
    FieldError,
    FieldReader,
    Metric,
    Operator,
    PhaseConfig,
    RollbackRule,
    TrafficShiftStrategy,
    format_duration,
    health_metric,
    is_missing,
    load_text,
    metric_range,
    read_config,
    traffic_steps,
)

CANARY_DEPLOYMENT = "canary_deployment"
KNOWN_TYPES = (
    CANARY_DEPLOYMENT,
    "health_monitor",
    "rollback",
    "traffic_rule",
    "kill_switch",
    "feature_flag",
)

SHORT_PHASE_MS = 60_000
SHORT_DEPLOYMENT_MS = 300_000
LONG_DEPLOYMENT_MS = 7_200_000
BIG_FIRST_STEP = 10.0
SHAPE_TOLERANCE = 1.0
"""Percentage points a phase may stray from its strategy's shape (rounding by hand)."""
SPARE_TIME_SHARE = 0.9
"""Phases that fill more than this share of the maximum time leave no room for a slow hold."""

PRODUCTION_NAMES = frozenset({"production", "prod"})


# --------------------------------------------------------------------------- report


# A finding reads as the reader's own errors do: where (a path), which code, what.
Issue = FieldError


@dataclass(frozen=True)
class ValidationReport:
    valid: bool
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...]
    recommendations: tuple[str, ...]
    estimated_time_to_full_promotion_ms: int | None = None
    worst_case_time_to_rollback_ms: int | None = None

    def issues(self, code: str | None = None, field: str | None = None) -> list[Issue]:
        """Errors and warnings, optionally only those with this code and/or field."""
        return [
            issue
            for issue in (*self.errors, *self.warnings)
            if (code is None or issue.code == code) and (field is None or issue.field == field)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errors": [issue.to_dict() for issue in self.errors],
            "warnings": [issue.to_dict() for issue in self.warnings],
            "recommendations": list(self.recommendations),
            "estimatedTimeToFullPromotionMs": self.estimated_time_to_full_promotion_ms,
            "worstCaseTimeToRollbackMs": self.worst_case_time_to_rollback_ms,
        }


@dataclass
class Findings:
    """What a type's validator found; `validate()` turns it into a report."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    estimated_time_to_full_promotion_ms: int | None = None
    worst_case_time_to_rollback_ms: int | None = None

    def error(self, field: str, code: str, message: str) -> None:
        self.errors.append(Issue(field, code, message))

    def warning(self, field: str, code: str, message: str) -> None:
        self.warnings.append(Issue(field, code, message))

    def recommend(self, text: str) -> None:
        if text not in self.recommendations:
            self.recommendations.append(text)


@dataclass(frozen=True)
class Timing:
    """The control loop's timing, which the server knows and a client does not send.

    ``evaluation_interval_ms`` None means the health app evaluates on every tick.
    ``rollback_action_ms`` is the budget for taking the canary out of traffic (the seed guide's
    stop-traffic action allows 30 s). ``data_delay_ms`` is how long a bucket of outcomes takes
    to be judged at all (the proxy's flush, the bucket itself, the settle time) and
    ``window_ms`` the evaluation window a fault must fill, both counted from the fault's first
    bad bucket.
    """

    tick_interval_ms: int = 5_000
    evaluation_interval_ms: int | None = None
    breach_hold_ms: int = 0
    rollback_action_ms: int = 30_000
    data_delay_ms: int = 16_000
    window_ms: int = 60_000

    @property
    def worst_case_rollback_ms(self) -> int:
        evaluation = self.evaluation_interval_ms
        if evaluation is None:
            evaluation = self.tick_interval_ms
        return (
            self.data_delay_ms
            + self.window_ms
            + evaluation
            + self.tick_interval_ms
            + self.breach_hold_ms
            + self.rollback_action_ms
        )


@dataclass(frozen=True)
class Context:
    """The validation context, read from its camelCase dictionary (see the module docstring)."""

    environment: str | None = None
    max_traffic_percentage: float | None = None
    max_rollback_time_ms: int | None = None
    max_deployment_time_ms: int | None = None
    require_https: bool = False
    require_approval_in_production: bool = False
    service_dependencies: tuple[str, ...] = ()
    deploying_services: tuple[str, ...] = ()

    @property
    def production(self) -> bool:
        return (self.environment or "").strip().lower() in PRODUCTION_NAMES


TypeValidator = Callable[[Any, Context, Timing, Findings], None]
"""Checks one configuration type, writing what it finds into the `Findings`."""

_VALIDATORS: dict[str, TypeValidator] = {}


def register_validator(type_name: str, validator: TypeValidator) -> None:
    """Let another app validate its own configuration type through `validate()`."""
    if type_name not in KNOWN_TYPES:
        raise ValueError(f"unknown configuration type {type_name!r}")
    _VALIDATORS[type_name] = validator


# --------------------------------------------------------------------------- entry points


def validate(
    config: Mapping[str, Any] | DeploymentConfig | str | bytes | Any,
    *,
    type: str = CANARY_DEPLOYMENT,
    context: Mapping[str, Any] | None = None,
    strict_mode: bool = False,
    timing: Timing | None = None,
) -> ValidationReport:
    """Validate one configuration; never raises for anything a client can send."""
    findings = Findings()
    timing = timing or Timing()
    ctx = read_context(context, findings)
    validator = _VALIDATORS.get(type)
    if validator is None:
        if type in KNOWN_TYPES:
            findings.error(
                "type",
                "unsupported_type",
                f"type {type} is not validated here; this validator checks "
                f"{', '.join(sorted(_VALIDATORS))}.",
            )
        else:
            findings.error(
                "type",
                INVALID_CHOICE,
                f"type must be one of {', '.join(KNOWN_TYPES)}, got {type!r}.",
            )
    else:
        validator(config, ctx, timing, findings)
    return _report(findings, strict_mode)


def validate_request(body: Any, *, timing: Timing | None = None) -> ValidationReport:
    """Validate the REST body ``{type, config, context, strictMode}`` (the guide's request)."""
    findings = Findings()
    reader = FieldReader()
    data = reader.record(body, "request", ("type", "config", "context", "strictMode"), fields_at="")
    if is_missing(data):
        return _report(_with_reader_errors(findings, reader), False)
    type_name = reader.get(data, "type", "", reader.string, default=CANARY_DEPLOYMENT)
    strict = reader.get(data, "strictMode", "", reader.boolean, default=False)
    if "config" not in data or data["config"] is None:
        reader.error("config", REQUIRED, "is required.")
    if reader.errors:
        return _report(_with_reader_errors(findings, reader), False)
    return validate(
        data["config"],
        type=type_name,
        context=data.get("context"),
        strict_mode=strict,
        timing=timing,
    )


def _with_reader_errors(findings: Findings, reader: FieldReader) -> Findings:
    for problem in reader.errors:
        findings.error(problem.field, problem.code, problem.message)
    return findings


def _report(findings: Findings, strict_mode: bool) -> ValidationReport:
    errors = list(findings.errors)
    warnings = list(findings.warnings)
    if strict_mode:
        # Same field, code and message: only its weight changes, so a client's handling of a
        # code does not depend on the mode.
        errors.extend(warnings)
        warnings = []
    return ValidationReport(
        valid=not errors,
        errors=tuple(errors),
        warnings=tuple(warnings),
        recommendations=tuple(findings.recommendations),
        estimated_time_to_full_promotion_ms=findings.estimated_time_to_full_promotion_ms,
        worst_case_time_to_rollback_ms=findings.worst_case_time_to_rollback_ms,
    )


# --------------------------------------------------------------------------- context

_CONTEXT_KEYS = (
    "environment",
    "region",
    "cluster",
    "namespace",
    "serviceDependencies",
    "deployingServices",
    "resourceConstraints",
    "securityPolicies",
    "complianceRequirements",
)
_CONSTRAINT_KEYS = (
    "maxTrafficPercentage",
    "maxRollbackTimeMs",
    "maxRollbackTime",
    "maxDeploymentTimeMs",
    "maxMemoryPerInstance",
    "maxCPUPerInstance",
    "maxInstances",
)
_POLICY_KEYS = ("requireHttps", "requireApprovalInProduction")
_RULE_TYPES = ("encryption", "authentication", "authorization", "network", "data")


def read_context(raw: Mapping[str, Any] | None, findings: Findings) -> Context:
    """Read the context; its problems are errors on ``context.<field>``."""
    if raw is None:
        return Context()
    reader = FieldReader()
    path = "context"
    data = reader.record(raw, path, _CONTEXT_KEYS)
    if is_missing(data):
        _with_reader_errors(findings, reader)
        return Context()
    values: dict[str, Any] = {}
    values["environment"] = reader.get(data, "environment", path, reader.string, default=None)
    for key in ("region", "cluster", "namespace"):
        reader.get(data, key, path, reader.string, default=None)
    for key, name in (
        ("serviceDependencies", "service_dependencies"),
        ("deployingServices", "deploying_services"),
    ):
        values[name] = reader.get(
            data, key, path, lambda v, p: _string_list(reader, v, p), default=()
        )
    reader.get(data, "complianceRequirements", path, reader.sequence, default=())

    constraints = reader.get(data, "resourceConstraints", path, reader.mapping, default={})
    if not is_missing(constraints):
        where = f"{path}.resourceConstraints"
        reader.keys(constraints, _CONSTRAINT_KEYS, where)
        values["max_traffic_percentage"] = reader.get(
            constraints, "maxTrafficPercentage", where, reader.number, default=None
        )
        # The seed guide's example says maxRollbackTime; its unit is milliseconds too.
        rollback_key = (
            "maxRollbackTimeMs" if "maxRollbackTimeMs" in constraints else "maxRollbackTime"
        )
        values["max_rollback_time_ms"] = reader.get(
            constraints, rollback_key, where, reader.milliseconds, default=None
        )
        values["max_deployment_time_ms"] = reader.get(
            constraints, "maxDeploymentTimeMs", where, reader.milliseconds, default=None
        )
        for key in ("maxMemoryPerInstance", "maxCPUPerInstance", "maxInstances"):
            reader.get(constraints, key, where, reader.number, default=None)

    policies = data.get("securityPolicies")
    if policies is not None:
        values.update(_read_policies(reader, policies, f"{path}.securityPolicies"))

    _with_reader_errors(findings, reader)
    return Context(**{key: value for key, value in values.items() if not is_missing(value)})


def _string_list(reader: FieldReader, value: Any, path: str) -> Any:
    items = reader.sequence(value, path)
    if is_missing(items):
        return items
    names = [reader.string(item, f"{path}[{index}]") for index, item in enumerate(items)]
    return tuple(name for name in names if not is_missing(name))


def _read_policies(reader: FieldReader, raw: Any, path: str) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        reader.keys(raw, _POLICY_KEYS, path)
        found = {
            "require_https": reader.get(raw, "requireHttps", path, reader.boolean, default=False),
            "require_approval_in_production": reader.get(
                raw, "requireApprovalInProduction", path, reader.boolean, default=False
            ),
        }
        return {key: value for key, value in found.items() if not is_missing(value)}
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        reader.error(path, INVALID_TYPE, "must be an object or a list of policies.")
        return {}
    items = raw
    required: set[str] = set()
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        policy = reader.record(item, where, ("name", "rules"))
        if is_missing(policy):
            continue
        reader.get(policy, "name", where, reader.string)
        rules = reader.get(policy, "rules", where, reader.sequence, default=())
        if is_missing(rules):
            continue
        for number, rule in enumerate(rules):
            rule_path = f"{where}.rules[{number}]"
            data = reader.record(rule, rule_path, ("type", "required", "config"))
            if is_missing(data):
                continue
            kind = reader.get(
                data,
                "type",
                rule_path,
                lambda v, p: v if v in _RULE_TYPES else _bad_rule_type(reader, v, p),
            )
            needed = reader.get(data, "required", rule_path, reader.boolean, default=True)
            reader.get(data, "config", rule_path, reader.mapping, default={})
            if needed is True and isinstance(kind, str):
                required.add(kind)
    return {
        "require_https": bool(required & {"encryption", "network"}),
        "require_approval_in_production": "authorization" in required,
    }


def _bad_rule_type(reader: FieldReader, value: Any, path: str) -> Any:
    return reader.error(path, INVALID_CHOICE, f"must be one of {', '.join(_RULE_TYPES)}.")


# --------------------------------------------------------------------------- canary deployment


def validate_canary_deployment(
    raw: Any, context: Context, timing: Timing, findings: Findings
) -> None:
    """The checks of a canary deployment configuration; see the module docstring."""
    if isinstance(raw, DeploymentConfig):
        raw = raw.to_dict()
    elif isinstance(raw, str | bytes):
        try:
            raw = load_text(raw)
        except ConfigError as exc:
            for problem in exc.errors:
                findings.error(problem.field, problem.code, problem.message)
            return
    reading = read_config(raw)
    for problem in reading.errors:
        findings.error(problem.field, problem.code, problem.message)
    fields = reading.fields

    for index, phase in enumerate(reading.phases):
        if phase is not None:
            _check_phase(phase, f"phases[{index}]", findings)
    phases = [phase for phase in reading.phases if phase is not None]
    all_phases = bool(reading.phases) and len(phases) == len(reading.phases)
    if all_phases:
        _check_progression(phases, fields, findings)
    _check_top_level(fields, phases if all_phases else None, findings)
    _check_context(fields, phases if all_phases else None, context, timing, findings)
    _check_secrets(raw, findings)
    if all_phases:
        _recommend(phases, fields, findings)
        findings.estimated_time_to_full_promotion_ms = sum(
            phase.minimum_time_ms + timing.tick_interval_ms for phase in phases
        )
        # The health policy's comparison with stable rolls back a phase without thresholds too.
        if fields.get("autoRollback") is True:
            findings.worst_case_time_to_rollback_ms = timing.worst_case_rollback_ms


_VALIDATORS[CANARY_DEPLOYMENT] = validate_canary_deployment


def _check_phase(phase: PhaseConfig, path: str, findings: Findings) -> None:
    traffic = phase.traffic_percentage
    where = f"{path}.trafficPercentage"
    if not 0 <= traffic <= 100:
        findings.error(where, "out_of_range", f"{where} must be 0 to 100, got {_n(traffic)}.")
    elif traffic == 0:
        findings.error(
            where,
            "phase_without_traffic",
            f"{where} is 0: the canary gets no traffic, so the phase's criteria can never get "
            "the data they need.",
        )
    _check_precision(traffic, where, findings)

    where = f"{path}.durationMs"
    if phase.duration_ms < 0:
        findings.error(where, "out_of_range", f"{where} must not be negative.")
    elif phase.duration_ms < SHORT_PHASE_MS:
        findings.warning(
            where,
            "short_phase",
            f"{where} is {format_duration(phase.duration_ms)}: under a minute is too short to "
            "judge the canary on real traffic.",
        )

    if not phase.success_criteria:
        findings.warning(
            f"{path}.successCriteria",
            "no_success_criteria",
            f"{path} has no success criteria: it advances on time alone, on no evidence.",
        )
    for number, criterion in enumerate(phase.success_criteria):
        _check_criterion(criterion, phase, f"{path}.successCriteria[{number}]", findings)

    thresholds = phase.rollback_thresholds
    if not thresholds:
        findings.warning(
            f"{path}.rollbackThresholds",
            "no_rollback_thresholds",
            f"{path} has no rollback thresholds: only the health policy's comparison with "
            "stable rolls it back automatically.",
        )
    for name, limit in thresholds.items():
        _check_threshold(name, limit, f"{path}.rollbackThresholds.{name}", findings)


def _check_threshold(name: str, limit: float, where: str, findings: Findings) -> None:
    rule = ROLLBACK_RULES[name]
    low, high = metric_range(rule.metric)
    if not low <= limit <= high:
        span = f"{_n(low)} to {_n(high)}" if math.isfinite(high) else f"at least {_n(low)}"
        findings.error(where, "out_of_range", f"{where} must be {span}, got {_n(limit)}.")
        return
    if rule.metric == Metric.LATENCY_P95 and limit == low:
        # Every request takes some time, so a p95 above 0 ms is every observation.
        findings.error(
            where,
            "out_of_range",
            f"{where} must be above {_n(low)}: every observation would breach it and roll the "
            "phase back at once.",
        )
        return
    if _breaching(rule, limit).empty:
        findings.warning(
            where,
            "threshold_never_breached",
            f"{where} of {_n(limit)} can never be breached, so it never rolls back.",
        )
    elif limit == (high if not rule.breached_above else low):
        findings.warning(
            where,
            "zero_tolerance_threshold",
            f"{where} of {_n(limit)} rolls back on the first failed request.",
        )


def _check_criterion(
    criterion: Criterion, phase: PhaseConfig, path: str, findings: Findings
) -> None:
    where = f"{path}.threshold"
    label = criterion.describe()
    if criterion.duration_ms < 0:
        findings.error(f"{path}.durationMs", "out_of_range", f"{path}.durationMs is negative.")
    elif criterion.duration_ms > phase.duration_ms:
        findings.warning(
            f"{path}.durationMs",
            "criterion_outlasts_phase",
            f"{label} must hold for {format_duration(criterion.duration_ms)}, longer than the "
            f"phase's {format_duration(phase.duration_ms)}; the phase will last at least that "
            "long.",
        )
    low, high = metric_range(criterion.metric)
    domain = _Interval.closed(low, high)
    passing = _passing(criterion).intersect(domain)
    if passing.empty:
        findings.error(
            where,
            "criterion_never_passes",
            f"{label} can never pass: {criterion.metric} is always "
            f"{_describe_range(low, high)}, so the phase could never advance.",
        )
        return
    if passing == domain:
        findings.warning(
            where,
            "criterion_always_passes",
            f"{label} always passes: {criterion.metric} is always "
            f"{_describe_range(low, high)}, so it checks nothing.",
        )
    for name, limit in phase.rollback_thresholds.items():
        rule = ROLLBACK_RULES[name]
        if health_metric(criterion.metric) != rule.metric:
            continue
        breach = _breaching(rule, limit).intersect(domain)
        overlap = passing.intersect(breach)
        if overlap.empty:
            continue
        if overlap == passing:
            findings.error(
                where,
                "criterion_contradicts_rollback",
                f"{label} contradicts the phase's {name} rollback threshold of {_n(limit)}: "
                "every value that passes it also rolls the phase back.",
            )
        else:
            findings.warning(
                where,
                "criterion_weaker_than_rollback",
                f"{label} lets through values that breach the phase's {name} rollback "
                f"threshold of {_n(limit)}; those roll back instead of advancing.",
            )


def _check_progression(
    phases: Sequence[PhaseConfig], fields: Mapping[str, Any], findings: Findings
) -> None:
    seen: set[str] = set()
    for index, phase in enumerate(phases):
        if phase.id in seen:
            findings.error(
                f"phases[{index}].id",
                "duplicate_phase_id",
                f"phases[{index}].id {phase.id!r} is used by an earlier phase; ids must be unique.",
            )
        seen.add(phase.id)
    for index in range(1, len(phases)):
        before, now = phases[index - 1].traffic_percentage, phases[index].traffic_percentage
        if now < before:
            findings.error(
                f"phases[{index}].trafficPercentage",
                "traffic_decreases",
                f"phases[{index}].trafficPercentage {_n(now)} is below the previous phase's "
                f"{_n(before)}; traffic must rise (or stay) phase by phase.",
            )
    last = len(phases) - 1
    if phases[last].traffic_percentage != 100:
        findings.error(
            f"phases[{last}].trafficPercentage",
            "final_phase_not_full",
            f"phases[{last}].trafficPercentage is {_n(phases[last].traffic_percentage)}: the "
            "last phase must give the canary 100% of traffic, so that it is watched at full "
            "load before it becomes the stable version.",
        )
    first = phases[0].traffic_percentage
    if BIG_FIRST_STEP < first < 100:
        findings.warning(
            "phases[0].trafficPercentage",
            "big_first_step",
            f"phases[0].trafficPercentage is {_n(first)}%: a first step above "
            f"{_n(BIG_FIRST_STEP)}% exposes many users to an untried version.",
        )
    strategy = fields.get("trafficShiftStrategy")
    if strategy in (TrafficShiftStrategy.LINEAR, TrafficShiftStrategy.EXPONENTIAL):
        try:
            shape = traffic_steps(first, len(phases), strategy)
        except ValueError:
            shape = None
        actual = [phase.traffic_percentage for phase in phases]
        if shape is None or any(
            abs(a - b) > SHAPE_TOLERANCE for a, b in zip(actual, shape, strict=True)
        ):
            expected = ", ".join(_n(value) for value in shape) if shape else "none"
            findings.warning(
                "trafficShiftStrategy",
                "strategy_shape_mismatch",
                f"trafficShiftStrategy is {strategy}, but the phases ({_listing(actual)}) do not "
                f"follow its shape ({expected}); say phased or custom for a hand-written list.",
            )


def _check_top_level(
    fields: Mapping[str, Any], phases: Sequence[PhaseConfig] | None, findings: Findings
) -> None:
    stable, canary = fields.get("stableVersion"), fields.get("canaryVersion")
    if stable is not None and stable == canary:
        findings.error(
            "canaryVersion",
            "versions_identical",
            f"canaryVersion is the stable version ({stable}); a canary must be a different "
            "version.",
        )

    initial = fields.get("initialTrafficPercentage")
    if initial is not None:
        if not 0 <= initial <= 100:
            findings.error(
                "initialTrafficPercentage",
                "out_of_range",
                f"initialTrafficPercentage must be 0 to 100, got {_n(initial)}.",
            )
        _check_precision(initial, "initialTrafficPercentage", findings)
        if phases and initial != phases[0].traffic_percentage:
            findings.error(
                "initialTrafficPercentage",
                "initial_traffic_mismatch",
                f"initialTrafficPercentage is {_n(initial)} but the first phase gives "
                f"{_n(phases[0].traffic_percentage)}; the canary starts at its first phase's "
                "share, so the two must agree (or leave initialTrafficPercentage out).",
            )

    maximum = fields.get("maxDeploymentTimeMs")
    if maximum is not None:
        if maximum <= 0:
            findings.error(
                "maxDeploymentTimeMs", "out_of_range", "maxDeploymentTimeMs must be positive."
            )
        elif maximum < SHORT_DEPLOYMENT_MS:
            findings.warning(
                "maxDeploymentTimeMs",
                "short_deployment_timeout",
                f"maxDeploymentTimeMs is {format_duration(maximum)}: under five minutes leaves no "
                "time to judge a canary.",
            )
        if phases and maximum > 0:
            needed = sum(phase.minimum_time_ms for phase in phases)
            if needed > maximum:
                findings.error(
                    "maxDeploymentTimeMs",
                    "phases_exceed_max_time",
                    f"The phases need at least {format_duration(needed)} but "
                    f"maxDeploymentTimeMs is {format_duration(maximum)}: the deployment would "
                    "fail before its last phase.",
                )
            elif needed > SPARE_TIME_SHARE * maximum:
                findings.warning(
                    "maxDeploymentTimeMs",
                    "little_time_to_spare",
                    f"The phases need at least {format_duration(needed)} of maxDeploymentTimeMs "
                    f"{format_duration(maximum)}: one slow criterion and the deployment fails.",
                )

    auto_rollback = fields.get("autoRollback")
    if auto_rollback is False:
        findings.warning(
            "autoRollback",
            "auto_rollback_off",
            "autoRollback is off: a breach waits for a person while the canary keeps its traffic.",
        )
    elif auto_rollback is True and phases and not any(p.rollback_thresholds for p in phases):
        # The health policy's comparison with stable still rolls back; no second line is
        # a choice to know about, not an error.
        findings.warning(
            "autoRollback",
            "auto_rollback_without_thresholds",
            "autoRollback is on but no phase has a rollback threshold: only the health "
            "policy's comparison with stable rolls the canary back.",
        )
    if fields.get("trafficShiftStrategy") == TrafficShiftStrategy.MANUAL and fields.get(
        "autoPromote"
    ):
        findings.warning(
            "autoPromote",
            "auto_promote_ignored",
            "autoPromote is on but trafficShiftStrategy is manual: a person promotes every "
            "phase, so autoPromote has no effect.",
        )

    for key in ("stableEndpoint", "canaryEndpoint"):
        url = fields.get(key)
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            findings.error(key, "invalid_url", f"{key} must be an http(s) URL, got {url!r}.")
        elif parts.password is not None:
            findings.error(
                key,
                "credentials_in_endpoint",
                f"{key} carries a password in its URL; keep credentials out of configurations.",
            )


def _check_context(
    fields: Mapping[str, Any],
    phases: Sequence[PhaseConfig] | None,
    context: Context,
    timing: Timing,
    findings: Findings,
) -> None:
    promotes_itself = fields.get("autoPromote") is True and (
        fields.get("trafficShiftStrategy") != TrafficShiftStrategy.MANUAL
    )
    cap = context.max_traffic_percentage
    if cap is not None and phases and promotes_itself:
        for index, phase in enumerate(phases):
            if phase.traffic_percentage > cap:
                findings.error(
                    f"phases[{index}].trafficPercentage",
                    "traffic_exceeds_constraint",
                    f"phases[{index}].trafficPercentage {_n(phase.traffic_percentage)} is above "
                    f"this environment's maximum of {_n(cap)}% for automatic promotion; turn "
                    "autoPromote off so that a person promotes past it.",
                )

    limit = context.max_rollback_time_ms
    if limit is not None and phases:
        if fields.get("autoRollback") is False:
            findings.error(
                "autoRollback",
                "rollback_time_exceeds_constraint",
                f"autoRollback is off, so nothing bounds the time to a rollback; this "
                f"environment requires one within {format_duration(limit)}.",
            )
        elif timing.worst_case_rollback_ms > limit:
            findings.error(
                "context.resourceConstraints.maxRollbackTimeMs",
                "rollback_time_exceeds_constraint",
                f"A fault can take {format_duration(timing.worst_case_rollback_ms)} from its "
                "first bad bucket to a rollback (data delay, evaluation window, evaluation, "
                f"tick, rollback action), more than this environment's "
                f"{format_duration(limit)}.",
            )

    deployment_limit = context.max_deployment_time_ms
    maximum = fields.get("maxDeploymentTimeMs")
    if deployment_limit is not None and maximum is not None and maximum > deployment_limit:
        findings.error(
            "maxDeploymentTimeMs",
            "deployment_time_exceeds_constraint",
            f"maxDeploymentTimeMs {format_duration(maximum)} is above this environment's "
            f"maximum of {format_duration(deployment_limit)}.",
        )

    for key in ("stableEndpoint", "canaryEndpoint"):
        url = fields.get(key)
        if url is None or urlsplit(url).scheme != "http":
            continue
        message = f"{key} uses plain http; traffic to it is not encrypted."
        if context.require_https:
            findings.error(key, "insecure_endpoint", f"{message} This environment requires https.")
        elif context.production:
            findings.warning(key, "insecure_endpoint", message)

    for index, hook in enumerate(fields.get("webhooks") or ()):
        if urlsplit(hook.url).scheme != "http":
            continue
        where = f"webhooks[{index}].url"
        message = (
            f"{where} uses plain http: the {hook.type} hook's signed call and its answer "
            "travel unencrypted."
        )
        if context.require_https:
            findings.error(where, "insecure_webhook", f"{message} This environment requires https.")
        elif context.production:
            findings.warning(where, "insecure_webhook", message)

    if context.production and context.require_approval_in_production and promotes_itself:
        findings.error(
            "autoPromote",
            "approval_required",
            "autoPromote is on, but production requires a person to approve each promotion; "
            "turn autoPromote off.",
        )

    service = fields.get("serviceName")
    if service is not None:
        if service in context.deploying_services:
            findings.error(
                "serviceName",
                "service_already_deploying",
                f"serviceName {service} has a deployment under way; one at a time per service.",
            )
        busy = [
            name
            for name in context.service_dependencies
            if name in context.deploying_services and name != service
        ]
        if busy:
            findings.warning(
                "serviceName",
                "dependency_deploying",
                f"{', '.join(busy)}, on which {service} depends, "
                f"{'is' if len(busy) == 1 else 'are'} being deployed too; a breach would be "
                "hard to attribute.",
            )


_SECRET = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|credentials?)"
    r"\s*[=:]\s*\S+"
)
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def _check_secrets(raw: Any, findings: Findings) -> None:
    for path, text in _strings(raw, ""):
        if path in ("stableEndpoint", "canaryEndpoint"):
            continue  # checked with the endpoints, with a more precise message
        if _SECRET.search(text) or _URL_PASSWORD.search(text):
            findings.error(
                path or "config",
                "sensitive_data",
                f"{path or 'config'} seems to hold a secret; keep credentials out of "
                "configurations, which are exported and shown to every viewer.",
            )


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _recommend(
    phases: Sequence[PhaseConfig], fields: Mapping[str, Any], findings: Findings
) -> None:
    if len(phases) < 3:
        findings.recommend(
            "Use at least three phases (for example 5%, 25%, 100%) so that traffic grows in "
            "steps you can watch."
        )
    if phases[0].traffic_percentage > 5:
        findings.recommend("Start with 1-5% of traffic: the first phase meets the unknown.")
    watches_latency = any(
        phase.rollback_thresholds.latency_p95 is not None
        or any(health_metric(c.metric).startswith("latency_") for c in phase.success_criteria)
        for phase in phases
    )
    if not watches_latency:
        findings.recommend(
            "Watch latency too: add a latencyP95 rollback threshold or a latency criterion."
        )
    maximum = fields.get("maxDeploymentTimeMs")
    if maximum is not None and maximum > LONG_DEPLOYMENT_MS:
        findings.recommend(
            "Keep deployments under two hours where you can: a long rollout keeps two versions "
            "live and leaves more time for something else to change."
        )
    notifications = fields.get("notifications")
    if notifications is not None and not (notifications.on_failure and notifications.on_rollback):
        findings.recommend("Turn on onFailure and onRollback notifications: someone should know.")


# --------------------------------------------------------------------------- value sets


@dataclass(frozen=True)
class _Interval:
    """A set of real values, for reasoning about which values pass or breach."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def closed(cls, low: float, high: float) -> _Interval:
        return cls(low, high, math.isfinite(low), math.isfinite(high))

    @property
    def empty(self) -> bool:
        if self.low > self.high:
            return True
        return self.low == self.high and not (self.low_closed and self.high_closed)

    def intersect(self, other: _Interval) -> _Interval:
        if self.low != other.low:
            low, low_closed = max((self.low, self.low_closed), (other.low, other.low_closed))
        else:
            low, low_closed = self.low, self.low_closed and other.low_closed
        if self.high != other.high:
            high, high_closed = min((self.high, self.high_closed), (other.high, other.high_closed))
        else:
            high, high_closed = self.high, self.high_closed and other.high_closed
        return _Interval(low, high, low_closed, high_closed)


def _passing(criterion: Criterion) -> _Interval:
    t = criterion.threshold
    if criterion.operator == Operator.GREATER_THAN:
        return _Interval(t, math.inf, False, False)
    if criterion.operator == Operator.LESS_THAN:
        return _Interval(-math.inf, t, False, False)
    return _Interval(t, t, True, True)


def _breaching(rule: RollbackRule, limit: float) -> _Interval:
    low, high = metric_range(rule.metric)
    domain = _Interval.closed(low, high)
    if rule.breached_above:
        return _Interval(limit, math.inf, False, False).intersect(domain)
    return _Interval(-math.inf, limit, False, False).intersect(domain)


# --------------------------------------------------------------------------- wording


def _check_precision(value: float, where: str, findings: Findings) -> None:
    if math.isfinite(value) and round(value, 2) != value:
        findings.error(
            where, "too_precise", f"{where} has more than two decimals ({value!r}); use two."
        )


def _describe_range(low: float, high: float) -> str:
    if math.isfinite(low) and math.isfinite(high):
        return f"between {_n(low)} and {_n(high)}"
    if math.isfinite(low):
        return f"at least {_n(low)}"
    return "any number"


def _listing(values: Sequence[float]) -> str:
    return ", ".join(_n(value) for value in values)


def _n(value: float) -> str:
    return f"{value:g}"
