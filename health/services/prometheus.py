"""The beat's pull of PromQL queries (the HTTP client is `health.prometheus`) into the store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from canary_site.audit import audit_context
from canary_site.choices import Source
from canary_site.exceptions import ValidationFailed, full_clean
from health import conf, prometheus, store
from health.choices import TRAFFIC_METRIC, PrometheusMetric
from health.ingest import NAME_PATTERN, Deltas, floor_time
from health.models import HealthCheck, PrometheusQuery
from health.services.ingestion import batch_digest, ingest_batch


@dataclass
class PullReport:
    queries: int = 0
    values: int = 0
    skipped: str = ""
    errors: list[str] = field(default_factory=list)


def prometheus_query_create(
    *,
    name: str,
    metric: str,
    query: str,
    service: str = "",
    versions: Sequence[str] | None = None,
    enabled: bool = True,
    actor: Any = None,
    source: str = Source.SYSTEM,
) -> PrometheusQuery:
    """Register a PromQL query whose value is stored as ``metric`` of each series."""
    versions = list(versions or [])
    for index, version in enumerate(versions):
        if not isinstance(version, str) or not NAME_PATTERN.fullmatch(version):
            raise ValidationFailed("Not a version name.", field=f"versions[{index}]")
    row = PrometheusQuery(
        name=name, metric=metric, query=query, service=service, versions=versions, enabled=enabled
    )
    full_clean(row)
    with audit_context(actor=actor, source=source, verb="create"):
        row.save()
    return row


def prometheus_pull(
    *, now: datetime | None = None, targets: Iterable[tuple[str, str]] | None = None
) -> PullReport:
    """Run every enabled PrometheusQuery for its series and add the values to the store.

    The pull covers whole periods of ``CANARY_PROMETHEUS_PULL_SECONDS`` ending on the period
    grid, the query evaluated at the period's end with ``{{window}}`` the period, so two runs
    in one period fetch once: each (query, period) is ingested under its own idempotency key.
    Periods missed since the last pull are caught up (up to
    ``CANARY_PROMETHEUS_CATCH_UP_PERIODS``). Counts (``requests``, ``errors``) are spread over
    the period's buckets; a custom metric's value is one observation at the period's end.

    A query's series: its ``service`` (or every service evaluated in the last hour) and its
    ``versions`` (or the versions of that service evaluated in the last hour), plus
    ``targets``, (service, version) pairs a caller wants pulled.
    """
    report = PullReport()
    base_url = conf.prometheus_url()
    if not base_url:
        report.skipped = "CANARY_PROMETHEUS_URL is not set"
        return report
    queries = list(PrometheusQuery.objects.filter(enabled=True))
    if not queries:
        report.skipped = "no enabled Prometheus query"
        return report
    now = now or timezone.now()
    period = conf.prometheus_pull_seconds()
    resolution = conf.bucket_seconds()
    # Scrapes land in Prometheus a moment after their timestamps: ask only about settled time.
    latest = floor_time(now - timedelta(seconds=conf.settle_seconds()), period)
    recent = _recent_series(now) | set(targets or ())
    timeout = conf.prometheus_timeout_seconds()
    for query in queries:
        series = _query_series(query, recent)
        if not series:
            continue
        first = latest - timedelta(seconds=period * (conf.prometheus_catch_up_periods() - 1))
        if query.last_pulled_at is not None:
            first = max(first, query.last_pulled_at + timedelta(seconds=period))
        end = first
        pulled_to: datetime | None = None
        failed = False
        while end <= latest and not failed:
            deltas = Deltas(resolution)
            found = 0
            for service, version in series:
                promql = prometheus.render(
                    query.query, service=service, version=version, window_seconds=period
                )
                try:
                    value = prometheus.query(base_url, promql, at=end, timeout=timeout)
                except prometheus.PrometheusError as error:
                    report.errors.append(f"{query.name} ({service} {version}): {error}")
                    failed = True
                    break
                report.queries += 1
                if value is None:
                    continue
                found += 1
                _add_pulled_value(
                    deltas, query.metric, service, version, value, end, period, resolution
                )
            if failed:
                break
            key = f"prometheus:{query.pk}:{int(end.timestamp())}"
            sorted_deltas = deltas.sorted()
            encoded = store.encode(sorted_deltas)
            if not ingest_batch(
                sorted_deltas,
                encoded=encoded,
                key=key,
                digest=batch_digest(encoded),
                samples=found,
                source="prometheus",
            ):
                report.values += found
            pulled_to = end
            end += timedelta(seconds=period)
        changes: dict[str, Any] = {"last_error": report.errors[-1] if failed else ""}
        if pulled_to is not None:
            changes["last_pulled_at"] = pulled_to
        # A queryset update: bookkeeping of the loop is not a change anyone made.
        PrometheusQuery.objects.filter(pk=query.pk).update(**changes)
    return report


def _recent_series(now: datetime) -> set[tuple[str, str]]:
    rows = (
        HealthCheck.objects.filter(created_at__gte=now - timedelta(hours=1))
        .values_list("service", "canary_version", "stable_version")
        .distinct()
    )
    series: set[tuple[str, str]] = set()
    for service, canary, stable in rows:
        series.add((service, canary))
        if stable:
            series.add((service, stable))
    return series


def _query_series(query: PrometheusQuery, recent: set[tuple[str, str]]) -> list[tuple[str, str]]:
    if query.service and query.versions:
        return sorted((query.service, version) for version in query.versions)
    if query.service:
        return sorted(pair for pair in recent if pair[0] == query.service)
    return sorted(recent)


def _add_pulled_value(
    deltas: Deltas,
    metric: str,
    service: str,
    version: str,
    value: float,
    end: datetime,
    period: int,
    resolution: int,
) -> None:
    if metric in (PrometheusMetric.REQUESTS, PrometheusMetric.ERRORS):
        total = max(0, round(value))
        starts = [
            floor_time(end - timedelta(seconds=offset), resolution)
            for offset in range(period, 0, -resolution)
        ] or [floor_time(end - timedelta(seconds=period), resolution)]
        share, extra = divmod(total, len(starts))
        for index, start in enumerate(starts):
            count = share + (1 if index < extra else 0)
            if not count:
                continue
            delta = deltas.get(service, version, TRAFFIC_METRIC, start)
            if metric == PrometheusMetric.REQUESTS:
                delta.requests += count
            else:
                delta.errors += count
        return
    start = floor_time(end - timedelta(seconds=1), resolution)
    deltas.get(service, version, metric, start).add_observation(value)
