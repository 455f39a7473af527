"""Health analysis: judges a canary's metric window against a policy and against stable.

A pure engine: no Django, no database. The health app gathers `WindowStats` for the canary and
the stable version from the metric store, snapshots the policy with `build_policy()`, calls
`evaluate()` and stores `Evaluation.to_dict()` with the health check.

Policy dict shape (every key optional; `build_policy()` fills in the defaults shown, rejects
unknown keys and raises `InvalidPolicy(field, message)` naming the offending field, e.g.
`thresholds[0].critical`). With no keys at all the policy is safe: it compares the canary with
stable on its own traffic and asks for a rollback when the canary is significantly and
materially worse::

    {
        "window_seconds": 300,          # length of the current window; the caller's contract
        "fast_window_seconds": 10,      # the recent window that catches a gross fault at once
        "min_requests": 100,            # smallest sample per window that can pass
        "no_data": "inconclusive",      # what a window below it means: fail | inconclusive | ignore
        "thresholds": [                 # absolute bounds on the canary's own metrics
            {
                "metric": "error_rate",  # availability | error_rate | latency_p50 | latency_p95
                                         # | latency_p99 | throughput | custom:<name>
                "operator": "gt",        # lt | lte | gt | gte: when the value is bad
                "warning": 1.0,          # at least one of warning and critical
                "critical": 5.0,         # must be at least as bad as warning
                "consecutive_failures": 1,
            },
        ],
        "comparison": {                 # canary against stable (see health.sequential)
            "enabled": true,
            "metrics": ["error_rate", "latency"],
            "tolerance_percent": 50.0,  # relative margin: how much worse than stable is tolerated
            "margin_points": 0.05,      # absolute margin of error rates, in percentage points
            "margin_ms": 5.0,           # absolute margin of latency, in ms
            "alpha": 0.01,              # the phase test's false-alarm bound per phase
            "fast_alpha": 0.0001,       # the fast window's test, per look
            "latency_percentile": 95.0, # the percentile latency is compared on
            "baseline_window_seconds": 300,  # stable's traffic before the phase that it is read on
            "severity": "critical",     # a degradation's verdict: warning | critical | inconclusive
            "rollback": true,           # a degradation asks for a rollback (with auto_rollback)
        },
        "trend": {                      # worsening trends over the recent canary windows
            "enabled": true,
            "metrics": ["error_rate", "latency_p95"],
            "windows": 10,              # the most recent windows looked at, the current included
            "min_windows": 5,           # windows with data needed before a trend is judged
            "alpha": 0.01,
            "severity": "warning",
        },
        "sample_ratio": {               # observed canary/stable split against the planned share
            "enabled": true,
            "alpha": 0.001,
            "severity": "warning",
        },
        "auto_rollback": {
            "enabled": true,            # off: breaches are reported, never acted on
            "thresholds": [
                {"metric": "error_rate", "operator": "gt", "threshold": 15.0,
                 "consecutive_violations": 2},
            ],
        },
    }

Rates and availability are percentages (0 to 100), latencies milliseconds, throughput requests
per second; a custom metric is judged on its mean over the window (sum / count).

Windows. `evaluate()` judges up to three windows of the canary, each beside stable's traffic
over the same span: the **current** window (the policy's ``window_seconds``: thresholds, trends,
the sample ratio, and the values a deployment observes), the **fast** window (the last
``fast_window_seconds``) and the **phase** window (everything since the request's
``window_start``, the canary's own traffic in its current share). None of them reaches back
before ``window_start``. The phase window is the slow window of the multi-window idea: its
sequential test catches a subtle fault surely, the fast window a gross one within seconds.

Verdict rules:

- A threshold is breached only beyond doubt: the bound of the canary's 95% interval nearest to
  good (Wilson for error rate and availability, the histogram's order statistics for latency
  percentiles) is on the bad side, in the current window and in each of the
  `consecutive_failures - 1` windows before it (`history`); a window without data breaks the
  streak. A critical bound breached now but not yet long enough reports warning, so a critical
  breach is never a pass. Throughput and custom metrics have no interval and use their value.
- A comparison (`health.sequential`) is critical (the policy's severity) when the canary is
  significantly and materially worse than stable: its error rate, or its share of requests
  slower than stable's percentile plus the margin, is beyond what stable's cautious rate plus
  the margin allows, by the phase window's anytime-valid test (false alarms at most ``alpha``
  per phase however often it looks) or by the fast window's exact test (at most
  ``fast_alpha`` per look). The phase comparison passes when the phase has ``min_requests`` of
  the canary's own and the canary's rate is within what it may have; it is inconclusive when it
  is above that but not yet beyond doubt. A quiet fast window is not counted: a few seconds
  say nothing in favour of the canary.
- A trend flags a significant one-sided Mann-Kendall trend over the recent windows with data,
  the current one included, in the worsening direction: the one the metric's threshold calls
  bad, else upwards (error rate, latency, custom metrics) or downwards (availability,
  throughput). Sen's slope reports its size.
- The sample-ratio check runs a chi-square goodness-of-fit test of the observed canary/stable
  request split in the current window against `planned_canary_share` and flags p < alpha
  (0.001 by default); the window starts no earlier than the share did.
- Data is sparse when the window has fewer than `min_requests` requests (latency: latency
  samples; a custom metric: no sample at all). A check on sparse data has the verdict no_data,
  which counts as critical, inconclusive or nothing, per `no_data`. Sparse data is never a pass.
- The overall verdict is the worst counted result, in the order pass < inconclusive < warning
  < critical. With nothing counted it is inconclusive. Some results never vote pass on their
  own: a trend without enough history yet is not counted at all, a sample-ratio check that
  finds the split as planned says nothing about health, and a quiet fast window says nothing
  either, so they count only when they flag.
- `should_rollback` is true when auto-rollback is enabled and either a comparison found the
  canary worse (with ``comparison.rollback``), or a rollback threshold was violated beyond
  doubt in the current window and the `consecutive_violations - 1` before it. Sparse data
  never triggers a rollback.

Every result's sentence states its sample ("2 errors in 48 requests (4.17%, 95% interval
1.15-13.98%)"), and `Evaluation.to_dict()` carries each window's counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from statistics import median
from typing import Any

from canary_site.reading import Fields, is_integer, is_number
from health import sequential
from health.histogram import Histogram

# --------------------------------------------------------------------------- vocabulary


class Verdict(StrEnum):
    PASS = "pass"
    WARNING = "warning"
    CRITICAL = "critical"
    NO_DATA = "no_data"
    INCONCLUSIVE = "inconclusive"


class NoDataRule(StrEnum):
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    IGNORE = "ignore"


class Operator(StrEnum):
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"


class Check(StrEnum):
    THRESHOLD = "threshold"
    COMPARISON = "comparison"
    TREND = "trend"
    SAMPLE_RATIO = "sample_ratio"


AVAILABILITY = "availability"
ERROR_RATE = "error_rate"
LATENCY_P50 = "latency_p50"
LATENCY_P95 = "latency_p95"
LATENCY_P99 = "latency_p99"
THROUGHPUT = "throughput"
CUSTOM_PREFIX = "custom:"
LATENCY = "latency"

METRICS: tuple[str, ...] = (
    AVAILABILITY,
    ERROR_RATE,
    LATENCY_P50,
    LATENCY_P95,
    LATENCY_P99,
    THROUGHPUT,
)
COMPARISON_METRICS: tuple[str, ...] = (ERROR_RATE, LATENCY)
SEVERITIES: tuple[Verdict, ...] = (Verdict.INCONCLUSIVE, Verdict.WARNING, Verdict.CRITICAL)

_LATENCY_QUANTILES = {LATENCY_P50: 50.0, LATENCY_P95: 95.0, LATENCY_P99: 99.0}
PERCENT_METRICS = frozenset({AVAILABILITY, ERROR_RATE})
"""Metrics measured in percent, from 0 to 100."""
CUSTOM_NAME = re.compile(r"[A-Za-z0-9_.:\-/]{1,100}")
"""What may follow ``custom:`` in a custom metric's name."""
_RANK = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.WARNING: 2, Verdict.CRITICAL: 3}
_NO_DATA_COUNTS_AS: dict[NoDataRule, Verdict | None] = {
    NoDataRule.FAIL: Verdict.CRITICAL,
    NoDataRule.INCONCLUSIVE: Verdict.INCONCLUSIVE,
    NoDataRule.IGNORE: None,
}


def is_metric(name: str) -> bool:
    """Whether `name` is a metric a threshold, trend or rollback threshold can watch."""
    return name in METRICS or is_custom_metric(name)


def is_custom_metric(name: str) -> bool:
    """Whether ``name`` is ``custom:<name>``, its name 1 to 100 letters, digits or _.:-/."""
    return name.startswith(CUSTOM_PREFIX) and bool(
        CUSTOM_NAME.fullmatch(name[len(CUSTOM_PREFIX) :])
    )


