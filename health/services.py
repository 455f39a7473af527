"""Writes of the health app: plain keyword-only functions named <entity>_<action>.

- Ingestion: `metrics_record_outcomes` (the routing proxy's batches), `metrics_push` (the REST
  push, idempotent by key), `prometheus_pull` (the beat's pull of PromQL queries), and
  `metrics_compact` (roll-up of old fine buckets and retention).
- Policies: `health_policy_create`, `health_policy_update`, `health_policy_delete`.
- Judgement: `health_evaluate` and `health_evaluate_many` store health checks, raise and resolve
  alerts and send `health.signals.health_evaluated`.
- Alerts: `alert_acknowledge`, `alert_resolve` (people), `alerts_escalate` (the beat).
- Notifications: `notifications_queue` (news other than alerts, such as a deployment's), and
  `notification_deliver`, `notifications_deliver_due` (the outbox's workers).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection, models, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from canary_site.audit import audit_context
from canary_site.choices import Source
from canary_site.collector import collector_paused
from canary_site.exceptions import (
    CanaryError,
    TransitionNotAllowed,
    ValidationFailed,
    to_canary_error,
)
from health import alerting, analysis, conf, notifications, prometheus, store, windows
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
from health.histogram import Histogram
from health.ingest import (
    NAME_PATTERN,
    BucketDelta,
    Deltas,
    OutcomeBatchItem,
    SampleError,
    floor_time,
    outcome_deltas,
    parse_samples,
)
from health.models import (
    Alert,
    HealthCheck,
    HealthPolicy,
    MetricBucket,
    NotificationOutbox,
    PrometheusQuery,
    PushBatch,
)
from health.signals import health_evaluated
from health.windows import EvaluationRequest

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationRequest",
    "OutcomeBatchItem",
    "PayloadTooLarge",
    "alert_acknowledge",
    "alert_resolve",
    "alerts_escalate",
    "alerts_resolve_for",
    "alerts_resolve_for_canaries",
    "health_evaluate",
    "health_evaluate_many",
    "health_policy_create",
    "health_policy_delete",
    "health_policy_update",
    "metrics_compact",
    "metrics_push",
    "metrics_record_outcomes",
    "notification_deliver",
    "notification_retry",
    "notifications_deliver_due",
    "notifications_queue",
    "prometheus_pull",
    "prometheus_query_create",
]

# One lock for every writer of checks and alerts, so two passes judging the same window (two
# beats, a beat and an API call) store one check and one alert between them.
_EVALUATION_LOCK = 0x6865616C7468


def _full_clean(row: models.Model) -> None:
    """``full_clean()``, raising our error (naming the field) instead of Django's."""
    try:
        row.full_clean()
    except DjangoValidationError as error:
        raise to_canary_error(error) from error  # type: ignore[misc]


class PayloadTooLarge(CanaryError):
    """A push bigger than the store accepts in one request."""

    status_code = 413
    code = "payload_too_large"


# --------------------------------------------------------------------------- ingestion


def metrics_record_outcomes(*, outcomes: Iterable[OutcomeBatchItem]) -> int:
    """Add the routing proxy's per-(service, version, bucket) aggregates to the store.

    ``outcomes`` are `health.ingest.OutcomeBatchItem`s: additions, not totals. The batch is
    written with one statement per 1,000 buckets (no query per item), in one transaction, and
    adds up with concurrent flushes of the same buckets. Returns the number of buckets written.
    """
    try:
        deltas = outcome_deltas(outcomes, resolution=conf.bucket_seconds())
    except ValueError as error:
        raise ValidationFailed(str(error), field="outcomes") from error
    return store.upsert(deltas)


@dataclass(frozen=True)
class PushResult:
    """What a push did: samples counted, buckets written, and whether it was a retry."""

    accepted: int
    buckets: int
    duplicate: bool
    idempotency_key: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "buckets": self.buckets,
            "duplicate": self.duplicate,
            "idempotency_key": self.idempotency_key,
        }


def metrics_push(
    *,
    samples: Any,
    idempotency_key: str | None = None,
    user: Any = None,
    source: str = Source.API,
    now: datetime | None = None,
) -> PushResult:
    """Store a batch of pushed samples (shape in `health.ingest.parse_samples`).

    With an ``idempotency_key``, a batch that was stored before under the same key is not
    counted again (``duplicate`` is True); the same key with different samples is refused.
    Refuses more than ``CANARY_METRICS_PUSH_MAX_SAMPLES`` samples (413), and negative counts,
    unknown metrics, timestamps too far in the future or past retention (400, naming the
    sample's field).
    """
    now = now or timezone.now()
    if not isinstance(samples, list):
        raise ValidationFailed("Send samples as a list.", field="samples")
    limit = conf.push_max_samples()
    if len(samples) > limit:
        raise PayloadTooLarge(
            f"{len(samples):,} samples in one push; at most {limit:,} are accepted.",
            field="samples",
        )
    if idempotency_key is not None:
        idempotency_key = _check_key(idempotency_key)
    try:
        deltas = parse_samples(
            samples,
            resolution=conf.bucket_seconds(),
            now=now,
            max_future_seconds=conf.push_max_future_seconds(),
            max_age_seconds=conf.retention_hours() * 3600,
        )
    except SampleError as error:
        raise ValidationFailed(error.message, field=error.field) from error
    encoded = store.encode(deltas)
    duplicate = _ingest(
        deltas,
        encoded=encoded,
        key=idempotency_key,
        digest=_digest(encoded) if idempotency_key else "",
        samples=len(samples),
        source=str(source),
        user=user,
    )
    if duplicate:
        return PushResult(accepted=0, buckets=0, duplicate=True, idempotency_key=idempotency_key)
    return PushResult(
        accepted=len(samples),
        buckets=len(deltas),
        duplicate=False,
        idempotency_key=idempotency_key,
    )


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key.strip()) <= 200:
        raise ValidationFailed(
            "An idempotency key is 1 to 200 characters.", field="idempotency_key"
        )
    return key.strip()


