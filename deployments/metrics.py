"""The deployments' state on /metrics: deployments by status, where each active one stands
(its phase, the canary's share, its current phase's latest judgement) and the breaches the
control loop saw.

Everything is read from the database when Prometheus scrapes, in three queries however many
deployments there are, so every web process answers the same numbers and a restart loses
none. Labels are bounded: a deployment's id (of the active ones only), a service's name and
the engines' own words, never free text.
"""

from __future__ import annotations

from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.fields.json import KT
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from canary_site.metrics import StateCollector
from deployments.choices import DeploymentStatus, EventKind
from deployments.lifecycle import ACTIVE_STATUSES, Outcome
from deployments.models import Deployment, Phase
from health.analysis import Verdict
from routing.models import Service

OUTCOMES = tuple(str(outcome) for outcome in Outcome)
HEALTH_VERDICTS = tuple(str(verdict) for verdict in Verdict)
_ACTIVE = sorted(str(status) for status in ACTIVE_STATUSES)


def breach_events(prefix: str = "") -> Q:
    """The timeline entries that record a breach, seen from a model ``prefix`` leads from.

    A breach is a rollback threshold (or a plan's own trigger) crossed on evidence: the tick's
    note when auto-rollback is off, and every automatic rollback, whose evidence carries the
    judgement (the tick's) or the plan that triggered it. A person's rollback is no breach."""
    kind, evidence = f"{prefix}kind", f"{prefix}evidence__has_key"
    return Q(**{kind: EventKind.BREACH}) | Q(
        Q(**{evidence: "judgement"}) | Q(**{evidence: "planTrigger"}),
        **{kind: EventKind.ROLLBACK},
    )


class DeploymentsCollector(StateCollector):
    what = "deployments' metrics"

    def families(self) -> dict[str, Metric]:
        item = ["deployment", "service"]
        return {
            "status": GaugeMetricFamily(
                "canary_deployments", "Deployments by lifecycle status.", labels=["status"]
            ),
            "phase": GaugeMetricFamily(
                "canary_deployment_phase",
                "The order (1 for the first) of the phase an active deployment is on.",
                labels=item,
            ),
            "share": GaugeMetricFamily(
                "canary_deployment_canary_share_percent",
                "The canary's share of traffic (0 to 100) as an active deployment last set it.",
                labels=item,
            ),
            "verdict": GaugeMetricFamily(
                "canary_deployment_last_verdict",
                "1 for the outcome of the latest judgement of an active deployment's current "
                "phase (advance, wait, breach), 0 for the others; all 0 before the first.",
                labels=[*item, "verdict"],
            ),
            "health": GaugeMetricFamily(
                "canary_deployment_health_verdict",
                "1 for the health policy's verdict in that judgement's evidence, 0 for the "
                "others; all 0 while the phase has no health check of its own.",
                labels=[*item, "verdict"],
            ),
            "breaches": CounterMetricFamily(
                "canary_breaches",
                "Rollback thresholds breached, by service: the control loop's breach notes "
                "and its automatic rollbacks, as stored on the deployments' timelines.",
                labels=["service"],
            ),
        }

    def fill(self, families: dict[str, Metric]) -> None:
        by_status = dict(
            Deployment.objects.order_by()
            .values_list("status")
            .annotate(count=Count("pk"))
            .values_list("status", "count")
        )
        for status in DeploymentStatus.values:
            families["status"].add_metric([status], by_status.get(status, 0))

        current = Phase.objects.filter(deployment=OuterRef("pk"), order=OuterRef("current_phase"))
        active = (
            Deployment.objects.filter(status__in=_ACTIVE)
            .order_by("pk")
            .annotate(
                outcome=Subquery(
                    current.annotate(value=KT("judgement__outcome")).values("value")[:1]
                ),
                health=Subquery(
                    current.annotate(value=KT("judgement__evidence__verdict")).values("value")[:1]
                ),
            )
            .values_list(
                "pk", "service__name", "current_phase", "canary_share", "outcome", "health"
            )
        )
        for pk, service, phase, share, outcome, health in active:
            labels = [str(pk), service]
            families["phase"].add_metric(labels, phase or 0)
            families["share"].add_metric(labels, float(share))
            for word in OUTCOMES:
                families["verdict"].add_metric([*labels, word], 1.0 if outcome == word else 0.0)
            for word in HEALTH_VERDICTS:
                families["health"].add_metric([*labels, word], 1.0 if health == word else 0.0)

        # From the services, so a service without a breach reads 0 rather than nothing: the
        # first breach is then an increase Prometheus sees.
        breaches = (
            Service.objects.order_by("name")
            .annotate(
                breaches=Count("deployments__events", filter=breach_events("deployments__events__"))
            )
            .values_list("name", "breaches")
        )
        for service, count in breaches:
            families["breaches"].add_metric([service], count)


collector = DeploymentsCollector()
