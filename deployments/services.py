"""Writes of the deployments app: plain keyword-only functions named <entity>_<action>.

- `deployment_create`, `deployment_update`, `deployment_delete`: a deployment from the guide's
  configuration (JSON, YAML, a dict or a `DeploymentConfig`), validated and stored with its
  phases.
- `deployment_transition`: the one function that changes a deployment's status. Inside one
  transaction with the deployment's row locked it checks the lifecycle table, applies the
  action's effects on routing and flags (through their services, in the same transaction),
  writes the timeline event and, after commit, sends the signals and enqueues the next tick.
- `deployments_tick` (and `deployment_tick` for one): the control loop's step 3. One bulk
  health evaluation for every running deployment, one judgement per phase, then the decisions:
  roll back, advance, succeed, fail, or wait.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection, transaction
from django.utils import timezone

from canary_site.audit import audit_context, audit_updates
from canary_site.choices import Source
from canary_site.collector import collector_paused
from canary_site.exceptions import CanaryError, NotFound, TransitionNotAllowed, ValidationFailed
from deployments import conf, notifications, observing, selectors
from deployments.choices import DeploymentStatus, EventKind, PhaseStatus
from deployments.config import (
    ConfigError,
    DeploymentConfig,
    FieldError,
    PhaseConfig,
    TrafficShiftStrategy,
    format_duration,
    load_text,
    parse_config,
)
from deployments.lifecycle import (
    Action,
    Evidence,
    Outcome,
    PhaseJudgement,
    TransitionRefused,
    phase_judgement,
    transition,
)
from deployments.models import Deployment, DeploymentEvent, Phase, phase_config
from deployments.signals import deployment_breached, deployment_transitioned
from deployments.validation import ValidationReport, validate
from flags import services as flag_services
from flags.choices import FlagStatus
from flags.models import Flag
from health import conf as health_conf
from health import selectors as health_selectors
from health import services as health_services
from health import windows as health_windows
from health.models import HealthPolicy
from health.services import EvaluationRequest
from routing import selectors as routing_selectors
from routing import services as routing_services
from routing.models import Service, Target

logger = logging.getLogger(__name__)

_HUNDRED = Decimal("100")
_ZERO = Decimal("0")
_UNSET: Any = object()

# Model fields as the configuration names them, so an error points at what the client sent.
_CONFIG_FIELD = {
    "name": "name",
    "description": "description",
    "service": "serviceName",
    "stable_version": "stableVersion",
    "canary_version": "canaryVersion",
    "max_deployment_time_ms": "maxDeploymentTimeMs",
    "initial_traffic_percentage": "initialTrafficPercentage",
}


# ============================================================================ configuration


def read_configuration(config: Any) -> DeploymentConfig:
    """A configuration from a dict, JSON/YAML text or a `DeploymentConfig`; raises
    `ValidationFailed` naming every field that does not fit the schema."""
    if isinstance(config, DeploymentConfig):
        return config
    try:
        data = load_text(config) if isinstance(config, str | bytes) else config
        return parse_config(data)
    except ConfigError as error:
        raise _config_failure(error.errors) from None


def _config_failure(errors: Sequence[FieldError]) -> ValidationFailed:
    fields: dict[str, list[str]] = {}
    for problem in errors:
        fields.setdefault(problem.field, []).append(problem.message)
    first = errors[0].message if errors else "The configuration is not valid."
    return ValidationFailed(first, fields=fields, code="invalid_config")


def configuration_report(
    config: Any, *, context: Mapping[str, Any] | None = None
) -> ValidationReport:
    """The validator's report with this server's timing (tick interval, rollback budget)."""
    return validate(config, context=context, timing=conf.timing())


# ============================================================================ create, update


def deployment_create(
    *,
    config: Any,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    health_policy: HealthPolicy | None = None,
    flags: Iterable[Flag] = (),
    context: Mapping[str, Any] | None = None,
) -> Deployment:
    """Store a pending deployment of ``config`` for the service it names.

    The configuration must fit the schema (400 otherwise, naming each field); the validator's
    other findings are stored with it (``validation``) and a deployment whose report has
    errors is stored but cannot start. ``context`` is the validator's context (environment,
    resource constraints, security policies), kept for the checks at start.
    """
    spec = read_configuration(config)
    report = configuration_report(spec, context=context)
    service = _service_named(spec.service_name)
    deployment = Deployment(service=service, created_by=_person(actor), health_policy=health_policy)
    _assign_config(deployment, spec, report, context)
    flag_list = _flag_list(flags)
    _full_clean(deployment)
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="create"),
    ):
        deployment.save()
        deployment.flags.set(flag_list)
        _write_phases(deployment, spec)
        _event(
            deployment,
            EventKind.CREATED,
            actor=actor,
            source=source,
            reason=reason or f"Created from the configuration '{spec.name}'.",
            evidence={"validation": report.to_dict()},
            to_status=deployment.status,
        )
    return deployment


def deployment_update(
    *,
    deployment_id: int,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    config: Any = _UNSET,
    health_policy: HealthPolicy | None = _UNSET,
    flags: Iterable[Flag] = _UNSET,
    context: Mapping[str, Any] | None = _UNSET,
) -> Deployment:
    """Change a pending deployment: its configuration (phases included), health policy, linked
    flags or validation context. A deployment that has started keeps what it started with."""
    spec = read_configuration(config) if config is not _UNSET else None
    flag_list = _flag_list(flags) if flags is not _UNSET else None
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="update"),
    ):
        deployment = _locked(deployment_id)
        if deployment.status != DeploymentStatus.PENDING:
            raise TransitionNotAllowed(
                f"A {deployment.get_status_display().lower()} deployment cannot be changed; "
                "only a pending one can.",
                code="not_pending",
            )
        changed: list[str] = []
        if spec is not None or context is not _UNSET:
            spec = spec or deployment.spec
            ctx = context if context is not _UNSET else deployment.validation.get("context")
            if spec.service_name != deployment.service.name:
                deployment.service = _service_named(spec.service_name)
            _assign_config(deployment, spec, configuration_report(spec, context=ctx), ctx)
            changed.append("config")
        if health_policy is not _UNSET:
            deployment.health_policy = health_policy
            changed.append("healthPolicy")
        _full_clean(deployment)
        deployment.save()
        if flag_list is not None:
            deployment.flags.set(flag_list)
            changed.append("linkedFlags")
        if spec is not None:
            deployment.phases.all().delete()
            _write_phases(deployment, spec)
        _event(
            deployment,
            EventKind.UPDATED,
            actor=actor,
            source=source,
            reason=reason or f"Changed: {', '.join(changed) or 'nothing'}.",
            evidence={"changed": changed, "validation": deployment.validation},
            to_status=deployment.status,
        )
    return deployment


def deployment_delete(
    *, deployment_id: int, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    """Delete a deployment that never started, with its phases, timeline and routing rule.

    Once started, its timeline is the evidence of what was judged and done, which only
    retention removes, so it is kept (409).
    """
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="delete"),
    ):
        deployment = _locked(deployment_id)
        if deployment.is_active:
            raise TransitionNotAllowed(
                f"A {deployment.get_status_display().lower()} deployment cannot be deleted; "
                "abort it first.",
                code="active",
            )
        if deployment.events.filter(kind=EventKind.START).exists():
            raise TransitionNotAllowed(
                "A deployment that has started keeps its timeline as evidence; "
                "it cannot be deleted.",
                code="has_run",
            )
        rule = deployment.routing_rule
        deployment.delete()
        if rule is not None and not rule.deployments.exists():
            routing_services.rule_delete(rule=rule, actor=actor, source=source, reason=reason)


def _assign_config(
    deployment: Deployment,
    spec: DeploymentConfig,
    report: ValidationReport,
    context: Mapping[str, Any] | None,
) -> None:
    deployment.name = spec.name
    deployment.description = spec.description
    deployment.stable_version = spec.stable_version
    deployment.canary_version = spec.canary_version
    deployment.initial_traffic_percentage = _percent(spec.initial_traffic_percentage)
    deployment.traffic_shift_strategy = str(spec.traffic_shift_strategy)
    deployment.auto_promote = spec.auto_promote
    deployment.auto_rollback = spec.auto_rollback
    deployment.max_deployment_time_ms = spec.max_deployment_time_ms
    deployment.notifications = spec.notifications.to_dict()
    deployment.config = spec.to_dict()
    deployment.validation = {**report.to_dict(), "context": dict(context or {})}
    stable, canary = _find_targets(deployment.service, spec)
    deployment.stable_target = stable
    deployment.canary_target = canary


def _write_phases(deployment: Deployment, spec: DeploymentConfig) -> None:
    for order, phase in enumerate(spec.phases, start=1):
        row = Phase(
            deployment=deployment,
            order=order,
            key=phase.id,
            name=phase.name[:200],
            traffic_percentage=_percent(phase.traffic_percentage),
            duration_ms=phase.duration_ms,
            success_criteria=[criterion.to_dict() for criterion in phase.success_criteria],
            rollback_thresholds=phase.rollback_thresholds.to_dict(),
        )
        _full_clean(row, exclude=["deployment"], prefix=f"phases[{order - 1}].")
        row.save()


def _find_targets(service: Service, spec: DeploymentConfig) -> tuple[Target | None, Target | None]:
    """The service's targets for the two versions: by endpoint when the configuration names
    one, else the first target (by name) running that version."""
    targets = list(service.targets.order_by("name"))

    def pick(endpoint: str | None, version: str) -> Target | None:
        if endpoint:
            wanted = endpoint.rstrip("/")
            return next((t for t in targets if t.endpoint.rstrip("/") == wanted), None)
        return next((t for t in targets if t.version == version), None)

    return pick(spec.stable_endpoint, spec.stable_version), pick(
        spec.canary_endpoint, spec.canary_version
    )


def _service_named(name: str) -> Service:
    service = routing_selectors.service_get(name=name)
    if service is None:
        raise ValidationFailed(
            f"serviceName: there is no service named '{name}'; create it in routing first.",
            field="serviceName",
            code="unknown_service",
        )
    return service


def _flag_list(flags: Iterable[Flag] | None) -> list[Flag]:
    return list(flags or [])


# ============================================================================ transitions


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


@dataclass
class _Change:
    """What an action did, gathered for the event's evidence and the after-commit follow-ups."""

    evidence: dict[str, Any] = field(default_factory=dict)
    breach: dict[str, Any] | None = None


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
      it under way); the first phase's share goes to the canary.
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
    with transaction.atomic():
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
    change: _Change
    reason: str
    phase: int | None
    share: Decimal