def breaches(value: float, operator: Operator | str, bound: float) -> bool:
    """Whether `value` is on the bad side of `bound`; the operator states when a value is bad."""
    if operator == Operator.GT:
        return value > bound
    if operator == Operator.GTE:
        return value >= bound
    if operator == Operator.LT:
        return value < bound
    if operator == Operator.LTE:
        return value <= bound
    raise ValueError(f"unknown operator {operator!r}")


# --------------------------------------------------------------------------- window inputs

CustomStat = tuple[float, float, float, float]
"""A custom metric over a window: (sum, count, min, max)."""


@dataclass(frozen=True)
class WindowStats:
    """What one version did over one window: counts, latency histogram, custom metrics.

    `seconds` is the window's length, needed only for throughput. Derived values are None when
    the window has nothing to derive them from; they are cached, so do not mutate `latency`
    after building a WindowStats from it.
    """

    requests: int
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)
    seconds: float | None = None
    custom: Mapping[str, CustomStat] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.requests < 0:
            raise ValueError(f"requests cannot be negative, got {self.requests}")
        if not 0 <= self.errors <= self.requests:
            raise ValueError(f"errors must be within 0..requests, got {self.errors}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        custom: dict[str, CustomStat] = {}
        for name, stat in self.custom.items():
            if len(stat) != 4:
                raise ValueError(f"custom metric {name!r} must be (sum, count, min, max)")
            total, count, low, high = (float(part) for part in stat)
            if count < 0:
                raise ValueError(f"custom metric {name!r} has a negative count")
            custom[name] = (total, count, low, high)
        object.__setattr__(self, "custom", custom)

    @cached_property
    def availability(self) -> float | None:
        if not self.requests:
            return None
        return 100.0 * (self.requests - self.errors) / self.requests

    @cached_property
    def error_rate(self) -> float | None:
        if not self.requests:
            return None
        return 100.0 * self.errors / self.requests

    @cached_property
    def _latency_percentiles(self) -> tuple[float, ...] | None:
        if not self.latency.total:
            return None
        return self.latency.percentiles((50.0, 95.0, 99.0))

    @property
    def p50(self) -> float | None:
        percentiles = self._latency_percentiles
        return percentiles[0] if percentiles else None

    @property
    def p95(self) -> float | None:
        percentiles = self._latency_percentiles
        return percentiles[1] if percentiles else None

    @property
    def p99(self) -> float | None:
        percentiles = self._latency_percentiles
        return percentiles[2] if percentiles else None

    @property
    def throughput(self) -> float | None:
        """Requests per second, when the window's length is known."""
        if self.seconds is None:
            return None
        return self.requests / self.seconds

    def custom_mean(self, name: str) -> float | None:
        stat = self.custom.get(name)
        if stat is None or stat[1] <= 0:
            return None
        return stat[0] / stat[1]

    def value(self, metric: str) -> float | None:
        """The window's value of `metric`, however thin the data behind it."""
        if metric == ERROR_RATE:
            return self.error_rate
        if metric == AVAILABILITY:
            return self.availability
        if metric == LATENCY_P50:
            return self.p50
        if metric == LATENCY_P95:
            return self.p95
        if metric == LATENCY_P99:
            return self.p99
        if metric == THROUGHPUT:
            return self.throughput
        if metric.startswith(CUSTOM_PREFIX):
            return self.custom_mean(metric[len(CUSTOM_PREFIX) :])
        raise ValueError(f"unknown metric {metric!r}")

    def sample_size(self, metric: str) -> int:
        """How many observations stand behind `metric` in this window."""
        if metric in _LATENCY_QUANTILES:
            return self.latency.total
        if metric.startswith(CUSTOM_PREFIX):
            stat = self.custom.get(metric[len(CUSTOM_PREFIX) :])
            return int(stat[1]) if stat else 0
        return self.requests

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95% interval of ``metric`` over the window, or None when it has none (no data,
        or a metric without one: throughput, custom metrics)."""
        if metric in PERCENT_METRICS:
            if not self.requests:
                return None
            return self._rate_interval if metric == ERROR_RATE else self._availability_interval
        if metric in _LATENCY_QUANTILES:
            intervals = self._latency_intervals
            return None if intervals is None else intervals[metric]
        return None

    @cached_property
    def _rate_interval(self) -> tuple[float, float]:
        low, high = sequential.wilson(self.errors, self.requests)
        return 100.0 * float(low), 100.0 * float(high)

    @cached_property
    def _availability_interval(self) -> tuple[float, float]:
        low, high = self._rate_interval
        return 100.0 - high, 100.0 - low

    @cached_property
    def _latency_intervals(self) -> dict[str, tuple[float, float]] | None:
        if not self.latency.total:
            return None
        lows, highs = sequential.quantile_intervals(
            self.latency.counts, tuple(_LATENCY_QUANTILES.values())
        )
        return {
            metric: (float(low), float(high))
            for metric, low, high in zip(_LATENCY_QUANTILES, lows, highs, strict=True)
        }

    def confident(self, metric: str, operator: Operator | str) -> float | None:
        """The value of ``metric`` read on the good side of its 95% interval: the lower bound
        when high values are bad (gt, gte), the upper one when low values are (lt, lte). A
        threshold breached by it is breached beyond doubt. Metrics without an interval give
        their value."""
        interval = self.interval(metric)
        if interval is None:
            return self.value(metric)
        return interval[0] if operator in (Operator.GT, Operator.GTE) else interval[1]

    def counts(self) -> dict[str, Any]:
        """The window's sample as `Evaluation.to_dict()` lists it under ``windows``."""
        interval = self.interval(ERROR_RATE)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "error_rate_interval": None if interval is None else list(interval),
            "latency_samples": self.latency.total,
            "latency_p95": self.p95,
        }

    def merge(self, other: WindowStats) -> WindowStats:
        """Both windows pooled, e.g. several short stable windows into one baseline."""
        custom = dict(self.custom)
        for name, (total, count, low, high) in other.custom.items():
            if name in custom:
                mine = custom[name]
                custom[name] = (
                    mine[0] + total,
                    mine[1] + count,
                    min(mine[2], low),
                    max(mine[3], high),
                )
            else:
                custom[name] = (total, count, low, high)
        seconds = None
        if self.seconds is not None and other.seconds is not None:
            seconds = self.seconds + other.seconds
        return WindowStats(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency=self.latency.merge(other.latency),
            seconds=seconds,
            custom=custom,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (counts and derived values, not the histogram)."""
        intervals = self._latency_intervals or {}
        rate = self.interval(ERROR_RATE)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.seconds,
            "availability": self.availability,
            "error_rate": self.error_rate,
            "error_rate_interval": None if rate is None else list(rate),
            "latency_samples": self.latency.total,
            "latency_p50": self.p50,
            "latency_p95": self.p95,
            "latency_p99": self.p99,
            "latency_intervals": {metric: list(bounds) for metric, bounds in intervals.items()},
            "throughput": self.throughput,
            "custom": {
                name: {
                    "sum": total,
                    "count": count,
                    "min": low,
                    "max": high,
                    "mean": self.custom_mean(name),
                }
                for name, (total, count, low, high) in self.custom.items()
            },
        }


# --------------------------------------------------------------------------- policy


class InvalidPolicy(ValueError):
    """A policy dict that cannot be used; `field` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Threshold:
    metric: str
    operator: Operator
    warning: float | None = None
    critical: float | None = None
    consecutive_failures: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "operator": str(self.operator),
            "warning": self.warning,
            "critical": self.critical,
            "consecutive_failures": self.consecutive_failures,
        }


@dataclass(frozen=True, slots=True)
class ComparisonPolicy:
    enabled: bool = True
    metrics: tuple[str, ...] = COMPARISON_METRICS
    tolerance_percent: float = 50.0
    margin_points: float = 0.05
    margin_ms: float = 5.0
    alpha: float = 0.01
    fast_alpha: float = 0.0001
    latency_percentile: float = 95.0
    baseline_window_seconds: int = 300
    severity: Verdict = Verdict.CRITICAL
    rollback: bool = True

    def margin(self, *, latency: bool) -> sequential.Margin:
        """The comparison's margin and error rates as `health.sequential` takes them."""
        return sequential.Margin(
            relative=self.tolerance_percent / 100.0,
            absolute=self.margin_ms if latency else self.margin_points / 100.0,
            alpha=self.alpha,
            fast_alpha=self.fast_alpha,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "metrics": list(self.metrics),
            "tolerance_percent": self.tolerance_percent,
            "margin_points": self.margin_points,
            "margin_ms": self.margin_ms,
            "alpha": self.alpha,
            "fast_alpha": self.fast_alpha,
            "latency_percentile": self.latency_percentile,
            "baseline_window_seconds": self.baseline_window_seconds,
            "severity": str(self.severity),
            "rollback": self.rollback,
        }


