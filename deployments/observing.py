"""From health checks to the observations a phase is judged on: pure functions, no models.

The tick asks the health app to evaluate every running canary (one bulk pass); each stored
check's canary window becomes one observation per metric, stamped with the window's end. A
phase keeps the observations it has seen (``Phase.observations``, a small JSON log) so that a
criterion's unbroken run can be measured across ticks without reading old checks again.

Log shape, columnar because every metric is observed at the same moments (a thousand phases'
logs are read and written on every tick, so their size is the tick's cost)::

    {"t0": epoch seconds, "t": [seconds after t0, ...], "m": {metric: [value or null, ...]}}

oldest first, each metric's list aligned with ``t``, keyed by the health app's metric names
(``latency_p50``, not the guide's ``response_time``). Values keep four decimals.

A value is null (no data) when the window had too little behind it: fewer requests than the
policy's ``min_requests`` for availability and error rate, fewer latency samples for the
percentiles, no sample at all for a custom metric. A sparse window neither passes a criterion
nor breaches a threshold, which is what "no phase advances without the data its criteria
need" asks.

The health app never lets a window reach back before the phase began (the tick passes the
phase's start as ``window_start``), so every observation is of the phase's own traffic. Beside
the values, the log keeps the latest check's evidence under ``"e"`` (`evidence`: the canary's
samples in the fast and the current window, the phase's own traffic, the policy's verdict),
which the judgement needs for the phase's minimum of traffic and for judging rate thresholds
on confidence bounds rather than point values.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from deployments.config import CUSTOM_PREFIX, ROLLBACK_RULES, PhaseConfig, health_metric
from deployments.lifecycle import Evidence, Sample, Series

Log = dict[str, Any]

_REQUEST_METRICS = ("availability", "error_rate")
_LATENCY_METRICS = ("latency_p50", "latency_p95", "latency_p99")
_READY = {float, type(None)}  # values that need no reading
MAX_POINTS = 1000
"""The most observations a phase keeps of one metric, whatever its criteria ask for."""


def needed_metrics(phase: PhaseConfig) -> list[str]:
    """The health metrics a phase is judged on: its criteria's and its thresholds', in order."""
    names: list[str] = []
    for criterion in phase.success_criteria:
        name = health_metric(criterion.metric)
        if name not in names:
            names.append(name)
    for field, _limit in phase.rollback_thresholds.items():
        name = ROLLBACK_RULES[field].metric
        if name not in names:
            names.append(str(name))
    return names


def canary_values(result: Mapping[str, Any], metrics: Iterable[str]) -> dict[str, float | None]:
    """The canary's value of each metric in a stored health check's ``result``.

    ``result`` is ``HealthCheck.result`` (the health engine's ``Evaluation.to_dict()``): its
    ``inputs.canary`` summarises the canary's window, ``inputs.policy.min_requests`` says how
    much data counts.
    """
    inputs = result.get("inputs") or {}
    canary = inputs.get("canary") or {}
    policy = inputs.get("policy") or {}
    minimum = max(1, int(policy.get("min_requests") or 1))
    requests = int(canary.get("requests") or 0)
    latency_samples = int(canary.get("latency_samples") or 0)
    values: dict[str, float | None] = {}
    for metric in metrics:
        value: Any = None
        if metric in _REQUEST_METRICS:
            value = canary.get(metric) if requests >= minimum else None
        elif metric in _LATENCY_METRICS:
            value = canary.get(metric) if latency_samples >= minimum else None
        elif metric == "throughput":
            value = canary.get("throughput")
        elif metric.startswith(CUSTOM_PREFIX):
            stat = (canary.get("custom") or {}).get(metric[len(CUSTOM_PREFIX) :]) or {}
            count = stat.get("count") or 0
            value = stat.get("sum", 0.0) / count if count else None
        values[metric] = float(value) if isinstance(value, int | float) else None
    return values


EVIDENCE_WINDOWS = ("fast", "current")
"""The windows of a health check whose canary samples judge the rate thresholds."""


def evidence(result: Mapping[str, Any], *, at: datetime) -> Evidence:
    """What a stored health check says of the canary beside its values (`Evidence`).

    ``result`` is ``HealthCheck.result``: its ``windows`` hold the canary's counts in the
    fast, the current and the phase window (see `health.analysis.Evaluation.to_dict`). A check
    stored without them has only its current window (``inputs.canary``), which then stands
    for the phase's traffic too. The verdict is healthy when it is pass, or when the policy
    judged nothing at all (no checks configured: the phase's criteria and its minimum of
    traffic decide)."""
    windows = result.get("windows") or {}
    inputs = result.get("inputs") or {}
    samples: dict[str, Sample] = {}
    for name in EVIDENCE_WINDOWS:
        window = windows.get(name) or {}
        counts = window.get("canary")
        seconds = window.get("seconds")
        if counts is None and name == "current":
            counts = inputs.get("canary")
            seconds = (counts or {}).get("seconds")
        if counts is not None:
            samples[name] = _sample(counts, seconds)
    phase_window = windows.get("phase") or {}
    phase = (
        _sample(phase_window["canary"], phase_window.get("seconds"))
        if phase_window.get("canary") is not None
        else samples.get("current", Sample(0, 0))
    )
    verdict = str(result.get("verdict") or "")
    healthy = verdict == "pass" or (verdict == "inconclusive" and not result.get("results"))
    if result.get("should_rollback"):
        healthy = False
    return Evidence(
        at=at,
        windows=samples,
        phase=phase,
        healthy=healthy,
        verdict=verdict,
        message=str(result.get("message") or "")[:500],
    )


def fault_start(
    canary: Sequence[tuple[float, float | None, float | None]],
    stable: Sequence[tuple[float, float | None, float | None]],
) -> int | None:
    """The index of the first bad bucket of a fault that ends the series, or None when the
    buckets show none: where the canary began to fail, for "time from the fault to the
    rollback" measured from the fault rather than from the look that judged it.

    Each bucket is ``(requests, error rate %, p95 ms)``, the canary's and stable's aligned,
    oldest first. Errors: the change point of the canary's errors (the start of the run of
    buckets, ending at the last, that is most likely at a raised rate rather than at stable's:
    a CUSUM of log-likelihood ratios, kept only when that is at least 20 times as likely).
    Latency: the start of the run, ending at the last bucket with traffic, of buckets whose
    p95 is more than twice stable's median p95. The earlier of the two."""
    found = [
        index
        for index in (_error_change(canary, stable), _latency_run(canary, stable))
        if index is not None
    ]
    return min(found) if found else None


