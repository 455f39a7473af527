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

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection, transaction
from django.utils import timezone

from canary_site.audit import audit_context
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
from health import services as health_services
from health.models import HealthPolicy
from health.services import EvaluationRequest
from routing import selectors as routing_selectors
from routing import services as routing_services
from routing.models import RoutingRule, Service, Target

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
    """Delete a deployment that is not under way, with its phases, timeline and routing rule."""
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
    """Perform one lifecycle action on a deployment; every status change goes through here.

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

    ``expected_phase`` and ``expected_status`` refuse the action when the deployment has moved
    on since the caller looked (a double click, or two ticks deciding on the same phase).
    ``skip_locked`` makes a busy row an immediate `DeploymentBusy` instead of a wait.
    ``evidence`` is stored on the event (the tick's judgement behind an automatic decision).
    """
    verb = Action(action) if isinstance(action, str) else action
    reason = (reason or "").strip()
    now = now or timezone.now()
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb=str(verb)),
    ):
        deployment = _locked(deployment_id, skip_locked=skip_locked)
        if expected_status is not None and deployment.status != expected_status:
            raise TransitionNotAllowed(
                f"The deployment is {deployment.get_status_display().lower()} now, not "
                f"{expected_status.replace('_', ' ')}; look again before deciding.",
                code="moved_on",
            )
        if expected_phase is not None and deployment.current_phase != expected_phase:
            raise TransitionNotAllowed(
                f"The deployment is on phase {deployment.current_phase or '—'} now, not "
                f"{expected_phase}; look again before deciding.",
                code="moved_on",
            )
        phases = list(deployment.phases.order_by("order"))
        effective = _effective_action(deployment, verb, phases)
        before = deployment.status
        try:
            after = transition(before, effective)
        except TransitionRefused as refused:
            raise TransitionNotAllowed(refused.reason, code="transition_refused") from None

        change = _Change(evidence=dict(evidence or {}))
        context = _ActionContext(deployment, phases, now, actor, source, reason, change)
        _EFFECTS[effective](context)
        deployment.status = after
        deployment.save()
        event = _event(
            deployment,
            EventKind(str(effective)),
            actor=actor,
            source=source,
            reason=reason or _default_reason(effective, deployment),
            evidence=change.evidence,
            from_status=before,
            to_status=after,
            at=now,
        )
        # The news is queued in this transaction: it exists exactly when the transition does.
        notifications.transition_news(
            deployment=deployment, event=event, action=effective, to_status=after
        )
        _after_commit(deployment, event, effective, before, after, change)
    return deployment


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

    @property
    def current(self) -> Phase | None:
        order = self.deployment.current_phase
        if order is None:
            return None
        return next((phase for phase in self.phases if phase.order == order), None)

    def writer(self) -> dict[str, Any]:
        """The attribution every lower service's write carries."""
        text = self.reason or f"deployment {self.deployment.pk}: {self.deployment.name}"
        return {"actor": self.actor, "source": self.source, "reason": text}


def _start(ctx: _ActionContext) -> None:
    deployment = ctx.deployment
    _check_ready(deployment)
    first = ctx.phases[0]
    for phase in ctx.phases:
        _reset_phase(phase)
    _begin_phase(first, ctx.now)
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
    _require_reason_unless_held(ctx, current, verb="promote")
    _end_phase(current, PhaseStatus.PASSED, ctx.now)
    following = next(phase for phase in ctx.phases if phase.order == current.order + 1)
    _begin_phase(following, ctx.now)
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
            _end_phase(phase, PhaseStatus.PASSED, ctx.now)
        elif phase.status == PhaseStatus.PENDING:
            phase.status = PhaseStatus.SKIPPED
            phase.save(update_fields=["status"])
    ctx.change.evidence["traffic"] = _set_traffic(ctx, _HUNDRED, release=True)
    service = deployment.service
    if service.stable_version != deployment.canary_version:
        routing_services.service_update(
            service=service, stable_version=deployment.canary_version, **ctx.writer()
        )
    ctx.change.evidence["stableVersion"] = deployment.canary_version
    _retire_rule(ctx)
    deployment.finished_at = ctx.now


