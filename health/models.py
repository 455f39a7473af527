"""The metric store, health policies, checks, alerts and the notification outbox.

Series are keyed by service name and version, not by routing objects, so metrics from outside
(Prometheus, pushes) need no routing rows.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from canary_site import audit
from canary_site.models import person_field
from health import analysis
from health.alerting import InvalidAlerting, validate_alerting
from health.choices import (
    TRAFFIC_METRIC,
    AlertSeverity,
    AlertStatus,
    NotificationChannel,
    NotificationEvent,
    NotificationStatus,
    PrometheusMetric,
    Verdict,
)

PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


class BulkJSONField(models.JSONField):
    """A JSONField that bulk inserts through plain ``VALUES`` placeholders.

    Django inserts many rows on PostgreSQL as ``UNNEST`` of one array per column; psycopg then
    quotes every large JSON text inside an array literal, which made storing a pass's checks
    several times slower than the evaluation itself. A field with its own placeholder keeps
    Django on the ``VALUES`` path.
    """

    def get_placeholder(self, value: Any, compiler: Any, connection: Any) -> str:
        return "%s"


class MetricBucket(models.Model):
    """What one version of a service did in one time bucket.

    The ``requests`` metric holds request and error counts and a latency histogram (sparse
    ``[[bucket index, count], ...]`` on the fixed bounds of ``health.histogram``); a custom
    metric (``custom:<name>``) holds the sum, count, min and max of its observations. Buckets
    only ever grow by addition, so writers from many processes upsert into the same row.
    """

    service = models.CharField(max_length=100)
    version = models.CharField(max_length=100)
    metric = models.CharField(max_length=110, default=TRAFFIC_METRIC)
    start = models.DateTimeField()
    resolution = models.PositiveIntegerField(help_text="Bucket length in seconds.")
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    latency = models.JSONField(default=list, blank=True)
    value_sum = models.FloatField(default=0.0)
    value_count = models.PositiveBigIntegerField(default=0)
    value_min = models.FloatField(null=True, blank=True)
    value_max = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["service", "version", "metric", "start"]
        constraints = [
            # Start comes before resolution so that the index also serves reads of a time range
            # whatever the resolution (fine and rolled-up buckets are read together).
            models.UniqueConstraint(
                fields=["service", "version", "metric", "start", "resolution"],
                name="health_unique_metric_bucket",
            )
        ]
        # Start first: an evaluation pass reads one time range of every series at once, and
        # roll-up and retention read by age.
        indexes = [models.Index(fields=["start", "resolution"], name="health_bucket_start")]

    def __str__(self) -> str:
        return f"{self.service} {self.version} {self.metric} @ {self.start:%Y-%m-%d %H:%M:%S}"


class HealthPolicy(models.Model):
    """A reusable analysis template: the policy dict of ``health.analysis`` plus alerting.

    ``policy`` is stored in its canonical form (``build_policy(...).to_dict()``), so a stored
    policy always reads back to the same ``Policy``.
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    policy = models.JSONField(default=dict, blank=True)
    alerting_enabled = models.BooleanField(default=True)
    alert_channels = models.JSONField(
        default=list, blank=True, help_text="Any of email, slack, webhook."
    )
    alert_recipients = models.JSONField(
        default=list, blank=True, help_text="Email addresses told when an alert is raised."
    )
    slack_webhook_url = models.URLField(
        blank=True, default="", help_text="Slack incoming webhook; blank uses the site setting."
    )
    webhook_url = models.URLField(
        blank=True, default="", help_text="Signed JSON webhook; blank uses the site setting."
    )
    alert_cooldown_seconds = models.PositiveIntegerField(
        default=300, help_text="No repeated notification for the same canary within this time."
    )
    escalation_rules = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            'e.g. [{"severity": "critical", "delay_seconds": 60, '
            '"recipients": ["oncall@example.com"], "channels": ["email"]}]'
        ),
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "health policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # Services validate first and name the exact key (policy.thresholds[0].critical); this
        # catch-all keeps the admin from storing a policy the engine would refuse.
        try:
            self.policy = analysis.build_policy(self.policy).to_dict()
        except analysis.InvalidPolicy as error:
            raise ValidationError({"policy": f"{error.field}: {error.message}"}) from error
        try:
            config = validate_alerting(
                channels=self.alert_channels,
                recipients=self.alert_recipients,
                escalation_rules=self.escalation_rules,
            )
        except InvalidAlerting as error:
            raise ValidationError({error.model_field: error.message}) from error
        self.alert_channels = config.channels
        self.alert_recipients = config.recipients
        self.escalation_rules = config.escalation_rules

    @property
    def spec(self) -> analysis.Policy:
        return analysis.build_policy(self.policy)


