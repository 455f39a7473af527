"""Rollbacks: begun by the control loop on a breach, asked for by a person, or rehearsed; run
step by step by the beat.

- `ExecutionRunner` is plugged into `deployments.rollbacks` when the app is ready. When a
  rollback begins in a transition batch, it finds each deployment's plan (`plans_for`) and says
  how the canary leaves traffic: the built-in immediate plan, or an immediate plan whose first
  step is to stop traffic, takes the canary's weight to 0 in that very transaction (so a breach
  is out of traffic within the tick that saw it); the other strategies move it step by step.
  The execution and its steps are written in the same transaction.
- An automatic rollback (a breach, a kill switch) is never held by an approval and never refused
  by a cooldown: within its plan's cooldown it runs the built-in immediate plan instead, and
  says so. `requireApproval`, the cooldown and a plan's triggers apply to a person's rollback
  (`rollback_request`): refused with 409 and the time left in a cooldown; held for the plan's
  approvers with the deployment paused at its share.
- `rollback_executions_advance` (beat, step 4 of the control loop) claims each due execution
  with a lease, so two workers never run one at once and a worker that dies lets it go, and runs
  its steps in order until one must wait. A step that finished is never run again. Past
  ``maxRollbackTimeMs``, a failed step or a failed validation, the execution fails loudly: the
  canary is taken out of traffic at once if it was not yet, the deployment fails and a critical
  alert is raised.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from canary_site import gates
from canary_site.audit import audit_context
from canary_site.choices import Role, Source
from canary_site.exceptions import (
    CanaryError,
    Forbidden,
    NotFound,
    TransitionNotAllowed,
    ValidationFailed,
)
from canary_site.roles import has_any_role
from deployments import conf as deployments_conf
from deployments import rollbacks, transitions
from deployments.choices import DeploymentStatus
from deployments.lifecycle import Action
from deployments.models import Deployment
from health import services as health_services
from rollback import conf, plans, steps
from rollback.choices import ACTIVE_EXECUTION_STATES, ExecutionState, RequestState, StepState
from rollback.models import ApprovalRequest, RollbackExecution, RollbackPlan, RollbackStep
from rollback.services.plans import plans_for

logger = logging.getLogger(__name__)

ROLLBACK_ACTION = "rollback.execute"
# Set while a person's rollback (approved or not) begins: the execution it continues.
_continuing: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "canary_rollback_continuing", default=None
)


class CoolingDown(TransitionNotAllowed):
    """A person's rollback within the plan's cooldown; ``retry_after`` is the seconds left."""

    code = "cooldown"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _spec(plan: RollbackPlan | None) -> plans.Plan:
    if plan is None:
        return plans.BUILTIN
    try:
        return plan.spec
    except plans.InvalidPlan:
        # A plan saved by an older version that no longer reads: never stop a rollback for it.
        logger.warning("Rollback plan %s does not read; the built-in plan runs instead", plan.pk)
        return plans.BUILTIN


def _cooling(services: Sequence[str], now: datetime) -> dict[str, datetime]:
    """The latest rollback (not a rehearsal) of each service, in one query."""
    rows = (
        RollbackExecution.objects.filter(service__in=list(services), rehearsal=False)
        .exclude(state=ExecutionState.CANCELLED)
        .values("service")
        .annotate(last=Max("created_at"))
    )
    return {row["service"]: row["last"] for row in rows}


def cooldown_left(spec: plans.Plan, last: datetime | None, now: datetime) -> timedelta | None:
    """How long a new rollback of the service must still wait under ``spec``, or None."""
    safety = spec.safety
    if safety.allow_consecutive_rollbacks or not safety.cooldown_period_ms or last is None:
        return None
    ends = last + timedelta(milliseconds=safety.cooldown_period_ms)
    return ends - now if ends > now else None


@dataclass
class _Chosen:
    plan: RollbackPlan | None
    spec: plans.Plan
    note: str = ""


class ExecutionRunner:
    """The rollback app's side of `deployments.rollbacks`."""

    def _choose(
        self, deployments: Sequence[Deployment], triggers: dict[int, str], now: datetime
    ) -> dict[int, _Chosen]:
        found = plans_for(deployments)
        last = _cooling([d.service.name for d in deployments], now)
        chosen: dict[int, _Chosen] = {}
        for deployment in deployments:
            plan = found.get(deployment.pk)
            spec = _spec(plan)
            trigger = triggers.get(deployment.pk, plans.Trigger.AUTOMATIC)
            note = ""
            continuing = _continuing.get()
            if plan is not None and trigger != plans.Trigger.MANUAL and continuing is None:
                if not spec.allows(trigger):
                    note = (
                        f"Plan {plan.name!r} is not for {trigger} rollbacks; the built-in plan ran."
                    )
                elif (
                    left := cooldown_left(spec, last.get(deployment.service.name), now)
                ) is not None:
                    note = (
                        f"Plan {plan.name!r} is cooling down for {_duration(left)} more; the "
                        "built-in plan took the canary out at once."
                    )
                if note:
                    plan, spec = None, plans.BUILTIN
            chosen[deployment.pk] = _Chosen(plan, spec, note)
        return chosen

    def handling(
        self, deployments: Sequence[Deployment], triggers: dict[int, str]
    ) -> dict[int, rollbacks.Handling]:
        chosen = self._choose(deployments, triggers, timezone.now())
        handled: dict[int, rollbacks.Handling] = {}
        for pk, choice in chosen.items():
            if choice.plan is None:
                continue
            spec = choice.spec
            flags_by_plan = any(
                action.type == plans.ActionType.UPDATE_FEATURE_FLAGS for action in spec.actions
            )
            handled[pk] = rollbacks.Handling(
                traffic_now=spec.takes_traffic_at_once,
                flags_now=spec.takes_traffic_at_once and not flags_by_plan,
                runner=steps.RUNNER,
            )
        return handled

    def begin(self, begun: Sequence[rollbacks.Begun]) -> None:
        triggers = {item.deployment.pk: item.trigger for item in begun}
        chosen = self._choose([item.deployment for item in begun], triggers, begun[0].now)
        continuing = _continuing.get()
        created: list[tuple[RollbackExecution, list[plans.StepSpec], rollbacks.Begun]] = []
        for item in begun:
            choice = chosen[item.deployment.pk]
            managed = bool(item.handling.runner)
            if not managed:
                choice = _Chosen(None, plans.BUILTIN, choice.note)
            execution = _reused(continuing, item.deployment.pk) or RollbackExecution()
            _fill(execution, item, choice)
            share = Decimal(str(item.evidence.get("fromShare", item.deployment.canary_share)))
            specs = (
                plans.expand(choice.spec, share=share, earlier_shares=item.earlier_shares)
                if managed
                else built_in_steps()
            )
            created.append((execution, specs, item))
        # In a number of queries that does not grow with the rollbacks of the batch (a tick
        # may roll back many at once).
        fresh = [execution for execution, _, _ in created if execution.pk is None]
        for execution, specs, item in created:
            _record_immediate(execution, item, len(specs))
        RollbackExecution.objects.bulk_create(fresh)
        for execution, _, _ in created:
            if execution not in fresh:
                execution.save()
        step_rows: list[RollbackStep] = []
        for execution, specs, item in created:
            rows = [_step_row(execution, position, spec) for position, spec in enumerate(specs)]
            _record_immediate_steps(rows, item)
            step_rows += rows
        RollbackStep.objects.bulk_create(step_rows)
        for execution, _, item in created:
            _tell(execution, "start", "Rollback started", item.now)
        ids = [execution.pk for execution, _, _ in created if not execution.ended]
        if ids:
            transaction.on_commit(lambda: _kick(ids))