class _Batch:
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
        for change in self.later:
            change()
        deployments = list({p.deployment.pk: p.deployment for p in self.planned}.values())
        for deployment in deployments:
            deployment.updated_at = self.now
        _write_rows(Phase, list(self.phases.values()), _PHASE_FIELDS)
        _write_rows(Deployment, deployments, _DEPLOYMENT_FIELDS)
        events = [self._event(planned) for planned in self.planned]
        DeploymentEvent.objects.bulk_create(events)
        audit_updates(self.audit)
        _resolve_alerts(self.left_traffic, self.now)
        running: list[int] = []
        for planned, event in zip(self.planned, events, strict=True):
            planned.result.event = event
            # The news is queued in this transaction: it exists exactly when the transition
            # does.
            notifications.transition_news(
                deployment=planned.deployment,
                event=event,
                action=planned.action,
                to_status=planned.after,
            )
            _after_commit(planned, event)
            if planned.after == DeploymentStatus.RUNNING:
                running.append(planned.deployment.pk)
        _tick_after_commit(sorted(set(running)))

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
            actor=_person(self.actor),
            source=self.source,
            reason=planned.reason[:5000],
            evidence=planned.change.evidence,
            at=self.now,
        )


# The columns a transition writes; the tick's judgement columns are `_save_judgements`'.
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
        batch = _Batch(now=now, actor=actor, source=source, flags=_linked_flags(list(locked)))
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
    batch: _Batch, result: TransitionResult, deployment: Deployment, phases: list[Phase]
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
    effective = _effective_action(deployment, verb, phases)
    before = deployment.status
    try:
        after = transition(before, effective)
    except TransitionRefused as refused:
        raise TransitionNotAllowed(refused.reason, code="transition_refused") from None

    old_deployment = copy.copy(deployment)
    old_phases = [copy.copy(phase) for phase in phases]
    change = _Change(evidence=dict(request.evidence or {}))
    context = _ActionContext(
        deployment, phases, batch.now, batch.actor, batch.source, reason, change, batch
    )
    _EFFECTS[effective](context)
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
        reason=reason or _default_reason(effective, deployment),
        phase=deployment.current_phase,
        share=deployment.canary_share,
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


@dataclass
class _ActionContext:
    deployment: Deployment
    phases: list[Phase]
    now: datetime
    actor: Any
    source: str
    reason: str
    change: _Change
    batch: _Batch

    @property
    def current(self) -> Phase | None:
        order = self.deployment.current_phase
        if order is None:
            return None
        return next((phase for phase in self.phases if phase.order == order), None)

    def writer(self) -> dict[str, Any]:
        """The attribution every lower service's write carries."""
        return {"actor": self.actor, "source": self.source, "reason": self.attribution()}

    def attribution(self) -> str:
        return self.reason or f"deployment {self.deployment.pk}: {self.deployment.name}"