@dataclass(frozen=True, slots=True)
class TrendPolicy:
    enabled: bool = True
    metrics: tuple[str, ...] = (ERROR_RATE, LATENCY_P95)
    windows: int = 10
    min_windows: int = 5
    alpha: float = 0.01
    severity: Verdict = Verdict.WARNING

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "metrics": list(self.metrics),
            "windows": self.windows,
            "min_windows": self.min_windows,
            "alpha": self.alpha,
            "severity": str(self.severity),
        }


@dataclass(frozen=True, slots=True)
class SampleRatioPolicy:
    enabled: bool = True
    alpha: float = 0.001
    severity: Verdict = Verdict.WARNING

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "alpha": self.alpha, "severity": str(self.severity)}


@dataclass(frozen=True, slots=True)
class RollbackThreshold:
    metric: str
    operator: Operator
    threshold: float
    consecutive_violations: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "operator": str(self.operator),
            "threshold": self.threshold,
            "consecutive_violations": self.consecutive_violations,
        }


@dataclass(frozen=True, slots=True)
class AutoRollbackPolicy:
    enabled: bool = True
    thresholds: tuple[RollbackThreshold, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "thresholds": [threshold.to_dict() for threshold in self.thresholds],
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated snapshot of a health policy; build it with `build_policy()`."""

    thresholds: tuple[Threshold, ...] = ()
    comparison: ComparisonPolicy = field(default_factory=ComparisonPolicy)
    trend: TrendPolicy = field(default_factory=TrendPolicy)
    sample_ratio: SampleRatioPolicy = field(default_factory=SampleRatioPolicy)
    auto_rollback: AutoRollbackPolicy = field(default_factory=AutoRollbackPolicy)
    min_requests: int = 100
    no_data: NoDataRule = NoDataRule.INCONCLUSIVE
    window_seconds: int = 300
    fast_window_seconds: int = 10

    def to_dict(self) -> dict[str, Any]:
        """The canonical dict: `build_policy(policy.to_dict()) == policy`."""
        return {
            "window_seconds": self.window_seconds,
            "fast_window_seconds": self.fast_window_seconds,
            "min_requests": self.min_requests,
            "no_data": str(self.no_data),
            "thresholds": [threshold.to_dict() for threshold in self.thresholds],
            "comparison": self.comparison.to_dict(),
            "trend": self.trend.to_dict(),
            "sample_ratio": self.sample_ratio.to_dict(),
            "auto_rollback": self.auto_rollback.to_dict(),
        }


def build_policy(data: Mapping[str, Any] | None = None) -> Policy:
    """Validate a policy dict (shape in the module docstring) into a `Policy`."""
    top = _Section(data if data is not None else {}, "", InvalidPolicy, top="policy")
    top.only(
        "window_seconds",
        "fast_window_seconds",
        "min_requests",
        "no_data",
        "thresholds",
        "comparison",
        "trend",
        "sample_ratio",
        "auto_rollback",
    )
    window_seconds = top.integer("window_seconds", 300, minimum=1)
    fast_window_seconds = top.integer("fast_window_seconds", 10, minimum=1, maximum=3600)
    min_requests = top.integer("min_requests", 100, minimum=1)
    no_data = NoDataRule(top.choice("no_data", "inconclusive", [rule.value for rule in NoDataRule]))

    thresholds = tuple(_build_threshold(item) for item in top.objects("thresholds"))

    section = top.object("comparison")
    section.only(
        "enabled",
        "metrics",
        "tolerance_percent",
        "margin_points",
        "margin_ms",
        "alpha",
        "fast_alpha",
        "latency_percentile",
        "baseline_window_seconds",
        "severity",
        "rollback",
    )
    comparison = ComparisonPolicy(
        enabled=section.boolean("enabled", True),
        metrics=section.names(
            "metrics", COMPARISON_METRICS, lambda name: name in COMPARISON_METRICS
        ),
        tolerance_percent=section.number("tolerance_percent", 50.0, minimum=0.0),
        margin_points=section.number("margin_points", 0.05, minimum=0.0, maximum=100.0),
        margin_ms=section.number("margin_ms", 5.0, minimum=0.0),
        alpha=section.probability("alpha", 0.01),
        fast_alpha=section.probability("fast_alpha", 0.0001),
        latency_percentile=section.number(
            "latency_percentile",
            95.0,
            minimum=0.0,
            maximum=100.0,
            open_minimum=True,
            open_maximum=True,
        ),
        baseline_window_seconds=section.integer(
            "baseline_window_seconds", 300, minimum=1, maximum=86_400
        ),
        severity=section.severity("severity", Verdict.CRITICAL),
        rollback=section.boolean("rollback", True),
    )

    section = top.object("trend")
    section.only("enabled", "metrics", "windows", "min_windows", "alpha", "severity")
    windows = section.integer("windows", 10, minimum=3)
    trend = TrendPolicy(
        enabled=section.boolean("enabled", True),
        metrics=section.names("metrics", (ERROR_RATE, LATENCY_P95), is_metric),
        windows=windows,
        min_windows=section.integer("min_windows", min(5, windows), minimum=3, maximum=windows),
        alpha=section.probability("alpha", 0.01),
        severity=section.severity("severity", Verdict.WARNING),
    )

    section = top.object("sample_ratio")
    section.only("enabled", "alpha", "severity")
    sample_ratio = SampleRatioPolicy(
        enabled=section.boolean("enabled", True),
        alpha=section.probability("alpha", 0.001),
        severity=section.severity("severity", Verdict.WARNING),
    )

    section = top.object("auto_rollback")
    section.only("enabled", "thresholds")
    auto_rollback = AutoRollbackPolicy(
        enabled=section.boolean("enabled", True),
        thresholds=tuple(_build_rollback_threshold(item) for item in section.objects("thresholds")),
    )

    return Policy(
        thresholds=thresholds,
        comparison=comparison,
        trend=trend,
        sample_ratio=sample_ratio,
        auto_rollback=auto_rollback,
        min_requests=min_requests,
        no_data=no_data,
        window_seconds=window_seconds,
        fast_window_seconds=fast_window_seconds,
    )


def _build_threshold(section: _Section) -> Threshold:
    section.only("metric", "operator", "warning", "critical", "consecutive_failures")
    metric = section.metric("metric")
    operator = Operator(section.choice("operator", None, [op.value for op in Operator]))
    low, high = _metric_range(metric)
    warning = section.optional_number("warning", minimum=low, maximum=high)
    critical = section.optional_number("critical", minimum=low, maximum=high)
    if warning is None and critical is None:
        section.fail("critical", "give a warning value, a critical value or both")
    if warning is not None and critical is not None:
        higher_is_worse = operator in (Operator.GT, Operator.GTE)
        if (critical < warning) if higher_is_worse else (critical > warning):
            side = "at or above" if higher_is_worse else "at or below"
            section.fail(
                "critical",
                f"with operator {operator} the critical value must be {side} the warning value",
            )
    return Threshold(
        metric=metric,
        operator=operator,
        warning=warning,
        critical=critical,
        consecutive_failures=section.integer("consecutive_failures", 1, minimum=1),
    )


def _build_rollback_threshold(section: _Section) -> RollbackThreshold:
    section.only("metric", "operator", "threshold", "consecutive_violations")
    metric = section.metric("metric")
    operator = Operator(section.choice("operator", None, [op.value for op in Operator]))
    low, high = _metric_range(metric)
    threshold = section.optional_number("threshold", minimum=low, maximum=high)
    if threshold is None:
        section.fail("threshold", "is required")
    return RollbackThreshold(
        metric=metric,
        operator=operator,
        threshold=threshold,
        consecutive_violations=section.integer("consecutive_violations", 1, minimum=1),
    )


def _metric_range(metric: str) -> tuple[float | None, float | None]:
    if metric in PERCENT_METRICS:
        return 0.0, 100.0
    if metric.startswith(CUSTOM_PREFIX):
        return None, None
    return 0.0, None


class _Section(Fields):
    """One object of the policy dict, read with the field path kept for error messages."""

    __slots__ = ()

    def only(self, *keys: str) -> None:
        unknown = self.unknown(keys)
        if unknown is not None:
            self.fail(unknown, f"unknown field; expected one of {', '.join(keys)}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value

    def optional_number(
        self,
        key: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        open_minimum: bool = False,
        open_maximum: bool = False,
    ) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not is_number(value) or not math.isfinite(value):
            self.fail(key, "must be a number")
        value = float(value)
        if minimum is not None and (value <= minimum if open_minimum else value < minimum):
            word = "above" if open_minimum else "at least"
            self.fail(key, f"must be {word} {minimum:g}, got {value:g}")
        if maximum is not None and (value >= maximum if open_maximum else value > maximum):
            word = "below" if open_maximum else "at most"
            self.fail(key, f"must be {word} {maximum:g}, got {value:g}")
        return value

    def number(self, key: str, default: float, **bounds: Any) -> float:
        value = self.optional_number(key, **bounds)
        return default if value is None else value

    def probability(self, key: str, default: float) -> float:
        return self.number(
            key, default, minimum=0.0, maximum=1.0, open_minimum=True, open_maximum=True
        )

    def integer(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if not is_integer(value):
            self.fail(key, "must be a whole number")
        if value < minimum:
            self.fail(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}, got {value}")
        return value

    def choice(self, key: str, default: str | None, choices: Sequence[str]) -> str:
        value = self.data.get(key, default)
        if value is None:
            self.fail(key, f"is required; one of {', '.join(choices)}")
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def severity(self, key: str, default: Verdict) -> Verdict:
        return Verdict(self.choice(key, default.value, [verdict.value for verdict in SEVERITIES]))

    def metric(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str) or not is_metric(value):
            self.fail(key, f"must be one of {', '.join(METRICS)} or custom:<name>, got {value!r}")
        return value

    def names(
        self, key: str, default: tuple[str, ...], allowed: Callable[[str], bool]
    ) -> tuple[str, ...]:
        if self.data.get(key) is None:
            return default
        items = self.items(key)
        for path, name in items:
            if not isinstance(name, str) or not allowed(name):
                raise self.error(path, f"unknown metric {name!r}")
        names = tuple(name for _path, name in items)
        if len(set(names)) != len(names):
            self.fail(key, "lists a metric twice")
        return names


# --------------------------------------------------------------------------- statistics


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True, slots=True)
class RankTest:
    """Mann-Whitney U of sample a against sample b, from their histograms.

    `u` counts the pairs in which a is larger, a tie (same bucket) counting half;
    `common_language` is P(a > b) + P(a = b) / 2 and `rank_biserial` is 2 * that - 1, from -1
    (a always smaller) through 0 (no shift) to +1 (a always larger).
    """

    u: float
    n_a: int
    n_b: int
    z: float
    p_greater: float
    p_less: float
    common_language: float
    rank_biserial: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "u": self.u,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "z": self.z,
            "p_greater": self.p_greater,
            "p_less": self.p_less,
            "common_language": self.common_language,
            "rank_biserial": self.rank_biserial,
        }


def rank_test(a: Histogram, b: Histogram) -> RankTest:
    """Mann-Whitney U test from bucket counts: exact for binned data and O(buckets).

    The p-values use the normal approximation with the tie correction (every bucket is a tie
    group) and a continuity correction, as scipy's `mannwhitneyu(method="asymptotic")` does.
    """
    n_a, n_b = a.total, b.total
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both histograms need at least one sample")
    u = 0.0
    b_below = 0
    tie_term = 0
    for count_a, count_b in zip(a.counts, b.counts, strict=True):
        if count_a:
            u += count_a * (b_below + 0.5 * count_b)
        tied = count_a + count_b
        if tied > 1:
            tie_term += tied * tied * tied - tied
        b_below += count_b
    n = n_a + n_b
    pairs = n_a * n_b
    mean = pairs / 2.0
    variance = pairs / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    common_language = u / pairs
    if variance <= 0.0:
        # Every sample in one bucket: no evidence of a shift either way.
        z, p_greater, p_less = 0.0, 1.0, 1.0
    else:
        sigma = math.sqrt(variance)
        z = (u - mean) / sigma
        p_greater = min(1.0, _normal_sf((u - mean - 0.5) / sigma))
        p_less = min(1.0, _normal_sf((pairs - u - mean - 0.5) / sigma))
    return RankTest(
        u=u,
        n_a=n_a,
        n_b=n_b,
        z=z,
        p_greater=p_greater,
        p_less=p_less,
        common_language=common_language,
        rank_biserial=2.0 * common_language - 1.0,
    )


@dataclass(frozen=True, slots=True)
class TrendTest:
    """Mann-Kendall trend test of a series, with Sen's slope (change per step)."""

    n: int
    s: int
    z: float
    p_increasing: float
    p_decreasing: float
    slope: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "s": self.s,
            "z": self.z,
            "p_increasing": self.p_increasing,
            "p_decreasing": self.p_decreasing,
            "slope": self.slope,
        }