def _digest(encoded: Sequence[str]) -> str:
    """What a batch adds to the store, hashed: a retry adds the same, whatever its order.

    ``encoded`` is `store.encode()` of the batch's deltas, the rows the upsert sends, so the
    hash costs no second pass over the deltas. Hashing the aggregated deltas rather than the raw
    samples is cheaper (a batch of 1,000 samples is a few dozen deltas) and calls two batches
    the same when their effect is."""
    digest = hashlib.sha256()
    for text in encoded:
        digest.update(text.encode())
    return digest.hexdigest()


def _digest_of_reprs(deltas: Sequence[BucketDelta]) -> str:
    """The digest keys were stored under before `_digest`: a retry of such a batch is still a
    retry. Keys live ``CANARY_METRICS_IDEMPOTENCY_HOURS``; after that this can go."""
    digest = hashlib.sha256()
    for delta in deltas:
        digest.update(
            repr(
                (
                    delta.key,
                    delta.requests,
                    delta.errors,
                    delta.sparse_latency(),
                    delta.value_sum,
                    delta.value_count,
                    delta.value_min,
                    delta.value_max,
                )
            ).encode()
        )
    return digest.hexdigest()


def _ingest(
    deltas: Sequence[BucketDelta],
    *,
    encoded: Sequence[str] | None = None,
    key: str | None,
    digest: str,
    samples: int,
    source: str,
    user: Any = None,
) -> bool:
    """Upsert ``deltas`` once per key; True when the key was seen before (nothing written)."""
    if not key:
        store.upsert(deltas, encoded=encoded)
        return False
    batch = store.BatchRow(
        key=key,
        digest=digest,
        samples=samples,
        source=source,
        created_by_id=user.pk if getattr(user, "is_authenticated", False) else None,
        received_at=timezone.now(),
    )
    if store.upsert_once(deltas, batch=batch, encoded=encoded):
        return False
    earlier = PushBatch.objects.filter(key=key).values_list("digest", flat=True).first()
    if earlier is not None and earlier not in (digest, _digest_of_reprs(deltas)):
        raise TransitionNotAllowed(
            "This idempotency key was used for a different batch.", field="idempotency_key"
        )
    return True