def _reused(continuing: int | None, deployment_id: int) -> RollbackExecution | None:
    if continuing is None:
        return None
    return RollbackExecution.objects.filter(pk=continuing, deployment_id=deployment_id).first()


def _fill(execution: RollbackExecution, item: rollbacks.Begun, choice: _Chosen) -> None:
    deployment = item.deployment
    spec = choice.spec
    execution.plan = choice.plan
    execution.plan_name = spec.name
    execution.definition = plans.plan_to_dict(spec)
    execution.strategy = spec.strategy.value
    execution.deployment = deployment
    execution.service = deployment.service.name
    execution.trigger = item.trigger or plans.Trigger.AUTOMATIC
    execution.state = ExecutionState.RUNNING
    execution.source = item.source
    if execution.requested_by_id is None and getattr(item.actor, "is_authenticated", False):
        execution.requested_by = item.actor
    execution.reason = item.reason
    execution.evidence = item.evidence
    if choice.note:
        execution.outcome = choice.note
    fault = item.evidence.get("faultStart")
    execution.breach_at = _parse(fault) if isinstance(fault, str) else None
    execution.created_at = execution.created_at or item.now
    execution.started_at = item.now
    execution.deadline_at = item.now + timedelta(milliseconds=spec.safety.max_rollback_time_ms)
    execution.next_at = item.now


