"""Reads of the kill switch pages: the switches in the list's order (critical first) with
their active activation, what firing one would stop now, what an activation changed with each
row as it is now, and the switches that may kill a flag."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Case, IntegerField, Prefetch, Q, QuerySet, Value, When

from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from flags.choices import FlagStatus
from flags.models import Flag
from rollback import killswitches
from rollback.choices import ActivationState, KillSwitchScope
from rollback.models import KillSwitch, KillSwitchActivation
from routing.models import Service

# The flags that keep serving are listed up to this many; what stops is listed in full.
KEPT_SHOWN = 100


def _priority_rank() -> Case:
    return Case(
        *[
            When(priority=priority.value, then=Value(rank))
            for priority, rank in killswitches.PRIORITY_ORDER.items()
        ],
        default=Value(len(killswitches.PRIORITY_ORDER)),
        output_field=IntegerField(),
    )


def switches() -> QuerySet[KillSwitch]:
    """Every switch, critical first, then by name, with its flags and its active activation."""
    active = KillSwitchActivation.objects.filter(state=ActivationState.ACTIVE).select_related(
        "activated_by"
    )
    return (
        KillSwitch.objects.select_related("service")
        .prefetch_related(
            Prefetch("flags", queryset=Flag.objects.order_by("key")),
            Prefetch("activations", queryset=active, to_attr="active_now"),
        )
        .annotate(rank=_priority_rank())
        .order_by("rank", "name")
    )


def active_of(switch: KillSwitch) -> KillSwitchActivation | None:
    found = getattr(switch, "active_now", None)
    if found is None:
        return switch.activations.filter(state=ActivationState.ACTIVE).first()
    return found[0] if found else None


@dataclass
class Reach:
    """What firing a switch would stop now: the services halted (with the canaries of theirs
    that are running), the running deployments paused or rolled back, the flags killed; and
    what it leaves alone (flags killed already, flags that have not opted in)."""

    scope: str
    action: str
    services: list[Service] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    killed_already: list[Flag] = field(default_factory=list)
    keep_serving: list[Flag] = field(default_factory=list)
    keep_serving_more: int = 0

    def running_of(self, service: Service) -> list[Deployment]:
        return [d for d in self.deployments if d.service_id == service.pk]

    @property
    def services_running(self) -> list[tuple[Service, list[Deployment]]]:
        return [(s, self.running_of(s)) for s in self.services if self.running_of(s)]

    @property
    def services_quiet(self) -> list[Service]:
        return [s for s in self.services if not self.running_of(s)]


def reach(
    *,
    scope: str,
    service: Service | None = None,
    flags: Iterable[Flag] = (),
    action: str = killswitches.DeploymentAction.PAUSE.value,
) -> Reach:
    """What a switch of ``scope`` reaches now, as the activation would find it: a system switch
    every service and every flag with ``kill_switch_enabled``; a service switch its service and
    the flags that allow it linked to the service's deployments; a flag switch its flags."""
    found = Reach(scope=scope, action=action)
    if scope == KillSwitchScope.FLAG:
        candidates = sorted(flags, key=lambda flag: flag.key)
        kept: QuerySet[Flag] = Flag.objects.none()
    elif scope == KillSwitchScope.SERVICE:
        found.services = [service] if service is not None else []
        linked = Flag.objects.filter(deployments__service__in=found.services).distinct()
        candidates = list(linked.filter(kill_switch_enabled=True).order_by("key"))
        kept = linked.filter(kill_switch_enabled=False).order_by("key")
    else:
        found.services = list(Service.objects.order_by("name"))
        candidates = list(Flag.objects.filter(kill_switch_enabled=True).order_by("key"))
        kept = Flag.objects.filter(kill_switch_enabled=False).order_by("key")
    found.flags = [flag for flag in candidates if flag.status != FlagStatus.KILLED]
    found.killed_already = [flag for flag in candidates if flag.status == FlagStatus.KILLED]
    found.keep_serving = list(kept[:KEPT_SHOWN])
    if len(found.keep_serving) == KEPT_SHOWN:
        found.keep_serving_more = kept.count() - KEPT_SHOWN
    if found.services:
        found.deployments = list(
            Deployment.objects.filter(service__in=found.services, status=DeploymentStatus.RUNNING)
            .select_related("service")
            .order_by("service__name", "pk")
        )
    return found


