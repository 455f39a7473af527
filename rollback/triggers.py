"""A rollback plan's own automatic triggers: `plan_triggers_check`, run by the beat every tick.

A plan with ``autoTriggerEnabled`` and ``automatic`` among its ``triggers`` watches the
canaries it covers (`plans_for`) through its ``triggerThresholds``. They are not judged here:
each plan's thresholds become a health policy of the health app's own shape (`health.analysis`)
and every watched canary is judged by the health app's evaluation service, all of them in one
bulk pass, as the deployments tick judges its own. So a plan's trigger holds exactly when the
health judge says ``should_rollback``:

- a threshold is violated beyond doubt (the bound of the canary's 95% interval nearest to good
  is on the bad side) in the current window and in each of the ``consecutiveFailures - 1``
  windows back to back before it; a window without enough data breaks the streak, so sparse
  data never triggers (fewer than ``CANARY_DEPLOYMENT_MIN_REQUESTS`` requests, or latency
  samples, in a window);
- a window is the threshold's ``duration``, rounded up to whole buckets of the metric store
  (``CANARY_METRICS_BUCKET_SECONDS``), so never shorter than one bucket;
- only the current phase's own traffic counts: no window reaches back before the phase began.

Thresholds of different durations are judged by one policy each (a policy has one window).
The policies are named ``rollback plan #<id>, <n> s window``, created on first use through the
health app's service, without alerts of their own (the rollback is the news), and rewritten
from the plan when it changes: the plan is their source.

The canaries whose plan's thresholds hold are rolled back in one `deployments_transition`
batch, as the tick takes its decisions: the rollback with trigger automatic, the judge's
sentences as its reason and the evaluation as its evidence, then the finish, which the plan's
runner refuses (code ``runner``): the plan's execution takes the canary out of traffic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from deployments import conf as deployments_conf
from deployments import selectors as deployment_selectors
from deployments.choices import DeploymentStatus, PhaseStatus
from deployments.lifecycle import Action
from deployments.models import Deployment, Phase
from deployments.transitions import (
    DeploymentBusy,
    TransitionRequest,
    TransitionResult,
    deployments_transition,
)
from health import analysis
from health import conf as health_conf
from health import selectors as health_selectors
from health import services as health_services
from health import windows as health_windows
from health.models import HealthCheck, HealthPolicy
from health.services import EvaluationRequest
from rollback import plans
from rollback.models import RollbackPlan
from rollback.services.plans import plans_for

logger = logging.getLogger(__name__)

OUT_OF_TRAFFIC = "The canary is out of traffic: its weight is 0 and its flags are off."


@dataclass
class TriggerReport:
    """What one check did; its counts are of deployments, but ``bad_plans``."""

    examined: int = 0
    watched: int = 0
    evaluated: int = 0
    triggered: int = 0
    skipped: int = 0
    bad_plans: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Watch:
    """One canary judged over one window length for its plan."""

    deployment: Deployment
    phase: Phase
    plan: RollbackPlan
    policy_name: str


def plan_triggers_check(*, now: datetime | None = None) -> TriggerReport:
    """Roll back every running or paused canary whose rollback plan's own triggers hold.

    In a number of queries that does not grow with the deployments: one reads them with their
    running phase, one their plans, one the plans' health policies (a plan new or changed since
    the last check writes its policy first), one bulk health pass judges them all, one query
    finds where each fault began, and one transition batch rolls back those that breach. A plan
    that cannot be read, or whose thresholds make no health policy, is logged and counted, and
    the other plans are still checked.
    """
    now = now or timezone.now()
    report = TriggerReport()
    pairs = _running_phases()
    report.examined = len(pairs)
    if not pairs:
        return report
    covering = plans_for([deployment for deployment, _phase in pairs])
    documents: dict[str, tuple[RollbackPlan, int, dict[str, Any]]] = {}
    windows_of: dict[int, list[str]] = {}
    refused: set[int] = set()
    for deployment, _phase in pairs:
        plan = covering.get(deployment.pk)
        if plan is None or plan.pk in refused or plan.pk in windows_of:
            continue
        try:
            spec = plan.spec
        except plans.InvalidPlan as error:
            _bad_plan(report, plan, f"does not read: {error}")
            refused.add(plan.pk)
            continue
        names: list[str] = []
        if _triggers_automatically(spec):
            for window, document in policy_documents(spec).items():
                name = policy_name(plan, window)
                documents[name] = (plan, window, document)
                names.append(name)
        windows_of[plan.pk] = names
    policies = _policies(documents, report)

    # A phase that began after the latest window closed has no traffic of its own yet.
    end = health_windows.window_end(
        now, resolution=health_conf.bucket_seconds(), settle=health_conf.settle_seconds()
    )
    watches: list[_Watch] = []
    for deployment, phase in pairs:
        plan = covering.get(deployment.pk)
        if plan is None or not windows_of.get(plan.pk):
            continue
        if not deployment.auto_rollback:
            # The deployment leaves every rollback to a person.
            continue
        report.watched += 1
        if phase.started_at is None or phase.started_at >= end:
            continue
        for name in windows_of[plan.pk]:
            if name in policies:
                watches.append(_Watch(deployment, phase, plan, name))
    requests = [
        EvaluationRequest(
            service=watch.deployment.service.name,
            canary_version=watch.deployment.canary_version,
            stable_version=watch.deployment.stable_version,
            policy=policies[watch.policy_name],
            planned_canary_share=float(watch.phase.traffic_percentage),
            # Each phase on its own traffic, as the deployments tick judges it.
            window_start=watch.phase.started_at,
        )
        for watch in watches
    ]
    checks = _evaluate(requests, now, report)
    breaches: dict[int, tuple[_Watch, list[HealthCheck]]] = {}
    judged: set[int] = set()
    for watch, check in zip(watches, checks, strict=True):
        if check is None:
            continue
        judged.add(watch.deployment.pk)
        if check.should_rollback:
            breaches.setdefault(watch.deployment.pk, (watch, []))[1].append(check)
    report.evaluated = len(judged)
    _roll_back(list(breaches.values()), now, report)
    return report


def policy_name(plan: RollbackPlan, window: int) -> str:
    """The health policy that judges ``plan``'s thresholds of one window length."""
    return f"rollback plan #{plan.pk}, {window} s window"