def _parse(moment: str) -> datetime | None:
    try:
        return datetime.fromisoformat(moment)
    except ValueError:
        return None


def built_in_steps() -> list[plans.StepSpec]:
    return [
        plans.StepSpec("stop-new-traffic", plans.StepType.STOP_NEW_TRAFFIC, "Stop new traffic", 0),
        plans.StepSpec(
            "linked-flags-off", plans.StepType.UPDATE_FEATURE_FLAGS, "Linked flags off", 0
        ),
    ]


def _step_row(execution: RollbackExecution, position: int, spec: plans.StepSpec) -> RollbackStep:
    return RollbackStep(
        execution=execution,
        position=position,
        key=spec.key,
        type=spec.type.value,
        name=spec.name,
        config=spec.config,
        timeout_ms=spec.timeout_ms,
        after_ms=spec.after_ms,
    )


def _record_immediate(execution: RollbackExecution, item: rollbacks.Begun, count: int) -> None:
    """What the rollback's own transaction did: the canary out of traffic (and, for the
    built-in plan, its flags off, and the whole rollback finished by the same tick)."""
    traffic = item.evidence.get("traffic")
    if not item.handling.traffic_now or traffic is None:
        return
    execution.out_of_traffic_at = item.now
    if not item.handling.runner:
        execution.state = ExecutionState.SUCCEEDED
        execution.finished_at = item.now
        execution.next_at = None
        execution.outcome = (
            execution.outcome or "The canary is out of traffic and its flags are off."
        )


def _record_immediate_steps(step_rows: list[RollbackStep], item: rollbacks.Begun) -> None:
    traffic = item.evidence.get("traffic")
    if not item.handling.traffic_now or traffic is None:
        return
    done = step_rows if not item.handling.runner else step_rows[:1]
    for row in done:
        row.state = StepState.SUCCEEDED
        row.attempts = 1
        row.started_at = row.finished_at = item.now
        row.output = (
            {"canaryShare": 0.0, "rule": traffic.get("rule")}
            if row.type == plans.StepType.STOP_NEW_TRAFFIC
            else {"flags": traffic.get("flags", {})}
        )


def _kick(ids: list[int]) -> None:
    """Best effort: a worker starts at once; the beat's next tick does if the broker is down."""
    from django.conf import settings

    from rollback import tasks

    if settings.CELERY_TASK_ALWAYS_EAGER or not deployments_conf.enqueue_follow_ups():
        return
    for pk in ids:
        try:
            tasks.rollback_execution_advance.delay(pk)
        except Exception as error:
            logger.warning("Could not hand rollback %s to a worker: %s", pk, error)
            return


