"""What a routing change looks like to an approver: the approval gate's view of the rule
services (`canary_site.gates`).

The version is the service's ``routing_version``, which every write to its routing bumps, so a
request is superseded by any change to the service's rules or targets since; the scope is the
service. Weights are a rule's split and a target's own weight (its share of the default route).
The deployments' own rule changes go through their transitions, gated as those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary_site import gates
from canary_site.exceptions import NotFound
from routing.models import RoutingRule, Service, Target

# What a call says besides the rule's fields.
_NOT_FIELDS = frozenset({"service", "rule", "targets", "actor", "source", "reason"})


def _rule(arguments: Mapping[str, Any]) -> RoutingRule:
    rule = arguments.get("rule")
    found = (
        RoutingRule.objects.select_related("service").filter(pk=getattr(rule, "pk", None)).first()
    )
    if found is None:
        raise NotFound(f"There is no routing rule {getattr(rule, 'pk', rule)}.")
    return found


def _weights(rule: RoutingRule) -> dict[str, float]:
    return {
        item.target.name: float(item.weight)
        for item in rule.rule_targets.select_related("target").order_by("pk")
    }


def _change(
    action: str, service: Service, rule: RoutingRule | None, before: Any, after: Any
) -> gates.Change:
    if rule is None:
        kind, pk, shown = "routing.service", service.pk, f"routing of {service.name}"
    else:
        kind, pk = "routing.routingrule", rule.pk
        shown = f"rule {rule.name or rule.pk} of {service.name}"
    return gates.Change(
        action=action,
        object_type=kind,
        object_id=str(pk),
        object_repr=shown,
        version=str(service.routing_version),
        before=gates.plain(before),
        after=gates.plain(after),
        service=service.name,
    )


class RuleCreateDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "routing.rule"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        given = arguments.get("service")
        service = Service.objects.filter(pk=getattr(given, "pk", None)).first()
        if service is None:
            raise NotFound(f"There is no service {getattr(given, 'name', given)}.")
        after = {name: value for name, value in arguments.items() if name not in _NOT_FIELDS}
        after["targets"] = arguments.get("targets")
        return _change("routing.rule", service, None, {}, after)


class RuleUpdateDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "routing.rule"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        rule = _rule(arguments)
        changes = {name: value for name, value in arguments.items() if name not in _NOT_FIELDS}
        before = {name: getattr(rule, name, None) for name in changes}
        if arguments.get("targets") is not None:
            before["targets"] = _weights(rule)
            changes["targets"] = arguments["targets"]
        return _change("routing.rule", rule.service, rule, before, changes)


class RuleDeleteDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "routing.rule"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        rule = _rule(arguments)
        before = {"name": rule.name, "strategy": rule.strategy, "targets": _weights(rule)}
        return _change("routing.rule", rule.service, rule, before, {"deleted": True})


class WeightsDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return "routing.weights"

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        rule = _rule(arguments)
        weights = arguments.get("weights")
        current = _weights(rule)
        after = {**current, **(dict(weights) if isinstance(weights, Mapping) else {})}
        return _change(
            "routing.weights", rule.service, rule, {"weights": current}, {"weights": after}
        )


class TargetWeightDescriber:
    """A target's own weight (its share of the service's default route): creating a target
    with a weight, changing it, or deleting a target that has one. Other target edits are not
    gated."""

    def __init__(self, verb: str) -> None:
        self.verb = verb

    def action(self, arguments: Mapping[str, Any]) -> str | None:
        if self.verb == "create":
            return "routing.weights" if _positive(arguments.get("weight")) else None
        if self.verb == "update":
            return "routing.weights" if "weight" in arguments else None
        target = arguments.get("target")
        return "routing.weights" if _positive(getattr(target, "weight", None)) else None

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        if self.verb == "create":
            given = arguments.get("service")
            service = Service.objects.filter(pk=getattr(given, "pk", None)).first()
            if service is None:
                raise NotFound(f"There is no service {getattr(given, 'name', given)}.")
            name = str(arguments.get("name") or "")
            return _change(
                "routing.weights", service, None, {}, {f"{name}.weight": arguments.get("weight")}
            )
        given = arguments.get("target")
        target = Target.objects.select_related("service").filter(pk=getattr(given, "pk", None))
        found = target.first()
        if found is None:
            raise NotFound(f"There is no target {getattr(given, 'name', given)}.")
        before = {f"{found.name}.weight": found.weight}
        after = (
            {f"{found.name}.weight": arguments.get("weight")}
            if self.verb == "update"
            else {f"{found.name}.weight": "deleted"}
        )
        return _change("routing.weights", found.service, None, before, after)


def _positive(value: Any) -> bool:
    try:
        return float(value or 0) > 0
    except (TypeError, ValueError):
        # The service refuses a weight that is not a number; the gate lets it say so.
        return False


rule_create = RuleCreateDescriber()
rule_update = RuleUpdateDescriber()
rule_delete = RuleDeleteDescriber()
weights = WeightsDescriber()
target_create = TargetWeightDescriber("create")
target_update = TargetWeightDescriber("update")
target_delete = TargetWeightDescriber("delete")