def _start(ctx: _ActionContext) -> None:
    deployment = ctx.deployment
    _check_ready(deployment)
    first = ctx.phases[0]
    for phase in ctx.phases:
        _reset_phase(ctx, phase)
    _begin_phase(ctx, first)
    deployment.current_phase = first.order
    deployment.started_at = ctx.now
    deployment.finished_at = None
    ctx.change.evidence["traffic"] = _set_traffic(ctx, first.traffic_percentage, enable=True)


def _pause(ctx: _ActionContext) -> None:
    """Hold the current phase: traffic stays where it is and the tick leaves it alone."""


def _resume(ctx: _ActionContext) -> None:
    """Go on with the current phase; its minimum duration counts from when it began."""


def _require_reason_unless_held(ctx: _ActionContext, current: Phase, *, verb: str) -> None:
    """A person may promote before the criteria hold, but must say why; the judgement is kept
    as evidence either way."""
    judgement = judge_phase(current, now=ctx.now)
    if judgement.outcome != Outcome.ADVANCE and not ctx.reason:
        raise ValidationFailed(
            "The phase's criteria have not held "
            f"({judgement.reason.removeprefix('Wait: ').rstrip('.')}); say why you {verb} "
            "anyway.",
            field="reason",
            code="reason_required",
        )
    ctx.change.evidence.setdefault("judgement", judgement.to_dict())


def _promote(ctx: _ActionContext) -> None:
    current = ctx.current
    assert current is not None  # the table allows promote only once started
    if not ctx.reason or "judgement" not in ctx.change.evidence:
        # The tick promotes on the judgement it has just made, and says so.
        _require_reason_unless_held(ctx, current, verb="promote")
    _end_phase(ctx, current, PhaseStatus.PASSED)
    following = next(phase for phase in ctx.phases if phase.order == current.order + 1)
    _begin_phase(ctx, following)
    ctx.deployment.current_phase = following.order
    ctx.change.evidence["traffic"] = _set_traffic(ctx, following.traffic_percentage)


def _promote_full(ctx: _ActionContext) -> None:
    current = ctx.current
    if current is not None and ctx.source != Source.SYSTEM:
        _require_reason_unless_held(ctx, current, verb="promote fully")
    _complete(ctx)


def _succeed(ctx: _ActionContext) -> None:
    _complete(ctx)


def _complete(ctx: _ActionContext) -> None:
    """All traffic to the canary, and the canary becomes the service's stable version."""
    deployment = ctx.deployment
    current = ctx.current
    for phase in ctx.phases:
        if phase is current:
            _end_phase(ctx, phase, PhaseStatus.PASSED)
        elif phase.status == PhaseStatus.PENDING:
            phase.status = PhaseStatus.SKIPPED
            ctx.batch.save_phase(phase)
    ctx.change.evidence["traffic"] = _set_traffic(ctx, _HUNDRED, release=True)
    service = deployment.service
    if service.stable_version != deployment.canary_version:
        writer = ctx.writer()
        version = deployment.canary_version

        def make_stable() -> None:
            deployment.service = routing_services.service_update(
                service=service, stable_version=version, **writer
            )

        ctx.batch.later.append(make_stable)
    ctx.change.evidence["stableVersion"] = deployment.canary_version
    _retire_rule(ctx)
    deployment.finished_at = ctx.now


def _rollback(ctx: _ActionContext) -> None:
    current = ctx.current
    if current is not None:
        _end_phase(ctx, current, PhaseStatus.ROLLED_BACK)
    ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
    ctx.change.breach = dict(ctx.change.evidence)


def _finish_rollback(ctx: _ActionContext) -> None:
    # Idempotent: a rollback interrupted half-way is finished by taking the canary out again.
    ctx.change.evidence.setdefault("traffic", _out_of_traffic(ctx))
    _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _fail(ctx: _ActionContext) -> None:
    current = ctx.current
    if current is not None and current.status == PhaseStatus.RUNNING:
        _end_phase(ctx, current, PhaseStatus.FAILED)
    ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
    _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _abort(ctx: _ActionContext) -> None:
    current = ctx.current
    if current is not None and current.status == PhaseStatus.RUNNING:
        _end_phase(ctx, current, PhaseStatus.ABORTED)
    if ctx.deployment.started_at is not None or ctx.deployment.routing_rule_id is not None:
        ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
        _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _retry(ctx: _ActionContext) -> None:
    for phase in ctx.phases:
        _reset_phase(ctx, phase)
    deployment = ctx.deployment
    deployment.current_phase = None
    deployment.started_at = None
    deployment.finished_at = None


_EFFECTS: dict[Action, Callable[[_ActionContext], None]] = {
    Action.START: _start,
    Action.PAUSE: _pause,
    Action.RESUME: _resume,
    Action.PROMOTE: _promote,
    Action.PROMOTE_FULL: _promote_full,
    Action.SUCCEED: _succeed,
    Action.ROLLBACK: _rollback,
    Action.FINISH_ROLLBACK: _finish_rollback,
    Action.FAIL: _fail,
    Action.ABORT: _abort,
    Action.RETRY: _retry,
}


def _default_reason(action: Action, deployment: Deployment) -> str:
    phase = deployment.current_phase
    texts = {
        Action.START: f"Started: phase {phase} gives the canary {deployment.canary_share}%.",
        Action.PAUSE: "Paused.",
        Action.RESUME: "Resumed.",
        Action.PROMOTE: f"Promoted to phase {phase}: the canary gets {deployment.canary_share}%.",
        Action.PROMOTE_FULL: f"Promoted fully: {deployment.canary_version} is now stable.",
        Action.SUCCEED: f"The last phase passed: {deployment.canary_version} is now stable.",
        Action.ROLLBACK: "Rolling back: the canary is out of traffic.",
        Action.FINISH_ROLLBACK: "Rolled back: the canary is out of traffic.",
        Action.FAIL: "Failed: the canary is out of traffic.",
        Action.ABORT: "Aborted: traffic is back on the stable version.",
        Action.RETRY: "Retried: back to pending, to run every phase again.",
    }
    return texts[action]


def _check_ready(deployment: Deployment) -> None:
    """Refuse to start what cannot run: a configuration with errors, a service not ready."""
    # Targets may have been added since the deployment was created.
    if deployment.stable_target is None or deployment.canary_target is None:
        stable, canary = _find_targets(deployment.service, deployment.spec)
        deployment.stable_target = deployment.stable_target or stable
        deployment.canary_target = deployment.canary_target or canary
    problems = selectors.start_problems(deployment)
    if problems:
        fields: dict[str, list[str]] = {}
        for issue in problems:
            fields.setdefault(issue["field"], []).append(issue["message"])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TransitionNotAllowed(
            f"The deployment cannot start: {problems[0]['message']}{more}",
            fields=fields,
            code="not_ready",
        )


def _reset_phase(ctx: _ActionContext, phase: Phase) -> None:
    _fresh_phase(ctx, phase, PhaseStatus.PENDING, started_at=None)