def policy_documents(spec: plans.Plan) -> dict[int, dict[str, Any]]:
    """The plan's trigger thresholds as health policies (`health.analysis`'s shape), one for
    each window length, by its seconds: each threshold is the policy's rollback threshold
    (``consecutiveFailures`` its ``consecutive_violations``) and a critical threshold of its
    verdict; nothing else is judged (no comparison with stable, trend or sample ratio: the
    deployment's own health policy judges those)."""
    resolution = health_conf.bucket_seconds()
    grouped: dict[int, list[plans.TriggerThreshold]] = {}
    for threshold in spec.trigger_thresholds:
        # At least one bucket of the metric store: the finest window it can show.
        window = health_windows.whole_buckets(math.ceil(threshold.duration_ms / 1000), resolution)
        grouped.setdefault(window, []).append(threshold)
    return {
        window: {
            "window_seconds": window,
            "min_requests": deployments_conf.default_min_requests(),
            "no_data": str(analysis.NoDataRule.INCONCLUSIVE),
            "thresholds": [
                {
                    "metric": item.metric,
                    "operator": str(item.operator),
                    "critical": item.threshold,
                    "consecutive_failures": item.consecutive_failures,
                }
                for item in thresholds
            ],
            "comparison": {"enabled": False},
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": False},
            "auto_rollback": {
                "enabled": True,
                "thresholds": [
                    {
                        "metric": item.metric,
                        "operator": str(item.operator),
                        "threshold": item.threshold,
                        "consecutive_violations": item.consecutive_failures,
                    }
                    for item in thresholds
                ],
            },
        }
        for window, thresholds in grouped.items()
    }


