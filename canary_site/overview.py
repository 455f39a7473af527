"""The overview page: figures from every subsystem at a glance.

With the root URLs, this is the one module of the site that reads the apps; the site's other
modules are the floor every app builds on and import none of them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone
from django.views.generic import TemplateView

from canary_site.htmx import HtmxPartialMixin
from canary_site.models import AuditEntry
from canary_site.roles import RoleRequiredMixin
from canary_site.selectors import heartbeat_last
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from flags.choices import FlagStatus
from flags.models import Flag
from health.choices import AlertSeverity, AlertStatus
from health.models import Alert
from routing.models import Service, Target


def overview_counts() -> dict[str, Any]:
    """Figures for the overview page, one aggregate query per subsystem."""
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
    beat = heartbeat_last(name="beat")
    return {
        "deployments_running": deployments["running"],
        "deployments_paused": deployments["paused"],
        "deployments_rolling_back": deployments["rolling_back"],
        "audit_today": AuditEntry.objects.filter(timestamp__gte=since).count(),
        "beat_age": beat[1] if beat else None,
        # The beat that ticks (``hostname:pid``): with several, which one holds the lock.
        "beat_identity": beat[0] if beat else "",
        "flags_enabled": flags["enabled"],
        "flags_killed": flags["killed"],
        "alerts_open": alerts["open"],
        "alerts_critical": alerts["critical"],
        "services": Service.objects.count(),
        "targets": targets["total"],
        "targets_unhealthy": targets["unhealthy"],
    }


class OverviewView(RoleRequiredMixin, HtmxPartialMixin, TemplateView):
    template_name = "canary_site/overview.html"
    htmx_partial = "overview-counts"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(counts=overview_counts(), **kwargs)