def _begin_phase(ctx: _ActionContext, phase: Phase) -> None:
    _fresh_phase(ctx, phase, PhaseStatus.RUNNING, started_at=ctx.now)


def _fresh_phase(
    ctx: _ActionContext, phase: Phase, status: str, *, started_at: datetime | None
) -> None:
    """The phase with nothing observed or judged yet: before a start, or as a retry leaves it."""
    phase.status = status
    phase.started_at = started_at
    phase.ended_at = None
    phase.observations = {}
    phase.judgement = {}
    phase.judged_at = None
    phase.ready_at = None
    phase.breach_seen_at = None
    ctx.batch.save_phase(phase)


def _end_phase(ctx: _ActionContext, phase: Phase, status: str) -> None:
    phase.status = status
    phase.ended_at = ctx.now
    ctx.batch.save_phase(phase)


# ---------------------------------------------------------------------------- traffic effects


def _set_traffic(
    ctx: _ActionContext,
    share: Decimal,
    *,
    enable: bool = False,
    release: bool = False,
) -> dict[str, Any]:
    """The canary's share in the deployment's routing rule and every linked flag's rollout,
    written with the batch in the caller's transaction. Returns what is set, for the event's
    evidence (the rule's id is filled in once the rule is written)."""
    deployment = ctx.deployment
    share = _percent(share)
    done: dict[str, Any] = {"canaryShare": float(share)}
    done["rule"] = _set_rule_weights(ctx, share)
    flags: dict[str, str] = {}
    links = ctx.batch.flags.get(deployment.pk, [])
    writer = ctx.writer()

    def set_flags() -> None:
        for index, flag in enumerate(links):
            if enable and flag.status == FlagStatus.DISABLED:
                flag = flag_services.flag_enable(flag=flag, **writer)
            flag = flag_services.flag_set_rollout(
                flag=flag, percentage=share, controlled_by=deployment.controller, **writer
            )
            if release:
                flag = flag_services.flag_release_control(
                    flag=flag, controlled_by=deployment.controller, **writer
                )
            links[index] = flag
            flags[flag.key] = f"{share}%" if flag.status != FlagStatus.KILLED else "killed"

    if links:
        ctx.batch.later.append(set_flags)
    done["flags"] = flags
    deployment.canary_share = share
    return done


def _out_of_traffic(ctx: _ActionContext) -> dict[str, Any]:
    """Canary weight 0 and every linked flag off, now. A flag or a rule that cannot be changed
    (killed already, driven by someone else, edited by hand) is reported, never allowed to
    stop the rollback."""
    deployment = ctx.deployment
    done: dict[str, Any] = {"canaryShare": 0.0}
    done["rule"] = _set_rule_weights(ctx, _ZERO, create=False, tolerant=True)
    flags: dict[str, str] = {}
    links = ctx.batch.flags.get(deployment.pk, [])
    writer = ctx.writer()

    def flags_off() -> None:
        for index, flag in enumerate(links):
            flags[flag.key], links[index] = _flag_off(deployment, flag, writer)

    if links:
        ctx.batch.later.append(flags_off)
    done["flags"] = flags
    deployment.canary_share = _ZERO
    return done


def _flag_off(deployment: Deployment, flag: Flag, writer: Mapping[str, Any]) -> tuple[str, Flag]:
    controller = deployment.controller
    notes = []
    try:
        if flag.controlled_by in ("", controller):
            flag = flag_services.flag_set_rollout(
                flag=flag, percentage=0, controlled_by=controller, **writer
            )
        if flag.status == FlagStatus.ENABLED:
            flag = flag_services.flag_disable(flag=flag, **writer)
        if flag.controlled_by == controller:
            flag = flag_services.flag_release_control(flag=flag, controlled_by=controller, **writer)
    except CanaryError as error:
        notes.append(error.message)
    state = "killed" if flag.status == FlagStatus.KILLED else "off"
    return (f"{state} ({'; '.join(notes)})" if notes else state), flag


def _set_rule_weights(
    ctx: _ActionContext, share: Decimal, *, create: bool = True, tolerant: bool = False
) -> Any:
    """Split the service between the stable and the canary target in the deployment's rule,
    creating (or re-enabling) the rule when the canary enters traffic. Returns what is set;
    the batch fills in the rule's id once it is written."""
    deployment = ctx.deployment
    stable, canary = deployment.stable_target, deployment.canary_target
    if stable is None or canary is None:
        # Nothing routes to a canary without a target; the start check requires both.
        return None
    weights = {stable.name: _HUNDRED - share, canary.name: share}
    plan = ctx.batch.rules.get(deployment.pk)
    exists = deployment.routing_rule is not None or (plan is not None and plan.create)
    if not exists and not create:
        return None
    plan = ctx.batch.rule_plan(deployment, ctx.attribution())
    plan.tolerant = plan.tolerant or tolerant
    if not exists:
        plan.create = True
        plan.enabled = True
    elif not plan.currently_enabled():
        if not create:
            return {"id": deployment.routing_rule_id, "weights": {}}
        plan.enabled = True
    plan.weights = weights
    report: dict[str, Any] = {
        "id": deployment.routing_rule_id,
        "weights": {name: float(value) for name, value in weights.items()},
    }
    plan.reports.append(report)
    return report


def _retire_rule(ctx: _ActionContext) -> None:
    """A finished deployment's rule is disabled, not deleted: requests take the service's
    default route (its stable version, the canary's after a success), no old catch-all rule
    shadows the next deployment's, and a retry enables it again."""
    deployment = ctx.deployment
    plan = ctx.batch.rules.get(deployment.pk)
    if deployment.routing_rule is None and (plan is None or not plan.create):
        return
    plan = ctx.batch.rule_plan(deployment, ctx.attribution())
    if plan.currently_enabled():
        plan.enabled = False


# ---------------------------------------------------------------------------- rows, follow-ups