def _duration(left: timedelta) -> str:
    # Whole seconds, rounded down: a cooldown with 599.4 s left reads "9 min 59 s".
    seconds = max(1, int(left.total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    if not minutes:
        return f"{seconds} s"
    return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"


# --------------------------------------------------------------------------- a person's


class RollbackDescriber:
    """A person's rollback as the approvers see it (`canary_site.gates`)."""

    def action(self, arguments: Any) -> str | None:
        return ROLLBACK_ACTION

    def describe(self, arguments: Any) -> gates.Change:
        deployment = (
            Deployment.objects.select_related("service")
            .filter(pk=arguments.get("deployment_id"))
            .first()
        )
        if deployment is None:
            raise NotFound(f"There is no deployment {arguments.get('deployment_id')}.")
        execution_id = arguments.get("execution_id")
        if execution_id:
            execution = RollbackExecution.objects.filter(pk=execution_id).first()
            version = execution.state if execution is not None else "gone"
        else:
            version = f"{deployment.status}:{deployment.current_phase}"
        return gates.Change(
            action=ROLLBACK_ACTION,
            object_type="deployments.deployment",
            object_id=str(deployment.pk),
            object_repr=str(deployment),
            version=version,
            before={"status": deployment.status, "canary_share": float(deployment.canary_share)},
            after={"status": DeploymentStatus.ROLLED_BACK, "canary_share": 0.0},
            service=deployment.service.name,
        )


@gates.gated(RollbackDescriber())
def rollback_request(
    *,
    deployment_id: int,
    reason: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    plan_id: int | None = None,
    execution_id: int | None = None,
    now: datetime | None = None,
) -> RollbackExecution:
    """A person's rollback of a running or paused deployment, by its plan (or ``plan_id``).

    A reason is required (400). 409 when the deployment is not running or paused, when the plan
    is not for manual rollbacks, or within the plan's cooldown (with the time left). When the
    plan requires approval, the deployment is paused at its share, the execution waits for the
    plan's approvers (`ApprovalRequired`, 202) and runs once one approves.
    """
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("reason: say why the deployment is rolled back.", field="reason")
    if len(reason) > 2000:
        raise ValidationFailed("reason: at most 2,000 characters.", field="reason")
    if getattr(actor, "is_authenticated", False) and not has_any_role(
        actor, [Role.ENGINEER, Role.ADMIN]
    ):
        raise Forbidden("Only engineers and admins may roll a deployment back.")
    deployment = Deployment.objects.select_related("service").filter(pk=deployment_id).first()
    if deployment is None:
        raise NotFound(f"There is no deployment {deployment_id}.")
    if deployment.status not in (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED):
        raise TransitionNotAllowed(
            f"Only a running or paused deployment can be rolled back; this one is "
            f"{deployment.get_status_display().lower()}.",
            code="transition_refused",
        )
    plan = _chosen_plan(deployment, plan_id)
    spec = _spec(plan)
    if plan is not None and not spec.allows(plans.Trigger.MANUAL):
        raise TransitionNotAllowed(
            f"Rollback plan {plan.name!r} does not allow manual rollbacks.", code="not_manual"
        )
    waiting = _awaiting(execution_id, deployment)
    if waiting is None:
        last = _cooling([deployment.service.name], now).get(deployment.service.name)
        left = cooldown_left(spec, last, now)
        if left is not None:
            raise CoolingDown(
                f"{deployment.service.name} was rolled back {_duration(now - last)} ago; plan "
                f"{spec.name!r} allows the next rollback in {_duration(left)}.",
                retry_after=max(1, int(left.total_seconds() + 0.999)),
            )
        if spec.safety.require_approval and not gates.granted():
            return _hold_for_approval(deployment, plan, spec, reason, actor, source, now)
    return _roll_back(deployment, reason, actor, source, waiting, now)


def _chosen_plan(deployment: Deployment, plan_id: int | None) -> RollbackPlan | None:
    if plan_id is None:
        return plans_for([deployment]).get(deployment.pk)
    plan = RollbackPlan.objects.filter(pk=plan_id).first()
    if plan is None:
        raise ValidationFailed(f"plan: there is no rollback plan {plan_id}.", field="plan")
    return plan


def _awaiting(execution_id: int | None, deployment: Deployment) -> RollbackExecution | None:
    """The execution an approval now lets run (only inside the approval's own apply)."""
    if execution_id is None:
        return None
    execution = RollbackExecution.objects.filter(pk=execution_id, deployment=deployment).first()
    if execution is None or execution.state != ExecutionState.AWAITING_APPROVAL:
        raise TransitionNotAllowed(
            "That rollback is no longer waiting for approval.", code="superseded"
        )
    if not gates.granted():
        raise TransitionNotAllowed("That rollback waits for its approvers.", code="awaiting")
    return execution


def _roll_back(
    deployment: Deployment,
    reason: str,
    actor: Any,
    source: str,
    waiting: RollbackExecution | None,
    now: datetime,
) -> RollbackExecution:
    token = _continuing.set(waiting.pk if waiting is not None else None)
    try:
        with transaction.atomic():
            results = transitions.deployments_transition(
                requests=[
                    transitions.TransitionRequest(
                        deployment_id=deployment.pk,
                        action=Action.ROLLBACK,
                        reason=reason,
                        trigger=plans.Trigger.MANUAL,
                        expected_status=deployment.status,
                    ),
                    transitions.TransitionRequest(
                        deployment_id=deployment.pk,
                        action=Action.FINISH_ROLLBACK,
                        reason="Rolled back: the canary is out of traffic.",
                        expected_status=DeploymentStatus.ROLLING_BACK,
                    ),
                ],
                actor=actor,
                source=source,
                now=now,
            )
    finally:
        _continuing.reset(token)
    first = results[0]
    if first.error is not None:
        raise first.error
    execution = (
        RollbackExecution.objects.filter(deployment=deployment, rehearsal=False)
        .order_by("-started_at", "-pk")
        .first()
    )
    assert execution is not None
    return execution


def _hold_for_approval(
    deployment: Deployment,
    plan: RollbackPlan | None,
    spec: plans.Plan,
    reason: str,
    actor: Any,
    source: str,
    now: datetime,
) -> RollbackExecution:
    """Pause the deployment at its share and open a request for the plan's approvers; the
    approval that decides it runs `rollback_request` again with the execution it continues."""
    from rollback.services.approvals import open_request, request_summary

    approvers = _plan_approvers(spec, actor)
    if not approvers:
        raise ValidationFailed(
            f"Plan {spec.name!r} requires approval, but nobody other than you may approve it.",
            field="plan",
        )
    with transaction.atomic():
        if deployment.status == DeploymentStatus.RUNNING:
            transitions.deployments_transition(
                requests=[
                    transitions.TransitionRequest(
                        deployment_id=deployment.pk,
                        action=Action.PAUSE,
                        reason=f"Paused at {deployment.canary_share}% while a rollback waits "
                        "for approval.",
                    )
                ],
                actor=actor,
                source=source,
                now=now,
            )
        execution = RollbackExecution.objects.create(
            plan=plan,
            plan_name=spec.name,
            definition=plans.plan_to_dict(spec),
            strategy=spec.strategy.value,
            deployment=deployment,
            service=deployment.service.name,
            trigger=plans.Trigger.MANUAL,
            state=ExecutionState.AWAITING_APPROVAL,
            requested_by=actor if getattr(actor, "is_authenticated", False) else None,
            source=source,
            reason=reason,
            created_at=now,
        )
        describer = RollbackDescriber()
        arguments = {"deployment_id": deployment.pk, "reason": reason, "execution_id": execution.pk}
        if plan is not None:
            arguments["plan_id"] = plan.pk
        attempt = gates.Attempt(
            change=describer.describe(arguments),
            service=f"{rollback_request.__module__}.rollback_request",
            arguments=arguments,
            actor=actor,
            source=source,
            reason=reason,
        )
        request = open_request(attempt=attempt, approvers=approvers, now=now)
        execution.approval = request
        execution.save(update_fields=["approval"])
    raise gates.ApprovalRequired(
        f"Approval required: rollback plan {spec.name!r} asks an approval for this rollback; "
        f"deployment {deployment.pk} is paused at {deployment.canary_share}% meanwhile. Approval "
        f"request #{request.pk} is open until {request.expires_at:%Y-%m-%d %H:%M} UTC.",
        request_id=request.pk,
        summary=request_summary(request),
    )


def _plan_approvers(spec: plans.Plan, actor: Any) -> list[int]:
    """The plan's approvers by username (or everyone with the approver role), never the
    requester."""
    from rollback.models import ApprovalPolicy
    from rollback.services.approvals import possible_approvers, role_approvers

    users = get_user_model().objects.filter(is_active=True)
    if spec.safety.approvers:
        named = list(users.filter(username__in=spec.safety.approvers).values_list("pk", flat=True))
        # Only those who may approve at all: a named engineer could never decide the request.
        ids = possible_approvers(ApprovalPolicy(approver_kind="users"), users=named)
    else:
        ids = role_approvers()
    mine = getattr(actor, "pk", None)
    return [pk for pk in ids if pk != mine]


def rollback_rehearse(
    *,
    plan: RollbackPlan,
    deployment: Deployment,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    now: datetime | None = None,
) -> RollbackExecution:
    """Run ``plan`` against ``deployment`` without moving traffic or flags: webhooks get the
    dry-run header, validation really runs; recorded as a rehearsal."""
    now = now or timezone.now()
    spec = _spec(plan)
    phases = list(deployment.phases.order_by("order"))
    earlier = tuple(
        p.traffic_percentage for p in phases if p.order < (deployment.current_phase or 0)
    )
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="rehearse"),
    ):
        execution = RollbackExecution.objects.create(
            plan=plan,
            plan_name=spec.name,
            definition=plans.plan_to_dict(spec),
            strategy=spec.strategy.value,
            deployment=deployment,
            service=deployment.service.name,
            trigger=plans.Trigger.MANUAL,
            rehearsal=True,
            requested_by=actor if getattr(actor, "is_authenticated", False) else None,
            source=source,
            reason=reason or "Rehearsal.",
            created_at=now,
            started_at=now,
            next_at=now,
            deadline_at=now + timedelta(milliseconds=spec.safety.max_rollback_time_ms),
        )
        share = deployment.canary_share
        RollbackStep.objects.bulk_create(
            _step_row(execution, position, step)
            for position, step in enumerate(plans.expand(spec, share=share, earlier_shares=earlier))
        )
        transaction.on_commit(lambda: _kick([execution.pk]))
    return execution


