"""Reads of the site's own records: tokens, the audit trail, heartbeats and overview counts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from canary_site import tokens
from canary_site.models import ApiToken, AuditEntry, Heartbeat


def api_token_for_secret(*, secret: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=tokens.digest(secret), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.is_active:
        return None
    return token


def api_tokens_for_user(*, user: Any) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True)


def audit_entries() -> QuerySet[AuditEntry]:
    return AuditEntry.objects.select_related("actor", "content_type").order_by("-timestamp")


def audit_entries_for(*, obj: Any) -> QuerySet[AuditEntry]:
    """The history of one object, newest first (for a detail page's history panel)."""
    from django.contrib.contenttypes.models import ContentType

    return audit_entries().filter(
        content_type=ContentType.objects.get_for_model(obj), object_pk=str(obj.pk)
    )


def heartbeat_age_seconds(*, name: str) -> float | None:
    beat = Heartbeat.objects.filter(name=name).values_list("beat_at", flat=True).first()
    if beat is None:
        return None
    return (timezone.now() - beat).total_seconds()


def overview_counts() -> dict[str, Any]:
    """Figures for the overview page, one aggregate query per subsystem.

    The overview is the one place the site reads every app, which its place at the top of the
    import graph allows; the apps' own modules never import the site's pages.
    """
    from django.db.models import Count, Q

    from deployments.choices import DeploymentStatus
    from deployments.models import Deployment
    from flags.choices import FlagStatus
    from flags.models import Flag
    from health.choices import AlertSeverity, AlertStatus
    from health.models import Alert
    from routing.models import Service, Target

    since = timezone.now() - timedelta(hours=24)
    flags = Flag.objects.aggregate(
        enabled=Count("pk", filter=Q(status=FlagStatus.ENABLED)),
        killed=Count("pk", filter=Q(status=FlagStatus.KILLED)),
    )
    alerts = Alert.objects.exclude(status=AlertStatus.RESOLVED).aggregate(
        open=Count("pk"), critical=Count("pk", filter=Q(severity=AlertSeverity.CRITICAL))
    )
    targets = Target.objects.aggregate(
        total=Count("pk"), unhealthy=Count("pk", filter=Q(healthy=False))
    )
    deployments = Deployment.objects.aggregate(
        running=Count("pk", filter=Q(status=DeploymentStatus.RUNNING)),
        paused=Count("pk", filter=Q(status=DeploymentStatus.PAUSED)),
        rolling_back=Count("pk", filter=Q(status=DeploymentStatus.ROLLING_BACK)),
    )
    return {
        "deployments_running": deployments["running"],
        "deployments_paused": deployments["paused"],
        "deployments_rolling_back": deployments["rolling_back"],
        "audit_today": AuditEntry.objects.filter(timestamp__gte=since).count(),
        "beat_age": heartbeat_age_seconds(name="beat"),
        "flags_enabled": flags["enabled"],
        "flags_killed": flags["killed"],
        "alerts_open": alerts["open"],
        "alerts_critical": alerts["critical"],
        "services": Service.objects.count(),
        "targets": targets["total"],
        "targets_unhealthy": targets["unhealthy"],
    }
