"""Choices (TextChoices) of the health app."""

from django.db import models

TRAFFIC_METRIC = "requests"
"""The bucket metric that holds a version's request and error counts and its latency histogram.

Custom metrics are stored under their own name, ``custom:<name>``, with sum, count, min and max.
"""

CUSTOM_PREFIX = "custom:"


class Verdict(models.TextChoices):
    """A health check's verdict; the same words as ``health.analysis.Verdict``."""

    PASS = "pass", "Pass"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"
    NO_DATA = "no_data", "No data"
    INCONCLUSIVE = "inconclusive", "Inconclusive"


class AlertSeverity(models.TextChoices):
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class AlertStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class NotificationChannel(models.TextChoices):
    EMAIL = "email", "Email"
    SLACK = "slack", "Slack"
    WEBHOOK = "webhook", "Webhook"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class NotificationEvent(models.TextChoices):
    """Why a notification was written: an alert raised, made worse, escalated or resolved, or
    news of a deployment (started, phase completed, succeeded, rolled back, failed)."""

    RAISED = "raised", "Raised"
    SEVERITY = "severity", "Severity raised"
    ESCALATED = "escalated", "Escalated"
    RESOLVED = "resolved", "Resolved"
    DEPLOYMENT = "deployment", "Deployment"


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
