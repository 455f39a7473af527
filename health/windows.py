"""The inputs of evaluations: the windows of `health.analysis` read from the metric store.

Each canary is judged over three windows, all ending on one bucket boundary ``settle`` seconds
in the past (late flushes are in) and none reaching back before the request's ``window_start``
(rounded up to the next bucket boundary, so a bucket that began earlier is left out):

- the **current** window, the policy's ``window_seconds`` (whole buckets);
- the **fast** window, its ``fast_window_seconds``;
- the **phase** window, everything since ``window_start`` (without one, the current window).

Beside the canary, stable is read over the same spans, and over its
``baseline_window_seconds`` before the phase: that and the phase make its reference.

One evaluation pass over many canaries reads with two queries, whatever their number:

1. earlier checks: those whose current windows are this pass's history windows (a check keeps
   its canary window's summary, which is all a history window is asked for), the latest check
   of each phase within `CARRY_SECONDS` (its phase sums), and any check already stored for
   this very window (so a pass that runs twice stores nothing twice);
2. the metric buckets each canary still needs, each series as one row of arrays: its current
   and fast windows, what came since the carried phase sums (without them, the whole phase and
   stable's traffic before it) and any history window no earlier check covers.

The phase sums (the canary's and stable's counts and histograms since ``window_start``, and
stable's before it) are stored with each check (``result["carry"]``) and carried forward: a
pass adds the buckets since the previous check's end, so a long phase costs no more to judge
than a short one. A bucket that grows after it was carried (a flush later than the settle
time) is counted as far as it had got; a check without carried sums reads the phase from the
buckets. History windows lie back to back before the current one, so in a loop that evaluates
every tick each one was once some check's current window.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

from django.db.models import Case, TextField, Value, When
from django.db.models.fields.json import KT

from health import analysis, store
from health.analysis import CUSTOM_PREFIX, Policy, WindowStats
from health.choices import TRAFFIC_METRIC
from health.histogram import NUM_BUCKETS, Histogram
from health.models import HealthCheck

CARRY_SECONDS = 30
"""How far back the previous check of a phase is looked for; beyond it the phase is read from
the buckets again."""

ANCHOR_SECONDS = 10
"""How far from the current window's start a check of the phase may have ended and still stand
for it: the current window is the difference of two carried sums, corrected by the buckets
between that check's end and the window's start."""


@dataclass(frozen=True)
class EvaluationRequest:
    """One canary to judge: ``policy`` is a HealthPolicy; ``window_seconds`` None means the
    policy's own window; ``planned_canary_share`` is the canary's planned traffic percentage.

    ``window_start`` (aware) is where the canary's evidence begins: the phase's start, or the
    moment its planned share last changed. No window reaches back before it (it is rounded up
    to the next bucket boundary, so a bucket that began earlier is left out), and the
    sample-ratio check compares the split with ``planned_canary_share`` over exactly that
    span. None judges the latest window on its own, as one look."""

    service: str
    canary_version: str
    stable_version: str | None
    policy: Any
    window_seconds: int | None = None
    planned_canary_share: float | None = None
    window_start: datetime | None = None

    @property
    def check_key(self) -> tuple[str, str, str, Any]:
        """What a stored check of this canary is found by, before its window: service,
        versions (no stable version is ``""``) and policy id."""
        return (self.service, self.canary_version, self.stable_version or "", self.policy.pk)


@dataclass
class Inputs:
    """What `analysis.evaluate` needs for one request, plus what the check will store.

    ``spans`` maps each window's name to its (start, end) in epoch seconds; ``carry`` is the
    phase sums to store with the check (None without a ``window_start``)."""

    request: EvaluationRequest
    spec: Policy
    window_seconds: int
    end: datetime
    canary: WindowStats
    stable: WindowStats | None
    history: list[WindowStats]
    existing: HealthCheck | None = None
    history_from_checks: int = 0
    window_start: datetime | None = None
    fast: analysis.Window | None = None
    phase: analysis.Window | None = None
    stable_reference: WindowStats | None = None
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    carry: dict[str, Any] | None = None
    carried: bool = False


@dataclass
class _Plan:
    request: EvaluationRequest
    spec: Policy
    window: int  # the current window's full length
    baseline: int
    history: int
    start: int | None  # window_start, on the bucket grid
    current: int  # where the current window starts
    fast: int
    phase: int
    end: int
    stable: bool  # whether there is a stable version to read
    custom: bool  # whether the policy reads custom metrics of the current window
    snapshots: dict[int, WindowStats] = field(default_factory=dict)  # k -> window
    carry: Mapping[str, Any] | None = None
    carried_to: int | None = None
    anchor: Mapping[str, Any] | None = None
    anchored_at: int | None = None

    @property
    def key(self) -> tuple[str, str, str, int | None, int]:
        return (*self.request.check_key, self.window_seconds)

    @property
    def window_seconds(self) -> int:
        return self.end - self.current


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


def _plan(request: EvaluationRequest, spec: Policy, end: int, resolution: int) -> _Plan:
    window = whole_buckets(request.window_seconds or spec.window_seconds, resolution)
    start = None
    if request.window_start is not None:
        start = math.ceil(request.window_start.timestamp() / resolution) * resolution
        start = min(start, end)
    current = end - window if start is None else max(end - window, start)
    fast = end - whole_buckets(spec.fast_window_seconds, resolution)
    fast = fast if start is None else max(fast, start)
    history = history_needed(spec) if current == end - window else 0
    if start is not None:
        # Only windows of the phase's own traffic.
        history = min(history, max(0, (current - start) // window))
    stable = bool(request.stable_version) and request.stable_version != request.canary_version
    watched = [threshold.metric for threshold in spec.thresholds]
    if spec.trend.enabled:
        watched += spec.trend.metrics
    if spec.auto_rollback.enabled:
        watched += [threshold.metric for threshold in spec.auto_rollback.thresholds]
    return _Plan(
        request=request,
        spec=spec,
        window=window,
        baseline=whole_buckets(spec.comparison.baseline_window_seconds, resolution),
        history=history,
        start=start,
        current=current,
        fast=fast,
        phase=current if start is None else start,
        stable=stable,
        custom=any(metric.startswith(CUSTOM_PREFIX) for metric in watched),
        end=end,
    )


def gather(
    requests: Sequence[EvaluationRequest],
    *,
    end: datetime,
    resolution: int,
    specs: dict[int, Policy],
) -> list[Inputs]:
    """Read every request's windows; ``specs`` maps policy ids to their built policies."""
    end_ts = int(end.timestamp())
    plans = [_plan(r, specs[r.policy.pk], end_ts, resolution) for r in requests]
    if not plans:
        return []

    # Query 1: checks holding this pass's history windows, the phases' latest sums and those
    # at the start of each current window, and checks of this very window.
    history_ends: set[datetime] = set()
    for plan in plans:
        history_ends.update(
            end - timedelta(seconds=plan.window * k) for k in range(1, plan.history + 1)
        )
    phase_ends: set[datetime] = set()
    if any(plan.start is not None for plan in plans):
        steps = range(1, CARRY_SECONDS // resolution + 1)
        phase_ends.update(end - timedelta(seconds=resolution * i) for i in steps)
        reach = ANCHOR_SECONDS // resolution
        for window in {plan.window for plan in plans if _anchorable(plan)}:
            phase_ends.update(
                end - timedelta(seconds=window + resolution * i) for i in range(-reach, reach + 1)
            )
    services = {plan.request.service for plan in plans}
    rows = list(
        HealthCheck.objects.filter(
            service__in=services, window_end__in={end} | history_ends | phase_ends
        )
        .order_by()
        # The history windows' summaries as text, decoded below in one call: thousands of small
        # decodes cost more than the read.
        .annotate(
            window_text=Case(
                When(window_end__in=history_ends, then=KT("result__inputs__canary")),
                default=Value(None),
                output_field=TextField(),
            )
            if history_ends
            else Value(None, output_field=TextField()),
        )
        .values_list(
            "id",
            "service",
            "canary_version",
            "stable_version",
            "policy_id",
            "window_seconds",
            "window_end",
            "window_start",
            "window_text",
        )
    )
    history_rows = [row for row in rows if row[8]]
    decoded = json.loads("[" + ",".join(row[8] for row in history_rows) + "]")
    snapshots: dict[tuple[str, str, int, datetime], Any] = {}
    for row, window in zip(history_rows, decoded, strict=True):
        if window:
            snapshots[(row[1], row[2], row[5], row[6])] = window
    existing_ids: dict[tuple[str, str, str, int | None, int], int] = {}
    phases: dict[tuple[str, str, str, int | None, int], list[tuple[int, int]]] = defaultdict(list)
    for pk, service, canary, stable, policy_id, seconds, ended, started, _text in rows:
        if ended == end:
            existing_ids[(service, canary, stable, policy_id, seconds)] = pk
        elif started is not None:
            key = (service, canary, stable, policy_id, int(started.timestamp()))
            phases[key].append((int(ended.timestamp()), pk))
    existing = HealthCheck.objects.in_bulk(list(existing_ids.values())) if existing_ids else {}

    # A window already judged under the same policy is not read or judged again.
    todo = [plan for plan in plans if plan.key not in existing_ids]
    _pick_carries(todo, phases, end_ts)

    # Which history windows no check covers, and which spans of each series must be read.
    spans: dict[tuple[int, int], tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for plan in todo:
        request = plan.request
        missing = 0
        for k in range(1, plan.history + 1):
            snapshot = snapshots.get(
                (
                    request.service,
                    request.canary_version,
                    plan.window,
                    end - timedelta(seconds=plan.window * k),
                )
            )
            if snapshot is None:
                missing = k
            else:
                plan.snapshots[k] = JudgedWindow.from_summary(snapshot)
        canary_spans, stable_spans = _spans(plan, missing)
        for low, high in canary_spans:
            spans[(low, high)][0].add(request.service)
            spans[(low, high)][1].add(request.canary_version)
        if plan.stable:
            for low, high in stable_spans:
                spans[(low, high)][0].add(request.service)
                spans[(low, high)][1].add(request.stable_version or "")

    # Query 2: the buckets, one row of arrays per series.
    reader = _Reader(
        store.series(
            spans=[(names, versions, low, high) for (low, high), (names, versions) in spans.items()]
        )
    )

    results: list[Inputs] = []
    for plan in plans:
        done = existing_ids.get(plan.key)
        if done is not None:
            results.append(
                Inputs(
                    request=plan.request,
                    spec=plan.spec,
                    window_seconds=plan.window_seconds,
                    end=end,
                    canary=WindowStats(requests=0),
                    stable=None,
                    history=[],
                    existing=existing[done],
                    window_start=_moment(plan.start),
                )
            )
            continue
        results.append(_inputs(plan, reader, end))
    return results


def _anchorable(plan: _Plan) -> bool:
    """Whether the plan's current window may be the difference of two carried sums: a phase
    older than the window, and no custom metric (their minimum and maximum do not subtract)."""
    return plan.start is not None and plan.current > plan.start and not plan.custom


def _pick_carries(
    plans: Sequence[_Plan],
    phases: Mapping[tuple[str, str, str, int | None, int], list[tuple[int, int]]],
    end: int,
) -> None:
    """Find each plan's carried sums: the latest check of its phase (within CARRY_SECONDS),
    and the one nearest to its current window's start (within ANCHOR_SECONDS); then read
    them (one query)."""
    wanted: dict[int, list[tuple[_Plan, str, int]]] = defaultdict(list)
    for plan in plans:
        if plan.start is None:
            continue
        request = plan.request
        key = (
            request.service,
            request.canary_version,
            request.stable_version or "",
            request.policy.pk,
            plan.start,
        )
        found = phases.get(key, ())
        recent = [(ended, pk) for ended, pk in found if end - CARRY_SECONDS <= ended < end]
        if not recent:
            continue  # the phase is read from the buckets: no carry, no anchor
        ended, pk = max(recent)
        wanted[pk].append((plan, "carry", ended))
        if _anchorable(plan):
            near = [
                (abs(ended - plan.current), ended, pk)
                for ended, pk in found
                if abs(ended - plan.current) <= ANCHOR_SECONDS and ended >= plan.start
            ]
            if near:
                _distance, ended, pk = min(near)
                wanted[pk].append((plan, "anchor", ended))
    if not wanted:
        return
    rows = list(
        HealthCheck.objects.filter(pk__in=list(wanted))
        .annotate(carry_text=KT("result__carry"))
        .values_list("id", "carry_text")
    )
    rows = [row for row in rows if row[1]]
    texts = json.loads("[" + ",".join(text for _pk, text in rows) + "]")
    for (pk, _text), carry in zip(rows, texts, strict=True):
        for plan, role, ended in wanted[pk]:
            if not carry or carry.get("through") != ended:
                continue
            if carry.get("window_start") != plan.start:
                continue
            if role == "carry":
                plan.carry, plan.carried_to = carry, ended
            else:
                plan.anchor, plan.anchored_at = carry, ended
    for plan in plans:
        if plan.carry is None:
            plan.anchor = plan.anchored_at = None


def _spans(plan: _Plan, missing: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The spans of buckets a plan reads, for the canary and for stable."""
    end = plan.end
    recent = plan.fast
    if missing:
        recent = min(recent, end - plan.window * (missing + 1))
    if plan.start is None:
        recent = min(recent, plan.current)
        return [(recent, end)], [(min(recent, plan.current - plan.baseline), end)]
    if plan.carry is None:
        recent = min(recent, plan.phase)
        return [(recent, end)], [(min(recent, plan.phase - plan.baseline), end)]
    assert plan.carried_to is not None
    recent = min(recent, plan.carried_to)
    extra: list[tuple[int, int]] = []
    if plan.custom or (plan.current > plan.phase and plan.anchor is None):
        recent = min(recent, plan.current)
    elif plan.anchor is not None and plan.anchored_at != plan.current:
        assert plan.anchored_at is not None
        extra.append((min(plan.anchored_at, plan.current), max(plan.anchored_at, plan.current)))
    return [(recent, end), *extra], [(recent, end), *extra]


def _moment(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _inputs(plan: _Plan, reader: _Reader, end: datetime) -> Inputs:
    request, end_ts = plan.request, plan.end
    canary_version = request.canary_version
    stable_version = request.stable_version or ""
    service = request.service
    history: list[WindowStats] = []
    for k in range(plan.history, 0, -1):  # oldest first
        snapshot = plan.snapshots.get(k)
        if snapshot is None:
            high = end_ts - plan.window * k
            snapshot = reader.window(service, canary_version, high - plan.window, high, custom=True)
        history.append(snapshot)
    fast_canary = reader.window(service, canary_version, plan.fast, end_ts)
    fast_stable = None
    if plan.stable:
        fast_stable = reader.window(service, stable_version, plan.fast, end_ts)

    phase_canary = phase_stable = before = None
    carry = plan.carry
    if plan.start is not None:
        since = plan.carried_to if carry is not None else plan.phase
        phase_canary = reader.window(service, canary_version, since, end_ts)
        if plan.stable:
            phase_stable = reader.window(service, stable_version, since, end_ts)
            before = (
                _summed(carry.get("stable_before"))
                if carry is not None
                else reader.window(service, stable_version, plan.phase - plan.baseline, plan.phase)
            )
        if carry is not None:
            phase_canary = _add(_summed(carry.get("canary")), phase_canary)
            if phase_stable is not None:
                phase_stable = _add(_summed(carry.get("stable")), phase_stable)
        seconds = float(end_ts - plan.phase) or None
        phase_canary = _with_seconds(phase_canary, seconds)
        if phase_stable is not None:
            phase_stable = _with_seconds(phase_stable, seconds)

    current_seconds = float(plan.window_seconds) or None
    canary: WindowStats | None = None
    stable: WindowStats | None = None
    if phase_canary is not None and not plan.custom:
        if plan.current == plan.phase:
            canary, stable = phase_canary, phase_stable
        elif plan.anchor is not None:
            canary = _between(reader, plan, canary_version, phase_canary, plan.anchor["canary"])
            if phase_stable is not None:
                stable = _between(
                    reader, plan, stable_version, phase_stable, plan.anchor.get("stable")
                )
    if canary is None:
        canary = reader.window(service, canary_version, plan.current, end_ts, custom=True)
        if plan.stable:
            stable = reader.window(service, stable_version, plan.current, end_ts)
    canary = _with_seconds(canary, current_seconds, canary.custom)
    if stable is not None:
        stable = _with_seconds(stable, current_seconds)
    if plan.start is None and stable is not None:
        before = reader.window(service, stable_version, plan.current - plan.baseline, plan.current)
        phase_stable = stable
    reference = None
    if phase_stable is not None and before is not None:
        reference = _add(before, phase_stable)

    new_carry = None
    if plan.start is not None and phase_canary is not None:
        new_carry = {
            "window_start": plan.start,
            "through": end_ts,
            "canary": _carried(phase_canary),
            "stable": None if phase_stable is None else _carried(phase_stable),
            "stable_before": None if before is None else _carried(before),
        }
    return Inputs(
        request=request,
        spec=plan.spec,
        window_seconds=plan.window_seconds,
        end=end,
        canary=canary,
        stable=stable,
        history=history,
        history_from_checks=len(plan.snapshots),
        window_start=_moment(plan.start),
        fast=analysis.Window(fast_canary, fast_stable),
        phase=None if phase_canary is None else analysis.Window(phase_canary, phase_stable),
        stable_reference=reference,
        spans={
            "current": (plan.current, end_ts),
            "fast": (plan.fast, end_ts),
            "phase": (plan.phase, end_ts),
        },
        carry=new_carry,
        carried=carry is not None,
    )


def _between(
    reader: _Reader,
    plan: _Plan,
    version: str,
    now: WindowStats,
    then: Mapping[str, Any] | None,
) -> WindowStats:
    """The current window as the phase's sums now less those carried at the anchor, corrected
    by the buckets between the anchor and the window's start."""
    assert plan.anchored_at is not None
    window = _minus(now, _summed(then))
    anchor, start = plan.anchored_at, plan.current
    if anchor < start:
        return _minus(window, reader.window(plan.request.service, version, anchor, start))
    if anchor > start:
        return _add(window, reader.window(plan.request.service, version, start, anchor))
    return window


def _carried(window: WindowStats) -> dict[str, Any]:
    return {
        "requests": window.requests,
        "errors": window.errors,
        "latency": window.latency.to_list(),
    }


def _summed(data: Mapping[str, Any] | None) -> WindowStats:
    """A window from carried sums."""
    if not data:
        return WindowStats(requests=0)
    counts = [0] * NUM_BUCKETS
    for index, count in data.get("latency") or ():
        counts[index] += count
    histogram = Histogram.__new__(Histogram)
    histogram.counts = counts
    histogram.total = sum(counts)
    requests = int(data.get("requests") or 0)
    return WindowStats(
        requests=requests,
        errors=min(requests, int(data.get("errors") or 0)),
        latency=histogram,
    )


def _add(first: WindowStats, second: WindowStats) -> WindowStats:
    return WindowStats(
        requests=first.requests + second.requests,
        errors=first.errors + second.errors,
        latency=first.latency.merge(second.latency),
    )


def _minus(first: WindowStats, second: WindowStats) -> WindowStats:
    """``first`` less ``second`` (a span's sums less those of its beginning); a count that would
    go below zero, as a late flush can make it, stops at zero."""
    histogram = Histogram.__new__(Histogram)
    histogram.counts = [
        a - b if a > b else 0
        for a, b in zip(first.latency.counts, second.latency.counts, strict=True)
    ]
    histogram.total = sum(histogram.counts)
    requests = max(0, first.requests - second.requests)
    return WindowStats(
        requests=requests,
        errors=min(requests, max(0, first.errors - second.errors)),
        latency=histogram,
    )


def _with_seconds(
    window: WindowStats,
    seconds: float | None,
    custom: Mapping[str, tuple[float, float, float, float]] | None = None,
) -> WindowStats:
    return WindowStats(
        requests=window.requests,
        errors=window.errors,
        latency=window.latency,
        seconds=seconds,
        custom=custom or {},
    )


class _Reader:
    """Sums of buckets over any span of the series one query read."""

    def __init__(self, series: Sequence[store.Series]) -> None:
        self.traffic: dict[tuple[str, str], store.Series] = {}
        self.custom: dict[tuple[str, str], list[store.Series]] = defaultdict(list)
        self.sums: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for item in series:
            key = (item.service, item.version)
            if item.metric == TRAFFIC_METRIC:
                self.traffic[key] = item
                self.sums[key] = (
                    list(accumulate(item.requests, initial=0)),
                    list(accumulate(item.errors, initial=0)),
                )
            elif item.metric.startswith(CUSTOM_PREFIX):
                self.custom[key].append(item)

    def window(
        self, service: str, version: str, low: int, high: int, *, custom: bool = False
    ) -> WindowStats:
        """The buckets of a series starting in [low, high) as a window."""
        key = (service, version)
        seconds = float(high - low) if high > low else None
        requests = errors = 0
        latency = Histogram()
        traffic = self.traffic.get(key)
        if traffic is not None and high > low:
            first = bisect_left(traffic.starts, low)
            last = bisect_left(traffic.starts, high)
            if last > first:
                cumulative_requests, cumulative_errors = self.sums[key]
                requests = cumulative_requests[last] - cumulative_requests[first]
                errors = cumulative_errors[last] - cumulative_errors[first]
                latency = store.histogram_from_texts(",".join(traffic.latency[first:last]))
        stats: dict[str, tuple[float, float, float, float]] = {}
        if custom and high > low:
            for item in self.custom.get(key, ()):
                first = bisect_left(item.starts, low)
                last = bisect_left(item.starts, high)
                count = sum(item.value_count[first:last])
                if not count:
                    continue
                lows = [v for v in item.value_min[first:last] if v is not None]
                highs = [v for v in item.value_max[first:last] if v is not None]
                stats[item.metric[len(CUSTOM_PREFIX) :]] = (
                    float(sum(item.value_sum[first:last])),
                    float(count),
                    min(lows) if lows else math.inf,
                    max(highs) if highs else -math.inf,
                )
        return WindowStats(
            requests=requests,
            # Errors and requests may be pushed separately; a window never has more errors
            # than requests.
            errors=min(errors, requests),
            latency=latency,
            seconds=seconds,
            custom=stats,
        )


@dataclass(frozen=True)
class JudgedWindow(WindowStats):
    """A history window read back from the check that judged it: the summary it stored
    (``WindowStats.to_dict()``, in ``result["inputs"]["canary"]``) answers ``value()``,
    ``interval()`` and ``sample_size()``, which is all the analysis asks of a history window,
    without the histogram behind it."""

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

    def interval(self, metric: str) -> tuple[float, float] | None:
        if metric in ("error_rate", "availability"):
            return super().interval(metric)
        bounds = (self.summary.get("latency_intervals") or {}).get(metric)
        if bounds is None:
            return None
        return float(bounds[0]), float(bounds[1])

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
        fast=inputs.fast,
        phase=inputs.phase,
        stable_reference=inputs.stable_reference,
    )
