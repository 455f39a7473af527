"""The one way a deployment's status changes: `deployment_transition` and, for many at once (the
tick's decisions), `deployments_transition`.

Inside one transaction with the rows locked, each request is checked against the lifecycle
table and its effects (`deployments.effects`) planned in memory; then the whole batch is
written in a number of statements that does not grow with it: phases, deployments, events,
audit entries, routing weights and stable versions, the news, and, after commit, the signals
and the next tick.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from canary_site import gates
from canary_site.audit import audit_context, audit_updates
from canary_site.bulk import insert_rows
from canary_site.choices import Source
from canary_site.collector import collector_paused
from canary_site.exceptions import CanaryError, NotFound, TransitionNotAllowed, ValidationFailed
from deployments import conf, gating, notifications, rollbacks, webhooks
from deployments.choices import DeploymentStatus, EventKind
from deployments.effects import EFFECTS, ActionContext, Change, default_reason
from deployments.lifecycle import Action, TransitionRefused, transition
from deployments.models import Deployment, DeploymentEvent, Phase
from deployments.signals import deployment_breached, deployment_transitioned
from deployments.writing import person, send, write_rows
from flags.models import Flag
from health import services as health_services
from routing import services as routing_services

logger = logging.getLogger(__name__)


class DeploymentBusy(TransitionNotAllowed):
    """Another process holds the deployment's row (a tick skips it and comes back)."""

    code = "busy"


@dataclass(frozen=True)
class TransitionRequest:
    """One lifecycle action for `deployments_transition`; its fields mean what the arguments
    of `deployment_transition` of the same names mean."""

    deployment_id: int
    action: Action | str
    reason: str = ""
    evidence: Mapping[str, Any] | None = None
    expected_phase: int | None = None
    expected_status: str | None = None
    # A rollback's trigger (automatic, manual, kill_switch; empty: automatic for the control
    # loop, manual for a person), the share a rollback's step goes to, and the runner of the
    # rollback asking to step, finish or fail it (`deployments.rollbacks`).
    trigger: str = ""
    share: Decimal | None = None
    runner: str = ""


@dataclass
class TransitionResult:
    """What became of one request: the deployment as the request left it and the timeline
    event it wrote, or the error that refused it (then nothing of it was written)."""

    request: TransitionRequest
    deployment: Deployment | None = None
    event: DeploymentEvent | None = None
    error: CanaryError | None = None

    @property
    def done(self) -> bool:
        return self.error is None


@gates.gated(gating.transition)
def deployment_transition(
    *,
    deployment_id: int,
    action: Action | str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    evidence: Mapping[str, Any] | None = None,
    expected_phase: int | None = None,
    expected_status: str | None = None,
    skip_locked: bool = False,
    now: datetime | None = None,
) -> Deployment:
    """Perform one lifecycle action on a deployment; every status change goes through here or
    through `deployments_transition`, of which this is the one-request case.

    Inside one transaction: lock the deployment's row, check the lifecycle table (refused:
    `TransitionNotAllowed`, 409, with the table's reason), apply the action's effects, write
    the timeline event; after commit: signals, and the next tick for a running deployment.

    - ``start``: the configuration must validate without errors and the service must be ready
      (its stable version the configuration's, both targets present, no other deployment of
      it under way); the first phase's share goes to the canary. With entry gates closed
      (confirm-rollout, pre-rollout webhooks), the start is recorded instead and the pending
      deployment returned: the tick starts it once they open (`deployments.webhooks`).
    - ``promote``: the next phase now; on the last phase the deployment succeeds. When the
      current phase's criteria have not held, a ``reason`` is required (400 otherwise).
    - ``promote_full`` and ``succeed``: all traffic to the canary, which becomes the service's
      stable version.
    - ``rollback``, ``fail`` (from running or paused) and ``abort``: the canary out of traffic
      at once (weight 0, linked flags off).
    - ``retry``: back to pending, every phase to be run again.

    The canary leaving traffic (rolled back, failed, aborted, succeeded) resolves the health
    alerts open on it.

    ``expected_phase`` and ``expected_status`` refuse the action when the deployment has moved
    on since the caller looked (a double click, or two ticks deciding on the same phase).
    ``skip_locked`` makes a busy row an immediate `DeploymentBusy` instead of a wait.
    ``evidence`` is stored on the event (the tick's judgement behind an automatic decision).
    """
    if str(action) == Action.START:
        # Entry gates closed: the start is recorded and the tick makes it once they open.
        held = webhooks.start_held(
            deployment_id=deployment_id, actor=actor, source=source, reason=reason, now=now
        )
        if held is not None:
            return held
    request = TransitionRequest(
        deployment_id=deployment_id,
        action=action,
        reason=reason,
        evidence=evidence,
        expected_phase=expected_phase,
        expected_status=expected_status,
    )
    (result,) = deployments_transition(
        requests=[request], actor=actor, source=source, skip_locked=skip_locked, now=now
    )
    if result.error is not None:
        raise result.error
    assert result.deployment is not None
    return result.deployment