def _write_rows(model: Any, rows: list[Any], fields: list[str]) -> None:
    """Write ``fields`` of many rows in one statement. Django's bulk_update builds a CASE per
    field and row; on PostgreSQL an UPDATE from one JSON parameter unpacked into rows does the
    same in a fraction of the time."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(rows, fields, batch_size=500)
        return
    columns = [model._meta.get_field(name) for name in fields]
    table = connection.ops.quote_name(model._meta.db_table)
    quoted = [connection.ops.quote_name(column.column) for column in columns]
    assignments = ", ".join(f"{name} = v.{name}" for name in quoted)
    types = ", ".join(
        f"{name} {column.cast_db_type(connection) or column.db_type(connection)}"
        for name, column in zip(quoted, columns, strict=True)
    )
    for offset in range(0, len(rows), 5_000):
        records = [
            {
                "id": row.pk,
                **{column.column: _json_value(getattr(row, column.attname)) for column in columns},
            }
            for row in rows[offset : offset + 5_000]
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} "
                f"FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, {types}) WHERE t.id = v.id",
                [json.dumps(records, separators=(",", ":"))],
            )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _event(
    deployment: Deployment,
    kind: str,
    *,
    actor: Any,
    source: str,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
    from_status: str = "",
    to_status: str = "",
    at: datetime | None = None,
) -> DeploymentEvent:
    return DeploymentEvent.objects.create(
        deployment=deployment,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        phase=deployment.current_phase,
        canary_share=deployment.canary_share,
        actor=_person(actor),
        source=source,
        reason=reason[:5000],
        evidence=dict(evidence or {}),
        at=at or timezone.now(),
    )


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


def _after_commit(planned: _Planned, event: DeploymentEvent) -> None:
    deployment, action, change = planned.deployment, planned.action, planned.change
    before, after = planned.before, planned.after

    def follow_up() -> None:
        _send(
            deployment_transitioned,
            deployment=deployment,
            event=event,
            action=str(action),
            from_status=before,
            to_status=after,
        )
        if change.breach is not None and action == Action.ROLLBACK:
            _send(
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


def _send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=Deployment, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "A receiver of %s failed: %r", getattr(receiver, "__name__", receiver), result
            )


# ============================================================================ the tick


@dataclass
class TickReport:
    """What one tick did; its counts are of deployments."""

    examined: int = 0
    evaluated: int = 0
    waiting: int = 0
    advanced: int = 0
    succeeded: int = 0
    rolled_back: int = 0
    failed: int = 0
    ready: int = 0
    breaches_noted: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    # Seconds spent in each step, for the logs and the benchmark.
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[step] = round(self.timings.get(step, 0.0) + now - since, 4)
        return now

    def to_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "evaluated": self.evaluated,
            "waiting": self.waiting,
            "advanced": self.advanced,
            "succeeded": self.succeeded,
            "rolled_back": self.rolled_back,
            "failed": self.failed,
            "ready": self.ready,
            "breaches_noted": self.breaches_noted,
            "skipped": self.skipped,
            "errors": list(self.errors),
            "timings": dict(self.timings),
        }


@dataclass
class _Verdict:
    """One running deployment's judgement this tick, and what to do about it."""

    deployment: Deployment
    phase: Phase
    judgement: PhaseJudgement
    evidence: dict[str, Any]
    log: dict[str, Any]
    log_changed: bool
    policy_breach: bool = False
    held: bool = False


def deployment_tick(*, deployment_id: int, now: datetime | None = None) -> TickReport:
    """The tick for one deployment (after a transition, so a new phase is judged at once)."""
    return deployments_tick(now=now, deployment_ids=[deployment_id])


def deployments_tick(
    *, now: datetime | None = None, deployment_ids: Sequence[int] | None = None
) -> TickReport:
    """One step of the control loop over every deployment under way.

    1. A deployment past its maximum time fails (traffic back to stable); one left rolling
       back by an interrupted tick is finished.
    2. Every running deployment's canary is evaluated by the health app in one bulk pass
       (its policy, or the default one), which becomes one observation per metric.
    3. Each current phase is judged (`phase_judgement`): a breach with auto-rollback on rolls
       back (breach signal, canary out of traffic, rolled back, with the evidence); advance
       moves to the next phase or succeeds after the last one, unless a person must promote
       (auto-promote off, or the manual strategy: said once on the timeline); wait records
       the judgement for the pages.

    The number of queries does not grow with the number of deployments that wait: they are
    read in one query, evaluated in one health pass and written in one statement. Each
    decision runs through `deployment_transition` with the row locked, on the phase it was
    judged on; a second tick running at the same time skips rows the first holds and finds
    the decision already taken, so it cannot be applied twice.
    """
    now = now or timezone.now()
    report = TickReport()
    clock = time.perf_counter()
    with collector_paused():
        deployments = selectors.deployments_for_tick(ids=deployment_ids)
        report.examined = len(deployments)
        clock = report.lap("load", clock)
        overdue: list[Deployment] = []
        running: list[Deployment] = []
        for deployment in deployments:
            if deployment.status == DeploymentStatus.ROLLING_BACK or _past_deadline(
                deployment, now
            ):
                overdue.append(deployment)
            elif deployment.status == DeploymentStatus.RUNNING:
                running.append(deployment)
        verdicts = _judge_all(running, now, report)
        clock = time.perf_counter()
        _record(verdicts, now, report)
        clock = report.lap("record", clock)
        # Only the few verdicts that take a decision outlive the pause; the rest are freed
        # before the collector runs again.
        decisions = [verdict for verdict in verdicts if _decides(verdict, report)]
        del deployments, running, verdicts

    # Every decision of the tick in one transaction, every row locked at once.
    _decide_all(overdue, decisions, now, report)
    report.lap("decide", clock)
    return report


OUT_OF_TRAFFIC = "The canary is out of traffic: its weight is 0 and its flags are off."


def _overdue_request(deployment: Deployment, now: datetime) -> TransitionRequest:
    """Finish a rollback an interrupted tick left half way, or fail a deployment past its
    maximum time (traffic back to stable)."""
    if deployment.status == DeploymentStatus.ROLLING_BACK:
        return TransitionRequest(
            deployment_id=deployment.pk,
            action=Action.FINISH_ROLLBACK,
            reason=OUT_OF_TRAFFIC,
            expected_status=deployment.status,
        )
    limit = format_duration(deployment.max_deployment_time_ms)
    return TransitionRequest(
        deployment_id=deployment.pk,
        action=Action.FAIL,
        reason=f"Past the maximum deployment time of {limit} (started "
        f"{deployment.started_at:%Y-%m-%d %H:%M:%S} UTC); traffic is back on "
        "the stable version.",
        evidence={"maxDeploymentTimeMs": deployment.max_deployment_time_ms},
        expected_status=deployment.status,
    )


def _past_deadline(deployment: Deployment, now: datetime) -> bool:
    if deployment.status not in (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED):
        return False
    if deployment.started_at is None:
        return False
    return now - deployment.started_at > timedelta(milliseconds=deployment.max_deployment_time_ms)