# --------------------------------------------------------------------------- Prometheus


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
    _full_clean(row)
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
            if not _ingest(
                sorted_deltas,
                encoded=encoded,
                key=key,
                digest=_digest(encoded),
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


# --------------------------------------------------------------------------- compaction


@dataclass
class CompactReport:
    rolled_up: int = 0
    coarse_buckets: int = 0
    deleted_buckets: int = 0
    deleted_batches: int = 0
    deleted_checks: int = 0
    deleted_notifications: int = 0


def metrics_compact(*, now: datetime | None = None, batch: int = 20_000) -> CompactReport:
    """Roll fine buckets older than ``CANARY_METRICS_ROLLUP_AFTER_HOURS`` up into coarse ones
    (``CANARY_METRICS_ROLLUP_SECONDS``), then delete what is older than
    ``CANARY_METRICS_RETENTION_HOURS``, idempotency keys past their time, checks past
    ``CANARY_HEALTH_CHECK_RETENTION_DAYS`` and delivered notifications as old.

    A fine bucket is added into its coarse bucket and deleted in one transaction, so a run that
    dies half-way leaves no double count, and two runs never take the same rows.
    """
    now = now or timezone.now()
    report = CompactReport()
    fine = conf.bucket_seconds()
    coarse = conf.rollup_seconds()
    retention_start = now - timedelta(hours=conf.retention_hours())
    if coarse > fine:
        rollup_before = floor_time(now - timedelta(hours=conf.rollup_after_hours()), coarse)
        for _ in range(100):  # bounded work per run; the next run continues
            taken = _rollup_batch(
                fine=fine, coarse=coarse, before=rollup_before, after=retention_start, limit=batch
            )
            report.rolled_up += taken[0]
            report.coarse_buckets += taken[1]
            if taken[0] < batch:
                break
    report.deleted_buckets = MetricBucket.objects.filter(start__lt=retention_start).delete()[0]
    report.deleted_batches = PushBatch.objects.filter(
        received_at__lt=now - timedelta(hours=conf.idempotency_hours())
    ).delete()[0]
    checks_before = now - timedelta(days=conf.check_retention_days())
    report.deleted_checks = HealthCheck.objects.filter(created_at__lt=checks_before).delete()[0]
    report.deleted_notifications = NotificationOutbox.objects.filter(
        status=NotificationStatus.DELIVERED, delivered_at__lt=checks_before
    ).delete()[0]
    return report


def _rollup_batch(
    *, fine: int, coarse: int, before: datetime, after: datetime, limit: int
) -> tuple[int, int]:
    with transaction.atomic():
        rows = MetricBucket.objects.filter(
            resolution=fine, start__lt=before, start__gte=after
        ).order_by("start", "id")
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        # On SQLite the IMMEDIATE transaction already holds the write lock: no other run can
        # take the same rows between this read and the delete.
        taken = list(
            rows.values_list(
                "id",
                "service",
                "version",
                "metric",
                "start",
                "requests",
                "errors",
                "latency",
                "value_sum",
                "value_count",
                "value_min",
                "value_max",
            )[:limit]
        )
        if not taken:
            return 0, 0
        deltas = Deltas(coarse)
        for (
            _pk,
            service,
            version,
            metric,
            start,
            requests,
            errors,
            latency,
            value_sum,
            value_count,
            value_min,
            value_max,
        ) in taken:
            delta = BucketDelta(
                service=service,
                version=version,
                metric=metric,
                start=floor_time(start, coarse),
                resolution=coarse,
                requests=requests,
                errors=errors,
                value_sum=value_sum,
                value_count=value_count,
                value_min=value_min,
                value_max=value_max,
            )
            if latency:
                delta.add_latency_counts(Histogram.from_list(latency).counts)
            deltas.add(delta)
        merged = deltas.sorted()
        store.upsert(merged)
        ids = [row[0] for row in taken]
        for offset in range(0, len(ids), 500):
            MetricBucket.objects.filter(pk__in=ids[offset : offset + 500]).delete()
    return len(taken), len(merged)


# --------------------------------------------------------------------------- policies

POLICY_FIELDS = (
    "name",
    "description",
    "policy",
    "alerting_enabled",
    "alert_channels",
    "alert_recipients",
    "slack_webhook_url",
    "webhook_url",
    "alert_cooldown_seconds",
    "escalation_rules",
)


def health_policy_create(
    *,
    name: str,
    policy: dict[str, Any] | None = None,
    description: str = "",
    alerting_enabled: bool = True,
    alert_channels: Sequence[str] | None = None,
    alert_recipients: Sequence[str] | None = None,
    slack_webhook_url: str = "",
    webhook_url: str = "",
    alert_cooldown_seconds: int = 300,
    escalation_rules: Sequence[dict[str, Any]] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
) -> HealthPolicy:
    """Create a policy; the policy dict is validated by `analysis.build_policy` and stored in
    its canonical form."""
    row = HealthPolicy(
        name=(name or "").strip(),
        description=description or "",
        alerting_enabled=alerting_enabled,
        slack_webhook_url=slack_webhook_url or "",
        webhook_url=webhook_url or "",
        alert_cooldown_seconds=alert_cooldown_seconds,
    )
    _apply_policy_dicts(
        row,
        policy=policy or {},
        alert_channels=alert_channels,
        alert_recipients=alert_recipients,
        escalation_rules=escalation_rules,
    )
    _full_clean(row)
    with audit_context(actor=actor, source=source, verb="create"):
        row.save()
    return row


def health_policy_update(
    *, policy: HealthPolicy, actor: Any = None, source: str = Source.SYSTEM, **changes: Any
) -> HealthPolicy:
    """Change some of a policy's fields (the same names as `health_policy_create`)."""
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise ValidationFailed("Unknown field.", field=unknown[0])
    for name in ("name", "description", "alerting_enabled", "slack_webhook_url", "webhook_url"):
        if name in changes:
            value = changes[name]
            setattr(policy, name, value.strip() if isinstance(value, str) else value)
    if "alert_cooldown_seconds" in changes:
        policy.alert_cooldown_seconds = changes["alert_cooldown_seconds"]
    _apply_policy_dicts(
        policy,
        policy=changes.get("policy", policy.policy),
        alert_channels=changes.get("alert_channels", policy.alert_channels),
        alert_recipients=changes.get("alert_recipients", policy.alert_recipients),
        escalation_rules=changes.get("escalation_rules", policy.escalation_rules),
    )
    _full_clean(policy)
    with audit_context(actor=actor, source=source, verb="update"):
        policy.save()
    return policy


def health_policy_delete(
    *, policy: HealthPolicy, actor: Any = None, source: str = Source.SYSTEM
) -> None:
    """Delete a policy; its checks and alerts stay, with the policy's name on the checks.
    Refused while something that must keep it (a protecting foreign key) still points at it."""
    try:
        with transaction.atomic(), audit_context(actor=actor, source=source, verb="delete"):
            policy.delete()
    except (models.ProtectedError, models.RestrictedError) as error:
        users = sorted({str(obj) for obj in error.protected_objects if obj is not None})[:5]
        raise TransitionNotAllowed(
            f"The policy is still in use by {', '.join(users)}.", field="policy"
        ) from error


def _apply_policy_dicts(
    row: HealthPolicy,
    *,
    policy: Any,
    alert_channels: Any,
    alert_recipients: Any,
    escalation_rules: Any,
) -> None:
    try:
        row.policy = analysis.build_policy(policy).to_dict()
    except analysis.InvalidPolicy as error:
        raise ValidationFailed(error.message, field=f"policy.{error.field}") from error
    try:
        config = alerting.validate_alerting(
            channels=alert_channels, recipients=alert_recipients, escalation_rules=escalation_rules
        )
    except alerting.InvalidAlerting as error:
        raise ValidationFailed(error.message, field=error.field) from error
    row.alert_channels = config.channels
    row.alert_recipients = config.recipients
    row.escalation_rules = config.escalation_rules


# --------------------------------------------------------------------------- evaluation


def health_evaluate(
    *,
    service: str,
    canary_version: str,
    stable_version: str | None,
    policy: HealthPolicy,
    window_seconds: int | None = None,
    planned_canary_share: float | None = None,
    window_start: datetime | None = None,
    now: datetime | None = None,
) -> HealthCheck:
    """Judge a canary against stable under ``policy`` over the latest window; store the check.

    The window ends on a bucket boundary ``CANARY_HEALTH_SETTLE_SECONDS`` before ``now``;
    ``window_seconds`` (default: the policy's) is rounded up to whole buckets. No window
    reaches back before ``window_start`` (the phase's start), whose traffic the sequential
    comparison judges as a whole (see `health.windows`). Raises or resolves the canary's
    alert, then sends `health_evaluated`. Called again for the same window, it returns the
    check already stored and sends nothing.
    """
    request = EvaluationRequest(
        service=service,
        canary_version=canary_version,
        stable_version=stable_version or None,
        policy=policy,
        window_seconds=window_seconds,
        planned_canary_share=planned_canary_share,
        window_start=window_start,
    )
    return health_evaluate_many(requests=[request], now=now)[0]


def health_evaluate_many(
    *, requests: Sequence[EvaluationRequest], now: datetime | None = None
) -> list[HealthCheck]:
    """`health_evaluate` for many canaries at once, with a number of queries that does not
    grow with their number; returns the checks in the order of ``requests``."""
    if not requests:
        return []
    now = now or timezone.now()
    specs: dict[int, analysis.Policy] = {}
    for index, request in enumerate(requests):
        _check_request(request, index if len(requests) > 1 else None)
        if request.policy.pk not in specs:
            try:
                specs[request.policy.pk] = request.policy.spec
            except analysis.InvalidPolicy as error:
                raise ValidationFailed(error.message, field=f"policy.{error.field}") from error
    resolution = conf.bucket_seconds()
    end = windows.window_end(now, resolution=resolution, settle=conf.settle_seconds())
    with collector_paused():
        gathered = windows.gather(requests, end=end, resolution=resolution, specs=specs)
        evaluations: list[analysis.Evaluation | None] = [
            None if inputs.existing is not None else windows.evaluate(inputs) for inputs in gathered
        ]

        created: list[tuple[HealthCheck, analysis.Evaluation]] = []
        alerts: dict[int, Alert] = {}
        results: list[HealthCheck | None] = [inputs.existing for inputs in gathered]
        with transaction.atomic():
            _lock_evaluations()
            # A concurrent pass may have stored some of these windows since they were read.
            stored = _stored_checks(gathered)
            pending: list[tuple[int, HealthCheck, analysis.Evaluation]] = []
            for index, (inputs, evaluation) in enumerate(zip(gathered, evaluations, strict=True)):
                if evaluation is None:
                    continue
                key = _check_key_of(inputs)
                if key in stored:
                    results[index] = stored[key]
                    continue
                check = _new_check(inputs, evaluation, now)
                stored[key] = check
                pending.append((index, check, evaluation))
            store.insert_checks([check for _, check, _ in pending])
            for index, check, evaluation in pending:
                results[index] = check
                created.append((check, evaluation))
            alerts = _alerts_apply(created, now)
    for check, evaluation in created:
        health_evaluated.send(
            sender=HealthCheck,
            check=check,
            evaluation=evaluation,
            service=check.service,
            canary_version=check.canary_version,
            stable_version=check.stable_version,
            policy=check.policy,
            verdict=check.verdict,
            should_rollback=check.should_rollback,
            alert=alerts.get(check.pk),
        )
    return [check for check in results if check is not None]


def _check_request(request: EvaluationRequest, index: int | None) -> None:
    prefix = "" if index is None else f"requests[{index}]."
    for name in ("service", "canary_version"):
        value = getattr(request, name)
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise ValidationFailed(
                "Must be 1 to 100 letters, digits or _.:-/@+.", field=f"{prefix}{name}"
            )
    stable = request.stable_version
    if stable is not None and (not isinstance(stable, str) or not NAME_PATTERN.fullmatch(stable)):
        raise ValidationFailed(
            "Must be 1 to 100 letters, digits or _.:-/@+.", field=f"{prefix}stable_version"
        )
    if not isinstance(request.policy, HealthPolicy) or request.policy.pk is None:
        raise ValidationFailed("A stored health policy is needed.", field=f"{prefix}policy")
    if request.window_seconds is not None and (
        isinstance(request.window_seconds, bool)
        or not isinstance(request.window_seconds, int)
        or not 1 <= request.window_seconds <= 86_400
    ):
        raise ValidationFailed("A window is 1 to 86,400 seconds.", field=f"{prefix}window_seconds")
    started = request.window_start
    if started is not None and (
        not isinstance(started, datetime) or started.tzinfo is None or started.utcoffset() is None
    ):
        raise ValidationFailed(
            "A window start is an aware date and time.", field=f"{prefix}window_start"
        )
    share = request.planned_canary_share
    if share is not None and (
        isinstance(share, bool)
        or not isinstance(share, int | float)
        or not math.isfinite(share)
        or not 0 <= share <= 100
    ):
        raise ValidationFailed(
            "A planned share is a percentage from 0 to 100.",
            field=f"{prefix}planned_canary_share",
        )


def _lock_evaluations() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_EVALUATION_LOCK])
    # SQLite: the IMMEDIATE transaction is already the only writer.