def _triggers_automatically(spec: plans.Plan) -> bool:
    return (
        spec.auto_trigger_enabled
        and plans.Trigger.AUTOMATIC in spec.triggers
        and bool(spec.trigger_thresholds)
    )


def _running_phases() -> list[tuple[Deployment, Phase]]:
    """Every running or paused deployment with the phase it is running, in one query: only the
    columns the check and the plans' lookup read."""
    rows = (
        Phase.objects.filter(
            status=PhaseStatus.RUNNING,
            order=F("deployment__current_phase"),
            deployment__status__in=[DeploymentStatus.RUNNING, DeploymentStatus.PAUSED],
        )
        .select_related("deployment__service")
        .only(
            "id",
            "order",
            "started_at",
            "traffic_percentage",
            "deployment__id",
            "deployment__service_id",
            "deployment__status",
            "deployment__current_phase",
            "deployment__canary_share",
            "deployment__auto_rollback",
            "deployment__stable_version",
            "deployment__canary_version",
            "deployment__config",
            "deployment__service__id",
            "deployment__service__name",
        )
        .order_by("deployment_id")
    )
    return [(phase.deployment, phase) for phase in rows]


def _policies(
    documents: dict[str, tuple[RollbackPlan, int, dict[str, Any]]], report: TriggerReport
) -> dict[str, HealthPolicy]:
    """The health policy of each document, by name, in one query; a document new or changed
    since the last check is written first through the health app's service."""
    if not documents:
        return {}
    found = {
        policy.name: policy
        for policy in health_selectors.policies().filter(name__in=list(documents))
    }
    failed: set[int] = set()
    for name, (plan, window, document) in documents.items():
        if plan.pk in failed:
            found.pop(name, None)
            continue
        try:
            wanted = analysis.build_policy(document).to_dict()
        except analysis.InvalidPolicy as error:
            _bad_plan(report, plan, f"its thresholds make no health policy: {error}")
            failed.add(plan.pk)
            found.pop(name, None)
            continue
        policy = found.get(name)
        if policy is not None and policy.policy == wanted and not policy.alerting_enabled:
            continue
        try:
            found[name] = _write_policy(name, plan, window, wanted, policy)
        except (CanaryError, IntegrityError) as error:
            _bad_plan(report, plan, f"its health policy could not be written: {error}")
            failed.add(plan.pk)
            found.pop(name, None)
    # A plan is judged by all of its thresholds or by none.
    return {name: policy for name, policy in found.items() if documents[name][0].pk not in failed}


def _write_policy(
    name: str,
    plan: RollbackPlan,
    window: int,
    document: dict[str, Any],
    policy: HealthPolicy | None,
) -> HealthPolicy:
    description = (
        f"The automatic triggers of rollback plan {plan.name!r} with {window} s windows, kept "
        "from the plan's triggerThresholds by the rollback app: edit the plan, not this policy, "
        "whose changes the next check replaces."
    )
    if policy is not None:
        return health_services.health_policy_update(
            policy=policy,
            document=document,
            description=description,
            alerting_enabled=False,
            source=Source.SYSTEM,
        )
    try:
        with transaction.atomic():
            return health_services.health_policy_create(
                name=name,
                description=description,
                policy=document,
                alerting_enabled=False,
                source=Source.SYSTEM,
            )
    except (CanaryError, IntegrityError):
        # Two checks creating it at once: the other one won.
        existing = health_selectors.policies().filter(name=name).first()
        if existing is None:
            raise
        return existing


def _bad_plan(report: TriggerReport, plan: RollbackPlan, why: str) -> None:
    report.bad_plans += 1
    report.errors.append(f"rollback plan {plan.name!r} {why}")
    logger.warning("Rollback plan %s (%s) %s", plan.pk, plan.name, why)


