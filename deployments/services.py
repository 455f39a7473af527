"""Writes of the deployments app: plain keyword-only functions named <entity>_<action>.

- `deployment_create`, `deployment_update`, `deployment_delete` (here): a deployment from the
  guide's configuration (JSON, YAML, a dict or a `DeploymentConfig`), validated and stored with
  its phases.
- `deployment_transition` and `deployments_transition` (`deployments.transitions`): the one
  way a deployment's status changes, with the action's effects on routing and flags
  (`deployments.effects`), the timeline event and, after commit, the signals and the next tick.
- `deployments_tick` and `deployment_tick` (`deployments.tick`): the control loop's step 3.
- `default_policy` and `judge_phase` (`deployments.judging`).

Every caller imports them from here; the modules named hold them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from canary_site import gates
from canary_site.audit import audit_context
from canary_site.choices import Source
from canary_site.exceptions import NotFound, TransitionNotAllowed, ValidationFailed, full_clean
from deployments import selectors, webhooks
from deployments.choices import DeploymentStatus, EventKind
from deployments.config import ConfigError, DeploymentConfig, FieldError, load_text, parse_config
from deployments.judging import default_policy, default_policy_document, judge_phase
from deployments.models import Deployment, DeploymentEvent, Phase
from deployments.selectors import configuration_report
from deployments.tick import OUT_OF_TRAFFIC, TickReport, deployment_tick, deployments_tick
from deployments.transitions import (
    DeploymentBusy,
    TransitionRequest,
    TransitionResult,
    deployment_transition,
    deployments_transition,
)
from deployments.validation import ValidationReport
from deployments.writing import percent, person
from flags.models import Flag
from health.models import HealthPolicy
from routing import selectors as routing_selectors
from routing import services as routing_services
from routing.models import Service

__all__ = [
    "OUT_OF_TRAFFIC",
    "DeploymentBusy",
    "TickReport",
    "TransitionRequest",
    "TransitionResult",
    "configuration_report",
    "default_policy",
    "default_policy_document",
    "deployment_create",
    "deployment_delete",
    "deployment_tick",
    "deployment_transition",
    "deployment_update",
    "deployments_tick",
    "deployments_transition",
    "judge_phase",
    "read_configuration",
]

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
    report = selectors.configuration_report(spec, context=context)
    service = _service_named(spec.service_name)
    deployment = Deployment(service=service, created_by=person(actor), health_policy=health_policy)
    _assign_config(deployment, spec, report, context)
    flag_list = _flag_list(flags)
    full_clean(deployment, names=_CONFIG_FIELD, non_field="config")
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
            _assign_config(deployment, spec, selectors.configuration_report(spec, context=ctx), ctx)
            changed.append("config")
        if health_policy is not _UNSET:
            deployment.health_policy = health_policy
            changed.append("healthPolicy")
        full_clean(deployment, names=_CONFIG_FIELD, non_field="config")
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


@gates.part_of
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
    deployment.initial_traffic_percentage = percent(spec.initial_traffic_percentage)
    deployment.traffic_shift_strategy = str(spec.traffic_shift_strategy)
    deployment.auto_promote = spec.auto_promote
    deployment.auto_rollback = spec.auto_rollback
    deployment.max_deployment_time_ms = spec.max_deployment_time_ms
    deployment.notifications = spec.notifications.to_dict()
    deployment.config = spec.to_dict()
    deployment.validation = {**report.to_dict(), "context": dict(context or {})}
    stable, canary = selectors.deployment_targets(deployment.service, spec)
    deployment.stable_target = stable
    deployment.canary_target = canary


def _write_phases(deployment: Deployment, spec: DeploymentConfig) -> None:
    for order, phase in enumerate(spec.phases, start=1):
        row = Phase(
            deployment=deployment,
            order=order,
            key=phase.id,
            name=phase.name[:200],
            traffic_percentage=percent(phase.traffic_percentage),
            duration_ms=phase.duration_ms,
            success_criteria=[criterion.to_dict() for criterion in phase.success_criteria],
            rollback_thresholds=phase.rollback_thresholds.to_dict(),
        )
        full_clean(
            row,
            exclude=["deployment"],
            prefix=f"phases[{order - 1}].",
            names=_CONFIG_FIELD,
            non_field="config",
        )
        row.save()


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
    event = DeploymentEvent.objects.create(
        deployment=deployment,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        phase=deployment.current_phase,
        canary_share=deployment.canary_share,
        actor=person(actor),
        source=source,
        reason=reason[:5000],
        evidence=dict(evidence or {}),
        at=at or timezone.now(),
    )
    webhooks.queue_events([event])
    return event


def _locked(deployment_id: int) -> Deployment:
    deployment = (
        Deployment.objects.select_related(
            "service", "stable_target", "canary_target", "routing_rule"
        )
        .select_for_update(of=("self",))
        .filter(pk=deployment_id)
        .first()
    )
    if deployment is None:
        raise NotFound(f"There is no deployment {deployment_id}.")
    return deployment