_EVIDENCE = math.log(20.0)


def _error_change(
    canary: Sequence[tuple[float, float | None, float | None]],
    stable: Sequence[tuple[float, float | None, float | None]],
) -> int | None:
    def counts(rows: Sequence[tuple[float, float | None, float | None]]) -> list[tuple[int, int]]:
        return [(int(n or 0), round((n or 0) * (rate or 0.0) / 100.0)) for n, rate, _p95 in rows]

    ours, theirs = counts(canary), counts(stable)
    stable_n = sum(n for n, _ in theirs)
    base = max(sum(e for _, e in theirs) / stable_n if stable_n else 0.0, 0.001)
    total = sum(n for n, _ in ours)
    raised = max(2 * base, sum(e for _, e in ours) / total if total else 0.0)
    if raised >= 1.0:
        raised = 0.999
    up, down = math.log(raised / base), math.log((1 - raised) / (1 - base))
    score, best, start = 0.0, 0.0, None
    for index in range(len(ours) - 1, -1, -1):
        n, errors = ours[index]
        score += errors * up + (n - errors) * down
        if score > best:
            best, start = score, index
    return start if best >= _EVIDENCE else None


def _latency_run(
    canary: Sequence[tuple[float, float | None, float | None]],
    stable: Sequence[tuple[float, float | None, float | None]],
) -> int | None:
    usual = sorted(p95 for n, _rate, p95 in stable if n and p95 is not None)
    if not usual:
        return None
    bound = 2.0 * usual[len(usual) // 2]
    start = None
    for index in range(len(canary) - 1, -1, -1):
        n, _rate, p95 = canary[index]
        if not n or p95 is None:
            continue  # a bucket without traffic neither starts nor breaks the run
        if p95 <= bound:
            break
        start = index
    return start


def _sample(counts: Mapping[str, Any], seconds: Any) -> Sample:
    requests = int(counts.get("requests") or 0)
    errors = min(requests, int(counts.get("errors") or 0))
    return Sample(requests, errors, float(seconds) if seconds else None)


def _moments(log: Mapping[str, Any] | None) -> list[float]:
    """The log's observation times in epoch seconds."""
    if not log:
        return []
    origin = log.get("t0", 0)
    return [origin + offset for offset in log.get("t", [])]


def _pack(moments: list[float], metrics: dict[str, list[Any]]) -> Log:
    if not moments:
        return {"t0": 0, "t": [], "m": metrics}
    origin = _whole(moments[0])
    return {"t0": origin, "t": [_whole(moment - origin) for moment in moments], "m": metrics}


def record(
    log: Mapping[str, Any] | None,
    *,
    at: datetime,
    values: Mapping[str, float | None],
) -> tuple[Log, bool]:
    """The log with one more observation of each metric at ``at``; and whether it changed.

    A moment already in the log (the same window judged again by a tick that ran twice) is not
    added twice. The log given is not changed.
    """
    stamp = at.timestamp()
    quick = _recorded(log, stamp, values)
    if quick is not None:
        return quick
    moments = _moments(log)
    metrics: dict[str, list[Any]] = {
        name: list(points) for name, points in ((log or {}).get("m") or {}).items()
    }
    if any(abs(moment - stamp) < 1e-6 for moment in moments[-3:]) or stamp in moments:
        return _pack(moments, metrics), False
    for name in values:
        metrics.setdefault(name, [None] * len(moments))
    position = len(moments)
    if moments and moments[-1] > stamp:
        # Rare: a window judged late; keep the log in time order.
        position = next(i for i, moment in enumerate(moments) if moment > stamp)
    moments.insert(position, stamp)
    for name, points in metrics.items():
        value = values.get(name)
        points.insert(position, None if value is None else round(float(value), 4))
    return _pack(moments, metrics), True


def trim(log: Mapping[str, Any], *, keep: timedelta, since: datetime) -> Log:
    """Drop what no judgement will look at again: observations from before ``since`` (the
    phase's start) or older than ``keep`` before the latest."""
    if _regular(log):
        return _trimmed(log, keep=keep, since=since)
    moments = _moments(log)
    metrics = {name: list(points) for name, points in (log.get("m") or {}).items()}
    if not moments:
        return _pack([], metrics)
    floor = max(since.timestamp(), moments[-1] - keep.total_seconds())
    first = next((i for i, moment in enumerate(moments) if moment >= floor), len(moments))
    first = max(first, len(moments) - MAX_POINTS)
    return _pack(moments[first:], {name: points[first:] for name, points in metrics.items()})


def keep_for(phase: PhaseConfig, max_gap: timedelta) -> timedelta:
    """How much history a phase's judgement needs: its longest hold and two gaps' slack."""
    return timedelta(milliseconds=phase.longest_hold_ms) + 2 * max_gap


def observations(log: Mapping[str, Any] | None, phase: PhaseConfig) -> dict[str, Series]:
    """The log as `phase_judgement` reads it: keyed by each criterion's metric as written in
    the configuration, and by the rollback thresholds' metrics. A metric watched only by a
    threshold needs nothing but its latest observation, which is all a breach looks at.

    Each metric is a `Series` (a sequence of `Observation`s kept as columns), so a thousand
    logs are judged without a datetime per point."""
    log = log or {}
    moments = _moments(log)
    metrics = log.get("m") or {}

    def series(name: str, last_only: bool = False) -> Series:
        points = metrics.get(name)
        if not points:
            return Series([], [])
        count = min(len(moments), len(points))
        first = max(0, count - 1) if last_only else 0
        points = points[first:count]
        if not set(map(type, points)) <= _READY:
            points = [_number(value) for value in points]
        return Series.from_timestamps(moments[first:count], points)

    result: dict[str, Series] = {}
    for criterion in phase.success_criteria:
        if criterion.metric not in result:
            result[criterion.metric] = series(health_metric(criterion.metric))
    for field, _limit in phase.rollback_thresholds.items():
        metric = str(ROLLBACK_RULES[field].metric)
        if metric not in result:
            result[metric] = series(metric, last_only=True)
    return result


def latest_values(log: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Each metric's latest value, for the pages."""
    metrics = (log or {}).get("m") or {}
    return {name: _number(points[-1]) for name, points in metrics.items() if points}


def _regular(log: Mapping[str, Any] | None) -> bool:
    """Whether a log is in the shape `_pack` leaves a tick's log in: whole seconds, the first
    offset 0, in time order, every metric as long as the moments. Such a log is extended and
    trimmed in place of being unpacked and packed again, with the same result."""
    if not log:
        return False
    origin, offsets, metrics = log.get("t0"), log.get("t"), log.get("m")
    if type(origin) is not int or not isinstance(offsets, list) or not offsets:
        return False
    if offsets[0] != 0 or not isinstance(metrics, dict):
        return False
    if set(map(type, offsets)) != {int} or not all(map(operator.lt, offsets, offsets[1:])):
        return False
    count = len(offsets)
    return all(isinstance(points, list) and len(points) == count for points in metrics.values())


def _recorded(
    log: Mapping[str, Any] | None, stamp: float, values: Mapping[str, float | None]
) -> tuple[Log, bool] | None:
    """`record` of a regular log at a whole second after its latest moment, or at one it has;
    None otherwise (a window judged late is rare enough for the general way)."""
    if not float(stamp).is_integer() or not _regular(log):
        return None
    assert log is not None
    origin, offsets = log["t0"], log["t"]
    offset = int(stamp) - origin
    if offset <= offsets[-1]:
        if offset not in offsets:
            return None
        unchanged = {name: list(points) for name, points in log["m"].items()}
        return {"t0": origin, "t": list(offsets), "m": unchanged}, False
    metrics: dict[str, list[Any]] = {}
    for name, points in log["m"].items():
        value = values.get(name)
        metrics[name] = [*points, None if value is None else round(float(value), 4)]
    for name, value in values.items():
        if name not in metrics:
            metrics[name] = [None] * len(offsets) + [
                None if value is None else round(float(value), 4)
            ]
    return {"t0": origin, "t": [*offsets, offset], "m": metrics}, True


def _trimmed(log: Mapping[str, Any], *, keep: timedelta, since: datetime) -> Log:
    """`trim` of a regular log."""
    origin, offsets = log["t0"], log["t"]
    moments = [origin + offset for offset in offsets]
    floor = max(since.timestamp(), moments[-1] - keep.total_seconds())
    first = max(bisect_left(moments, floor), len(moments) - MAX_POINTS)
    metrics = {name: points[first:] for name, points in log["m"].items()}
    if first >= len(moments):
        return {"t0": 0, "t": [], "m": metrics}
    base = offsets[first]
    return {
        "t0": origin + base,
        "t": [offset - base for offset in offsets[first:]],
        "m": metrics,
    }


def _whole(value: float) -> int | float:
    # Window ends are whole seconds; ints keep the log small.
    return int(value) if float(value).is_integer() else value


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
