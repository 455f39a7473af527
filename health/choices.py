"""Choices (TextChoices) of the health app; those with an engine's words are derived from its
enum (`health.analysis`, `health.alerting`)."""

from django.db import models

from canary_site.choices import mirror, worded, words
from health import alerting, analysis

TRAFFIC_METRIC = "requests"
"""The bucket metric that holds a version's request and error counts and its latency histogram.

Custom metrics are stored under their own name, ``custom:<name>``, with sum, count, min and max.
"""

CUSTOM_PREFIX = analysis.CUSTOM_PREFIX

Verdict = mirror(analysis.Verdict, doc="A health check's verdict.", label=words)

AlertSeverity = mirror(alerting.Severity, name="AlertSeverity", label=words)

AlertStatus = mirror(alerting.Status, name="AlertStatus", label=words)

NotificationChannel = mirror(alerting.Channel, name="NotificationChannel", label=words)


NotificationStatus = worded("NotificationStatus", "pending delivered failed")


NotificationEvent = mirror(
    alerting.Event,
    name="NotificationEvent",
    doc=alerting.Event.__doc__ or "",
    label=words,
    SEVERITY="Severity raised",
)


class PushMetric(models.TextChoices):
    """Sample names a push may carry, besides ``custom:<name>``."""

    REQUESTS = "requests", "Requests (a count)"
    ERRORS = "errors", "Errors (a count)"
    LATENCY_MS = "latency_ms", "Latency in milliseconds (one observation, or ``count`` of them)"


class PrometheusMetric(models.TextChoices):
    """What a Prometheus query's value is stored as, besides ``custom:<name>``."""

    REQUESTS = "requests", "Requests over the window"
    ERRORS = "errors", "Errors over the window"


class SeriesMetric(models.TextChoices):
    """What ``/api/v1/health/series/`` and the charts can draw, besides ``custom:<name>``."""

    REQUESTS = "requests", "Requests"
    ERRORS = "errors", "Errors"
    ERROR_RATE = "error_rate", "Error rate (%)"
    AVAILABILITY = "availability", "Availability (%)"
    LATENCY_P50 = "latency_p50", "p50 latency (ms)"
    LATENCY_P95 = "latency_p95", "p95 latency (ms)"
    LATENCY_P99 = "latency_p99", "p99 latency (ms)"
    THROUGHPUT = "throughput", "Requests per second"