def _judge_all(running: list[Deployment], now: datetime, report: TickReport) -> list[_Verdict]:
    """Evaluate every running canary in one health pass and judge its current phase."""
    pairs: list[tuple[Deployment, Phase]] = []
    for deployment in running:
        phase = deployment.running_phase
        if phase is None or phase.started_at is None:
            report.errors.append(f"deployment {deployment.pk}: no running phase")
            continue
        pairs.append((deployment, phase))
    if not pairs:
        return []
    # A few policies serve many deployments: read once, not once per row.
    policies = selectors.health_policies(
        ids={d.health_policy_id for d, _ in pairs if d.health_policy_id is not None}
    )
    default = None
    if any(policies.get(d.health_policy_id) is None for d, _ in pairs):
        default = default_policy()
    requests = [
        EvaluationRequest(
            service=deployment.service.name,
            canary_version=deployment.canary_version,
            stable_version=deployment.stable_version,
            policy=policies.get(deployment.health_policy_id) or default,
            planned_canary_share=float(phase.traffic_percentage),
            # Each phase on its own traffic: the share changes only when a phase begins.
            window_start=phase.started_at,
        )
        for deployment, phase in pairs
    ]
    # A phase that began after the latest window closed has no traffic of its own to judge
    # yet (the tick right after a transition): nothing is asked of the health app for it.
    end = health_windows.window_end(
        now, resolution=health_conf.bucket_seconds(), settle=health_conf.settle_seconds()
    )
    judged = [i for i, (_d, phase) in enumerate(pairs) if phase.started_at < end]
    clock = time.perf_counter()
    checks: list[Any] = [None] * len(pairs)
    for index, check in zip(
        judged, _evaluate([requests[i] for i in judged], now, report), strict=True
    ):
        checks[index] = check
    clock = report.lap("health", clock)
    report.evaluated = sum(1 for check in checks if check is not None)

    max_gap = conf.max_gap()
    min_requests, z = conf.phase_min_requests(), conf.threshold_z()
    verdicts: list[_Verdict] = []
    specs: dict[Any, _PhaseSpec] = {}  # deployments made from one template share their phases
    for (deployment, phase), check in zip(pairs, checks, strict=True):
        spec, metrics, keep = _phase_spec(phase, specs, max_gap)
        log: dict[str, Any] = dict(phase.observations or {})
        changed = False
        evidence: dict[str, Any] = {"phase": phase.order}
        policy_breach = False
        seen = Evidence.from_dict(log.get("e"))
        if check is not None:
            values = observing.canary_values(check.result, metrics)
            log, changed = observing.record(log, at=check.window_end, values=values)
            log = observing.trim(log, keep=keep, since=phase.started_at)
            seen = observing.evidence(check.result, at=check.window_end)
            log["e"] = seen.to_dict()
            evidence["healthCheck"] = {
                "id": check.pk,
                "verdict": check.verdict,
                "message": check.message,
                "windowEnd": check.window_end.isoformat(),
                "shouldRollback": check.should_rollback,
                "canary": values,
            }
            policy_breach = bool(check.should_rollback)
        elif seen is not None:
            log["e"] = seen.to_dict()
        judgement = phase_judgement(
            spec,
            started_at=phase.started_at,
            now=now,
            observations=observing.observations(log, spec),
            max_gap=max_gap,
            evidence=seen,
            min_requests=min_requests,
            z=z,
        )
        judgement = _with_policy(judgement, check, policy_breach)
        evidence["judgement"] = judgement.to_dict()
        verdicts.append(
            _Verdict(deployment, phase, judgement, evidence, log, changed, policy_breach)
        )
    report.lap("judge", clock)
    return verdicts


_PhaseSpec = tuple[PhaseConfig, list[str], timedelta]


def _phase_spec(phase: Phase, cache: dict[Any, _PhaseSpec], max_gap: timedelta) -> _PhaseSpec:
    """The phase's configuration, the metrics it is judged on and the history it keeps; read
    once for every phase of the same settings."""
    # repr tells JSON values apart as well as a dump does, in a fraction of the time (two
    # equal settings written in another key order only miss the cache).
    key = (
        phase.key,
        phase.name,
        str(phase.traffic_percentage),
        phase.duration_ms,
        repr(phase.success_criteria),
        repr(phase.rollback_thresholds),
    )
    found = cache.get(key)
    if found is None:
        spec = phase_config(phase)
        found = cache[key] = (
            spec,
            observing.needed_metrics(spec),
            observing.keep_for(spec, max_gap),
        )
    return found


def _evaluate(requests: list[EvaluationRequest], now: datetime, report: TickReport) -> list[Any]:
    """The health pass; if the bulk call refuses one request, the others are still judged."""
    if not requests:
        return []
    try:
        return list(health_services.health_evaluate_many(requests=requests, now=now))
    except CanaryError as error:
        report.errors.append(f"bulk evaluation: {error.message}")
    checks: list[Any] = []
    for request in requests:
        try:
            checks.append(health_services.health_evaluate_many(requests=[request], now=now)[0])
        except CanaryError as error:
            report.errors.append(f"{request.service} {request.canary_version}: {error.message}")
            checks.append(None)
    return checks


def _with_policy(judgement: PhaseJudgement, check: Any, policy_breach: bool) -> PhaseJudgement:
    """Fold the health policy's own verdict into the phase's: its auto-rollback is a breach.
    (A verdict that is not healthy already holds the phase: see `phase_judgement`.)"""
    if check is None:
        return judgement
    if policy_breach and judgement.outcome != Outcome.BREACH:
        return _replace(
            judgement,
            outcome=Outcome.BREACH,
            reason=f"Roll back: the health policy '{check.policy_name}' asks for it: "
            f"{check.message}",
        )
    return judgement


def _replace(judgement: PhaseJudgement, **changes: Any) -> PhaseJudgement:
    from dataclasses import replace

    return replace(judgement, **changes)


def _needs_person(deployment: Deployment) -> bool:
    return (
        not deployment.auto_promote
        or deployment.traffic_shift_strategy == TrafficShiftStrategy.MANUAL
    )


def _record(verdicts: list[_Verdict], now: datetime, report: TickReport) -> None:
    """Store every judgement in one transaction and one statement, with the notes a person
    needs once (ready to promote; a breach left to them), and only for rows this tick holds
    whose phase has not moved on since they were judged."""
    if not verdicts:
        return
    with transaction.atomic():
        held = _lock_for_tick([verdict.deployment.pk for verdict in verdicts])
        changed_phases: list[Phase] = []
        events: list[DeploymentEvent] = []
        for verdict in verdicts:
            deployment, phase = verdict.deployment, verdict.phase
            if held.get(deployment.pk) != (DeploymentStatus.RUNNING, phase.order):
                report.skipped += 1
                continue
            verdict.held = True
            outcome = verdict.judgement.outcome
            note = ""
            if outcome == Outcome.BREACH and not deployment.auto_rollback:
                if phase.breach_seen_at is None:
                    phase.breach_seen_at = now
                    note = EventKind.BREACH
            elif outcome != Outcome.BREACH:
                phase.breach_seen_at = None
            if outcome == Outcome.ADVANCE and _needs_person(deployment) and phase.ready_at is None:
                phase.ready_at = now
                note = EventKind.READY
            fresh = _worth_writing(phase, verdict, now) or bool(note)
            phase.observations = verdict.log
            phase.judgement = verdict.evidence["judgement"]
            phase.judged_at = now
            if fresh:
                changed_phases.append(phase)
            if note == EventKind.READY:
                report.ready += 1
                events.append(_note_event(verdict, note, now))
            elif note == EventKind.BREACH:
                report.breaches_noted += 1
                events.append(_note_event(verdict, note, now))
                transaction.on_commit(_breach_notice(verdict))
        if changed_phases:
            _save_judgements(changed_phases)
        if events:
            DeploymentEvent.objects.bulk_create(events)
            for event in events:
                if event.kind == EventKind.BREACH:
                    notifications.breach_news(deployment=event.deployment, event=event)


