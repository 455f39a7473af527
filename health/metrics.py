"""The health app's state on /metrics: the alerts not yet resolved and the health checks stored,
read from the database when Prometheus scrapes, in two queries."""

from __future__ import annotations

from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from canary_site.metrics import StateCollector
from health.choices import AlertSeverity, AlertStatus, Verdict
from health.models import Alert, HealthCheck


class HealthCollector(StateCollector):
    what = "health metrics"

    def families(self) -> dict[str, Metric]:
        return {
            "alerts": GaugeMetricFamily(
                "canary_alerts_open",
                "Alerts not resolved yet (open or acknowledged), by severity.",
                labels=["severity"],
            ),
            "checks": CounterMetricFamily(
                "canary_health_checks",
                "Health checks stored, by verdict (retention removes the oldest: Prometheus "
                "reads the drop as a counter reset).",
                labels=["verdict"],
            ),
        }

    def fill(self, families: dict[str, Metric]) -> None:
        alerts = dict(
            Alert.objects.exclude(status=AlertStatus.RESOLVED)
            .order_by()
            .values_list("severity")
            .annotate(count=Count("pk"))
            .values_list("severity", "count")
        )
        for severity in AlertSeverity.values:
            families["alerts"].add_metric([severity], alerts.get(severity, 0))
        checks = dict(
            HealthCheck.objects.order_by()
            .values_list("verdict")
            .annotate(count=Count("pk"))
            .values_list("verdict", "count")
        )
        for verdict in Verdict.values:
            families["checks"].add_metric([verdict], checks.get(verdict, 0))


collector = HealthCollector()
