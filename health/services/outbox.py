"""The notification outbox: news queued in the writer's transaction and delivered by workers with
a lease, retried with backoff."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from canary_site.exceptions import TransitionNotAllowed
from health import alerting, conf, notifications
from health.choices import NotificationChannel, NotificationEvent, NotificationStatus
from health.models import Alert, HealthCheck, HealthPolicy, NotificationOutbox

logger = logging.getLogger(__name__)


@dataclass
class Notice:
    """News of an alert for the outbox: the event, and for an escalation its level and rule."""

    alert: Alert
    event: str
    level: int = 0
    rule: alerting.EscalationRule | None = None
    check: HealthCheck | None = None


def queue_notices(notices: Sequence[Notice], now: datetime) -> list[int]:
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
    news = News(key=key, policy=policy, subject=subject, payload=payload)
    return notifications_queue_many(news=[news], now=now)


@dataclass(frozen=True)
class News:
    """One piece of news for `notifications_queue_many`; its fields mean what the arguments of
    `notifications_queue` of the same names mean."""

    key: str
    policy: HealthPolicy | None
    subject: str
    payload: dict[str, Any]
    # Channels and recipients of the news itself (a rollback plan's), instead of the policy's
    # alerting; the policy, if any, still gives the chat and webhook addresses.
    channels: Sequence[str] | None = None
    recipients: Sequence[str] = ()


def notifications_queue_many(*, news: Sequence[News], now: datetime | None = None) -> list[int]:
    """`notifications_queue` for many pieces of news at once (a tick's decisions), in a number
    of queries that does not grow with them; returns the outbox ids."""
    now = now or timezone.now()
    rows: list[NotificationOutbox] = []
    for item in news:
        policy = item.policy
        if item.channels is not None:
            targets = _targets(policy or HealthPolicy(), item.channels, item.recipients)
        elif policy is None or not policy.alerting_enabled:
            continue
        else:
            targets = _targets(policy, policy.alert_channels, policy.alert_recipients)
        rows += _outbox_rows(
            key=item.key,
            event=NotificationEvent.DEPLOYMENT,
            targets=targets,
            subject=item.subject,
            payload=item.payload,
            now=now,
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


def _subject(notice: Notice) -> str:
    alert = notice.alert
    if notice.event == NotificationEvent.RESOLVED:
        return f"[Canary] Resolved: {alert.service} {alert.canary_version}"
    if notice.event == NotificationEvent.ESCALATED:
        return f"[Canary] Escalation {notice.level}: {alert.title}"
    return f"[Canary] {alert.title}"


def _payload(notice: Notice, policy: HealthPolicy, now: datetime) -> dict[str, Any]:
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