def _evaluate(
    requests: list[EvaluationRequest], now: datetime, report: TriggerReport
) -> list[HealthCheck | None]:
    """The health pass; if the bulk call refuses one request, the others are still judged."""
    if not requests:
        return []
    try:
        return list(health_services.health_evaluate_many(requests=requests, now=now))
    except CanaryError as error:
        report.errors.append(f"bulk evaluation: {error.message}")
    checks: list[HealthCheck | None] = []
    for request in requests:
        try:
            checks.append(health_services.health_evaluate_many(requests=[request], now=now)[0])
        except CanaryError as error:
            report.errors.append(f"{request.service} {request.canary_version}: {error.message}")
            checks.append(None)
    return checks


def _roll_back(
    breaches: Sequence[tuple[_Watch, list[HealthCheck]]], now: datetime, report: TriggerReport
) -> None:
    """Every breaching canary rolled back in one transition batch, on the phase and in the
    status it was judged in."""
    if not breaches:
        return
    faults = deployment_selectors.fault_starts(
        [(watch.deployment, watch.phase, checks[0].window_end) for watch, checks in breaches]
    )
    requests: list[TransitionRequest] = []
    for watch, checks in breaches:
        deployment = watch.deployment
        fault = faults.get(deployment.pk)
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.ROLLBACK,
                trigger=plans.Trigger.AUTOMATIC.value,
                reason=_reason(watch.plan, checks),
                evidence={
                    **_evidence(checks[0]),
                    "planTrigger": watch.plan.name,
                    **({"faultStart": fault.isoformat()} if fault is not None else {}),
                },
                expected_phase=watch.phase.order,
                expected_status=deployment.status,
            )
        )
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.FINISH_ROLLBACK,
                reason=OUT_OF_TRAFFIC,
                expected_status=DeploymentStatus.ROLLING_BACK,
            )
        )
    try:
        results = deployments_transition(
            requests=requests, source=Source.SYSTEM, skip_locked=True, now=now
        )
    except CanaryError as error:
        report.errors.append(f"rollbacks: {error.message}")
        logger.warning("Plan triggers could not roll back: %s", error)
        return
    for begun, finished in zip(results[::2], results[1::2], strict=True):
        if not begun.done:
            _refused(begun, report)
            continue
        report.triggered += 1
        if not finished.done and getattr(finished.error, "code", "") != "runner":
            # The plan's runner finishes its own rollbacks; any other refusal is news.
            _refused(finished, report)


def _refused(result: TransitionResult, report: TriggerReport) -> None:
    request, error = result.request, result.error
    if isinstance(error, DeploymentBusy) or getattr(error, "code", "") == "moved_on":
        # The deployments tick, or a person, decided first.
        report.skipped += 1
        return
    message = getattr(error, "message", str(error))
    report.errors.append(f"deployment {request.deployment_id} {request.action}: {message}")
    logger.warning(
        "Plan trigger could not %s deployment %s: %s", request.action, request.deployment_id, error
    )


def _reason(plan: RollbackPlan, checks: Sequence[HealthCheck]) -> str:
    """The judge's own sentences for each threshold that holds: metric, bound and sample."""
    sentences = [
        item["message"]
        for check in checks
        for item in (check.result or {}).get("rollback_checks", [])
        if item.get("breached")
    ]
    said = " ".join(sentences) or checks[0].message
    return f"Roll back: the triggers of rollback plan {plan.name!r} hold: {said}"[:5000]


def _evidence(check: HealthCheck) -> dict[str, Any]:
    """The evaluation as the health app stored it, less the phase sums it carries forward for
    its next pass, with the check it is (the shape the tick's evidence gives it)."""
    result = {key: value for key, value in (check.result or {}).items() if key != "carry"}
    result["healthCheck"] = {
        "id": check.pk,
        "policy": check.policy_name,
        "verdict": check.verdict,
        "message": check.message,
        "windowEnd": check.window_end.isoformat(),
        "shouldRollback": check.should_rollback,
    }
    return result
