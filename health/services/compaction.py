"""Compaction: fine buckets rolled up into coarse ones, and retention of buckets, keys, checks and
delivered notifications."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from health import conf, store
from health.choices import NotificationStatus
from health.histogram import Histogram
from health.ingest import BucketDelta, Deltas, floor_time
from health.models import HealthCheck, MetricBucket, NotificationOutbox, PushBatch


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


# A fine bucket's columns that its coarse bucket adds up as they are (the start is floored, the
# latency histogram merged).
_SUMMED = tuple(name for name in store.COLUMNS if name not in ("start", "resolution", "latency"))


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
        taken = list(rows.values("id", *store.COLUMNS)[:limit])
        if not taken:
            return 0, 0
        deltas = Deltas(coarse)
        for row in taken:
            delta = BucketDelta(
                **{name: row[name] for name in _SUMMED},
                start=floor_time(row["start"], coarse),
                resolution=coarse,
            )
            if row["latency"]:
                delta.add_latency_counts(Histogram.from_list(row["latency"]).counts)
            deltas.add(delta)
        merged = deltas.sorted()
        store.upsert(merged)
        ids = [row["id"] for row in taken]
        for offset in range(0, len(ids), 500):
            MetricBucket.objects.filter(pk__in=ids[offset : offset + 500]).delete()
    return len(taken), len(merged)