_JUDGEMENT_FIELDS = ["observations", "judgement", "judged_at", "ready_at", "breach_seen_at"]


def _worth_writing(phase: Phase, verdict: _Verdict, now: datetime) -> bool:
    """Whether a judgement says anything the stored one does not: a new observation, another
    outcome or criterion state, a cleared breach, or clocks older than half a tick. Two ticks
    at the same moment write once."""
    if verdict.log_changed or phase.judged_at is None:
        return True
    stored = phase.judgement or {}
    new = verdict.evidence["judgement"]
    if stored.get("outcome") != new["outcome"]:
        return True
    if [c.get("state") for c in stored.get("criteria", [])] != [
        c["state"] for c in new["criteria"]
    ]:
        return True
    if phase.breach_seen_at is not None and new["outcome"] != Outcome.BREACH:
        return True
    return (now - phase.judged_at).total_seconds() >= conf.tick_seconds() / 2


def _save_judgements(phases: list[Phase]) -> None:
    """Write the phases' judgements in one statement. Django's bulk_update builds a CASE per
    field and row, which for a thousand rows costs more than the whole evaluation; on
    PostgreSQL an UPDATE from one JSON parameter unpacked into rows does the same in a fraction
    of the time (a parameter per value would be quoted into the statement one by one)."""
    if connection.vendor != "postgresql":
        Phase.objects.bulk_update(phases, _JUDGEMENT_FIELDS)
        return
    table = connection.ops.quote_name(Phase._meta.db_table)
    for offset in range(0, len(phases), 10_000):
        rows = [
            {
                "id": phase.pk,
                "observations": phase.observations,
                "judgement": phase.judgement,
                "judged_at": _iso(phase.judged_at),
                "ready_at": _iso(phase.ready_at),
                "breach_seen_at": _iso(phase.breach_seen_at),
            }
            for phase in phases[offset : offset + 10_000]
        ]
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS p SET observations = v.observations, "
                "judgement = v.judgement, judged_at = v.judged_at, ready_at = v.ready_at, "
                "breach_seen_at = v.breach_seen_at "
                "FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, observations jsonb, "
                "judgement jsonb, judged_at timestamptz, ready_at timestamptz, "
                "breach_seen_at timestamptz) WHERE p.id = v.id",
                [json.dumps(rows, separators=(",", ":"))],
            )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _breach_notice(verdict: _Verdict) -> Callable[[], None]:
    def send() -> None:
        _send(
            deployment_breached,
            deployment=verdict.deployment,
            phase=verdict.phase.order,
            evidence=verdict.evidence,
            reason=verdict.judgement.reason,
            rolled_back=False,
        )

    return send


def _note_event(verdict: _Verdict, note: str, now: datetime) -> DeploymentEvent:
    deployment = verdict.deployment
    if note == EventKind.READY:
        who = (
            "the manual strategy"
            if deployment.traffic_shift_strategy == TrafficShiftStrategy.MANUAL
            else "auto-promote is off"
        )
        reason = f"{verdict.judgement.reason} A person promotes: {who}."
    else:
        reason = f"{verdict.judgement.reason} Auto-rollback is off: a person decides."
    return DeploymentEvent(
        deployment=deployment,
        kind=note,
        from_status=deployment.status,
        to_status=deployment.status,
        phase=verdict.phase.order,
        canary_share=deployment.canary_share,
        source=Source.SYSTEM,
        reason=reason[:5000],
        evidence=verdict.evidence,
        at=now,
    )


def _lock_for_tick(ids: list[int]) -> dict[int, tuple[str, int | None]]:
    """Lock the rows this tick may write, skipping those another process holds (PostgreSQL);
    SQLite's write transaction is already the only writer. Status and phase are read inside
    the lock, so a decision taken meanwhile is seen."""
    if connection.vendor != "postgresql":
        rows = Deployment.objects.filter(pk__in=ids)
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True, of=("self",))
        return {
            pk: (status, phase)
            for pk, status, phase in rows.values_list("pk", "status", "current_phase")
        }
    # The ids as one array parameter: a thousand placeholders cost more to send than the lock.
    table = connection.ops.quote_name(Deployment._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, status, current_phase FROM {table} WHERE id = ANY(%s::bigint[]) "
            "FOR UPDATE SKIP LOCKED",
            [list(ids)],
        )
        return {pk: (status, phase) for pk, status, phase in cursor.fetchall()}


def _decides(verdict: _Verdict, report: TickReport) -> bool:
    """Whether a stored verdict takes a decision (rollback, promote, succeed); one that does
    not is counted as waiting."""
    if not verdict.held:
        return False
    outcome = verdict.judgement.outcome
    if outcome == Outcome.BREACH and verdict.deployment.auto_rollback:
        return True
    if outcome == Outcome.ADVANCE and not _needs_person(verdict.deployment):
        return True
    report.waiting += 1
    return False


def _decide_all(
    overdue: list[Deployment], decisions: list[_Verdict], now: datetime, report: TickReport
) -> None:
    """Take the tick's decisions through the transition service, all in one transaction:
    rollbacks first, then failures past the maximum time, then advances. A row another
    process holds, or a deployment that moved on since it was judged, is left for the next
    tick."""
    requests: list[TransitionRequest] = []
    # For each request: the report's counter, and the request it follows (its result counts
    # only if that one was done).
    counting: list[tuple[str | None, int | None]] = []
    rollbacks = [v for v in decisions if v.judgement.outcome == Outcome.BREACH]
    advances = [v for v in decisions if v.judgement.outcome != Outcome.BREACH]
    for verdict in rollbacks:
        deployment = verdict.deployment
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.ROLLBACK,
                reason=verdict.judgement.reason,
                evidence={**verdict.evidence, **_fault_start(verdict, now)},
                expected_phase=verdict.phase.order,
                expected_status=deployment.status,
            )
        )
        counting.append((None, None))
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.FINISH_ROLLBACK,
                reason=OUT_OF_TRAFFIC,
                expected_status=DeploymentStatus.ROLLING_BACK,
            )
        )
        counting.append(("rolled_back", len(requests) - 2))
    for deployment in overdue:
        requests.append(_overdue_request(deployment, now))
        counting.append(
            (
                "rolled_back" if deployment.status == DeploymentStatus.ROLLING_BACK else "failed",
                None,
            )
        )
    for verdict in advances:
        deployment = verdict.deployment
        last = deployment.on_last_phase
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.SUCCEED if last else Action.PROMOTE,
                reason=verdict.judgement.reason,
                evidence=verdict.evidence,
                expected_phase=verdict.phase.order,
                expected_status=deployment.status,
            )
        )
        counting.append(("succeeded" if last else "advanced", None))
    if not requests:
        return
    try:
        results = deployments_transition(
            requests=requests, source=Source.SYSTEM, skip_locked=True, now=now
        )
    except CanaryError as error:
        report.errors.append(f"decisions: {error.message}")
        logger.warning("Tick could not take its decisions: %s", error)
        return
    for result, (counter, follows) in zip(results, counting, strict=True):
        if follows is not None and not results[follows].done:
            continue
        _count(report, result, counter)


