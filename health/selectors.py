"""Reads of the health app: series for charts, policies, checks, alerts and notifications."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Max, QuerySet
from django.utils import timezone

from health import conf, store
from health.analysis import is_custom_metric
from health.choices import CUSTOM_PREFIX, TRAFFIC_METRIC, AlertStatus, SeriesMetric
from health.histogram import Histogram
from health.models import Alert, HealthCheck, HealthPolicy, NotificationOutbox

MAX_POINTS = 180
MAX_WINDOW_SECONDS = 7 * 24 * 3600
_QUANTILES = {"latency_p50": 50.0, "latency_p95": 95.0, "latency_p99": 99.0}


def is_series_metric(name: str) -> bool:
    return name in SeriesMetric.values or is_custom_metric(name)


# --------------------------------------------------------------------------- series


@dataclass
class Series:
    """One metric of one version over time, as plain lists: ``values[i]`` is the value over
    ``[timestamps[i], timestamps[i] + step_seconds)``, None where there was nothing to measure."""

    service: str
    version: str
    metric: str
    step_seconds: int
    timestamps: list[datetime] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "metric": self.metric,
            "step_seconds": self.step_seconds,
            "timestamps": [moment.isoformat() for moment in self.timestamps],
            "values": self.values,
        }


MIN_STEP_SECONDS = 10
"""The finest default step of a chart: the store's 2-second buckets are there for the judge,
and a chart of them is mostly noise."""


def series_step(window_seconds: int) -> int:
    """Bucket-aligned step that keeps a chart under MAX_POINTS points, and no finer than
    MIN_STEP_SECONDS."""
    resolution = conf.bucket_seconds()
    buckets = max(
        math.ceil(window_seconds / resolution / MAX_POINTS),
        math.ceil(MIN_STEP_SECONDS / resolution),
    )
    return max(1, buckets) * resolution


def series(
    *,
    service: str,
    version: str,
    metric: str,
    window_seconds: int,
    now: datetime | None = None,
    step_seconds: int | None = None,
) -> Series:
    """One metric of one version over the last ``window_seconds``."""
    return series_many(
        service=service,
        versions=[version],
        metrics=[metric],
        window_seconds=window_seconds,
        now=now,
        step_seconds=step_seconds,
    )[(version, metric)]


def series_many(
    *,
    service: str,
    versions: Sequence[str],
    metrics: Sequence[str],
    window_seconds: int,
    now: datetime | None = None,
    step_seconds: int | None = None,
) -> dict[tuple[str, str], Series]:
    """Several metrics of several versions of one service, from one query.

    Points end at the last whole step before ``now``; the step in progress is left out so a
    chart's last point is not a half-filled bucket.
    """
    found = series_many_services(
        services=[service],
        versions=versions,
        metrics=metrics,
        window_seconds=window_seconds,
        now=now,
        step_seconds=step_seconds,
    )
    return {(version, metric): series for (_s, version, metric), series in found.items()}


def series_many_services(
    *,
    services: Sequence[str],
    versions: Sequence[str],
    metrics: Sequence[str],
    window_seconds: int,
    now: datetime | None = None,
    step_seconds: int | None = None,
) -> dict[tuple[str, str, str], Series]:
    """`series_many` for several services at once, by (service, version, metric), from one
    query: every service's series of every version named."""
    now = now or timezone.now()
    step = step_seconds or series_step(window_seconds)
    points = max(1, math.ceil(window_seconds / step))
    end_ts = int(now.timestamp() // step) * step
    end = datetime.fromtimestamp(end_ts, tz=UTC)
    bucket_metrics = {
        metric if metric.startswith(CUSTOM_PREFIX) else TRAFFIC_METRIC for metric in metrics
    }
    groups = store.grouped(
        services=services,
        spans=[(versions, points * step)],
        end=end,
        group_seconds=step,
        metrics=bucket_metrics,
    )
    found: dict[tuple[str, str, str, int], store.Group] = {
        (group.service, group.version, group.metric, group.index): group for group in groups
    }
    timestamps = [end - timedelta(seconds=step * (k + 1)) for k in range(points - 1, -1, -1)]
    result: dict[tuple[str, str, str], Series] = {}
    for service in dict.fromkeys(services):
        for version in versions:
            for metric in metrics:
                bucket_metric = metric if metric.startswith(CUSTOM_PREFIX) else TRAFFIC_METRIC
                values = [
                    _value(metric, found.get((service, version, bucket_metric, k)), step)
                    for k in range(points - 1, -1, -1)
                ]
                result[(service, version, metric)] = Series(
                    service=service,
                    version=version,
                    metric=metric,
                    step_seconds=step,
                    timestamps=list(timestamps),
                    values=values,
                )
    return result


def _value(metric: str, group: store.Group | None, step: int) -> float | None:
    if metric.startswith(CUSTOM_PREFIX):
        if group is None or not group.value_count:
            return None
        return group.value_sum / group.value_count
    requests = group.requests if group else 0
    errors = min(group.errors, requests) if group else 0
    if metric == SeriesMetric.REQUESTS:
        return float(requests)
    if metric == SeriesMetric.ERRORS:
        return float(errors)
    if metric == SeriesMetric.THROUGHPUT:
        return requests / step
    if metric == SeriesMetric.ERROR_RATE:
        return 100.0 * errors / requests if requests else None
    if metric == SeriesMetric.AVAILABILITY:
        return 100.0 * (requests - errors) / requests if requests else None
    if metric in _QUANTILES:
        histogram = group.histogram() if group else Histogram()
        return histogram.percentile(_QUANTILES[metric]) if histogram.total else None
    raise ValueError(f"unknown series metric {metric!r}")


# --------------------------------------------------------------------------- policies


def policies() -> QuerySet[HealthPolicy]:
    return HealthPolicy.objects.all()


def policy_by_id(*, policy_id: int) -> HealthPolicy | None:
    return HealthPolicy.objects.filter(pk=policy_id).first()


def policies_by_id(*, ids: Iterable[int]) -> dict[int, HealthPolicy]:
    return HealthPolicy.objects.in_bulk(list(ids))


# --------------------------------------------------------------------------- checks


def checks() -> QuerySet[HealthCheck]:
    """Every check, newest window first."""
    return HealthCheck.objects.select_related("policy")


def checks_for_service(*, service: str, canary_version: str | None = None) -> QuerySet:
    rows = checks().filter(service=service)
    if canary_version:
        rows = rows.filter(canary_version=canary_version)
    return rows


def latest_check(*, service: str, canary_version: str | None = None) -> HealthCheck | None:
    return checks_for_service(service=service, canary_version=canary_version).first()


@dataclass
class ServiceHealth:
    """A service on the overview: its latest check per canary and its open alerts."""

    service: str
    latest: list[HealthCheck]
    open_alerts: int

    @property
    def worst(self) -> str:
        order = ["critical", "warning", "inconclusive", "no_data", "pass"]
        verdicts = {check.verdict for check in self.latest}
        return next((verdict for verdict in order if verdict in verdicts), "pass")


def services_overview(*, hours: float = 24, now: datetime | None = None) -> list[ServiceHealth]:
    """Services with checks in the last ``hours``, worst first, in three queries."""
    now = now or timezone.now()
    latest_ids = (
        HealthCheck.objects.filter(created_at__gte=now - timedelta(hours=hours))
        .values("service", "canary_version", "stable_version")
        .annotate(last=Max("id"))
        .values_list("last", flat=True)
    )
    latest: dict[str, list[HealthCheck]] = {}
    for check in checks().filter(pk__in=list(latest_ids)).order_by("service", "canary_version"):
        latest.setdefault(check.service, []).append(check)
    counts = dict(
        Alert.objects.exclude(status=AlertStatus.RESOLVED)
        .values("service")
        .annotate(count=Count("id"))
        .values_list("service", "count")
    )
    names = sorted(set(latest) | set(counts))
    overview = [
        ServiceHealth(service=name, latest=latest.get(name, []), open_alerts=counts.get(name, 0))
        for name in names
    ]
    rank = {"critical": 0, "warning": 1, "inconclusive": 2, "no_data": 3, "pass": 4}
    overview.sort(key=lambda item: (rank.get(item.worst, 5), -item.open_alerts, item.service))
    return overview


def versions_of(*, service: str) -> tuple[str | None, str | None]:
    """The canary and stable versions of the service's latest check (None, None if none)."""
    check = latest_check(service=service)
    if check is None:
        return None, None
    return check.canary_version, check.stable_version or None


# --------------------------------------------------------------------------- alerts


def alerts() -> QuerySet[Alert]:
    return Alert.objects.select_related(
        "policy", "acknowledged_by", "resolved_by", "last_check"
    ).defer("last_check__result")


def alerts_open(*, service: str | None = None) -> QuerySet[Alert]:
    rows = alerts().exclude(status=AlertStatus.RESOLVED)
    if service:
        rows = rows.filter(service=service)
    return rows


def alert_by_id(*, alert_id: int) -> Alert | None:
    return alerts().filter(pk=alert_id).first()


def notifications() -> QuerySet[NotificationOutbox]:
    return NotificationOutbox.objects.select_related("alert")