def switch_reach(switch: KillSwitch) -> Reach:
    spec = spec_of(switch)
    action = spec.deployment_action.value if spec else killswitches.DeploymentAction.PAUSE.value
    return reach(
        scope=switch.scope, service=switch.service, flags=switch.flags.all(), action=action
    )


def spec_of(switch: KillSwitch) -> killswitches.KillSwitchSpec | None:
    try:
        return switch.spec
    except killswitches.InvalidKillSwitch:
        return None


@dataclass
class Changed:
    """What one activation changed, with each row as it is now."""

    activation: KillSwitchActivation
    flags: list[tuple[dict[str, Any], Flag | None]] = field(default_factory=list)
    services: list[tuple[int, Service | None]] = field(default_factory=list)
    paused: list[tuple[dict[str, Any], Deployment | None]] = field(default_factory=list)
    rolled_back: list[tuple[int, Deployment | None]] = field(default_factory=list)
    left: list[tuple[int, Deployment | None]] = field(default_factory=list)
    restored: dict[str, Any] = field(default_factory=dict)


def changed(activations: Sequence[KillSwitchActivation]) -> list[Changed]:
    """Each activation's record of what it changed, the flags, services and deployments it
    names read in one query each."""
    flag_ids: set[int] = set()
    service_ids: set[int] = set()
    deployment_ids: set[int] = set()
    for activation in activations:
        changes = activation.changes or {}
        flag_ids.update(int(item["id"]) for item in changes.get("flags", []))
        service_ids.update(int(pk) for pk in changes.get("services", []))
        deployment_ids.update(int(item["id"]) for item in changes.get("paused", []))
        deployment_ids.update(int(pk) for pk in changes.get("rolledBack", []))
        deployment_ids.update(int(pk) for pk in changes.get("leftForTheWatch", []))
    flags = Flag.objects.in_bulk(flag_ids)
    services_by_id = Service.objects.in_bulk(service_ids)
    deployments = Deployment.objects.select_related("service").in_bulk(deployment_ids)
    result = []
    for activation in activations:
        changes = activation.changes or {}
        result.append(
            Changed(
                activation=activation,
                flags=[(item, flags.get(int(item["id"]))) for item in changes.get("flags", [])],
                services=[
                    (int(pk), services_by_id.get(int(pk))) for pk in changes.get("services", [])
                ],
                paused=[
                    (item, deployments.get(int(item["id"]))) for item in changes.get("paused", [])
                ],
                rolled_back=[
                    (int(pk), deployments.get(int(pk))) for pk in changes.get("rolledBack", [])
                ],
                left=[
                    (int(pk), deployments.get(int(pk))) for pk in changes.get("leftForTheWatch", [])
                ],
                restored=changes.get("restored") or {},
            )
        )
    return result


def missing_targets(spec: killswitches.KillSwitchSpec) -> list[tuple[str, str]]:
    """(path, message) for the service or flags a switch names that do not exist (its save
    refuses them too), so an editor can say so before saving."""
    if (
        spec.scope == killswitches.Scope.SERVICE
        and not Service.objects.filter(name=spec.service).exists()
    ):
        return [("targetComponent", f"there is no service named {spec.service!r}.")]
    if spec.scope == killswitches.Scope.FLAG:
        known = set(Flag.objects.filter(key__in=spec.flags).values_list("key", flat=True))
        missing = [key for key in spec.flags if key not in known]
        if missing:
            return [("flags", f"there is no flag {', '.join(map(repr, missing))}.")]
    return []


def covering(flag: Flag) -> list[dict[str, Any]]:
    """The switches that would kill ``flag`` if they fired, critical first: flag switches that
    list it; and, when the flag allows it (``kill_switch_enabled``), every system switch and
    every service switch of a service whose deployments it is linked to. Each with its active
    activation, and whether that activation killed this flag."""
    covers = Q(scope=KillSwitchScope.FLAG, flags=flag)
    if flag.kill_switch_enabled:
        covers |= Q(scope=KillSwitchScope.SYSTEM) | Q(
            scope=KillSwitchScope.SERVICE, service__deployments__flags=flag
        )
    rows = []
    for switch in switches().filter(pk__in=KillSwitch.objects.filter(covers).values("pk")):
        active = active_of(switch)
        killed = active is not None and any(
            int(item.get("id", 0)) == flag.pk for item in (active.changes or {}).get("flags", [])
        )
        rows.append({"switch": switch, "active": active, "killed_it": killed})
    return rows