def _check_key_of(inputs: windows.Inputs) -> tuple[str, str, str, int, int, datetime]:
    request = inputs.request
    return (
        request.service,
        request.canary_version,
        request.stable_version or "",
        request.policy.pk,
        inputs.window_seconds,
        inputs.end,
    )


def _stored_checks(
    gathered: Sequence[windows.Inputs],
) -> dict[tuple[str, str, str, int, int, datetime], HealthCheck]:
    services = {inputs.request.service for inputs in gathered}
    ends = {inputs.end for inputs in gathered}
    stored: dict[tuple[str, str, str, int, int, datetime], HealthCheck] = {}
    for check in HealthCheck.objects.filter(service__in=services, window_end__in=ends):
        if check.policy_id is None:
            continue
        key = (
            check.service,
            check.canary_version,
            check.stable_version,
            check.policy_id,
            check.window_seconds,
            check.window_end,
        )
        stored[key] = check
    return stored


def _new_check(
    inputs: windows.Inputs, evaluation: analysis.Evaluation, now: datetime
) -> HealthCheck:
    request = inputs.request
    result = evaluation.to_dict()
    result["inputs"]["history_from_checks"] = inputs.history_from_checks
    result["inputs"]["phase_from_carry"] = inputs.carried
    started = inputs.window_start
    result["window_start"] = None if started is None else started.isoformat()
    for name, (start, end) in inputs.spans.items():
        window = result["windows"].get(name)
        if window is not None:
            window["start"] = _iso(start)
            window["end"] = _iso(end)
    if inputs.carry is not None:
        result["carry"] = inputs.carry
    return HealthCheck(
        service=request.service,
        canary_version=request.canary_version,
        stable_version=request.stable_version or "",
        policy=request.policy,
        policy_name=request.policy.name,
        window_seconds=inputs.window_seconds,
        window_end=inputs.end,
        window_start=inputs.window_start,
        planned_canary_share=request.planned_canary_share,
        verdict=str(evaluation.verdict),
        should_rollback=evaluation.should_rollback,
        message=evaluation.message,
        result=result,
        created_at=now,
    )


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