def mann_kendall(values: Sequence[float]) -> TrendTest:
    """Mann-Kendall test (normal approximation, tie and continuity corrected), oldest first."""
    n = len(values)
    if n < 3:
        raise ValueError("a trend needs at least 3 values")
    s = 0
    slopes: list[float] = []
    for i in range(n - 1):
        x_i = values[i]
        for j in range(i + 1, n):
            difference = values[j] - x_i
            if difference > 0:
                s += 1
            elif difference < 0:
                s -= 1
            slopes.append(difference / (j - i))
    ties: dict[float, int] = {}
    for value in values:
        ties[value] = ties.get(value, 0) + 1
    tie_term = sum(t * (t - 1) * (2 * t + 5) for t in ties.values() if t > 1)
    variance = (n * (n - 1) * (2 * n + 5) - tie_term) / 18.0
    if variance <= 0.0:
        z, p_increasing, p_decreasing = 0.0, 1.0, 1.0
    else:
        sigma = math.sqrt(variance)
        z = (s - math.copysign(1, s)) / sigma if s else 0.0
        p_increasing = min(1.0, _normal_sf((s - 1) / sigma))
        p_decreasing = min(1.0, _normal_sf((-s - 1) / sigma))
    return TrendTest(
        n=n, s=s, z=z, p_increasing=p_increasing, p_decreasing=p_decreasing, slope=median(slopes)
    )


@dataclass(frozen=True, slots=True)
class SampleRatioTest:
    """Chi-square goodness of fit of the observed canary/stable split (shares in percent)."""

    canary_requests: int
    stable_requests: int
    planned_share: float
    observed_share: float
    chi_square: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "canary_requests": self.canary_requests,
            "stable_requests": self.stable_requests,
            "planned_share": self.planned_share,
            "observed_share": self.observed_share,
            "chi_square": self.chi_square,
            "p_value": self.p_value,
        }


def sample_ratio_test(
    canary_requests: int, stable_requests: int, planned_canary_share: float
) -> SampleRatioTest:
    """Test the split against `planned_canary_share`, a percentage strictly within 0..100."""
    if not 0.0 < planned_canary_share < 100.0:
        raise ValueError(f"planned share must be within 0..100, got {planned_canary_share}")
    total = canary_requests + stable_requests
    if total <= 0:
        raise ValueError("no requests to test the split on")
    expected_canary = total * planned_canary_share / 100.0
    expected_stable = total - expected_canary
    chi_square = (canary_requests - expected_canary) ** 2 / expected_canary + (
        stable_requests - expected_stable
    ) ** 2 / expected_stable
    return SampleRatioTest(
        canary_requests=canary_requests,
        stable_requests=stable_requests,
        planned_share=planned_canary_share,
        observed_share=100.0 * canary_requests / total,
        chi_square=chi_square,
        # Survival function of chi-square with one degree of freedom.
        p_value=math.erfc(math.sqrt(chi_square / 2.0)),
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One check's outcome.

    `value` is the metric's value for a threshold, canary minus stable for a comparison (points
    for error rates, ms for latency), Sen's slope per window for a trend and the observed canary
    share (%) for the sample-ratio check. `counts_as` is what the result contributes to the
    overall verdict: the verdict itself, no_data mapped per policy, or None when not counted.
    `window` names the window judged (``current``, ``fast`` or ``phase``).
    """

    metric: str
    check: Check
    verdict: Verdict
    counts_as: Verdict | None
    value: float | None
    message: str
    inputs: Mapping[str, Any]
    window: str = "current"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "check": str(self.check),
            "window": self.window,
            "verdict": str(self.verdict),
            "counts_as": None if self.counts_as is None else str(self.counts_as),
            "value": _finite(self.value),
            "message": self.message,
            "inputs": _jsonable(self.inputs),
        }


@dataclass(frozen=True, slots=True)
class RollbackCheck:
    """One reason the canary may be rolled back: an auto-rollback threshold (``check``
    "threshold"; `violations` is the current streak), or a comparison with stable
    ("comparison"; `threshold` is the rate or the ms the canary may reach)."""

    metric: str
    operator: Operator
    threshold: float
    value: float | None
    violations: int
    needed: int
    breached: bool
    message: str
    check: str = "threshold"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "check": self.check,
            "operator": str(self.operator),
            "threshold": _finite(self.threshold),
            "value": _finite(self.value),
            "violations": self.violations,
            "needed": self.needed,
            "breached": self.breached,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Window:
    """What the canary and stable did over one span (``stable`` None: no stable version)."""

    canary: WindowStats
    stable: WindowStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.canary.seconds,
            "canary": self.canary.counts(),
            "stable": None if self.stable is None else self.stable.counts(),
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    verdict: Verdict
    message: str
    results: tuple[MetricResult, ...]
    should_rollback: bool
    rollback_checks: tuple[RollbackCheck, ...]
    inputs: Mapping[str, Any]
    windows: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rollback_breaches(self) -> tuple[RollbackCheck, ...]:
        return tuple(check for check in self.rollback_checks if check.breached)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``HealthCheck.result``); JSON only. Its keys are a contract::

            {
              "verdict": "pass" | "warning" | "critical" | "no_data" | "inconclusive",
              "message": str,             # the sentence, with the sample behind it
              "should_rollback": bool,
              "results": [ {metric, check, window, verdict, counts_as, value, message, inputs} ],
              "rollback_checks": [ {metric, check, operator, threshold, value, violations,
                                    needed, breached, message} ],
              "windows": {                # the evidence, one entry per window judged
                "fast":    WINDOW,        # the last few seconds (gross faults)
                "current": WINDOW,        # the policy's window (what `inputs.canary` sums)
                "phase":   WINDOW,        # everything since window_start (the phase's own)
              },
              "inputs": {"canary": {...}, "stable": {...} | None, "history_windows": int,
                         "planned_canary_share": float | None, "policy": {...}},
            }

        WINDOW is ``{"seconds": float | None, "start": ISO | None, "end": ISO | None,
        "canary": COUNTS, "stable": COUNTS | None}`` and COUNTS is ``{"requests": int,
        "errors": int, "error_rate": percent | None, "error_rate_interval": [low, high] | None
        (95% Wilson, percent), "latency_samples": int, "latency_p95": ms | None}``. The service
        fills in ``start`` and ``end`` and adds ``"window_start"`` (ISO or None) at the top.
        A window never reaches back before the request's ``window_start``, so
        ``windows["phase"]["canary"]["requests"]`` is the canary traffic of the phase itself.
        ``fast`` is missing when the evaluation had no fast window.
        """
        return {
            "verdict": str(self.verdict),
            "message": self.message,
            "should_rollback": self.should_rollback,
            "results": [result.to_dict() for result in self.results],
            "rollback_checks": [check.to_dict() for check in self.rollback_checks],
            "windows": _jsonable(self.windows),
            "inputs": _jsonable(self.inputs),
        }


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or infinity; an unbounded statistic is stored as null.
    if value is None or math.isfinite(value):
        return value
    return None