@gates.part_of
def deployments_transition(
    *,
    requests: Sequence[TransitionRequest],
    actor: Any = None,
    source: str = Source.SYSTEM,
    skip_locked: bool = False,
    now: datetime | None = None,
) -> list[TransitionResult]:
    """Perform many lifecycle actions in one transaction, each by the rules of
    `deployment_transition`, in a number of queries that does not grow with them.

    Every row is locked at once (one ``SELECT ... FOR UPDATE`` over the ids, skipping rows
    another process holds when ``skip_locked``), each request is checked against the lifecycle
    table and planned in memory, and then everything is written together: the phases, the
    deployments, the timeline events and the audit entries in one statement each, the routing
    weights through routing's bulk service, with the linked flags' percentages and the news,
    all in the same transaction.

    Requests run in order; several may name the same deployment (a rollback, then its end),
    each seeing what the ones before it did. A refused request (the lifecycle table, a
    deployment that moved on, a busy row, a reason missing) writes nothing and says why in its
    result. Should writing the batch fail (a routing change that does not compile, say), each
    request is tried again alone, so that one cannot hold back the others; a lone request's
    failure is raised.
    """
    now = now or timezone.now()
    if not requests:
        return []
    # A batch of a thousand decisions holds their rows, copies, events and entries until it
    # is written: the collector would walk them again and again for no cycle to free.
    with collector_paused(), transaction.atomic():
        try:
            with transaction.atomic():
                return _transition_batch(requests, actor, source, skip_locked, now)
        except CanaryError:
            if len(requests) == 1:
                raise
        results: list[TransitionResult] = []
        for request in requests:
            try:
                with transaction.atomic():
                    results += _transition_batch([request], actor, source, skip_locked, now)
            except CanaryError as error:
                results.append(TransitionResult(request, error=error))
        return results