def rollback_execution_cancel(
    *,
    execution: RollbackExecution,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    now: datetime | None = None,
) -> RollbackExecution:
    """Cancel an execution. One awaiting approval closes its request and leaves the deployment
    paused; one running skips its remaining steps, but the canary still leaves traffic at once
    (a rollback half done is not a safe place to stop); a rehearsal just stops."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="cancel"),
    ):
        execution = RollbackExecution.objects.select_for_update().get(pk=execution.pk)
        if execution.ended:
            raise TransitionNotAllowed(
                f"Rollback #{execution.pk} has ended ({execution.get_state_display().lower()}).",
                code="ended",
            )
        note = (
            f"Cancelled{' by ' + str(actor) if getattr(actor, 'is_authenticated', False) else ''}"
        )
        note += f": {reason}" if reason else "."
        if execution.state == ExecutionState.AWAITING_APPROVAL:
            if execution.approval_id:
                ApprovalRequest.objects.filter(
                    pk=execution.approval_id, state=RequestState.PENDING
                ).update(state=RequestState.CANCELLED, closed_at=now, outcome=note)
            note += " The deployment stays paused."
        elif not execution.rehearsal:
            _force_out(
                execution, now, f"Rollback #{execution.pk} cancelled: the canary out at once."
            )
            _finish_deployment(execution, Action.FINISH_ROLLBACK, note, now)
        execution.steps.filter(state__in=[StepState.PENDING, StepState.RUNNING]).update(
            state=StepState.SKIPPED, finished_at=now
        )
        _end(execution, ExecutionState.CANCELLED, note, now)
    return execution


# --------------------------------------------------------------------------- the beat


@dataclass
class AdvanceReport:
    claimed: int = 0
    steps: int = 0
    succeeded: int = 0
    failed: int = 0
    waiting: int = 0
    errors: list[str] = field(default_factory=list)


def rollback_executions_advance(
    *, now: datetime | None = None, ids: Sequence[int] | None = None
) -> AdvanceReport:
    """Run the next steps of every due execution (or of ``ids``); returns what was done."""
    report = AdvanceReport()
    moment = now or timezone.now()
    due = RollbackExecution.objects.filter(
        state__in=ACTIVE_EXECUTION_STATES, next_at__lte=moment
    ).filter(Q(lease_until__isnull=True) | Q(lease_until__lt=moment))
    if ids is not None:
        due = due.filter(pk__in=list(ids))
    for pk, lease in list(due.order_by("next_at").values_list("pk", "lease_until")[:100]):
        if not _claim(pk, moment):
            continue
        report.claimed += 1
        try:
            # A lease that ran out is a worker that died holding the execution: the step it
            # was in is run again, as a new attempt.
            _advance(pk, now, report, resumed=lease is not None)
        except Exception as error:
            logger.exception("Rollback %s could not advance", pk)
            report.errors.append(f"rollback {pk}: {error}")
            RollbackExecution.objects.filter(pk=pk).update(lease_until=None)
    return report


def _claim(pk: int, now: datetime) -> bool:
    return bool(
        RollbackExecution.objects.filter(pk=pk, state__in=ACTIVE_EXECUTION_STATES)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + conf.lease())
    )


def _advance(
    pk: int, fixed_now: datetime | None, report: AdvanceReport, *, resumed: bool = False
) -> None:
    execution = RollbackExecution.objects.select_related(
        "deployment",
        "deployment__service",
        "deployment__canary_target",
        "deployment__stable_target",
        "deployment__health_policy",
    ).get(pk=pk)
    spec = plans.read_plan(execution.definition)
    rows = list(execution.steps.order_by("position"))
    while True:
        now = fixed_now or timezone.now()
        if execution.deadline_at is not None and now > execution.deadline_at:
            limit = _duration(timedelta(milliseconds=spec.safety.max_rollback_time_ms))
            _fail(execution, f"Past the maximum rollback time of {limit}.", now)
            report.failed += 1
            return
        step = next(
            (row for row in rows if row.state in (StepState.PENDING, StepState.RUNNING)), None
        )
        if step is None:
            _succeed(execution, now)
            report.succeeded += 1
            return
        if step.state == StepState.PENDING and step.after_ms:
            previous = next((row for row in reversed(rows) if row.position < step.position), None)
            since = (
                previous.finished_at if previous and previous.finished_at else execution.started_at
            )
            due = (since or now) + timedelta(milliseconds=step.after_ms)
            if now < due:
                _pause_until(execution, due)
                report.waiting += 1
                return
        _mark_running(execution, step, now, resumed=resumed)
        resumed = False
        ctx = steps.StepContext(execution, execution.deployment, spec, step, now)
        try:
            result = steps.ACTIONS[step.type](ctx)
        except CanaryError as error:
            result = steps.Failed(error.message)
        report.steps += 1
        execution.deployment = ctx.deployment
        if isinstance(result, steps.Wait) and ctx.timed_out():
            limit = _duration(timedelta(milliseconds=step.timeout_ms))
            result = steps.Failed(f"{step.name} did not finish within {limit}.", result.output)
            step.timed_out = True
        if isinstance(result, steps.Wait):
            step.output = result.output
            if result.attempt:
                # A retry (a validation, a webhook): the next look is a new attempt.
                step.state = StepState.PENDING
            step.save(update_fields=["output", "timed_out", "state"])
            _pause_until(execution, result.until)
            report.waiting += 1
            return
        step.finished_at = timezone.now() if fixed_now is None else now
        step.output = result.output
        if isinstance(result, steps.Failed):
            step.state, step.error = StepState.FAILED, result.error
            step.save()
            _fail(execution, f"{step.name}: {result.error}", now)
            report.failed += 1
            return
        step.state, step.timed_out = StepState.SUCCEEDED, step.timed_out or result.timed_out
        step.save()
        if (
            step.type in (plans.StepType.STOP_NEW_TRAFFIC, plans.StepType.SET_WEIGHTS)
            and not execution.rehearsal
            and execution.out_of_traffic_at is None
            and execution.deployment.canary_share == 0
        ):
            execution.out_of_traffic_at = step.finished_at
            execution.save(update_fields=["out_of_traffic_at", "validation"])
        elif step.type == plans.StepType.VALIDATE:
            execution.save(update_fields=["validation"])
        if spec.notifications.enabled and spec.notifications.on_progress:
            _tell(execution, f"step-{step.position}", f"{step.name}: done", now)


def _mark_running(
    execution: RollbackExecution, step: RollbackStep, now: datetime, *, resumed: bool
) -> None:
    """The step runs: a first start, a retry or a rerun after a worker died counts as an
    attempt; looking again at a step that waits (a drain, keeping warm) does not."""
    if step.state == StepState.PENDING or resumed:
        step.attempts += 1
    if step.started_at is None:
        step.started_at = now
    step.state = StepState.RUNNING
    step.save(update_fields=["attempts", "started_at", "state"])
    state = (
        ExecutionState.VALIDATING
        if step.type == plans.StepType.VALIDATE
        else ExecutionState.RUNNING
    )
    if execution.state != state:
        execution.state = state
        execution.save(update_fields=["state"])
    # Renewed for each step, at least as long as the step may take, so a slow one (a webhook's
    # answer, a validation) does not lose its claim to another worker.
    hold = max(conf.lease(), timedelta(milliseconds=step.timeout_ms) + timedelta(seconds=5))
    RollbackExecution.objects.filter(pk=execution.pk).update(lease_until=now + hold)


def _pause_until(execution: RollbackExecution, until: datetime) -> None:
    # Never past the deadline: an execution over its maximum time fails when it is due, not
    # when its pace would have woken it.
    if execution.deadline_at is not None:
        until = min(until, execution.deadline_at + timedelta(milliseconds=1))
    execution.next_at = until
    execution.lease_until = None
    execution.save(update_fields=["next_at", "lease_until", "validation"])
    # A wait shorter than the beat's tick (a drain, a gradual pace) is looked at again when it
    # ends rather than at the next tick.
    seconds = (until - timezone.now()).total_seconds()
    if seconds < conf.tick_seconds():
        _kick_later(execution.pk, max(0.0, seconds))


def _kick_later(pk: int, seconds: float) -> None:
    from django.conf import settings

    from rollback import tasks

    if settings.CELERY_TASK_ALWAYS_EAGER or not deployments_conf.enqueue_follow_ups():
        # Run in the process itself, a wait would be no wait: the beat's tick comes back.
        return
    try:
        tasks.rollback_execution_advance.apply_async((pk,), countdown=seconds)
    except Exception as error:
        logger.warning("Could not schedule rollback %s: %s", pk, error)


def _succeed(execution: RollbackExecution, now: datetime) -> None:
    with transaction.atomic():
        if not execution.rehearsal:
            _release_drain(execution)
            _finish_deployment(execution, Action.FINISH_ROLLBACK, "Rolled back by its plan.", now)
            # The finish takes out whatever share the plan's steps left.
            execution.out_of_traffic_at = execution.out_of_traffic_at or now
        _end(execution, ExecutionState.SUCCEEDED, _summary(execution, "succeeded"), now)
        _tell(execution, "complete", "Rollback succeeded", now)


def _fail(execution: RollbackExecution, why: str, now: datetime) -> None:
    """Fail loudly: the canary out at once, the deployment failed, a critical alert."""
    with transaction.atomic():
        execution.steps.filter(state__in=[StepState.PENDING, StepState.RUNNING]).update(
            state=StepState.SKIPPED, finished_at=now
        )
        if not execution.rehearsal:
            _force_out(execution, now, f"Rollback #{execution.pk} failed: the canary out at once.")
            _release_drain(execution)
            _finish_deployment(execution, Action.FAIL, f"The rollback failed: {why}", now)
            deployment = execution.deployment
            health_services.alert_raise(
                service=execution.service,
                canary_version=deployment.canary_version,
                stable_version=deployment.stable_version,
                policy=deployment.health_policy,
                title=f"Rollback #{execution.pk} of {execution.service} failed",
                message=why,
                now=now,
            )
        _end(execution, ExecutionState.FAILED, why, now)
        _tell(execution, "failure", f"Rollback failed: {why}", now)


def _force_out(execution: RollbackExecution, now: datetime, reason: str) -> None:
    deployment = Deployment.objects.get(pk=execution.deployment_id)
    if deployment.status != DeploymentStatus.ROLLING_BACK or deployment.canary_share == 0:
        return
    (result,) = transitions.deployments_transition(
        requests=[
            transitions.TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.STEP_ROLLBACK,
                reason=reason,
                share=Decimal("0"),
                runner=deployment.rollback_runner,
            )
        ],
        now=now,
    )
    if result.done and execution.out_of_traffic_at is None:
        execution.out_of_traffic_at = now


def _finish_deployment(
    execution: RollbackExecution, action: Action, reason: str, now: datetime
) -> None:
    deployment = Deployment.objects.get(pk=execution.deployment_id)
    if deployment.status != DeploymentStatus.ROLLING_BACK:
        return
    (result,) = transitions.deployments_transition(
        requests=[
            transitions.TransitionRequest(
                deployment_id=deployment.pk,
                action=action,
                reason=reason,
                runner=deployment.rollback_runner,
            )
        ],
        now=now,
    )
    if result.error is not None:
        raise result.error


def _release_drain(execution: RollbackExecution) -> None:
    from routing import services as routing_services

    target = execution.deployment.canary_target
    if target is not None and getattr(target, "draining_since", None) is not None:
        routing_services.target_drain_end(target=target, reason=f"Rollback #{execution.pk} ended.")


def _end(execution: RollbackExecution, state: str, outcome: str, now: datetime) -> None:
    execution.state = state
    execution.outcome = outcome
    execution.finished_at = now
    execution.lease_until = None
    execution.next_at = None
    execution.save()


def _summary(execution: RollbackExecution, word: str) -> str:
    kind = "Rehearsal" if execution.rehearsal else "Rollback"
    return f"{kind} {word}: every step done."


def _tell(execution: RollbackExecution, what: str, text: str, now: datetime) -> None:
    spec = plans.read_plan(execution.definition) if execution.definition else plans.BUILTIN
    notifications = spec.notifications
    wanted = {
        "start": notifications.on_start,
        "complete": notifications.on_complete,
        "failure": notifications.on_failure,
    }.get(what, notifications.on_progress)
    if not notifications.enabled or not wanted or not notifications.channels:
        return
    steps.queue_news(
        execution,
        what,
        f"{text} ({execution.service}, deployment {execution.deployment_id}).",
        channels=notifications.channels,
        recipients=notifications.recipients,
        now=now,
    )