def _jsonable(value: Any) -> Any:
    # Exact types first: a pass turns a thousand results into JSON, and most of their values
    # are plain strings, numbers, dicts and lists.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict:
        return {
            key if type(key) is str else str(key): _jsonable(item) for key, item in value.items()
        }
    if kind is list or kind is tuple:
        return [_jsonable(item) for item in value]
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


# --------------------------------------------------------------------------- evaluation


def evaluate(
    policy: Policy,
    canary: WindowStats,
    stable: WindowStats | None = None,
    *,
    history: Sequence[WindowStats] = (),
    planned_canary_share: float | None = None,
    fast: Window | None = None,
    phase: Window | None = None,
    stable_reference: WindowStats | None = None,
) -> Evaluation:
    """Judge the canary.

    ``canary`` and ``stable`` are the current window (``stable`` None when there is no stable
    version); ``history`` holds the canary's previous current-length windows, oldest first,
    without the current one, for consecutive breaches and trends; ``planned_canary_share`` is
    the percentage of traffic the canary should get over the current window (0 to 100), for the
    sample-ratio check. ``phase`` is everything since the request's ``window_start`` (None: the
    current window stands for it, judged as one look); ``fast`` the last
    ``fast_window_seconds`` (None: no fast test); ``stable_reference`` stable's traffic from
    ``baseline_window_seconds`` before the phase until now (None: stable's phase window).
    """
    if planned_canary_share is not None and not 0.0 <= planned_canary_share <= 100.0:
        raise ValueError(f"planned_canary_share must be within 0..100, got {planned_canary_share}")
    current = Window(canary, stable)
    phase = phase if phase is not None else current
    reference = stable_reference if stable_reference is not None else phase.stable
    judge = _Judge(policy, canary, stable, history, fast=fast, phase=phase, reference=reference)
    results: list[MetricResult] = [judge.threshold(threshold) for threshold in policy.thresholds]
    if policy.comparison.enabled:
        for metric in policy.comparison.metrics:
            if metric == ERROR_RATE:
                results.extend(judge.compare_error_rates())
            else:
                results.extend(judge.compare_latency())
    if policy.trend.enabled:
        results.extend(judge.trend(metric) for metric in policy.trend.metrics)
    if (
        policy.sample_ratio.enabled
        and stable is not None
        and planned_canary_share is not None
        and 0.0 < planned_canary_share < 100.0
    ):
        results.append(judge.sample_ratio(stable, planned_canary_share))

    rollback_checks = tuple(
        [judge.rollback(item) for item in policy.auto_rollback.thresholds] + judge.comparisons
    )
    should_rollback = policy.auto_rollback.enabled and any(c.breached for c in rollback_checks)
    verdict, message = _overall(results, policy.no_data)
    if should_rollback:
        message += " Roll back: " + " ".join(
            check.message for check in rollback_checks if check.breached
        )
    windows: dict[str, Any] = {"current": current.to_dict(), "phase": phase.to_dict()}
    if fast is not None:
        windows["fast"] = fast.to_dict()
    return Evaluation(
        verdict=verdict,
        message=message,
        results=tuple(results),
        should_rollback=should_rollback,
        rollback_checks=rollback_checks,
        inputs={
            "canary": canary.to_dict(),
            "stable": None if stable is None else stable.to_dict(),
            "history_windows": len(history),
            "planned_canary_share": planned_canary_share,
            "policy": policy.to_dict(),
        },
        windows=windows,
    )


def _overall(results: Sequence[MetricResult], rule: NoDataRule) -> tuple[Verdict, str]:
    counted = [result for result in results if result.counts_as is not None]
    if not counted:
        reason = "no check had data to judge"
        if rule == NoDataRule.IGNORE and any(r.verdict == Verdict.NO_DATA for r in results):
            reason += " (the policy ignores missing data)"
        return Verdict.INCONCLUSIVE, f"Inconclusive: {reason}."
    verdict = max((result.counts_as for result in counted), key=_RANK.__getitem__)  # type: ignore[arg-type]
    tally = {level: 0 for level in sorted(_RANK, key=_RANK.__getitem__, reverse=True)}
    for result in counted:
        tally[result.counts_as] += 1  # type: ignore[index]
    summary = ", ".join(f"{count} {level}" for level, count in tally.items() if count)
    ignored = len(results) - len(counted)
    if ignored:
        summary += f", {ignored} not counted"
    if verdict == Verdict.PASS:
        return verdict, f"Pass ({summary}): every counted check passed."
    worst = [result for result in counted if result.counts_as == verdict]
    message = f"{verdict.capitalize()} ({summary}): {worst[0].message}"
    if len(worst) > 1:
        message += f" And {len(worst) - 1} more {verdict}."
    return verdict, message


_EMPTY = WindowStats(requests=0)


