"""The stored form of a service's routing and its translation into the engine's form.

The rows (``routing.models``) hold what ``routing.engine`` reads (its module docstring), with two
differences: weights are percentages, like every other share in Canary (0 to 100 with at most
two decimals), where the engine counts basis points; and a rule links its targets by key, where
the engine names them by id, which is the target's name. This module turns the rows into the
engine's plain-dict definition: for the snapshots the proxies serve (``routing.snapshot``) and
for the services, which compile a service's definition with their change applied before they
save it. Every service's definition costs four queries (services, targets, rules, rule
targets), whatever the number of services, targets and rules. A halted service's definition
says so (``halted``, ``halted_reason``): the engine then routes every request by the default
route, while its rules stay as stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from routing.models import RoutingRule, RuleTarget, Service, Target


def percent_to_basis_points(value: Decimal | int | float | str) -> int:
    """100.00% is 10,000 basis points, the engine's unit."""
    return int((Decimal(str(value)) * 100).to_integral_value())


def engine_target(target: Target) -> dict[str, Any]:
    """A target in the engine's shape; its name is the engine's target id."""
    return {
        "id": target.name,
        "name": target.name,
        "endpoint": target.endpoint,
        "version": target.version,
        "healthy": target.healthy,
        "draining": target.draining_since is not None,
        "weight": percent_to_basis_points(target.weight),
    }


def engine_halt(service: Service) -> dict[str, Any]:
    """A service's halt in the engine's shape: halted while any holder remains, with the reason
    the halt began with (its holders when none was given) for the decision's explanation."""
    holders = list(service.halted_by or [])
    return {
        "halted": bool(holders),
        "halted_reason": (service.halted_reason or ", ".join(map(str, holders))) if holders else "",
    }


def engine_rule(
    rule: RoutingRule, rule_targets: Iterable[RuleTarget], names: dict[int, str]
) -> dict[str, Any]:
    """A rule in the engine's shape. ``names`` maps target primary keys to target names."""
    return {
        # An unsaved rule (being validated) still needs an id unique within the service.
        "id": rule.pk if rule.pk is not None else "new",
        "name": rule.name,
        "priority": rule.priority,
        "enabled": rule.enabled,
        "strategy": rule.strategy,
        "strategy_key": rule.strategy_key or None,
        "conditions": rule.conditions or [],
        "targets": [
            {"id": names[item.target_id], "weight": percent_to_basis_points(item.weight)}
            for item in rule_targets
        ],
        "affinity": rule.affinity,
        "failover": rule.failover,
        "circuit_breaker": rule.circuit_breaker,
        "rate_limit": rule.rate_limit,
    }


def service_definitions(services: QuerySet[Service]) -> dict[str, dict[str, Any]]:
    """The engine's definition of each of ``services``, by service name, in four queries."""
    service_list = list(services)
    ids = [service.pk for service in service_list]
    targets_by_service: dict[int, list[Target]] = defaultdict(list)
    names: dict[int, str] = {}
    for target in Target.objects.filter(service_id__in=ids).order_by("name"):
        targets_by_service[target.service_id].append(target)
        names[target.pk] = target.name
    rules_by_service: dict[int, list[RoutingRule]] = defaultdict(list)
    rule_ids = []
    for rule in RoutingRule.objects.filter(service_id__in=ids).order_by("priority", "id"):
        rules_by_service[rule.service_id].append(rule)
        rule_ids.append(rule.pk)
    targets_by_rule: dict[int, list[RuleTarget]] = defaultdict(list)
    for item in RuleTarget.objects.filter(rule_id__in=rule_ids).order_by("position", "id"):
        targets_by_rule[item.rule_id].append(item)
    return {
        service.name: {
            "name": service.name,
            "stable_version": service.stable_version,
            "version": service.routing_version,
            **engine_halt(service),
            "targets": [engine_target(target) for target in targets_by_service[service.pk]],
            "rules": [
                engine_rule(rule, targets_by_rule[rule.pk], names)
                for rule in rules_by_service[service.pk]
            ],
        }
        for service in service_list
    }


def service_definition(
    *, name: str | None = None, service_id: int | None = None
) -> dict[str, Any] | None:
    """The engine's definition of one service (by name or primary key), or None when there is
    no such service."""
    services = (
        Service.objects.filter(name=name)
        if name is not None
        else Service.objects.filter(pk=service_id)
    )
    return next(iter(service_definitions(services).values()), None)


def all_service_definitions() -> dict[str, dict[str, Any]]:
    """Every service's engine definition, by service name, in four queries."""
    return service_definitions(Service.objects.all())


def stored_definition(service: Service) -> dict[str, Any]:
    """The definition ``service`` has in the database, under its name and stable version as
    assigned (perhaps not saved yet): the base a write applies its change to."""
    # By primary key: a service being renamed is still stored under its old name.
    data = service_definition(service_id=service.pk) if service.pk else None
    if data is None:  # a service being created has no rows yet
        data = {"name": service.name, "stable_version": service.stable_version, "targets": []}
    data["name"] = service.name
    data["stable_version"] = service.stable_version
    data.setdefault("rules", [])
    return data


def rename_target(data: dict[str, Any], old: str, new: str) -> None:
    """Make the rules of ``data`` link a renamed target under its new name.

    Rule links follow a renamed target by key, so they move with it; fallback lists name it and
    are left for the compile to refuse.
    """
    for rule in data["rules"]:
        for item in rule["targets"]:
            if item["id"] == old:
                item["id"] = new