def _rollback(ctx: _ActionContext) -> None:
    current = ctx.current
    if current is not None:
        _end_phase(current, PhaseStatus.ROLLED_BACK, ctx.now)
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
        _end_phase(current, PhaseStatus.FAILED, ctx.now)
    ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
    _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _abort(ctx: _ActionContext) -> None:
    current = ctx.current
    if current is not None and current.status == PhaseStatus.RUNNING:
        _end_phase(current, PhaseStatus.ABORTED, ctx.now)
    if ctx.deployment.started_at is not None or ctx.deployment.routing_rule_id is not None:
        ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
        _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _retry(ctx: _ActionContext) -> None:
    for phase in ctx.phases:
        _reset_phase(phase)
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


def _reset_phase(phase: Phase) -> None:
    _fresh_phase(phase, PhaseStatus.PENDING, started_at=None)


def _begin_phase(phase: Phase, now: datetime) -> None:
    _fresh_phase(phase, PhaseStatus.RUNNING, started_at=now)


def _fresh_phase(phase: Phase, status: str, *, started_at: datetime | None) -> None:
    """The phase with nothing observed or judged yet: before a start, or as a retry leaves it."""
    phase.status = status
    phase.started_at = started_at
    phase.ended_at = None
    phase.observations = {}
    phase.judgement = {}
    phase.judged_at = None
    phase.ready_at = None
    phase.breach_seen_at = None
    phase.save()


def _end_phase(phase: Phase, status: str, now: datetime) -> None:
    phase.status = status
    phase.ended_at = now
    phase.save(update_fields=["status", "ended_at"])


# ---------------------------------------------------------------------------- traffic effects


def _set_traffic(
    ctx: _ActionContext,
    share: Decimal,
    *,
    enable: bool = False,
    release: bool = False,
) -> dict[str, Any]:
    """The canary's share in the deployment's routing rule and every linked flag's rollout,
    in the caller's transaction. Returns what was set, for the event's evidence."""
    deployment = ctx.deployment
    share = _percent(share)
    done: dict[str, Any] = {"canaryShare": float(share)}
    done["rule"] = _set_rule_weights(ctx, share)
    flags: dict[str, str] = {}
    for flag in deployment.flags.order_by("key"):
        if enable and flag.status == FlagStatus.DISABLED:
            flag = flag_services.flag_enable(flag=flag, **ctx.writer())
        flag_services.flag_set_rollout(
            flag=flag, percentage=share, controlled_by=deployment.controller, **ctx.writer()
        )
        if release:
            flag_services.flag_release_control(
                flag=flag, controlled_by=deployment.controller, **ctx.writer()
            )
        flags[flag.key] = f"{share}%" if flag.status != FlagStatus.KILLED else "killed"
    done["flags"] = flags
    deployment.canary_share = share
    return done


def _out_of_traffic(ctx: _ActionContext) -> dict[str, Any]:
    """Canary weight 0 and every linked flag off, now. A flag that cannot be changed (killed
    already, or driven by someone else) is reported, never allowed to stop the rollback."""
    deployment = ctx.deployment
    done: dict[str, Any] = {"canaryShare": 0.0}
    try:
        done["rule"] = _set_rule_weights(ctx, _ZERO, create=False)
    except CanaryError as error:
        # Reported on the timeline; the flags below still go off.
        done["rule"] = {"error": error.message}
    flags: dict[str, str] = {}
    for flag in deployment.flags.order_by("key"):
        flags[flag.key] = _flag_off(ctx, flag)
    done["flags"] = flags
    deployment.canary_share = _ZERO
    return done


def _flag_off(ctx: _ActionContext, flag: Flag) -> str:
    controller = ctx.deployment.controller
    notes = []
    try:
        if flag.controlled_by in ("", controller):
            flag = flag_services.flag_set_rollout(
                flag=flag, percentage=0, controlled_by=controller, **ctx.writer()
            )
        if flag.status == FlagStatus.ENABLED:
            flag = flag_services.flag_disable(flag=flag, **ctx.writer())
        if flag.controlled_by == controller:
            flag_services.flag_release_control(flag=flag, controlled_by=controller, **ctx.writer())
    except CanaryError as error:
        notes.append(error.message)
    state = "killed" if flag.status == FlagStatus.KILLED else "off"
    return f"{state} ({'; '.join(notes)})" if notes else state


