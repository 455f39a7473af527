"""The rollback app's state on /metrics: rollbacks by service and trigger, how long each took to
take the canary out of traffic, kill switches by state and the sign-offs waiting.

Read from the database when Prometheus scrapes, in four queries however many rows there are,
so the counters agree across processes and survive restarts. Rehearsals move no traffic and
are left out.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Coalesce
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from canary_site.metrics import StateCollector
from rollback.choices import RequestState, RollbackTrigger, SwitchState
from rollback.models import ApprovalRequest, KillSwitch, RollbackExecution

# Seconds from the breach (or the rollback's start, when no breach is known) to the canary
# being out of traffic.
OUT_OF_TRAFFIC_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class RollbackCollector(StateCollector):
    what = "rollback metrics"

    def families(self) -> dict[str, Metric]:
        return {
            "rollbacks": CounterMetricFamily(
                "canary_rollbacks",
                "Rollbacks begun, by service and trigger (automatic, manual, kill_switch); "
                "rehearsals and rollbacks still waiting for approval are not counted.",
                labels=["service", "trigger"],
            ),
            "out_of_traffic": HistogramMetricFamily(
                "canary_rollback_out_of_traffic_seconds",
                "Seconds from the breach (or the rollback's start when no breach is known) "
                "until the canary was out of traffic, per rollback, by service.",
                labels=["service"],
            ),
            "switches": GaugeMetricFamily(
                "canary_kill_switches", "Kill switches by state.", labels=["state"]
            ),
            "active": GaugeMetricFamily("canary_kill_switches_active", "Kill switches active now."),
            "pending": GaugeMetricFamily(
                "canary_approval_requests_pending", "Approval requests waiting for a decision."
            ),
        }

    def fill(self, families: dict[str, Metric]) -> None:
        real = RollbackExecution.objects.filter(rehearsal=False).order_by()
        begun: dict[str, dict[str, int]] = {}
        for service, trigger, count in (
            real.filter(started_at__isnull=False)
            .values_list("service", "trigger")
            .annotate(count=Count("pk"))
            .values_list("service", "trigger", "count")
        ):
            begun.setdefault(service, {})[trigger] = count
        # Every trigger of a service that has rolled back at all, 0 where none: the first of a
        # kind is then an increase Prometheus sees.
        for service in sorted(begun):
            for trigger in RollbackTrigger.values:
                families["rollbacks"].add_metric([service, trigger], begun[service].get(trigger, 0))

        took = ExpressionWrapper(
            F("out_of_traffic_at") - Coalesce("breach_at", "started_at"),
            output_field=DurationField(),
        )
        per_bucket = {
            f"le_{index}": Count("pk", filter=Q(took__lte=timedelta(seconds=bound)))
            for index, bound in enumerate(OUT_OF_TRAFFIC_BUCKETS)
        }
        histograms = (
            real.filter(out_of_traffic_at__isnull=False, started_at__isnull=False)
            .alias(took=took)
            .values("service")
            .annotate(count=Count("pk"), total=Sum("took"), **per_bucket)
            .order_by("service")
        )
        for row in histograms:
            buckets = [
                (str(float(bound)), row[f"le_{index}"])
                for index, bound in enumerate(OUT_OF_TRAFFIC_BUCKETS)
            ]
            buckets.append(("+Inf", row["count"]))
            total = row["total"] or timedelta(0)
            families["out_of_traffic"].add_metric(
                [row["service"]], buckets, sum_value=total.total_seconds()
            )

        states = dict(
            KillSwitch.objects.order_by()
            .values_list("state")
            .annotate(count=Count("pk"))
            .values_list("state", "count")
        )
        for state in SwitchState.values:
            families["switches"].add_metric([state], states.get(state, 0))
        families["active"].add_metric([], states.get(SwitchState.ACTIVE, 0))
        families["pending"].add_metric(
            [], ApprovalRequest.objects.filter(state=RequestState.PENDING).count()
        )


collector = RollbackCollector()