# --------------------------------------------------------------------------- alerts

_SEVERITY_RANK = {AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}
# What a check changes in a stored alert: seen again, worse, or resolved.
_SEEN_FIELDS = ("message", "last_check", "check_count", "last_seen_at")
_WORSENED_FIELDS = (
    "severity",
    "title",
    "last_notified_at",
    "cooldown_until",
    "escalation_level",
    "escalation_since",
)
_RESOLVED_FIELDS = ("status", "last_check", "last_seen_at", "resolved_at", "resolution")
_ALERT_FIELDS = (
    "severity",
    "status",
    "title",
    "message",
    "last_check",
    "check_count",
    "last_seen_at",
    "last_notified_at",
    "cooldown_until",
    "escalation_level",
    "escalation_since",
    "resolved_at",
    "resolution",
)
_FAILING = (Verdict.WARNING, Verdict.CRITICAL)


@dataclass
class _Notice:
    alert: Alert
    event: str
    level: int = 0
    rule: alerting.EscalationRule | None = None
    check: HealthCheck | None = None


def _alerts_apply(
    created: Sequence[tuple[HealthCheck, analysis.Evaluation]], now: datetime
) -> dict[int, Alert]:
    """Raise, worsen or resolve the alerts of freshly stored checks; returns them by check id.

    A failing check (warning, critical) raises an alert for its (service, canary, policy) or
    updates the open one; a critical check makes a warning alert critical and restarts its
    escalation. A passing check resolves the open alert. No data and inconclusive change
    nothing. A new alert notifies unless one for the same canary notified within the policy's
    cooldown; a worse severity always notifies.
    """
    relevant = [
        check
        for check, _ in created
        if check.policy_id is not None and check.verdict in (*_FAILING, Verdict.PASS)
    ]
    if not relevant:
        return {}
    services = {check.service for check in relevant}
    policy_ids = {check.policy_id for check in relevant}
    open_alerts = {
        (alert.service, alert.canary_version, alert.policy_id): alert
        for alert in Alert.objects.select_for_update()
        .filter(service__in=services, policy_id__in=policy_ids)
        .exclude(status=AlertStatus.RESOLVED)
    }
    cooling: dict[tuple[str, str, int], datetime] = {}
    for service, canary, policy_id, until in Alert.objects.filter(
        service__in=services,
        policy_id__in=policy_ids,
        status=AlertStatus.RESOLVED,
        cooldown_until__gt=now,
    ).values_list("service", "canary_version", "policy_id", "cooldown_until"):
        key = (service, canary, policy_id)
        cooling[key] = max(until, cooling.get(key, until))

    to_create: list[Alert] = []
    to_update: dict[int, Alert] = {}
    changed: set[str] = set()
    notices: list[_Notice] = []
    by_check: dict[int, Alert] = {}
    for check in relevant:
        policy: HealthPolicy = check.policy  # type: ignore[assignment]
        key = (check.service, check.canary_version, check.policy_id)
        alert = open_alerts.get(key)
        cooldown = timedelta(seconds=policy.alert_cooldown_seconds)
        if check.verdict in _FAILING:
            if alert is None:
                alert = Alert(
                    service=check.service,
                    canary_version=check.canary_version,
                    stable_version=check.stable_version,
                    policy=policy,
                    severity=check.verdict,
                    status=AlertStatus.OPEN,
                    title=alerting.alert_title(
                        service=check.service,
                        canary_version=check.canary_version,
                        severity=check.verdict,
                    ),
                    message=check.message,
                    first_check=check,
                    last_check=check,
                    check_count=1,
                    raised_at=now,
                    last_seen_at=now,
                    escalation_since=now,
                )
                until = cooling.get(key)
                if until is None:
                    alert.cooldown_until = now + cooldown
                    alert.last_notified_at = now
                    notices.append(_Notice(alert, NotificationEvent.RAISED, check=check))
                else:
                    alert.cooldown_until = until
                to_create.append(alert)
                open_alerts[key] = alert
            else:
                alert.last_check = check
                alert.last_seen_at = now
                alert.check_count += 1
                alert.message = check.message
                if _SEVERITY_RANK[check.verdict] > _SEVERITY_RANK[alert.severity]:
                    alert.severity = check.verdict
                    alert.title = alerting.alert_title(
                        service=check.service,
                        canary_version=check.canary_version,
                        severity=check.verdict,
                    )
                    alert.escalation_level = 0
                    alert.escalation_since = now
                    alert.last_notified_at = now
                    alert.cooldown_until = now + cooldown
                    notices.append(_Notice(alert, NotificationEvent.SEVERITY, check=check))
                    changed.update(_WORSENED_FIELDS)
                if alert.pk is not None:
                    to_update[alert.pk] = alert
                    changed.update(_SEEN_FIELDS)
            by_check[check.pk] = alert
        elif alert is not None:
            alert.status = AlertStatus.RESOLVED
            alert.resolved_at = now
            alert.resolution = f"Recovered: {check.message}"
            alert.last_check = check
            alert.last_seen_at = now
            if alert.last_notified_at is not None:
                notices.append(_Notice(alert, NotificationEvent.RESOLVED, check=check))
            if alert.pk is not None:
                to_update[alert.pk] = alert
                changed.update(_RESOLVED_FIELDS)
            del open_alerts[key]
            by_check[check.pk] = alert
    Alert.objects.bulk_create(to_create)
    if to_update:
        # Only the fields some alert changed: each one costs a CASE over every alert.
        Alert.objects.bulk_update(
            list(to_update.values()),
            [name for name in _ALERT_FIELDS if name in changed],
        )
    _queue_notifications(notices, now)
    return by_check