def _set_rule_weights(ctx: _ActionContext, share: Decimal, *, create: bool = True) -> Any:
    """Split the service between the stable and the canary target in the deployment's rule,
    creating (or re-enabling) the rule when the canary enters traffic. Returns what was set."""
    deployment = ctx.deployment
    stable, canary = deployment.stable_target, deployment.canary_target
    if stable is None or canary is None:
        # Nothing routes to a canary without a target; the start check requires both.
        return None
    weights = {stable.name: _HUNDRED - share, canary.name: share}
    rule = deployment.routing_rule
    if rule is None:
        if not create:
            return None
        rule = routing_services.rule_create(
            service=deployment.service,
            targets=weights,
            name=f"deployment {deployment.pk}: {deployment.name}"[:100],
            priority=conf.rule_priority(),
            **ctx.writer(),
        )
        deployment.routing_rule = rule
    elif not rule.enabled:
        if not create:
            return _weights_json(rule, {})
        rule = routing_services.rule_update(
            rule=rule, enabled=True, targets=weights, **ctx.writer()
        )
    else:
        try:
            rule = routing_services.rule_set_weights(rule=rule, weights=weights, **ctx.writer())
        except ValidationFailed:
            # Someone changed the rule's members: make them the deployment's two targets again.
            rule = routing_services.rule_update(rule=rule, targets=weights, **ctx.writer())
    return _weights_json(rule, weights)


def _retire_rule(ctx: _ActionContext) -> None:
    """A finished deployment's rule is disabled, not deleted: requests take the service's
    default route (its stable version, the canary's after a success), no old catch-all rule
    shadows the next deployment's, and a retry enables it again."""
    rule = ctx.deployment.routing_rule
    if rule is not None and rule.enabled:
        ctx.deployment.routing_rule = routing_services.rule_update(
            rule=rule, enabled=False, **ctx.writer()
        )