class _Judge:
    """The checks of one evaluation, sharing its inputs."""

    def __init__(
        self,
        policy: Policy,
        canary: WindowStats,
        stable: WindowStats | None,
        history: Sequence[WindowStats],
        *,
        fast: Window | None,
        phase: Window,
        reference: WindowStats | None,
    ) -> None:
        self.policy = policy
        self.canary = canary
        self.stable = stable
        self.history = history
        self.fast = fast
        self.phase = phase
        self.reference = reference
        self.no_data_counts_as = _NO_DATA_COUNTS_AS[policy.no_data]
        # The comparisons' reasons to roll back, for the rollback checks.
        self.comparisons: list[RollbackCheck] = []

    # --- helpers

    def value(self, window: WindowStats, metric: str) -> float | None:
        """The window's value of `metric` if enough data stands behind it, else None."""
        size = window.sample_size(metric)
        if metric.startswith(CUSTOM_PREFIX):
            return window.value(metric) if size > 0 else None
        if size < self.policy.min_requests:
            return None
        return window.value(metric)

    def confident(self, window: WindowStats, metric: str, operator: Operator) -> float | None:
        """The window's value on the good side of its interval (see `WindowStats.confident`),
        if enough data stands behind it."""
        if self.value(window, metric) is None:
            return None
        return window.confident(metric, operator)

    def streak(self, metric: str, operator: Operator, bound: float, needed: int) -> int:
        """How many windows in a row, the current one first, breach `bound` beyond doubt (up
        to `needed`)."""
        count = 0
        windows: Iterable[WindowStats] = (self.canary, *reversed(self.history))
        for window in windows:
            if count >= needed:
                break
            value = self.confident(window, metric, operator)
            if value is None or not breaches(value, operator, bound):
                break
            count += 1
        return count

    def why_no_data(self, metric: str, window: WindowStats, who: str) -> str:
        if metric.startswith(CUSTOM_PREFIX):
            return f"no {metric[len(CUSTOM_PREFIX) :]} samples from {who} in the window"
        size = window.sample_size(metric)
        noun = "latency samples" if metric in _LATENCY_QUANTILES else "requests"
        if metric == THROUGHPUT and size >= self.policy.min_requests:
            return "the window's length is unknown"
        needed = self.policy.min_requests
        return f"{size:,} {noun} from {who} in the window, at least {needed:,} needed"

    def no_data(
        self,
        metric: str,
        check: Check,
        label: str,
        why: str,
        inputs: dict[str, Any],
        window: str = "current",
    ) -> MetricResult:
        counts_as = self.no_data_counts_as
        effect = "ignored per policy" if counts_as is None else f"counts as {counts_as} per policy"
        return MetricResult(
            metric=metric,
            check=check,
            verdict=Verdict.NO_DATA,
            counts_as=counts_as,
            value=None,
            message=f"{label}: no data ({why}); {effect}.",
            inputs={**inputs, "min_requests": self.policy.min_requests},
            window=window,
        )

    # --- checks

    def threshold(self, threshold: Threshold) -> MetricResult:
        metric = threshold.metric
        label = f"Canary {_label(metric)}"
        inputs: dict[str, Any] = {
            **threshold.to_dict(),
            "sample_size": self.canary.sample_size(metric),
        }
        value = self.value(self.canary, metric)
        if value is None:
            return self.no_data(
                metric,
                Check.THRESHOLD,
                label,
                self.why_no_data(metric, self.canary, "the canary"),
                inputs,
            )
        needed = threshold.consecutive_failures
        operator = threshold.operator
        critical_streak = (
            self.streak(metric, operator, threshold.critical, needed)
            if threshold.critical is not None
            else 0
        )
        warning_streak = (
            self.streak(metric, operator, threshold.warning, needed)
            if threshold.warning is not None
            else 0
        )
        confident = self.canary.confident(metric, operator)
        inputs.update(
            value=value,
            confident_value=confident,
            interval=self.canary.interval(metric),
            critical_streak=critical_streak,
            warning_streak=warning_streak,
        )
        side = _SIDE[operator]
        over = f" for {needed} consecutive windows" if needed > 1 else ""
        sure = " beyond doubt" if self.canary.interval(metric) is not None else ""
        shown = f"{_format_value(metric, value)}{_evidence(self.canary, metric)}"

        if threshold.critical is not None and critical_streak >= needed:
            verdict = Verdict.CRITICAL
            reason = (
                f"{side} the {_format_bound(metric, threshold.critical)} critical "
                f"threshold{sure}{over}"
            )
        elif threshold.warning is not None and warning_streak >= needed:
            verdict = Verdict.WARNING
            reason = (
                f"{side} the {_format_bound(metric, threshold.warning)} warning "
                f"threshold{sure}{over}"
            )
        elif threshold.critical is not None and critical_streak:
            verdict = Verdict.WARNING
            reason = (
                f"{side} the {_format_bound(metric, threshold.critical)} critical threshold"
                f"{sure} in {critical_streak} of the {needed} consecutive windows needed to be "
                "critical"
            )
        elif threshold.warning is not None and warning_streak:
            verdict = Verdict.PASS
            reason = (
                f"{side} the {_format_bound(metric, threshold.warning)} warning threshold"
                f"{sure} in {warning_streak} of the {needed} consecutive windows needed to warn"
            )
        else:
            verdict = Verdict.PASS
            bound = threshold.warning if threshold.warning is not None else threshold.critical
            level = "warning" if threshold.warning is not None else "critical"
            if breaches(value, operator, bound):  # type: ignore[arg-type]
                reason = (
                    f"not {side} the {_format_bound(metric, bound)} {level} threshold "  # type: ignore[arg-type]
                    "beyond doubt"
                )
            else:
                reason = f"within the {_format_bound(metric, bound)} {level} threshold"  # type: ignore[arg-type]
        return MetricResult(
            metric=metric,
            check=Check.THRESHOLD,
            verdict=verdict,
            counts_as=verdict,
            value=value,
            message=f"{label} {shown}: {verdict}, {reason}.",
            inputs=inputs,
        )

    def _comparison_unavailable(
        self, metric: str, label: str, inputs: dict[str, Any]
    ) -> MetricResult | None:
        """The no-data result of a comparison that has nothing to compare, else None."""
        phase, reference = self.phase, self.reference
        noun = "latency samples" if metric == LATENCY else "requests"
        if self.stable is None or phase.stable is None or reference is None:
            why = "no stable version to compare with"
        elif (reference.latency.total if metric == LATENCY else reference.requests) == 0:
            why = f"no {noun} from stable to compare with"
        elif (phase.canary.latency.total if metric == LATENCY else phase.canary.requests) == 0:
            why = f"no {noun} from the canary since the phase began"
        else:
            return None
        return self.no_data(metric, Check.COMPARISON, label, why, inputs, window="phase")

    def _phase_verdict(
        self, breach: bool, bad: float, requests: float, null: float
    ) -> tuple[Verdict, Verdict | None, str]:
        """The phase comparison's verdict, what it counts as, and its reason's head."""
        settings = self.policy.comparison
        if breach:
            return settings.severity, settings.severity, "worse than stable beyond its margin"
        if requests < self.policy.min_requests:
            counts_as = self.no_data_counts_as
            effect = "ignored per policy" if counts_as is None else f"counts as {counts_as}"
            return (
                Verdict.NO_DATA,
                counts_as,
                f"no data yet: {requests:,.0f} from the canary since the phase began, at least "
                f"{self.policy.min_requests:,} needed to pass ({effect})",
            )
        if bad <= null * requests:
            return Verdict.PASS, Verdict.PASS, "within its margin, no evidence it is worse"
        return (
            Verdict.INCONCLUSIVE,
            Verdict.INCONCLUSIVE,
            "above what its margin allows, not yet beyond doubt",
        )

    def compare_error_rates(self) -> list[MetricResult]:
        settings = self.policy.comparison
        label = "Canary error rate against stable"
        phase, reference = self.phase, self.reference
        canary = phase.canary
        inputs: dict[str, Any] = {
            "canary_requests": canary.requests,
            "canary_errors": canary.errors,
            "stable_requests": None if reference is None else reference.requests,
            "stable_errors": None if reference is None else reference.errors,
            "alpha": settings.alpha,
            "fast_alpha": settings.fast_alpha,
            "tolerance_percent": settings.tolerance_percent,
            "margin_points": settings.margin_points,
        }
        unavailable = self._comparison_unavailable(ERROR_RATE, label, inputs)
        if unavailable is not None:
            return [unavailable]
        assert reference is not None and phase.stable is not None
        fast = self.fast
        fast_canary, fast_stable = self._fast_samples()
        decision = sequential.judge_errors(
            canary_phase=(canary.errors, canary.requests),
            canary_fast=(fast_canary.errors, fast_canary.requests),
            stable_reference=(reference.errors, reference.requests),
            stable_phase=(phase.stable.errors, phase.stable.requests),
            stable_fast=(fast_stable.errors, fast_stable.requests),
            margin=settings.margin(latency=False),
        )
        null = float(decision.null)
        log_e = float(decision.log_evalue)
        stable_rate = 100.0 * reference.errors / reference.requests
        canary_rate = 100.0 * canary.errors / canary.requests
        inputs.update(
            stable_phase_requests=phase.stable.requests,
            stable_phase_errors=phase.stable.errors,
            stable_rate=stable_rate,
            null_rate=100.0 * null,
            e_value=_evalue(log_e),
            log_e_value=log_e,
            e_value_needed=1.0 / settings.alpha,
        )
        allowed = f"{100.0 * null:.2f}%"
        stable_text = (
            f"stable's {stable_rate:.2f}% ({_count(reference.errors, 'error')} in "
            f"{_count(reference.requests, 'request')})"
        )
        verdict, counts_as, head = self._phase_verdict(
            bool(decision.phase_breach), canary.errors, canary.requests, null
        )
        evidence = self._evidence(log_e)
        message = (
            f"{label} since the phase began: {_sample(canary.errors, canary.requests)} "
            f"against {stable_text}; it may have up to {allowed}: {verdict}, {head} "
            f"({evidence})."
        )
        results = [
            self._phase_result(
                ERROR_RATE, verdict, counts_as, canary_rate - stable_rate, message, inputs
            )
        ]
        breach_message = (
            f"the canary's error rate since the phase began, "
            f"{_sample(canary.errors, canary.requests)}, is beyond the {allowed} it may have "
            f"(stable's {stable_rate:.2f}% plus the margin; e-value {_format_evalue(log_e)})."
        )
        if fast is not None and fast_canary.requests:
            fast_result = self._fast_result(
                ERROR_RATE,
                label,
                decision,
                bad_noun="errors",
                sample=_sample(fast_canary.errors, fast_canary.requests),
                allowed=allowed,
                value=100.0 * fast_canary.errors / fast_canary.requests - stable_rate,
            )
            results.append(fast_result)
            if decision.fast_breach and not decision.phase_breach:
                breach_message = (
                    f"the canary's error rate in the last {fast_canary.seconds or 0:g} s, "
                    f"{_sample(fast_canary.errors, fast_canary.requests)}, is far beyond the "
                    f"{allowed} allowed ({_format_p(float(decision.fast_p))})."
                )
        self._comparison_rollback(ERROR_RATE, decision, 100.0 * null, canary_rate, breach_message)
        return results

    def compare_latency(self) -> list[MetricResult]:
        settings = self.policy.comparison
        q = settings.latency_percentile
        name = f"p{q:g} latency"
        label = f"Canary {name} against stable"
        phase, reference = self.phase, self.reference
        canary = phase.canary
        inputs: dict[str, Any] = {
            "percentile": q,
            "canary_samples": canary.latency.total,
            "stable_samples": None if reference is None else reference.latency.total,
            "alpha": settings.alpha,
            "fast_alpha": settings.fast_alpha,
            "tolerance_percent": settings.tolerance_percent,
            "margin_ms": settings.margin_ms,
        }
        unavailable = self._comparison_unavailable(LATENCY, label, inputs)
        if unavailable is not None:
            return [unavailable]
        assert reference is not None and phase.stable is not None
        fast = self.fast
        fast_canary, fast_stable = self._fast_samples()
        decision = sequential.judge_latency(
            canary_phase=canary.latency.counts,
            canary_fast=fast_canary.latency.counts,
            stable_reference=reference.latency.counts,
            stable_phase=phase.stable.latency.counts,
            stable_fast=fast_stable.latency.counts,
            q=q,
            margin=settings.margin(latency=True),
        )
        threshold = float(decision.threshold)
        slow, samples = float(decision.phase_bad), float(decision.phase_n)
        null = float(decision.null)
        log_e = float(decision.log_evalue)
        canary_value = canary.latency.percentile(q)
        stable_value = reference.latency.percentile(q)
        rank = rank_test(canary.latency, reference.latency)
        inputs.update(
            canary_value=canary_value,
            stable_value=stable_value,
            ratio=canary_value / stable_value if stable_value > 0 else None,
            threshold_ms=threshold,
            slow_requests=slow,
            null_share=100.0 * null,
            e_value=_evalue(log_e),
            log_e_value=log_e,
            e_value_needed=1.0 / settings.alpha,
            rank_biserial=rank.rank_biserial,
        )
        verdict, counts_as, head = self._phase_verdict(
            bool(decision.phase_breach), slow, samples, null
        )
        ratio = f"{canary_value / stable_value:.3g}x" if stable_value > 0 else "stable at 0 ms"
        evidence = self._evidence(log_e)
        allowed = f"at most {100.0 * null:g}% may be"
        message = (
            f"{label} since the phase began: {canary_value:.1f} ms vs stable "
            f"{stable_value:.1f} ms ({ratio}); {_share(slow, samples)} slower than "
            f"{threshold:.1f} ms (stable's {name} at its upper bound, plus the margin), where "
            f"{allowed}: {verdict}, {head} ({evidence})."
        )
        results = [
            self._phase_result(
                LATENCY, verdict, counts_as, canary_value - stable_value, message, inputs
            )
        ]
        breach_message = (
            f"the canary's {name} since the phase began, {canary_value:.1f} ms against "
            f"stable's {stable_value:.1f} ms, is beyond the margin: {_share(slow, samples)} "
            f"slower than {threshold:.1f} ms, where at most {100.0 * null:g}% may be "
            f"(e-value {_format_evalue(log_e)})."
        )
        if fast is not None and fast_canary.latency.total:
            fast_value = fast_canary.latency.percentile(q)
            fast_result = self._fast_result(
                LATENCY,
                label,
                decision,
                bad_noun="slow",
                sample=(
                    f"{fast_value:.1f} ms; "
                    f"{_share(float(decision.fast_bad), float(decision.fast_n))} "
                    f"slower than {threshold:.1f} ms"
                ),
                allowed=f"{100.0 * null:g}% slow",
                value=fast_value - stable_value,
            )
            results.append(fast_result)
            if decision.fast_breach and not decision.phase_breach:
                breach_message = (
                    f"the canary's {name} in the last {fast_canary.seconds or 0:g} s, "
                    f"{fast_value:.1f} ms, is far beyond stable's {stable_value:.1f} ms: "
                    f"{_share(float(decision.fast_bad), float(decision.fast_n))} slower than "
                    f"{threshold:.1f} ms ({_format_p(float(decision.fast_p))})."
                )
        self._comparison_rollback(LATENCY, decision, threshold, canary_value, breach_message)
        return results

    def _fast_samples(self) -> tuple[WindowStats, WindowStats]:
        """The canary's and stable's fast windows, empty where there is none."""
        fast = self.fast
        if fast is None:
            return _EMPTY, _EMPTY
        return fast.canary, fast.stable if fast.stable is not None else _EMPTY

    def _evidence(self, log_e: float) -> str:
        alpha = self.policy.comparison.alpha
        return (
            f"e-value {_format_evalue(log_e)}, {1.0 / alpha:g} needed, "
            f"anytime-valid at alpha {alpha:g}"
        )

    def _phase_result(
        self,
        metric: str,
        verdict: Verdict,
        counts_as: Verdict | None,
        value: float,
        message: str,
        inputs: dict[str, Any],
    ) -> MetricResult:
        return MetricResult(
            metric=metric,
            check=Check.COMPARISON,
            verdict=verdict,
            counts_as=counts_as,
            value=value,
            message=message,
            inputs=inputs,
            window="phase",
        )

    def _comparison_rollback(
        self,
        metric: str,
        decision: sequential.Decision,
        threshold: float,
        value: float,
        message: str,
    ) -> None:
        """The comparison's rollback check, where the policy rolls back on comparisons: breached
        when either window's test is."""
        if not self.policy.comparison.rollback:
            return
        self.comparisons.append(
            RollbackCheck(
                metric=metric,
                operator=Operator.GT,
                threshold=threshold,
                value=value,
                violations=int(bool(decision.breach)),
                needed=1,
                breached=bool(decision.breach),
                message=message,
                check="comparison",
            )
        )

    def _fast_result(
        self,
        metric: str,
        label: str,
        decision: sequential.Decision,
        *,
        bad_noun: str,
        sample: str,
        allowed: str,
        value: float,
    ) -> MetricResult:
        """The fast window's test: counted only when it finds a gross fault."""
        settings = self.policy.comparison
        assert self.fast is not None
        seconds = self.fast.canary.seconds
        span = f"the last {seconds:g} s" if seconds else "the fast window"
        p_value = float(decision.fast_p)
        test = f"{_format_p(p_value)}, exact binomial test, {settings.fast_alpha:g} needed"
        if decision.fast_breach:
            verdict: Verdict = settings.severity
            counts_as: Verdict | None = verdict
            reason = f"a gross fault ({test})"
        else:
            verdict, counts_as = Verdict.PASS, None
            reason = f"no gross fault ({test}); not counted, a few seconds prove nothing good"
        return MetricResult(
            metric=metric,
            check=Check.COMPARISON,
            verdict=verdict,
            counts_as=counts_as,
            value=value,
            message=f"{label} in {span}: {sample} against at most {allowed}: {verdict}, {reason}.",
            inputs={
                "bad": float(decision.fast_bad),
                "requests": float(decision.fast_n),
                "kind": bad_noun,
                "null_rate": 100.0 * float(decision.null),
                "p_value": _stored_p(p_value),
                "fast_alpha": settings.fast_alpha,
            },
            window="fast",
        )

    def trend(self, metric: str) -> MetricResult:
        settings = self.policy.trend
        label = f"Canary {_label(metric)} trend"
        inputs: dict[str, Any] = {
            "alpha": settings.alpha,
            "windows": settings.windows,
            "min_windows": settings.min_windows,
        }
        current = self.value(self.canary, metric)
        if current is None:
            why = self.why_no_data(metric, self.canary, "the canary")
            return self.no_data(metric, Check.TREND, label, why, inputs)
        recent = self.history[-(settings.windows - 1) :] if settings.windows > 1 else ()
        values = [v for v in (self.value(window, metric) for window in recent) if v is not None]
        values.append(current)
        inputs["values"] = values
        if len(values) < settings.min_windows:
            # Too little history says nothing about the canary: not counted, whatever the policy
            # says about missing data, or every young deployment would fail.
            return MetricResult(
                metric=metric,
                check=Check.TREND,
                verdict=Verdict.NO_DATA,
                counts_as=None,
                value=None,
                message=(
                    f"{label}: not judged yet, {_windows(len(values))} with data, "
                    f"{settings.min_windows} needed."
                ),
                inputs=inputs,
            )
        test = mann_kendall(values)
        worse_up = self.worse_when_higher(metric)
        p_value = test.p_increasing if worse_up else test.p_decreasing
        inputs.update(test.to_dict(), worse_when="higher" if worse_up else "lower")
        slope = f"Sen slope {_format_change(metric, test.slope)} per window"
        stats = f"{slope}, Mann-Kendall {_format_p(p_value)}"
        if p_value < settings.alpha:
            verdict = settings.severity
            direction = "rising" if worse_up else "falling"
            message = (
                f"Canary {_label(metric)} {direction} over the last {len(values)} windows "
                f"({stats}): {verdict}, a worsening trend."
            )
        else:
            verdict = Verdict.PASS
            message = (
                f"Canary {_label(metric)} shows no worsening trend over the last {len(values)} "
                f"windows ({stats}): pass."
            )
        return MetricResult(
            metric=metric,
            check=Check.TREND,
            verdict=verdict,
            counts_as=verdict,
            value=test.slope,
            message=message,
            inputs=inputs,
        )

    def worse_when_higher(self, metric: str) -> bool:
        for threshold in self.policy.thresholds:
            if threshold.metric == metric:
                return threshold.operator in (Operator.GT, Operator.GTE)
        return metric not in (AVAILABILITY, THROUGHPUT)

    def sample_ratio(self, stable: WindowStats, planned_share: float) -> MetricResult:
        settings = self.policy.sample_ratio
        canary_requests, stable_requests = self.canary.requests, stable.requests
        total = canary_requests + stable_requests
        label = "Canary/stable traffic split"
        inputs: dict[str, Any] = {
            "canary_requests": canary_requests,
            "stable_requests": stable_requests,
            "planned_share": planned_share,
            "alpha": settings.alpha,
        }
        if total < self.policy.min_requests:
            why = f"{total:,} requests in the window, at least {self.policy.min_requests:,} needed"
            return self.no_data("sample_ratio", Check.SAMPLE_RATIO, label, why, inputs)
        test = sample_ratio_test(canary_requests, stable_requests, planned_share)
        inputs.update(test.to_dict())
        stats = f"chi-square = {test.chi_square:.2f}, {_format_p(test.p_value)}"
        head = (
            f"Canary received {test.observed_share:.2f}% of {total:,} requests against a planned "
            f"{planned_share:.2f}% ({stats})"
        )
        if test.p_value < settings.alpha:
            verdict = settings.severity
            message = f"{head}: {verdict}, a sample ratio mismatch."
            counts_as: Verdict | None = verdict
        else:
            verdict = Verdict.PASS
            message = f"{head}: pass, the split is as planned."
            # A split as planned says nothing about the canary's health: it never votes pass.
            counts_as = None
        return MetricResult(
            metric="sample_ratio",
            check=Check.SAMPLE_RATIO,
            verdict=verdict,
            counts_as=counts_as,
            value=test.observed_share,
            message=message,
            inputs=inputs,
        )

    def rollback(self, threshold: RollbackThreshold) -> RollbackCheck:
        metric = threshold.metric
        needed = threshold.consecutive_violations
        value = self.value(self.canary, metric)
        bound = _format_bound(metric, threshold.threshold)
        side = _SIDE[threshold.operator]
        label = f"Canary {_label(metric)}"
        sure = " beyond doubt" if self.canary.interval(metric) is not None else ""
        if value is None:
            violations = 0
            why = self.why_no_data(metric, self.canary, "the canary")
            message = f"{label}: no data ({why}); missing data never triggers a rollback."
        else:
            violations = self.streak(metric, threshold.operator, threshold.threshold, needed)
            shown = f"{label} {_format_value(metric, value)}{_evidence(self.canary, metric)}"
            if violations >= needed:
                over = f" for {needed} consecutive windows" if needed > 1 else ""
                message = f"{shown} {side} the {bound} rollback threshold{sure}{over}."
            elif violations:
                message = (
                    f"{shown} {side} the {bound} rollback threshold{sure} in {violations} of "
                    f"the {needed} consecutive windows needed."
                )
            elif breaches(value, threshold.operator, threshold.threshold):
                message = f"{shown} not {side} the {bound} rollback threshold{sure}."
            else:
                message = f"{shown} within the {bound} rollback threshold."
        return RollbackCheck(
            metric=metric,
            operator=threshold.operator,
            threshold=threshold.threshold,
            value=value,
            violations=violations,
            needed=needed,
            breached=value is not None and violations >= needed,
            message=message,
        )