def alert_acknowledge(
    *, alert: Alert, actor: Any, source: str = Source.UI, note: str = ""
) -> Alert:
    """Someone is on it: stops the alert's escalation. Only an open alert can be acknowledged."""
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        if locked.status != AlertStatus.OPEN:
            who = f" by {locked.acknowledged_by}" if locked.acknowledged_by_id else ""
            raise TransitionNotAllowed(
                f"This alert is {locked.status}{who}; only an open alert can be acknowledged.",
                field="status",
            )
        locked.status = AlertStatus.ACKNOWLEDGED
        locked.acknowledged_by = actor if getattr(actor, "is_authenticated", False) else None
        locked.acknowledged_at = timezone.now()
        if note:
            locked.resolution = note
        _full_clean(locked)
        with audit_context(actor=actor, source=source, reason=note, verb="acknowledge"):
            locked.save()
    return locked


def alert_resolve(*, alert: Alert, actor: Any, source: str = Source.UI, note: str = "") -> Alert:
    """Close an open or acknowledged alert by hand; the next failing check raises a new one."""
    now = timezone.now()
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        if locked.status == AlertStatus.RESOLVED:
            raise TransitionNotAllowed("This alert is already resolved.", field="status")
        locked.status = AlertStatus.RESOLVED
        locked.resolved_by = actor if getattr(actor, "is_authenticated", False) else None
        locked.resolved_at = now
        who = actor.get_username() if getattr(actor, "is_authenticated", False) else "someone"
        locked.resolution = f"Resolved by {who}" + (f": {note}" if note else ".")
        _full_clean(locked)
        with audit_context(actor=actor, source=source, reason=note, verb="resolve"):
            locked.save()
        if locked.last_notified_at is not None:
            _queue_notifications([_Notice(locked, NotificationEvent.RESOLVED)], now)
    return locked


def alerts_resolve_for_canaries(
    *, canaries: Iterable[tuple[str, str]], reason: str, now: datetime | None = None
) -> list[Alert]:
    """Resolve every open or acknowledged alert of these (service, canary version) pairs,
    whatever its policy: the canary has left traffic, so nothing is left to watch. Each alert
    that told someone it was raised tells them it is resolved, with ``reason``. Runs in the
    caller's transaction (or its own), in a number of queries that does not grow with the
    pairs; returns the alerts resolved."""
    pairs = {(service, version) for service, version in canaries}
    if not pairs:
        return []
    now = now or timezone.now()
    reason = (reason or "").strip() or "The canary left traffic."
    with transaction.atomic():
        alerts = [
            alert
            for alert in Alert.objects.select_related("last_check")
            .select_for_update(of=("self",))
            .filter(
                service__in={service for service, _ in pairs},
                canary_version__in={version for _, version in pairs},
            )
            .exclude(status=AlertStatus.RESOLVED)
            .order_by("pk")
            if (alert.service, alert.canary_version) in pairs
        ]
        if not alerts:
            return []
        for alert in alerts:
            alert.status = AlertStatus.RESOLVED
            alert.resolved_at = now
            alert.resolution = reason
        Alert.objects.bulk_update(alerts, ["status", "resolved_at", "resolution"])
        _queue_notifications(
            [
                _Notice(alert, NotificationEvent.RESOLVED)
                for alert in alerts
                if alert.last_notified_at is not None
            ],
            now,
        )
    return alerts


def alerts_resolve_for(
    *, service: str, canary_version: str, reason: str, now: datetime | None = None
) -> list[Alert]:
    """`alerts_resolve_for_canaries` for one canary."""
    return alerts_resolve_for_canaries(canaries=[(service, canary_version)], reason=reason, now=now)


