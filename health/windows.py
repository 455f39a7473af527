"""The inputs of evaluations: the windows of `health.analysis` read from the metric store.

One evaluation pass over many canaries reads with two queries, whatever their number:

1. the checks of earlier passes whose windows are this pass's history windows (a check keeps
   its canary window's summary, which is all a history window is asked for), and any check
   already stored for this very window (so a pass that runs twice stores nothing twice);
2. the metric buckets of the current windows (canary and stable) and of any history window no
   earlier check covers, summed in the database per series and window-sized group.

Windows end on a bucket boundary, ``settle`` seconds in the past (late flushes are in), and
their lengths are whole buckets. History windows lie back to back before the current one, so
in a loop that evaluates every bucket each history window was once some check's current
window, and a steady pass reads only its current windows from the buckets.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

from django.db.models.fields.json import KT

from health import analysis, store
from health.analysis import CUSTOM_PREFIX, Policy, WindowStats
from health.choices import TRAFFIC_METRIC
from health.histogram import Histogram
from health.models import HealthCheck


@dataclass(frozen=True)
class EvaluationRequest:
    """One canary to judge: ``policy`` is a HealthPolicy; ``window_seconds`` None means the
    policy's own window; ``planned_canary_share`` is the canary's planned traffic percentage."""

    service: str
    canary_version: str
    stable_version: str | None
    policy: Any
    window_seconds: int | None = None
    planned_canary_share: float | None = None


@dataclass
class Inputs:
    """What `analysis.evaluate` needs for one request, plus what the check will store."""

    request: EvaluationRequest
    spec: Policy
    window_seconds: int
    end: datetime
    canary: WindowStats
    stable: WindowStats | None
    history: list[WindowStats]
    existing: HealthCheck | None = None
    history_from_checks: int = 0


@dataclass
class _Plan:
    request: EvaluationRequest
    spec: Policy
    window: int
    baseline: int
    history: int
    snapshots: dict[int, WindowStats] = field(default_factory=dict)  # k -> window


def window_end(now: datetime, *, resolution: int, settle: int) -> datetime:
    """The end of the windows judged at ``now``: a bucket boundary ``settle`` seconds back."""
    seconds = int((now.timestamp() - settle) // resolution) * resolution
    return datetime.fromtimestamp(seconds, tz=UTC)


def whole_buckets(seconds: int, resolution: int) -> int:
    return max(1, math.ceil(seconds / resolution)) * resolution


def history_needed(spec: Policy) -> int:
    """How many windows before the current one the policy looks at."""
    needed = 0
    if spec.trend.enabled and spec.trend.metrics:
        needed = spec.trend.windows - 1
    for threshold in spec.thresholds:
        needed = max(needed, threshold.consecutive_failures - 1)
    if spec.auto_rollback.enabled:
        for item in spec.auto_rollback.thresholds:
            needed = max(needed, item.consecutive_violations - 1)
    return needed


def gather(
    requests: Sequence[EvaluationRequest],
    *,
    end: datetime,
    resolution: int,
    specs: dict[int, Policy],
) -> list[Inputs]:
    """Read every request's windows; ``specs`` maps policy ids to their built policies."""
    plans: list[_Plan] = []
    for request in requests:
        spec = specs[request.policy.pk]
        window = whole_buckets(request.window_seconds or spec.window_seconds, resolution)
        baseline = whole_buckets(spec.comparison.baseline_window_seconds, resolution)
        plans.append(
            _Plan(
                request=request,
                spec=spec,
                window=window,
                baseline=baseline,
                history=history_needed(spec),
            )
        )
    if not plans:
        return []

    # Query 1: earlier checks holding this pass's history windows, and checks of this window.
    ends = {end}
    for plan in plans:
        ends.update(end - timedelta(seconds=plan.window * k) for k in range(1, plan.history + 1))
    services = {plan.request.service for plan in plans}
    snapshots: dict[tuple[str, str, int, datetime], Any] = {}
    existing_ids: dict[tuple[str, str, str, int | None, int], int] = {}
    rows = list(
        HealthCheck.objects.filter(service__in=services, window_end__in=ends)
        .order_by()
        # Only the canary's window summary, as text, decoded below in one call: thousands of
        # small decodes cost more than the read.
        .annotate(window_text=KT("result__inputs__canary"))
        .values_list(
            "id",
            "service",
            "canary_version",
            "stable_version",
            "policy_id",
            "window_seconds",
            "window_end",
            "window_text",
        )
    )
    decoded = json.loads("[" + ",".join(row[7] or "null" for row in rows) + "]") if rows else []
    for row, window in zip(rows, decoded, strict=True):
        pk, service, canary, stable, policy_id, seconds, ended, _text = row
        if window:
            snapshots[(service, canary, seconds, ended)] = window
        if ended == end:
            existing_ids[(service, canary, stable, policy_id, seconds)] = pk
    existing = HealthCheck.objects.in_bulk(list(existing_ids.values())) if existing_ids else {}

    def key_of(plan: _Plan) -> tuple[str, str, str, int | None, int]:
        request = plan.request
        return (
            request.service,
            request.canary_version,
            request.stable_version or "",
            request.policy.pk,
            plan.window,
        )

    # A window already judged under the same policy is not read or judged again.
    todo = [plan for plan in plans if key_of(plan) not in existing_ids]

    # Which history windows no check covers: those are read from the buckets.
    canary_span = 0
    stable_span = 0
    sizes: set[int] = set()
    for plan in todo:
        request = plan.request
        missing = 0
        for k in range(1, plan.history + 1):
            key = (
                request.service,
                request.canary_version,
                plan.window,
                end - _seconds(plan.window * k),
            )
            snapshot = snapshots.get(key)
            if snapshot is None:
                missing = k
            else:
                plan.snapshots[k] = JudgedWindow.from_summary(snapshot)
        canary_span = max(canary_span, plan.window * (missing + 1))
        sizes.add(plan.window)
        if request.stable_version and request.stable_version != request.canary_version:
            stable_span = max(stable_span, plan.baseline)
            sizes.add(plan.baseline)
    group = reduce(math.gcd, sizes, 0) or resolution

    # Query 2: the buckets, summed per series and group.
    canaries = {plan.request.canary_version for plan in todo}
    stables = {
        plan.request.stable_version
        for plan in todo
        if plan.request.stable_version
        and plan.request.stable_version != plan.request.canary_version
    }
    groups = store.grouped(
        services={plan.request.service for plan in todo},
        spans=[(canaries, canary_span), (stables, stable_span)],
        end=end,
        group_seconds=group,
    )
    by_series: dict[tuple[str, str], dict[int, list[store.Group]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for item in groups:
        by_series[(item.service, item.version)][item.index].append(item)

    results: list[Inputs] = []
    for plan in plans:
        request = plan.request
        done = existing_ids.get(key_of(plan))
        if done is not None:
            results.append(
                Inputs(
                    request=request,
                    spec=plan.spec,
                    window_seconds=plan.window,
                    end=end,
                    canary=WindowStats(requests=0),
                    stable=None,
                    history=[],
                    existing=existing[done],
                )
            )
            continue
        series = by_series.get((request.service, request.canary_version), {})
        canary = _window(series, 0, plan.window, group)
        history: list[WindowStats] = []
        for k in range(plan.history, 0, -1):  # oldest first
            snapshot = plan.snapshots.get(k)
            history.append(
                snapshot if snapshot is not None else _window(series, k, plan.window, group)
            )
        stable = None
        if request.stable_version and request.stable_version != request.canary_version:
            stable_series = by_series.get((request.service, request.stable_version), {})
            stable = _window(stable_series, 0, plan.baseline, group)
        results.append(
            Inputs(
                request=request,
                spec=plan.spec,
                window_seconds=plan.window,
                end=end,
                canary=canary,
                stable=stable,
                history=history,
                history_from_checks=len(plan.snapshots),
            )
        )
    return results


def _seconds(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def _window(
    series: dict[int, list[store.Group]],
    k: int,
    window: int,
    group: int,
) -> WindowStats:
    """The k-th window (0 is the current one) of a series from its groups."""
    per_window = window // group
    requests = errors = 0
    latency = Histogram()
    custom: dict[str, list[float]] = {}
    for index in range(k * per_window, (k + 1) * per_window):
        for item in series.get(index, ()):
            if item.metric == TRAFFIC_METRIC:
                requests += item.requests
                errors += item.errors
                if item.latency_text:
                    latency.update(item.histogram())
            elif item.metric.startswith(CUSTOM_PREFIX) and item.value_count:
                name = item.metric[len(CUSTOM_PREFIX) :]
                low = item.value_min if item.value_min is not None else math.inf
                high = item.value_max if item.value_max is not None else -math.inf
                stat = custom.get(name)
                if stat is None:
                    custom[name] = [item.value_sum, float(item.value_count), low, high]
                else:
                    stat[0] += item.value_sum
                    stat[1] += item.value_count
                    stat[2] = min(stat[2], low)
                    stat[3] = max(stat[3], high)
    return WindowStats(
        requests=requests,
        # Errors and requests may be pushed separately; a window never has more errors than
        # requests.
        errors=min(errors, requests),
        latency=latency,
        seconds=float(window),
        custom={name: (s[0], s[1], s[2], s[3]) for name, s in custom.items()},
    )


@dataclass(frozen=True)
class JudgedWindow(WindowStats):
    """A history window read back from the check that judged it: the summary it stored
    (``WindowStats.to_dict()``, in ``result["inputs"]["canary"]``) answers ``value()`` and
    ``sample_size()``, which is all the analysis asks of a history window, without the
    histogram behind it."""

    summary: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> JudgedWindow:
        requests = int(summary.get("requests") or 0)
        return cls(
            requests=requests,
            errors=min(int(summary.get("errors") or 0), requests),
            seconds=summary.get("seconds"),
            summary=summary,
        )

    def value(self, metric: str) -> float | None:
        if metric.startswith(CUSTOM_PREFIX):
            custom = (self.summary.get("custom") or {}).get(metric[len(CUSTOM_PREFIX) :])
            return None if custom is None else custom.get("mean")
        if metric not in self.summary:
            raise ValueError(f"unknown metric {metric!r}")
        return self.summary[metric]

    def sample_size(self, metric: str) -> int:
        if metric in ("latency_p50", "latency_p95", "latency_p99"):
            return int(self.summary.get("latency_samples") or 0)
        if metric.startswith(CUSTOM_PREFIX):
            custom = (self.summary.get("custom") or {}).get(metric[len(CUSTOM_PREFIX) :])
            return int(custom.get("count") or 0) if custom else 0
        return self.requests


def evaluate(inputs: Inputs) -> analysis.Evaluation:
    return analysis.evaluate(
        inputs.spec,
        inputs.canary,
        inputs.stable,
        history=inputs.history,
        planned_canary_share=inputs.request.planned_canary_share,
    )