def _fault_start(verdict: _Verdict, now: datetime) -> dict[str, Any]:
    """When the fault that is being rolled back began, as the metric store shows it: the start
    of its first bad bucket in the phase (`observing.fault_start`), so that the time to the
    rollback is counted from the fault, not from the look that judged it. One query, for a
    rollback only."""
    deployment, phase = verdict.deployment, verdict.phase
    check = verdict.evidence.get("healthCheck") or {}
    end = datetime.fromisoformat(check["windowEnd"]) if check.get("windowEnd") else now
    step = health_conf.bucket_seconds()
    if phase.started_at is None or end <= phase.started_at:
        return {}
    span = int((end - phase.started_at).total_seconds()) + step
    series = health_selectors.series_many(
        service=deployment.service.name,
        versions=[deployment.canary_version, deployment.stable_version],
        metrics=["requests", "error_rate", "latency_p95"],
        window_seconds=span,
        now=end,
        step_seconds=step,
    )

    def rows(version: str) -> list[tuple[float, float | None, float | None]]:
        requests, rates, p95 = (
            series[(version, metric)].values for metric in ("requests", "error_rate", "latency_p95")
        )
        return [
            (n or 0.0, rate, latency) for n, rate, latency in zip(requests, rates, p95, strict=True)
        ]

    moments = series[(deployment.canary_version, "requests")].timestamps
    canary, stable = rows(deployment.canary_version), rows(deployment.stable_version)
    # Only the phase's own buckets: the first whole one after it began, onwards.
    first = next((i for i, moment in enumerate(moments) if moment >= phase.started_at), None)
    if first is None:
        return {}
    index = observing.fault_start(canary[first:], stable[first:])
    if index is None:
        return {}
    return {"faultStart": moments[first + index].isoformat()}


def _count(report: TickReport, result: TransitionResult, counter: str | None) -> None:
    request, error = result.request, result.error
    if error is None:
        if counter:
            setattr(report, counter, getattr(report, counter) + 1)
        return
    if isinstance(error, DeploymentBusy) or getattr(error, "code", "") == "moved_on":
        # Another tick, or a person, decided first.
        report.skipped += 1
        return
    report.errors.append(f"deployment {request.deployment_id} {request.action}: {error.message}")
    logger.warning(
        "Tick could not %s deployment %s: %s", request.action, request.deployment_id, error
    )


# ============================================================================ judgement


def judge_phase(phase: Phase, *, now: datetime | None = None) -> PhaseJudgement:
    """The current judgement of a phase from the observations the tick has stored."""
    now = now or timezone.now()
    spec = phase_config(phase)
    started = phase.started_at or now
    return phase_judgement(
        spec,
        started_at=started,
        now=now,
        observations=observing.observations(phase.observations, spec),
        max_gap=conf.max_gap(),
        evidence=Evidence.from_dict((phase.observations or {}).get("e")),
        min_requests=conf.phase_min_requests(),
        z=conf.threshold_z(),
    )


def default_policy() -> HealthPolicy:
    """The health policy for deployments that name none: created on first use through the
    health app's service, visible and editable on the health pages like any other.

    It is the health app's safe policy: the canary is compared with stable on each phase's own
    traffic and rolled back when it is significantly and materially worse (its error rate, or
    its latency), and the alert goes out on every channel the site has configured. A
    deployment created with no thresholds at all, from the wizard, the simple configuration
    or REST, is protected by it; the phases' own thresholds are a second line."""
    name = conf.default_policy_name()
    policy = selectors.health_policy_named(name)
    if policy is not None:
        return policy
    try:
        with transaction.atomic():
            return health_services.health_policy_create(
                name=name,
                description=(
                    "Judges canaries of deployments that name no policy: rolls back a canary "
                    "significantly and materially worse than stable on the phase's own "
                    "traffic. The deployment's phases hold the success criteria and the "
                    "absolute rollback thresholds."
                ),
                alerting_enabled=True,
                alert_channels=conf.default_alert_channels(),
                policy={
                    "window_seconds": conf.default_window_seconds(),
                    "min_requests": conf.default_min_requests(),
                    "no_data": "inconclusive",
                    "thresholds": [],
                    "trend": {"enabled": False},
                    "auto_rollback": {"enabled": True},
                },
            )
    except CanaryError:
        # Two ticks creating it at once: the other one won.
        policy = selectors.health_policy_named(name)
        if policy is None:
            raise
        return policy


# ============================================================================ helpers


def _locked(deployment_id: int, *, skip_locked: bool = False) -> Deployment:
    rows = Deployment.objects.select_related(
        "service", "stable_target", "canary_target", "routing_rule"
    )
    if skip_locked and connection.features.has_select_for_update_skip_locked:
        rows = rows.select_for_update(skip_locked=True, of=("self",))
        deployment = rows.filter(pk=deployment_id).first()
        if deployment is None:
            if Deployment.objects.filter(pk=deployment_id).exists():
                raise DeploymentBusy("Another process is changing this deployment right now.")
            raise NotFound(f"There is no deployment {deployment_id}.")
        return deployment
    deployment = rows.select_for_update(of=("self",)).filter(pk=deployment_id).first()
    if deployment is None:
        raise NotFound(f"There is no deployment {deployment_id}.")
    return deployment


def _person(actor: Any) -> Any:
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


def _percent(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _full_clean(row: Any, *, exclude: list[str] | None = None, prefix: str = "") -> None:
    try:
        row.full_clean(exclude=exclude)
    except DjangoValidationError as error:
        fields: dict[str, list[str]] = {}
        for name, messages in error.message_dict.items():
            key = prefix + _CONFIG_FIELD.get(name, name) if name != "__all__" else "config"
            fields.setdefault(key, []).extend(str(message) for message in messages)
        key, messages = next(iter(fields.items()))
        raise ValidationFailed(f"{key}: {messages[0]}", fields=fields) from None