def alerts_escalate(*, now: datetime | None = None) -> int:
    """Fire the escalation rules that came due for open, unacknowledged alerts; returns how
    many rules fired. A rule fires once per alert and severity."""
    now = now or timezone.now()
    fired = 0
    with transaction.atomic():
        alerts = list(
            Alert.objects.select_related("last_check")
            .select_for_update(of=("self",))
            .filter(status=AlertStatus.OPEN, policy__isnull=False)
            .order_by("pk")
        )
        if not alerts:
            return 0
        policies = HealthPolicy.objects.in_bulk({alert.policy_id for alert in alerts})
        notices: list[_Notice] = []
        changed: list[Alert] = []
        for alert in alerts:
            policy = policies.get(alert.policy_id)  # type: ignore[arg-type]
            if policy is None or not policy.alerting_enabled:
                continue
            rules = alerting.rules_for(
                policy.escalation_rules, alert.severity, policy.alert_channels
            )
            due = alerting.due_level(rules, alert.escalation_since, now)
            if due <= alert.escalation_level:
                continue
            for level in range(alert.escalation_level + 1, due + 1):
                notices.append(
                    _Notice(alert, NotificationEvent.ESCALATED, level=level, rule=rules[level - 1])
                )
                fired += 1
            alert.escalation_level = due
            alert.last_notified_at = now
            changed.append(alert)
        if changed:
            Alert.objects.bulk_update(changed, ["escalation_level", "last_notified_at"])
        _queue_notifications(notices, now)
    return fired


# --------------------------------------------------------------------------- notifications


def _queue_notifications(notices: Sequence[_Notice], now: datetime) -> list[int]:
    """Write the outbox rows for ``notices`` in the caller's transaction (so none is lost if it
    commits, and none exists if it rolls back); each row is handed to a worker after commit."""
    if not notices:
        return []
    policies = HealthPolicy.objects.in_bulk(
        {notice.alert.policy_id for notice in notices if notice.alert.policy_id}
    )
    rows: list[NotificationOutbox] = []
    for notice in notices:
        alert = notice.alert
        policy = policies.get(alert.policy_id) if alert.policy_id else None  # type: ignore[arg-type]
        if policy is None or not policy.alerting_enabled:
            continue
        if notice.rule is not None:
            channels = list(notice.rule.channels)
            recipients = list(notice.rule.recipients)
        else:
            channels = list(policy.alert_channels)
            recipients = list(policy.alert_recipients)
        payload = _payload(notice, policy, now)
        subject = _subject(notice)
        event = f"{notice.event}-{notice.level}" if notice.level else notice.event
        if notice.event == NotificationEvent.SEVERITY:
            event = f"{notice.event}-{alert.severity}"
        rows += _outbox_rows(
            key=f"alert:{alert.pk}:{event}",
            event=notice.event,
            targets=_targets(policy, channels, recipients),
            subject=subject,
            payload=payload,
            now=now,
            alert=alert,
        )
    return _outbox_write(rows)


