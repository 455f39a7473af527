"""Alerts: what stored checks do to their canaries' alerts (the decision is
`health.alerting.decide_alert`), and the people's and the beat's alert changes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from canary_site.audit import audit_context
from canary_site.choices import Source
from canary_site.exceptions import TransitionNotAllowed, full_clean
from health import alerting, analysis
from health.choices import AlertStatus, NotificationEvent, Verdict
from health.models import Alert, HealthCheck, HealthPolicy
from health.services.outbox import Notice, queue_notices

# Only the fields some alert changed go into the bulk update: each one costs a CASE over every
# alert updated.
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
_JUDGED = (Verdict.WARNING, Verdict.CRITICAL, Verdict.PASS)


def alerts_apply_checks(
    created: Sequence[tuple[HealthCheck, analysis.Evaluation]], now: datetime
) -> dict[int, Alert]:
    """Apply `alerting.decide_alert` to the alerts of freshly stored checks, in the caller's
    transaction; returns the alerts by check id.

    The checks are taken in order, so a check sees the alert an earlier one of the same canary
    raised or resolved. The alerts are written in two statements and their news queued.
    """
    relevant = [
        check for check, _ in created if check.policy_id is not None and check.verdict in _JUDGED
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
    notices: list[Notice] = []
    by_check: dict[int, Alert] = {}
    for check in relevant:
        policy: HealthPolicy = check.policy  # type: ignore[assignment]
        key = (check.service, check.canary_version, check.policy_id)
        alert = open_alerts.get(key)
        decision = alerting.decide_alert(
            verdict=check.verdict,
            message=check.message,
            service=check.service,
            canary_version=check.canary_version,
            alert=None
            if alert is None
            else alerting.OpenAlert(
                severity=alert.severity,
                check_count=alert.check_count,
                notified=alert.last_notified_at is not None,
            ),
            cooldown_seconds=policy.alert_cooldown_seconds,
            cooling_until=cooling.get(key),
            now=now,
        )
        if decision.action == alerting.AlertAction.NOTHING:
            continue
        if alert is None:
            alert = Alert(
                service=check.service,
                canary_version=check.canary_version,
                stable_version=check.stable_version,
                policy=policy,
                first_check=check,
                last_check=check,
                **decision.changes,
            )
            to_create.append(alert)
            open_alerts[key] = alert
        else:
            for name, value in decision.changes.items():
                setattr(alert, name, value)
            alert.last_check = check
            if alert.pk is not None:
                to_update[alert.pk] = alert
                changed.update(decision.changes, ("last_check",))
        if decision.action == alerting.AlertAction.RESOLVE:
            del open_alerts[key]
        if decision.notify is not None:
            notices.append(Notice(alert, decision.notify, check=check))
        by_check[check.pk] = alert
    Alert.objects.bulk_create(to_create)
    if to_update:
        Alert.objects.bulk_update(
            list(to_update.values()),
            [name for name in _ALERT_FIELDS if name in changed],
        )
    queue_notices(notices, now)
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
        full_clean(locked)
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
        full_clean(locked)
        with audit_context(actor=actor, source=source, reason=note, verb="resolve"):
            locked.save()
        if locked.last_notified_at is not None:
            queue_notices([Notice(locked, NotificationEvent.RESOLVED)], now)
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
        queue_notices(
            [
                Notice(alert, NotificationEvent.RESOLVED)
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
        notices: list[Notice] = []
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
                    Notice(alert, NotificationEvent.ESCALATED, level=level, rule=rules[level - 1])
                )
                fired += 1
            alert.escalation_level = due
            alert.last_notified_at = now
            changed.append(alert)
        if changed:
            Alert.objects.bulk_update(changed, ["escalation_level", "last_notified_at"])
        queue_notices(notices, now)
    return fired


def alert_raise(
    *,
    service: str,
    canary_version: str,
    stable_version: str = "",
    policy: HealthPolicy | None,
    title: str,
    message: str,
    severity: str = alerting.Severity.CRITICAL,
    now: datetime | None = None,
) -> Alert:
    """Raise an alert that no check raised (a rollback that failed or ran out of time), in the
    caller's transaction, and queue its news to ``policy``'s alerting. An alert already open
    on the canary under the same policy is raised to ``severity`` with the new message."""
    now = now or timezone.now()
    alert = (
        Alert.objects.select_for_update()
        .filter(service=service, canary_version=canary_version, policy=policy)
        .exclude(status=AlertStatus.RESOLVED)
        .first()
    )
    event = NotificationEvent.RAISED
    if alert is None:
        alert = Alert(
            service=service,
            canary_version=canary_version,
            stable_version=stable_version,
            policy=policy,
            severity=severity,
            status=AlertStatus.OPEN,
            title=title[:200],
            message=message,
            raised_at=now,
            last_seen_at=now,
        )
    else:
        if alert.severity != severity:
            event = NotificationEvent.SEVERITY
        alert.severity, alert.title, alert.message = severity, title[:200], message
        alert.check_count += 1
        alert.last_seen_at = now
    alert.last_notified_at = now
    alert.save()
    queue_notices([Notice(alert, event)], now)
    return alert