@dataclass
class _RulePlan:
    """What a batch does to one deployment's routing rule, merged over its requests; the
    evidence dicts it fills once the rule is written."""

    deployment: Deployment
    weights: dict[str, Decimal] | None = None
    enabled: bool | None = None
    create: bool = False
    # Taking the canary out of traffic must not be stopped by a rule that cannot be changed.
    tolerant: bool = False
    reports: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""

    def currently_enabled(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        rule = self.deployment.routing_rule
        return rule is not None and rule.enabled


@dataclass
class _Planned:
    """One request checked and planned: the transition and its event, not yet written."""

    result: TransitionResult
    deployment: Deployment
    action: Action
    before: str
    after: str
    change: Change
    reason: str
    phase: int | None
    share: Decimal


class Batch:
    """The writes of one `deployments_transition` call, gathered while each request is planned
    and made together by `apply`."""

    def __init__(
        self, *, now: datetime, actor: Any, source: str, flags: dict[int, list[Flag]]
    ) -> None:
        self.now = now
        self.actor = actor
        self.source = source
        self.flags = flags
        self.planned: list[_Planned] = []
        self.rules: dict[int, _RulePlan] = {}
        self.phases: dict[int, Phase] = {}
        # Changes made by other apps' one-row services (flags, a service's stable version, a
        # new rule), in the order the requests asked for them.
        self.later: list[Callable[[], None]] = []
        self.audit: list[tuple[Any, Any, dict[str, str]]] = []
        # Deployment copies on the audit trail, whose rule is known only once it is created.
        self.audit_copies: dict[int, list[Deployment]] = defaultdict(list)
        self.left_traffic: list[Deployment] = []
        # The services whose stable version becomes their canary's, written together.
        self.stable: list[tuple[Deployment, routing_services.StableVersionChange]] = []
        # How each rollback of the batch begins, and the rollbacks that began.
        self.handling: dict[int, rollbacks.Handling] = {}
        self.begun: list[ActionContext] = []

    def rule_plan(self, deployment: Deployment, reason: str) -> _RulePlan:
        plan = self.rules.get(deployment.pk)
        if plan is None:
            plan = self.rules[deployment.pk] = _RulePlan(deployment, reason=reason)
        return plan

    def save_phase(self, phase: Phase) -> None:
        self.phases[phase.pk] = phase

    def apply(self) -> None:
        if not self.planned:
            return
        self._write_rules()
        self._write_stable_versions()
        for change in self.later:
            change()
        deployments = list({p.deployment.pk: p.deployment for p in self.planned}.values())
        for deployment in deployments:
            deployment.updated_at = self.now
        write_rows(Phase, list(self.phases.values()), _PHASE_FIELDS)
        write_rows(Deployment, deployments, _DEPLOYMENT_FIELDS)
        events = [self._event(planned) for planned in self.planned]
        insert_rows(DeploymentEvent, events)
        webhooks.queue_events(events, now=self.now)
        audit_updates(self.audit)
        _resolve_alerts(self.left_traffic, self.now)
        self._begin_rollbacks(events)
        running: list[int] = []
        for planned, event in zip(self.planned, events, strict=True):
            planned.result.event = event
            if planned.after == DeploymentStatus.RUNNING:
                running.append(planned.deployment.pk)
        # The news is queued in this transaction: it exists exactly when the transitions do.
        notifications.news_queue(
            notifications.transition_news(
                deployment=planned.deployment,
                event=event,
                action=planned.action,
                to_status=planned.after,
            )
            for planned, event in zip(self.planned, events, strict=True)
        )
        _after_commit(list(zip(self.planned, events, strict=True)))
        _tick_after_commit(sorted(set(running)))

    def _begin_rollbacks(self, events: list[DeploymentEvent]) -> None:
        if not self.begun:
            return
        event_of = {
            id(planned.change): event for planned, event in zip(self.planned, events, strict=True)
        }
        rollbacks.begin(
            [
                rollbacks.Begun(
                    deployment=ctx.deployment,
                    handling=self.handling.get(ctx.deployment.pk, rollbacks.BUILT_IN),
                    trigger=ctx.trigger,
                    reason=ctx.reason,
                    evidence=dict(ctx.change.evidence),
                    actor=self.actor,
                    source=self.source,
                    now=self.now,
                    event=event_of.get(id(ctx.change)),
                    earlier_shares=tuple(
                        phase.traffic_percentage
                        for phase in ctx.phases
                        if phase.order < (ctx.deployment.current_phase or 0)
                    ),
                    share=ctx.share,
                )
                for ctx in self.begun
            ]
        )

    def _write_stable_versions(self) -> None:
        if not self.stable:
            return
        services = routing_services.services_set_stable_version(
            changes=[change for _deployment, change in self.stable],
            actor=self.actor,
            source=self.source,
        )
        for deployment, change in self.stable:
            deployment.service = services[change.service_id]

    def _write_rules(self) -> None:
        changes: list[routing_services.RuleChange] = []
        plans: list[_RulePlan] = []
        for plan in self.rules.values():
            deployment = plan.deployment
            if plan.create:
                self._create_rule(plan)
            elif plan.weights is not None or (
                plan.enabled is not None and plan.enabled != deployment.routing_rule.enabled
            ):
                plans.append(plan)
                changes.append(
                    routing_services.RuleChange(
                        rule_id=deployment.routing_rule_id,
                        weights=plan.weights,
                        enabled=plan.enabled,
                        reason=plan.reason,
                    )
                )
            else:
                self._report(plan)
        if not changes:
            return
        writer = {"actor": self.actor, "source": self.source}
        try:
            rules = routing_services.rules_update_many(changes=changes, **writer)
        except ValidationFailed as error:
            if len(changes) > 1:
                raise  # the batch is tried again one request at a time
            self._repair_rule(plans[0], error)
            return
        for plan in plans:
            plan.deployment.routing_rule = rules[plan.deployment.routing_rule_id]
            self._report(plan)

    def _create_rule(self, plan: _RulePlan) -> None:
        deployment = plan.deployment
        rule = routing_services.rule_create(
            service=deployment.service,
            targets=plan.weights or {},
            name=f"deployment {deployment.pk}: {deployment.name}"[:100],
            priority=conf.rule_priority(),
            enabled=plan.enabled if plan.enabled is not None else True,
            actor=self.actor,
            source=self.source,
            reason=plan.reason,
        )
        deployment.routing_rule = rule
        for copied in self.audit_copies[deployment.pk]:
            copied.routing_rule_id = rule.pk
        self._report(plan)

    def _repair_rule(self, plan: _RulePlan, error: ValidationFailed) -> None:
        """A lone rule whose weights could not be set: someone changed its members, so make
        them the deployment's two targets again. Taking the canary out of traffic reports a
        rule it cannot change rather than stop."""
        deployment = plan.deployment
        changes: dict[str, Any] = {}
        if plan.enabled is not None:
            changes["enabled"] = plan.enabled
        try:
            deployment.routing_rule = routing_services.rule_update(
                rule=deployment.routing_rule,
                targets=plan.weights,
                actor=self.actor,
                source=self.source,
                reason=plan.reason,
                **changes,
            )
        except CanaryError as failure:
            if not plan.tolerant:
                raise
            for report in plan.reports:
                report.clear()
                report["error"] = failure.message or error.message
            return
        self._report(plan)

    def _report(self, plan: _RulePlan) -> None:
        rule = plan.deployment.routing_rule
        for report in plan.reports:
            if rule is not None and "error" not in report:
                report["id"] = rule.pk

    def _event(self, planned: _Planned) -> DeploymentEvent:
        return DeploymentEvent(
            deployment=planned.deployment,
            kind=EventKind(str(planned.action)),
            from_status=planned.before,
            to_status=planned.after,
            phase=planned.phase,
            canary_share=planned.share,
            actor=person(self.actor),
            source=self.source,
            reason=planned.reason[:5000],
            evidence=planned.change.evidence,
            at=self.now,
        )


# The columns a transition writes; the tick writes its judgement columns itself (`tick._record`).
_PHASE_FIELDS = [
    "status",
    "started_at",
    "ended_at",
    "observations",
    "judgement",
    "judged_at",
    "ready_at",
    "breach_seen_at",
]
_DEPLOYMENT_FIELDS = [
    "status",
    "current_phase",
    "canary_share",
    "started_at",
    "finished_at",
    "routing_rule",
    "stable_target",
    "canary_target",
    "rollback_runner",
    "updated_at",
]


def _transition_batch(
    requests: Sequence[TransitionRequest],
    actor: Any,
    source: str,
    skip_locked: bool,
    now: datetime,
) -> list[TransitionResult]:
    with audit_context(actor=actor, source=source):
        ids = list(dict.fromkeys(request.deployment_id for request in requests))
        locked = _lock_many(ids, skip_locked=skip_locked)
        absent = [pk for pk in ids if pk not in locked]
        existing = (
            set(Deployment.objects.filter(pk__in=absent).values_list("pk", flat=True))
            if absent
            else set()
        )
        phases: dict[int, list[Phase]] = defaultdict(list)
        for phase in Phase.objects.filter(deployment_id__in=list(locked)).order_by(
            "deployment_id", "order"
        ):
            phase.deployment = locked[phase.deployment_id]
            phases[phase.deployment_id].append(phase)
        batch = Batch(now=now, actor=actor, source=source, flags=_linked_flags(list(locked)))
        batch.handling = _rollback_handling(requests, locked, source)
        results: list[TransitionResult] = []
        for request in requests:
            result = TransitionResult(request)
            results.append(result)
            deployment = locked.get(request.deployment_id)
            if deployment is None:
                result.error = (
                    DeploymentBusy("Another process is changing this deployment right now.")
                    if request.deployment_id in existing
                    else NotFound(f"There is no deployment {request.deployment_id}.")
                )
                continue
            try:
                batch.planned.append(_plan(batch, result, deployment, phases[deployment.pk]))
            except CanaryError as error:
                result.error = error
                continue
            result.deployment = deployment
        batch.apply()
    return results


def _trigger(request: TransitionRequest, source: str) -> str:
    if request.trigger:
        return request.trigger
    return "automatic" if source == Source.SYSTEM else "manual"


def _rollback_handling(
    requests: Sequence[TransitionRequest], locked: dict[int, Deployment], source: str
) -> dict[int, rollbacks.Handling]:
    """How each rollback the batch may begin leaves traffic, asked of the runner at once."""
    triggers = {
        request.deployment_id: _trigger(request, source)
        for request in requests
        if str(request.action) == Action.ROLLBACK and request.deployment_id in locked
    }
    if not triggers:
        return {}
    return rollbacks.handling([locked[pk] for pk in triggers], triggers)


def _lock_many(ids: list[int], *, skip_locked: bool) -> dict[int, Deployment]:
    """The deployments, their rows locked in one statement (in id order, so two batches lock
    in the same order)."""
    rows = Deployment.objects.select_related(
        "service", "stable_target", "canary_target", "routing_rule", "health_policy"
    )
    skip = skip_locked and connection.features.has_select_for_update_skip_locked
    rows = rows.select_for_update(skip_locked=skip, of=("self",))
    return {deployment.pk: deployment for deployment in rows.filter(pk__in=ids).order_by("pk")}


def _linked_flags(ids: list[int]) -> dict[int, list[Flag]]:
    """Each deployment's linked flags by key, in one query."""
    found: dict[int, list[Flag]] = defaultdict(list)
    if not ids:
        return found
    links = (
        Deployment.flags.through.objects.filter(deployment_id__in=ids)
        .select_related("flag")
        .order_by("flag__key")
    )
    for link in links:
        found[link.deployment_id].append(link.flag)
    return found


def _plan(
    batch: Batch, result: TransitionResult, deployment: Deployment, phases: list[Phase]
) -> _Planned:
    """Check one request against the row as the batch has left it, and plan its effects."""
    request = result.request
    verb = Action(request.action) if isinstance(request.action, str) else request.action
    reason = (request.reason or "").strip()
    if request.expected_status is not None and deployment.status != request.expected_status:
        raise TransitionNotAllowed(
            f"The deployment is {deployment.get_status_display().lower()} now, not "
            f"{request.expected_status.replace('_', ' ')}; look again before deciding.",
            code="moved_on",
        )
    if request.expected_phase is not None and deployment.current_phase != request.expected_phase:
        raise TransitionNotAllowed(
            f"The deployment is on phase {deployment.current_phase or '—'} now, not "
            f"{request.expected_phase}; look again before deciding.",
            code="moved_on",
        )
    _check_runner(deployment, verb, request)
    effective = _effective_action(deployment, verb, phases)
    before = deployment.status
    try:
        after = transition(before, effective)
    except TransitionRefused as refused:
        raise TransitionNotAllowed(refused.reason, code="transition_refused") from None

    old_deployment = copy.copy(deployment)
    old_phases = [copy.copy(phase) for phase in phases]
    change = Change(evidence=dict(request.evidence or {}))
    context = ActionContext(
        deployment,
        phases,
        batch.now,
        batch.actor,
        batch.source,
        reason,
        change,
        batch,
        trigger=_trigger(request, batch.source),
        share=request.share,
    )
    EFFECTS[effective](context)
    deployment.status = after
    if before in _IN_TRAFFIC and after in _OUT_OF_TRAFFIC_STATUSES:
        batch.left_traffic.append(deployment)

    attribution = {"reason": reason, "verb": str(effective)}
    new_deployment = copy.copy(deployment)
    batch.audit_copies[deployment.pk].append(new_deployment)
    batch.audit.append((old_deployment, new_deployment, attribution))
    for old, phase in zip(old_phases, phases, strict=True):
        if phase.pk in batch.phases:
            batch.audit.append((old, copy.copy(phase), attribution))
    return _Planned(
        result=result,
        deployment=deployment,
        action=effective,
        before=before,
        after=after,
        change=change,
        reason=reason or default_reason(effective, deployment),
        phase=deployment.current_phase,
        share=deployment.canary_share,
    )


# The verbs of a rollback under way, which only its runner may use once one has taken it over.
_RUNNER_VERBS = frozenset({Action.STEP_ROLLBACK, Action.FINISH_ROLLBACK, Action.FAIL})


def _check_runner(deployment: Deployment, verb: Action, request: TransitionRequest) -> None:
    if deployment.status != DeploymentStatus.ROLLING_BACK or verb not in _RUNNER_VERBS:
        return
    if deployment.rollback_runner and request.runner != deployment.rollback_runner:
        raise TransitionNotAllowed(
            f"The rollback is run by {deployment.rollback_runner}; it steps, finishes or fails "
            "the rollback itself.",
            code="runner",
        )


_IN_TRAFFIC = frozenset({DeploymentStatus.RUNNING, DeploymentStatus.PAUSED})
# Rolling back counts as out: the canary's weight is 0 from the rollback's first step.
_OUT_OF_TRAFFIC_STATUSES = frozenset(
    {
        DeploymentStatus.ROLLING_BACK,
        DeploymentStatus.ROLLED_BACK,
        DeploymentStatus.FAILED,
        DeploymentStatus.ABORTED,
        DeploymentStatus.SUCCEEDED,
    }
)


def _effective_action(deployment: Deployment, action: Action, phases: list[Phase]) -> Action:
    """Promote on the last phase has no next phase: it is a success (from paused, the person's
    fuller verb, promote_full, since succeed is the tick's verb for a running deployment)."""
    if action != Action.PROMOTE or deployment.current_phase is None:
        return action
    if deployment.current_phase >= len(phases):
        return (
            Action.SUCCEED
            if deployment.status == DeploymentStatus.RUNNING
            else (Action.PROMOTE_FULL)
        )
    return action


def _resolve_alerts(deployments: list[Deployment], now: datetime) -> None:
    """The health alerts open on canaries that have left traffic are resolved: nothing is left
    to watch, and nobody is told again about a version that no longer serves."""
    if not deployments:
        return
    health_services.alerts_resolve_for_canaries(
        canaries=[(d.service.name, d.canary_version) for d in deployments],
        reason=f"The canary left traffic ({deployments[0].get_status_display().lower()})."
        if len(deployments) == 1
        else "The canary left traffic.",
        now=now,
    )


def _after_commit(done: list[tuple[_Planned, DeploymentEvent]]) -> None:
    """The signals of every transition of a batch, in request order, once it has committed."""

    def follow_up() -> None:
        for planned, event in done:
            deployment, action, change = planned.deployment, planned.action, planned.change
            send(
                deployment_transitioned,
                deployment=deployment,
                event=event,
                action=str(action),
                from_status=planned.before,
                to_status=planned.after,
            )
            if change.breach is not None and action == Action.ROLLBACK:
                send(
                    deployment_breached,
                    deployment=deployment,
                    phase=event.phase,
                    evidence=change.breach,
                    reason=event.reason,
                    rolled_back=True,
                )

    transaction.on_commit(follow_up)


def _tick_after_commit(deployment_ids: list[int]) -> None:
    """A new phase is judged at once rather than at the next beat: one task for the batch."""
    if not deployment_ids or not conf.enqueue_follow_ups():
        return
    from deployments import tasks

    if len(deployment_ids) == 1:
        tasks.deployment_tick.delay_on_commit(deployment_ids[0])
    else:
        tasks.deployments_tick.delay_on_commit(deployment_ids=deployment_ids)