def _weights_json(rule: RoutingRule, weights: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": rule.pk, "weights": {name: float(value) for name, value in weights.items()}}


# ---------------------------------------------------------------------------- events, follow-ups


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


def _after_commit(
    deployment: Deployment,
    event: DeploymentEvent,
    action: Action,
    before: str,
    after: str,
    change: _Change,
) -> None:
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
    if after == DeploymentStatus.RUNNING and conf.enqueue_follow_ups():
        from deployments import tasks

        # The new phase is judged at once rather than at the next beat.
        tasks.deployment_tick.delay_on_commit(deployment.pk)


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

    # Each decision is its own transaction, with the row locked (`deployment_transition`).
    for deployment in overdue:
        _end_overdue(deployment, now, report)
    for verdict in decisions:
        _act(verdict, now, report)
    report.lap("decide", clock)
    return report


OUT_OF_TRAFFIC = "The canary is out of traffic: its weight is 0 and its flags are off."


def _end_overdue(deployment: Deployment, now: datetime, report: TickReport) -> None:
    """Finish a rollback an interrupted tick left half way, or fail a deployment past its
    maximum time (traffic back to stable)."""
    if deployment.status == DeploymentStatus.ROLLING_BACK:
        _decide(
            report,
            "rolled_back",
            deployment,
            Action.FINISH_ROLLBACK,
            now=now,
            reason=OUT_OF_TRAFFIC,
        )
        return
    limit = format_duration(deployment.max_deployment_time_ms)
    _decide(
        report,
        "failed",
        deployment,
        Action.FAIL,
        now=now,
        reason=f"Past the maximum deployment time of {limit} (started "
        f"{deployment.started_at:%Y-%m-%d %H:%M:%S} UTC); traffic is back on "
        "the stable version.",
        evidence={"maxDeploymentTimeMs": deployment.max_deployment_time_ms},
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
        )
        for deployment, phase in pairs
    ]
    clock = time.perf_counter()
    checks = _evaluate(requests, now, report)
    clock = report.lap("health", clock)
    report.evaluated = sum(1 for check in checks if check is not None)

    max_gap = conf.max_gap()
    verdicts: list[_Verdict] = []
    specs: dict[Any, _PhaseSpec] = {}  # deployments made from one template share their phases
    for (deployment, phase), check in zip(pairs, checks, strict=True):
        spec, metrics, keep = _phase_spec(phase, specs, max_gap)
        log: dict[str, Any] = dict(phase.observations or {})
        changed = False
        evidence: dict[str, Any] = {"phase": phase.order}
        policy_breach = False
        if check is not None:
            values = observing.canary_values(check.result, metrics)
            log, changed = observing.record(log, at=check.window_end, values=values)
            log = observing.trim(log, keep=keep, since=phase.started_at)
            evidence["healthCheck"] = {
                "id": check.pk,
                "verdict": check.verdict,
                "message": check.message,
                "windowEnd": check.window_end.isoformat(),
                "shouldRollback": check.should_rollback,
                "canary": values,
            }
            policy_breach = bool(check.should_rollback)
        judgement = phase_judgement(
            spec,
            started_at=phase.started_at,
            now=now,
            observations=observing.observations(log, spec),
            max_gap=max_gap,
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
    """Fold the health policy's own verdict into the phase's: its auto-rollback is a breach,
    and a critical verdict holds the phase back even when every criterion held."""
    if check is None:
        return judgement
    if policy_breach and judgement.outcome != Outcome.BREACH:
        return _replace(
            judgement,
            outcome=Outcome.BREACH,
            reason=f"Roll back: the health policy '{check.policy_name}' asks for it: "
            f"{check.message}",
        )
    if judgement.outcome == Outcome.ADVANCE and check.verdict == "critical":
        return _replace(
            judgement,
            outcome=Outcome.WAIT,
            reason=f"Wait: every criterion held, but the health policy '{check.policy_name}' "
            f"judges the canary critical: {check.message}",
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


def _act(verdict: _Verdict, now: datetime, report: TickReport) -> None:
    """Take the decision `_decides` found: roll back a breach, or advance (succeed after the
    last phase)."""
    deployment, phase, judgement = verdict.deployment, verdict.phase, verdict.judgement
    if judgement.outcome == Outcome.BREACH:
        done = _decide(
            report,
            None,
            deployment,
            Action.ROLLBACK,
            now=now,
            phase=phase.order,
            reason=judgement.reason,
            evidence=verdict.evidence,
        )
        if done:
            _decide(
                report,
                "rolled_back",
                deployment,
                Action.FINISH_ROLLBACK,
                now=now,
                reason=OUT_OF_TRAFFIC,
                expected_status=DeploymentStatus.ROLLING_BACK,
            )
        return
    last = deployment.on_last_phase
    _decide(
        report,
        "succeeded" if last else "advanced",
        deployment,
        Action.SUCCEED if last else Action.PROMOTE,
        now=now,
        phase=phase.order,
        reason=judgement.reason,
        evidence=verdict.evidence,
    )


def _decide(
    report: TickReport,
    counter: str | None,
    deployment: Deployment,
    action: Action,
    *,
    now: datetime,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
    phase: int | None = None,
    expected_status: str | None = None,
) -> bool:
    """Take one automatic decision through the one transition service; a row another process
    holds, or a deployment that moved on since it was judged, is left for the next tick."""
    try:
        deployment_transition(
            deployment_id=deployment.pk,
            action=action,
            source=Source.SYSTEM,
            reason=reason,
            evidence=evidence,
            expected_phase=phase,
            expected_status=expected_status or deployment.status,
            skip_locked=True,
            now=now,
        )
    except DeploymentBusy:
        report.skipped += 1
        return False
    except TransitionNotAllowed as error:
        if error.code != "moved_on":
            report.errors.append(f"deployment {deployment.pk} {action}: {error.message}")
        else:
            # Another tick, or a person, decided first.
            report.skipped += 1
        return False
    except CanaryError as error:
        report.errors.append(f"deployment {deployment.pk} {action}: {error.message}")
        logger.warning("Tick could not %s deployment %s: %s", action, deployment.pk, error)
        return False
    if counter:
        setattr(report, counter, getattr(report, counter) + 1)
    return True


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
    )


def default_policy() -> HealthPolicy:
    """The health policy for deployments that name none: created on first use through the
    health app's service, visible and editable on the health pages like any other."""
    name = conf.default_policy_name()
    policy = selectors.health_policy_named(name)
    if policy is not None:
        return policy
    try:
        with transaction.atomic():
            return health_services.health_policy_create(
                name=name,
                description=(
                    "Judges canaries of deployments that name no policy. The deployment's own "
                    "phases hold the success criteria and rollback thresholds."
                ),
                alerting_enabled=False,
                policy={
                    "window_seconds": conf.default_window_seconds(),
                    "min_requests": conf.default_min_requests(),
                    "no_data": "inconclusive",
                    "thresholds": [],
                    "trend": {"enabled": False},
                    "auto_rollback": {"enabled": False},
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