def _count(number: float, noun: str) -> str:
    whole = round(number)
    return f"1 {noun}" if whole == 1 else f"{whole:,} {noun}s"


def _sample(bad: float, total: float, noun: str = "error") -> str:
    """``2 errors in 48 requests (4.17%, 95% interval 1.15-13.98%)``: a rate with its sample."""
    if total <= 0:
        return f"no requests ({noun}s: none)"
    return f"{_count(bad, noun)} in {_count(total, 'request')} ({_rate(bad, total)})"


def _share(bad: float, total: float) -> str:
    """``46 of 60 requests (76.67%, 95% interval 64.6-85.6%)``."""
    return f"{round(bad):,} of {_count(total, 'request')} ({_rate(bad, total)})"


def _rate(bad: float, total: float) -> str:
    """``4.17%, 95% interval 1.15-13.98%``: a rate with its Wilson interval."""
    low, high = sequential.wilson(bad, total)
    rate = 100.0 * bad / total if total else 0.0
    return f"{rate:.2f}%, 95% interval {100.0 * float(low):.2f}-{100.0 * float(high):.2f}%"


def _evidence(window: WindowStats, metric: str) -> str:
    """The sample behind a metric's value, as a parenthesis: its count and 95% interval."""
    interval = window.interval(metric)
    if interval is None:
        return ""
    if metric in PERCENT_METRICS:
        return (
            f" ({_count(window.errors, 'error')} in {_count(window.requests, 'request')}, "
            f"95% interval {interval[0]:.2f}-{interval[1]:.2f}%)"
        )
    return (
        f" ({_count(window.latency.total, 'sample')}, 95% interval {interval[0]:.1f}-"
        f"{interval[1]:.1f} ms)"
    )