def notifications_queue(
    *,
    key: str,
    policy: HealthPolicy | None,
    subject: str,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> list[int]:
    """Queue news that is not an alert (a deployment started, promoted, rolled back...) to the
    channels and recipients of ``policy``'s alerting, in the caller's transaction; returns the
    outbox ids. ``key`` names the news: the same key is never queued twice. Nothing is queued
    without a policy or with its alerting off."""
    if policy is None or not policy.alerting_enabled:
        return []
    rows = _outbox_rows(
        key=key,
        event=NotificationEvent.DEPLOYMENT,
        targets=_targets(policy, policy.alert_channels, policy.alert_recipients),
        subject=subject,
        payload=payload,
        now=now or timezone.now(),
    )
    return _outbox_write(rows)


def _outbox_rows(
    *,
    key: str,
    event: str,
    targets: Sequence[tuple[str, str]],
    subject: str,
    payload: dict[str, Any],
    now: datetime,
    alert: Alert | None = None,
) -> list[NotificationOutbox]:
    """One outbox row per target; a row's key is the news's ``key`` and its target's."""
    return [
        NotificationOutbox(
            key=f"{key}:{channel}:{hashlib.sha256(target.encode()).hexdigest()[:16]}"[:200],
            alert=alert,
            event=event,
            channel=channel,
            target=target,
            subject=subject[:200],
            payload=payload,
            next_attempt_at=now,
            created_at=now,
        )
        for channel, target in targets
    ]


def _targets(
    policy: HealthPolicy, channels: Sequence[str], recipients: Sequence[str]
) -> list[tuple[str, str]]:
    """(channel, address or URL) pairs: one per email recipient, one per chat or webhook."""
    targets: list[tuple[str, str]] = []
    for channel in channels:
        if channel == NotificationChannel.EMAIL:
            targets.extend((channel, address) for address in recipients)
        elif channel == NotificationChannel.SLACK:
            targets.append((channel, policy.slack_webhook_url or conf.slack_webhook_url()))
        elif channel == NotificationChannel.WEBHOOK:
            targets.append((channel, policy.webhook_url or conf.webhook_url()))
    return targets


def _outbox_write(rows: list[NotificationOutbox]) -> list[int]:
    """Write outbox rows and hand the new ones to a worker once the transaction commits."""
    if not rows:
        return []
    # The unique key makes re-queuing the same news a no-op.
    NotificationOutbox.objects.bulk_create(rows, ignore_conflicts=True)
    keys = [row.key for row in rows]
    ids = list(
        NotificationOutbox.objects.filter(
            key__in=keys, status=NotificationStatus.PENDING, attempts=0
        ).values_list("pk", flat=True)
    )
    if ids and conf.notify_enqueue():
        from health import tasks

        for outbox_id in ids:
            tasks.notification_deliver.delay_on_commit(outbox_id)
    return ids


def _subject(notice: _Notice) -> str:
    alert = notice.alert
    if notice.event == NotificationEvent.RESOLVED:
        return f"[Canary] Resolved: {alert.service} {alert.canary_version}"
    if notice.event == NotificationEvent.ESCALATED:
        return f"[Canary] Escalation {notice.level}: {alert.title}"
    return f"[Canary] {alert.title}"


def _payload(notice: _Notice, policy: HealthPolicy, now: datetime) -> dict[str, Any]:
    alert = notice.alert
    check = notice.check or alert.last_check
    url = conf.site_url() + reverse("health:service-detail", args=[alert.service])
    event = {
        NotificationEvent.RAISED: "alert.raised",
        NotificationEvent.SEVERITY: "alert.severity_raised",
        NotificationEvent.ESCALATED: "alert.escalated",
        NotificationEvent.RESOLVED: "alert.resolved",
    }[NotificationEvent(notice.event)]
    if notice.event == NotificationEvent.RESOLVED:
        why = alert.resolution
    else:
        why = check.message if check is not None else alert.message
    text = f"{_subject(notice)}\n{why}\n{url}"
    return {
        "event": event,
        "sent_at": now.isoformat(),
        "text": text,
        "alert": {
            "id": alert.pk,
            "service": alert.service,
            "canary_version": alert.canary_version,
            "stable_version": alert.stable_version,
            "policy": policy.name,
            "severity": alert.severity,
            "status": alert.status,
            "title": alert.title,
            "message": alert.message,
            "raised_at": alert.raised_at.isoformat(),
            "escalation_level": notice.level or alert.escalation_level,
            "url": url,
        },
        "check": None
        if check is None
        else {
            "id": check.pk,
            "verdict": check.verdict,
            "message": check.message,
            "should_rollback": check.should_rollback,
            "window_end": check.window_end.isoformat(),
        },
    }


def notification_deliver(*, outbox_id: int, now: datetime | None = None) -> str:
    """Try to send one pending notification that is due; returns its status afterwards
    (``skipped`` when it is not due, already sent, or held by another worker)."""
    now = now or timezone.now()
    lease_until = now + timedelta(seconds=conf.notify_lease_seconds())
    claimed = (
        _claimable(now)
        .filter(pk=outbox_id)
        .update(claimed_until=lease_until, attempts=F("attempts") + 1)
    )
    if not claimed:
        return "skipped"
    row = NotificationOutbox.objects.get(pk=outbox_id)
    return _send(row, now=now, lease_until=lease_until)


def notifications_deliver_due(*, now: datetime | None = None, limit: int = 100) -> dict[str, int]:
    """Send every due notification (up to ``limit``); returns counts by resulting status."""
    now = now or timezone.now()
    lease_until = now + timedelta(seconds=conf.notify_lease_seconds())
    with transaction.atomic():
        due = _claimable(now).order_by("next_attempt_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            # PostgreSQL: rows another worker is claiming right now are skipped, not waited on.
            due = due.select_for_update(skip_locked=True)
        # SQLite has no SKIP LOCKED; its IMMEDIATE transaction is the only writer, so no other
        # worker can claim between this select and the update below.
        ids = list(due.values_list("pk", flat=True)[:limit])
        if ids:
            _claimable(now).filter(pk__in=ids).update(
                claimed_until=lease_until, attempts=F("attempts") + 1
            )
    counts: dict[str, int] = {}
    # Oldest news first: a reader sees "started" before "rolled back".
    claimed = NotificationOutbox.objects.filter(pk__in=ids, claimed_until=lease_until)
    for row in claimed.order_by("next_attempt_at", "pk"):
        status = _send(row, now=now, lease_until=lease_until)
        counts[status] = counts.get(status, 0) + 1
    return counts


def _claimable(now: datetime) -> Any:
    return NotificationOutbox.objects.filter(
        status=NotificationStatus.PENDING, next_attempt_at__lte=now
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))


def _send(row: NotificationOutbox, *, now: datetime, lease_until: datetime) -> str:
    """Send a claimed row and record the outcome; the claim (lease) keeps others off it."""
    mine = NotificationOutbox.objects.filter(pk=row.pk, claimed_until=lease_until)
    try:
        if not row.target:
            raise notifications.DeliveryFailed(
                f"no {row.channel} URL is configured for this policy or the site", permanent=True
            )
        notifications.send(
            channel=row.channel,
            target=row.target,
            subject=row.subject,
            payload=row.payload,
            key=row.key,
        )
    except notifications.DeliveryFailed as error:
        give_up = error.permanent or row.attempts >= conf.notify_max_attempts()
        delay = min(
            conf.notify_backoff_max_seconds(),
            conf.notify_backoff_seconds() * 2 ** max(0, row.attempts - 1),
        )
        logger.warning("notification %s attempt %s failed: %s", row.key, row.attempts, error)
        mine.update(
            status=NotificationStatus.FAILED if give_up else NotificationStatus.PENDING,
            next_attempt_at=now + timedelta(seconds=delay),
            claimed_until=None,
            last_error=error.message[:2000],
        )
        return NotificationStatus.FAILED if give_up else "retrying"
    mine.update(
        status=NotificationStatus.DELIVERED,
        delivered_at=timezone.now(),
        claimed_until=None,
        last_error="",
    )
    return NotificationStatus.DELIVERED


def notification_retry(*, outbox_id: int) -> NotificationOutbox:
    """Put a failed notification back in the queue (from the admin)."""
    updated = NotificationOutbox.objects.filter(
        pk=outbox_id, status=NotificationStatus.FAILED
    ).update(status=NotificationStatus.PENDING, next_attempt_at=timezone.now(), claimed_until=None)
    if not updated:
        raise TransitionNotAllowed("Only a failed notification can be retried.", field="status")
    return NotificationOutbox.objects.get(pk=outbox_id)
