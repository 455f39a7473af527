"""Rollback plans: created, changed and deleted by engineers and admins, in the guide's
vocabulary (`rollback.plans`), and found for a deployment.

A plan covers one deployment (``deploymentId``) or a service (``service``); one plan of a
service may be its default (``isDefault``). Which plan rolls a deployment back: the one its
configuration names (``rollbackPlan``), else one made for it, else its service's default, else
the built-in immediate plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from canary_site.audit import audit_context
from canary_site.choices import Source
from canary_site.exceptions import TransitionNotAllowed, ValidationFailed, full_clean
from deployments.models import Deployment
from rollback import plans
from rollback.choices import ACTIVE_EXECUTION_STATES
from rollback.models import RollbackExecution, RollbackPlan
from routing.models import Service


def rollback_plan_validate(*, definition: Any) -> plans.Plan:
    """The typed plan, or a 400 naming the field at fault."""
    try:
        return plans.read_plan(definition)
    except plans.InvalidPlan as error:
        raise ValidationFailed(
            f"{error.field}: {error.message}" if error.field else error.message,
            field=error.field or "definition",
        ) from None


def plan_placement(definition: Mapping[str, Any]) -> dict[str, Any]:
    """Where the plan applies, from its own ``service``, ``deploymentId`` and ``isDefault``."""
    placed: dict[str, Any] = {"service": None, "deployment": None}
    name = definition.get("service")
    if name not in (None, ""):
        if not isinstance(name, str):
            raise ValidationFailed("service: must be a service's name.", field="service")
        placed["service"] = Service.objects.filter(name=name).first()
        if placed["service"] is None:
            raise ValidationFailed(f"service: there is no service named {name!r}.", field="service")
    deployment_id = definition.get("deploymentId")
    if deployment_id not in (None, ""):
        if isinstance(deployment_id, bool) or (
            isinstance(deployment_id, float) and not deployment_id.is_integer()
        ):
            raise ValidationFailed(
                "deploymentId: must be a deployment's id, a whole number.", field="deploymentId"
            )
        try:
            placed["deployment"] = Deployment.objects.select_related("service").get(
                pk=int(deployment_id)
            )
        except (TypeError, ValueError, OverflowError, Deployment.DoesNotExist):
            raise ValidationFailed(
                f"deploymentId: there is no deployment {deployment_id!r}.", field="deploymentId"
            ) from None
        if placed["service"] is None:
            placed["service"] = placed["deployment"].service
        elif placed["deployment"].service_id != placed["service"].pk:
            raise ValidationFailed(
                "deploymentId: the deployment belongs to another service.", field="deploymentId"
            )
    is_default = definition.get("isDefault", False)
    if not isinstance(is_default, bool):
        raise ValidationFailed("isDefault: must be true or false.", field="isDefault")
    if is_default and (placed["service"] is None or placed["deployment"] is not None):
        raise ValidationFailed(
            "isDefault: only a plan for a whole service can be its default.", field="isDefault"
        )
    placed["is_default"] = is_default
    enabled = definition.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValidationFailed("enabled: must be true or false.", field="enabled")
    placed["enabled"] = enabled
    return placed


def rollback_plan_create(
    *, definition: Any, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> RollbackPlan:
    """A new plan from ``definition``; 400 naming the field for anything it cannot be."""
    spec = rollback_plan_validate(definition=definition)
    plan = RollbackPlan(created_by=actor if getattr(actor, "is_authenticated", False) else None)
    return _save(plan, definition, spec, actor, source, reason, verb="create")


def rollback_plan_update(
    *,
    plan: RollbackPlan,
    definition: Any,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> RollbackPlan:
    """Replace ``plan``'s definition. Executions under way keep the plan they began with."""
    spec = rollback_plan_validate(definition=definition)
    return _save(plan, definition, spec, actor, source, reason, verb="update")


def _save(
    plan: RollbackPlan,
    definition: Mapping[str, Any],
    spec: plans.Plan,
    actor: Any,
    source: str,
    reason: str,
    *,
    verb: str,
) -> RollbackPlan:
    placed = plan_placement(definition)
    plan.name = spec.name
    plan.description = spec.description
    plan.strategy = spec.strategy.value
    plan.definition = dict(definition)
    plan.service = placed["service"]
    plan.deployment = placed["deployment"]
    plan.is_default = placed["is_default"]
    plan.enabled = placed["enabled"]
    plan.updated_at = timezone.now()
    try:
        with (
            transaction.atomic(),
            audit_context(actor=actor, source=source, reason=reason, verb=verb),
        ):
            if plan.is_default:
                # One default per service: naming a new one takes the title from the old
                # (before the check, which would otherwise find two defaults).
                RollbackPlan.objects.filter(service=plan.service, is_default=True).exclude(
                    pk=plan.pk
                ).update(is_default=False)
            full_clean(plan, exclude=["definition"], names={"name": "name"})
            plan.save()
    except IntegrityError:
        raise ValidationFailed(
            f"name: a rollback plan named {plan.name!r} exists already.", field="name"
        ) from None
    return plan


def rollback_plan_delete(
    *, plan: RollbackPlan, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    """Delete ``plan``; refused (409) while one of its executions is under way."""
    if RollbackExecution.objects.filter(plan=plan, state__in=ACTIVE_EXECUTION_STATES).exists():
        raise TransitionNotAllowed(
            f"Rollback plan {plan.name!r} is running a rollback; delete it once that has ended."
        )
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="delete"),
    ):
        plan.delete()


def plans_for(deployments: Sequence[Deployment]) -> dict[int, RollbackPlan | None]:
    """The plan of each deployment (None: the built-in one), in one query for them all."""
    if not deployments:
        return {}
    named = {
        d.pk: d.config.get("rollbackPlan")
        for d in deployments
        if isinstance(d.config, dict) and d.config.get("rollbackPlan")
    }
    candidates = list(
        RollbackPlan.objects.filter(enabled=True).filter(
            _covering(deployments, [name for name in named.values() if isinstance(name, str)])
        )
    )
    by_name = {plan.name: plan for plan in candidates}
    for_deployment = {plan.deployment_id: plan for plan in candidates if plan.deployment_id}
    defaults = {plan.service_id: plan for plan in candidates if plan.is_default}
    found: dict[int, RollbackPlan | None] = {}
    for deployment in deployments:
        name = named.get(deployment.pk)
        found[deployment.pk] = (
            (by_name.get(name) if isinstance(name, str) else None)
            or for_deployment.get(deployment.pk)
            or defaults.get(deployment.service_id)
        )
    return found


def _covering(deployments: Sequence[Deployment], names: list[str]) -> Any:
    from django.db.models import Q

    query = Q(deployment_id__in=[d.pk for d in deployments]) | Q(
        is_default=True, service_id__in={d.service_id for d in deployments}
    )
    if names:
        query |= Q(name__in=names)
    return query