def _evalue(log_e: float) -> float | None:
    # JSON numbers that survive PostgreSQL's jsonb unchanged: it stores them as exact decimals,
    # so a huge float comes back as an int and a tiny one as hundreds of digits. A huge
    # e-value is stored as null (its log beside it), a negligible one as 0.
    if log_e >= 34.0:
        return None
    return math.exp(log_e) if log_e > -23.0 else 0.0


def _stored_p(p_value: float) -> float:
    return p_value if p_value >= 1e-15 else 0.0


def _format_evalue(log_e: float) -> str:
    if log_e >= math.log(1e6):
        return f"{math.exp(min(log_e, 700)):.2e}"
    value = math.exp(log_e)
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# --------------------------------------------------------------------------- wording

_SIDE = {
    Operator.GT: "above",
    Operator.GTE: "at or above",
    Operator.LT: "below",
    Operator.LTE: "at or below",
}
_LABELS = {
    AVAILABILITY: "availability",
    ERROR_RATE: "error rate",
    LATENCY_P50: "p50 latency",
    LATENCY_P95: "p95 latency",
    LATENCY_P99: "p99 latency",
    THROUGHPUT: "throughput",
}


def _label(metric: str) -> str:
    if metric.startswith(CUSTOM_PREFIX):
        return metric[len(CUSTOM_PREFIX) :]
    return _LABELS.get(metric, metric)


def _notation(metric: str) -> tuple[str, str]:
    """How a metric's numbers are written: the format of a measured value, and the unit."""
    if metric in PERCENT_METRICS:
        return ".2f", "%"
    if metric in _LATENCY_QUANTILES:
        return ".1f", " ms"
    if metric == THROUGHPUT:
        return ".2f", " req/s"
    return ".4g", ""


def _format_value(metric: str, value: float) -> str:
    spec, unit = _notation(metric)
    return f"{value:{spec}}{unit}"


def _format_bound(metric: str, bound: float) -> str:
    # A threshold reads as it was written, without the measured value's fixed decimals.
    return f"{bound:g}{_notation(metric)[1]}"


def _format_change(metric: str, change: float) -> str:
    # A percentage moves by points: 1% to 3% is +2 points, not +200%.
    spec, unit = _notation(metric)
    return f"{change:+{spec}}{' points' if unit == '%' else unit}"


def _windows(count: int) -> str:
    return "1 window" if count == 1 else f"{count} windows"


def _format_p(p_value: float) -> str:
    if p_value < 0.0001:
        return "p < 0.0001"
    return f"p = {p_value:.4f}"
