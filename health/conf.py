"""The health app's settings, read when used so a changed setting (or a test) takes effect.

Each is a ``CANARY_*`` setting with the default shown; none is required.
"""

from __future__ import annotations

from django.conf import settings

from canary_site.conf import setting

_get = setting


def bucket_seconds() -> int:
    """Resolution of the fine buckets every source writes: fine enough for the judge's fast
    window to answer within seconds."""
    return int(_get("CANARY_METRICS_BUCKET_SECONDS", 2))


def rollup_seconds() -> int:
    """Resolution of the coarse buckets old fine buckets roll up into."""
    return int(_get("CANARY_METRICS_ROLLUP_SECONDS", 300))


def rollup_after_hours() -> float:
    """Age after which fine buckets are rolled up into coarse ones."""
    return float(_get("CANARY_METRICS_ROLLUP_AFTER_HOURS", 3))


def retention_hours() -> float:
    """Age after which buckets of any resolution are deleted (metricsRetentionHours)."""
    return float(_get("CANARY_METRICS_RETENTION_HOURS", 24))


def push_max_samples() -> int:
    return int(_get("CANARY_METRICS_PUSH_MAX_SAMPLES", 5000))


def push_max_bytes() -> int:
    # Below Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), so the client gets our 413.
    return int(_get("CANARY_METRICS_PUSH_MAX_BYTES", 2_000_000))


def push_max_future_seconds() -> float:
    """How far ahead of our clock a sample's timestamp may be (clock skew)."""
    return float(_get("CANARY_METRICS_MAX_FUTURE_SECONDS", 300))


def idempotency_hours() -> float:
    """How long a push's idempotency key is remembered."""
    return float(_get("CANARY_METRICS_IDEMPOTENCY_HOURS", 24))


def settle_seconds() -> int:
    """How long after a bucket ends before it is judged, so late flushes are in (the proxy
    flushes every second)."""
    return int(_get("CANARY_HEALTH_SETTLE_SECONDS", 2))


def check_retention_days() -> float:
    return float(_get("CANARY_HEALTH_CHECK_RETENTION_DAYS", 14))


def prometheus_url() -> str:
    return str(_get("CANARY_PROMETHEUS_URL", "") or "").rstrip("/")


def prometheus_pull_seconds() -> int:
    """The pull period, and the ``{{window}}`` of every query."""
    return int(_get("CANARY_PROMETHEUS_PULL_SECONDS", 30))


def prometheus_timeout_seconds() -> float:
    return float(_get("CANARY_PROMETHEUS_TIMEOUT_SECONDS", 10))


def prometheus_catch_up_periods() -> int:
    """Missed pull periods fetched on the next run (after a worker or beat outage)."""
    return int(_get("CANARY_PROMETHEUS_CATCH_UP_PERIODS", 10))


def notify_timeout_seconds() -> float:
    return float(_get("CANARY_NOTIFY_TIMEOUT_SECONDS", 10))


def notify_backoff_seconds() -> float:
    """First retry delay; each further attempt waits twice as long."""
    return float(_get("CANARY_NOTIFY_BACKOFF_SECONDS", 10))


def notify_backoff_max_seconds() -> float:
    return float(_get("CANARY_NOTIFY_BACKOFF_MAX_SECONDS", 3600))


def notify_max_attempts() -> int:
    """After this many failed attempts a notification is marked failed (kept, not deleted)."""
    return int(_get("CANARY_NOTIFY_MAX_ATTEMPTS", 12))


def notify_lease_seconds() -> float:
    """How long a worker owns a claimed notification before another may retry it."""
    return float(_get("CANARY_NOTIFY_LEASE_SECONDS", 120))


def slack_webhook_url() -> str:
    return str(_get("CANARY_SLACK_WEBHOOK_URL", "") or "")


def webhook_url() -> str:
    return str(_get("CANARY_WEBHOOK_URL", "") or "")


def webhook_secret() -> str:
    return str(_get("CANARY_WEBHOOK_SECRET", "") or "")


def email_from() -> str:
    return str(_get("CANARY_ALERT_EMAIL_FROM", "") or settings.DEFAULT_FROM_EMAIL)


def site_url() -> str:
    """Base URL put in notifications' links; blank leaves links relative."""
    return str(_get("CANARY_SITE_URL", "") or "").rstrip("/")


def notify_enqueue() -> bool:
    """Whether a new notification is handed to a worker at once (the sweep sends it anyway)."""
    value = _get("CANARY_NOTIFY_ENQUEUE", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)