class HealthCheck(models.Model):
    """One evaluation of a policy for a canary against stable over one window, with its why.

    ``result`` is ``Evaluation.to_dict()``: every check's verdict, statistics and sentence, and
    the inputs. Its canary window's summary (``result["inputs"]["canary"]``) is what later
    evaluations read as their history windows.
    """

    service = models.CharField(max_length=100)
    canary_version = models.CharField(max_length=100)
    stable_version = models.CharField(max_length=100, blank=True, default="")
    policy = models.ForeignKey(
        HealthPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="checks"
    )
    policy_name = models.CharField(max_length=100, blank=True, default="")
    window_seconds = models.PositiveIntegerField()
    window_end = models.DateTimeField()
    window_start = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Where the canary's evidence began (the phase's start); no window of the "
        "check reaches back before it.",
    )
    planned_canary_share = models.FloatField(null=True, blank=True)
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    should_rollback = models.BooleanField(default=False)
    message = models.TextField()
    result = BulkJSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-window_end", "-id"]
        constraints = [
            # The same window judged twice by the same policy is the same check: a task that
            # runs twice stores one.
            models.UniqueConstraint(
                fields=[
                    "service",
                    "canary_version",
                    "stable_version",
                    "policy",
                    "window_seconds",
                    "window_end",
                ],
                name="health_unique_check_per_window",
            )
        ]
        indexes = [
            models.Index(
                fields=["service", "window_end", "canary_version"], name="health_check_history"
            ),
            models.Index(fields=["-created_at"], name="health_check_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.service} {self.canary_version}: {self.verdict}"

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.result.get("results", []))

    @property
    def rollback_checks(self) -> list[dict[str, Any]]:
        return list(self.result.get("rollback_checks", []))


class Alert(models.Model):
    """Raised by failing checks of a canary under a policy; at most one unresolved per pair."""

    service = models.CharField(max_length=100)
    canary_version = models.CharField(max_length=100)
    stable_version = models.CharField(max_length=100, blank=True, default="")
    policy = models.ForeignKey(
        HealthPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices)
    status = models.CharField(
        max_length=16, choices=AlertStatus.choices, default=AlertStatus.OPEN, db_index=True
    )
    title = models.CharField(max_length=200)
    message = models.TextField(help_text="The latest failing check's explanation.")
    first_check = models.ForeignKey(
        HealthCheck, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_check = models.ForeignKey(
        HealthCheck, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    check_count = models.PositiveIntegerField(default=1)
    raised_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    cooldown_until = models.DateTimeField(
        null=True, blank=True, help_text="No new notification for this canary before then."
    )
    escalation_level = models.PositiveSmallIntegerField(
        default=0, help_text="How many escalation rules of its severity have fired."
    )
    escalation_since = models.DateTimeField(
        default=timezone.now, help_text="When the escalation clock of its severity started."
    )
    acknowledged_by = person_field()
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_by = person_field()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["service", "canary_version", "policy"],
                condition=~models.Q(status=AlertStatus.RESOLVED),
                name="health_one_unresolved_alert",
            )
        ]
        indexes = [models.Index(fields=["service", "-raised_at"], name="health_alert_service")]

    def __str__(self) -> str:
        return f"{self.severity} {self.status}: {self.title}"

    @property
    def is_open(self) -> bool:
        return self.status != AlertStatus.RESOLVED


class NotificationOutbox(models.Model):
    """One message to one recipient on one channel, written in the transaction that caused it.

    ``key`` is unique, so the same news is never queued twice; a worker claims a row before
    sending and marks it delivered after, so it is never sent twice by two workers.
    """

    key = models.CharField(max_length=200, unique=True)
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    event = models.CharField(max_length=16, choices=NotificationEvent.choices)
    channel = models.CharField(max_length=16, choices=NotificationChannel.choices)
    target = models.CharField(max_length=500, help_text="An email address or a URL.")
    subject = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "notification"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="health_outbox_due")]

    def __str__(self) -> str:
        return f"{self.channel} to {self.target}: {self.subject}"


class PushBatch(models.Model):
    """The idempotency key of an ingested batch: a retried batch with the same key is counted
    once. ``digest`` tells a true retry from a different batch reusing the key."""

    key = models.CharField(max_length=200, unique=True)
    digest = models.CharField(max_length=64)
    samples = models.PositiveIntegerField()
    source = models.CharField(max_length=32, default="api")
    created_by = person_field()
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name_plural = "push batches"

    def __str__(self) -> str:
        return self.key


class PrometheusQuery(models.Model):
    """A PromQL query whose value is stored as one metric of a (service, version) series.

    ``query`` may use ``{{service}}``, ``{{version}}`` and ``{{window}}`` (the pull period as a
    PromQL duration). A blank ``service`` applies the query to every service evaluated lately;
    blank ``versions`` to every version of the service evaluated lately.
    """

    name = models.CharField(max_length=100, unique=True)
    metric = models.CharField(
        max_length=110, help_text="requests, errors or custom:<name> (the value's meaning)."
    )
    query = models.TextField(help_text="PromQL with {{service}}, {{version}}, {{window}}.")
    service = models.CharField(max_length=100, blank=True, default="")
    versions = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    last_pulled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "Prometheus queries"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        metric = self.metric
        if metric not in PrometheusMetric.values and not analysis.is_custom_metric(metric):
            raise ValidationError({"metric": "Use requests, errors or custom:<name>."})
        unknown = PLACEHOLDER.findall(self.query)
        if any(name not in ("service", "version", "window") for name in unknown):
            raise ValidationError(
                {"query": "Only {{service}}, {{version}} and {{window}} may be used."}
            )
        if not isinstance(self.versions, list) or not all(
            isinstance(version, str) and version for version in self.versions
        ):
            raise ValidationError({"versions": "A list of version names."})


audit.register(HealthPolicy)
audit.register(PrometheusQuery, exclude_fields=["last_pulled_at", "last_error"])
# Bookkeeping written on every check (last_seen_at, check_count...) is left out, so the trail
# shows an alert's life: raised, acknowledged, resolved, escalated.
audit.register(
    Alert,
    exclude_fields=["last_seen_at", "last_check", "check_count", "message", "last_notified_at"],
)
