"""Writes of the routing app: plain keyword-only functions named <entity>_<action>.

Every write is validated by compiling the service's whole routing definition with the proposed
change through ``routing.engine.build_service_snapshot`` (a bad rule never saves), is recorded on
the audit trail with its actor, source and reason, and bumps the routing version: the service's
``routing_version`` column inside the transaction and the shared cache token after commit, both
of which the proxies poll (``routing.snapshot.ROUTING_VERSION``). The definition a write
compiles is the stored one (``routing.definition``) with the change applied.

The rule writes and a target's weight are ``@gates.gated`` (``routing.gating`` describes them):
a change an approval policy covers opens an approval request instead (``canary_site.gates``).
"""

from __future__ import annotations

import copy
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import F, ProtectedError
from django.utils import timezone

from canary_site import gates
from canary_site.audit import audit_context, audit_updates
from canary_site.bulk import write_rows
from canary_site.choices import Source
from canary_site.exceptions import NotFound, TransitionNotAllowed, ValidationFailed, full_clean
from routing import gating, probes, selectors
from routing.choices import ProviderKind, Strategy
from routing.definition import (
    engine_rule,
    engine_target,
    rename_target,
    service_definitions,
    stored_definition,
)
from routing.engine import InvalidRoutingDefinition, build_service_snapshot
from routing.models import RoutingRule, RuleTarget, Service, Target
from routing.providers.config import InvalidProviderConfig, parse_provider_config
from routing.providers.sync import providers_apply_after_commit
from routing.snapshot import version_changed

logger = logging.getLogger(__name__)

_UNSET: Any = object()
_RULE_PATH = re.compile(r"^rules\[(\d+)\]")
_TARGET_PATH = re.compile(r"^targets\[(\d+)\]")
_HUNDRED = Decimal("100")
_SERVICE_FIELDS = frozenset(
    {"name", "stable_version", "description", "provider", "provider_config"}
)
# What a target's writes may set, in the order the admin and the API show them.
TARGET_FIELDS = ("name", "endpoint", "version", "weight", "healthy", "metadata", "health_check")
_TARGET_FIELDS = frozenset(TARGET_FIELDS)
# What a rule's writes may set besides its targets: its scalars, then its JSON-valued sections.
RULE_SECTIONS = (
    "conditions",
    "affinity",
    "failover",
    "circuit_breaker",
    "rate_limit",
    "health_check",
)
RULE_FIELDS = ("name", "priority", "enabled", "strategy", "strategy_key", *RULE_SECTIONS)
_RULE_FIELDS = frozenset(RULE_FIELDS)


# ---------------------------------------------------------------------------------------------
# Routing version


def routing_version_bump(*, service_ids: Iterable[int]) -> None:
    """Mark the services' routing as changed: their column now, the shared token after commit.

    The columns are the routing version's database part; the cache's token moves only once the
    transaction has committed (best effort: a cache outage delays proxies' reloads to the
    database interval but never turns a saved change into an error).
    """
    ids = list(service_ids)
    if ids:
        Service.objects.filter(pk__in=ids).update(routing_version=F("routing_version") + 1)
        # Every change of weights reaches external data planes (HAProxy, nginx) from here.
        providers_apply_after_commit(service_ids=ids)
    version_changed()


# ---------------------------------------------------------------------------------------------
# Validation through the engine


def _check_definition(
    data: dict[str, Any], *, rule_index: int | None = None, target_index: int | None = None
) -> None:
    """Compile ``data``; an error in the element being written names its own field
    (``targets[1].weight``, ``affinity.ttl_s``), an error elsewhere names the rule or target it
    broke."""
    try:
        build_service_snapshot(data)
    except InvalidRoutingDefinition as error:
        raise _as_validation_failed(error, data, rule_index, target_index) from None


def _as_validation_failed(
    error: InvalidRoutingDefinition,
    data: dict[str, Any],
    rule_index: int | None,
    target_index: int | None,
) -> ValidationFailed:
    path = error.field
    rule_match = _RULE_PATH.match(path)
    target_match = _TARGET_PATH.match(path)
    if rule_match and rule_index is not None and int(rule_match.group(1)) == rule_index:
        field = path[rule_match.end() :].lstrip(".") or "non_field_errors"
    elif target_match and target_index is not None and int(target_match.group(1)) == target_index:
        field = path[target_match.end() :].lstrip(".") or "non_field_errors"
    elif rule_match:
        rule = data["rules"][int(rule_match.group(1))]
        inner = path[rule_match.end() :].lstrip(".")
        message = f"This change would break rule {rule['id']}: {inner or 'rule'} {error.message}."
        return ValidationFailed(message, field="non_field_errors")
    else:
        field = path or "non_field_errors"
    if field == "non_field_errors":
        return ValidationFailed(error.message[:1].upper() + error.message[1:] + ".", field=field)
    return ValidationFailed(f"{field}: {error.message}.", field=field)


def _percent(value: Any, field: str) -> Decimal:
    """A percentage of 0 to 100 with at most two decimals."""
    if isinstance(value, bool):
        raise ValidationFailed(f"{field}: must be a number from 0 to 100.", field=field)
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationFailed(f"{field}: must be a number from 0 to 100.", field=field) from None
    if not number.is_finite() or not 0 <= number <= _HUNDRED:
        raise ValidationFailed(f"{field}: must be a number from 0 to 100.", field=field)
    if number != number.quantize(Decimal("0.01")):
        raise ValidationFailed(f"{field}: has at most two decimals.", field=field)
    return number.quantize(Decimal("0.01"))


def _json_section(value: Any, field: str, *, kind: type) -> Any:
    if value is None and kind is dict:
        return None
    if not isinstance(value, kind):
        shape = "an object or null" if kind is dict else "a list"
        raise ValidationFailed(f"{field}: must be {shape}.", field=field)
    return value


# ---------------------------------------------------------------------------------------------
# Services


def service_create(
    *,
    name: str,
    stable_version: str,
    description: str = "",
    provider: str = ProviderKind.BUILTIN,
    provider_config: dict[str, Any] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Service:
    service = Service(
        name=name,
        stable_version=stable_version,
        description=description or "",
        provider=provider,
        provider_config=provider_config if provider_config is not None else {},
    )
    full_clean(service, exclude=["routing_version"])
    provider_config_check(service=service)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        service.save()
        routing_version_bump(service_ids=[service.pk])
    service.refresh_from_db(fields=["routing_version"])
    return service


def service_update(
    *,
    service: Service,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    **changes: Any,
) -> Service:
    """Change ``name``, ``stable_version``, ``description``, ``provider`` or
    ``provider_config`` (the data plane that serves it and its settings; a provider given
    without settings starts from none)."""
    _check_names(changes, _SERVICE_FIELDS)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        service = Service.objects.select_for_update().get(pk=service.pk)
        new_provider = changes.get("provider", service.provider)
        if "provider_config" not in changes and new_provider != service.provider:
            changes["provider_config"] = {}
        for field, value in changes.items():
            setattr(service, field, value)
        if service.provider_config is None:
            service.provider_config = {}
        full_clean(service, exclude=["routing_version"])
        provider_config_check(service=service)
        # The stable version decides the canary-first layout and the default route.
        _check_definition(stored_definition(service))
        service.save()
        routing_version_bump(service_ids=[service.pk])
    service.refresh_from_db(fields=["routing_version"])
    return service


def provider_config_check(*, service: Service) -> None:
    """Raise ValidationFailed naming the field (``provider_config.runtimeApi``) when the
    service's provider settings, as assigned, cannot be used. Writes nothing."""
    try:
        parse_provider_config(service.provider, service.provider_config)
    except InvalidProviderConfig as error:
        raise ValidationFailed(f"{error.field}: {error.message}.", field=error.field) from None


@dataclass(frozen=True)
class StableVersionChange:
    """One service's new stable version for `services_set_stable_version`; ``reason`` replaces
    the call's reason on the service's audit entry."""

    service_id: int
    stable_version: str
    reason: str = ""


def services_set_stable_version(
    *,
    changes: Sequence[StableVersionChange],
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> dict[int, Service]:
    """`service_update` of ``stable_version`` for many services in one transaction (the
    deployments that succeed in one tick), in a number of queries that does not grow with
    them: the services locked in one statement, each compiled with its new version, the rows,
    the audit entries and the routing versions written in one statement each. A version that
    is not valid, or that would break a service's routing, raises `ValidationFailed` and
    nothing is written. Returns the services by id."""
    if not changes:
        return {}
    ids = list(dict.fromkeys(change.service_id for change in changes))
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        services = {
            service.pk: service
            for service in Service.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        }
        missing = [service_id for service_id in ids if service_id not in services]
        if missing:
            raise ValidationFailed(f"services: there is no service {missing[0]}.", field="services")
        data = service_definitions(Service.objects.filter(pk__in=ids))
        # Only the version changes: its own validators run, not the name's uniqueness query.
        others = [field.name for field in Service._meta.fields if field.name != "stable_version"]
        now = timezone.now()
        audited: list[tuple[Any, Any, Mapping[str, str]]] = []
        changed: dict[int, Service] = {}
        for change in changes:
            service = services[change.service_id]
            if service.stable_version == change.stable_version:
                continue
            old = copy.copy(service)
            service.stable_version = change.stable_version
            service.updated_at = now
            full_clean(service, exclude=others)
            audited.append((old, service, {"reason": change.reason} if change.reason else {}))
            data[service.name]["stable_version"] = service.stable_version
            changed[service.pk] = service
        for service in changed.values():
            # The stable version decides the canary-first layout and the default route.
            try:
                build_service_snapshot(data[service.name])
            except InvalidRoutingDefinition as error:
                raise ValidationFailed(
                    f"Service {service.name}: this change would break its routing: "
                    f"{error.field} {error.message}.",
                    field="stable_version",
                ) from None
        if changed:
            write_rows(Service, list(changed.values()), ["stable_version", "updated_at"])
            audit_updates(audited)
            routing_version_bump(service_ids=list(changed))
            for service in changed.values():
                service.routing_version += 1
    return services


def service_delete(
    *, service: Service, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    try:
        with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
            # Rules go first: their target links protect the targets from deletion.
            for rule in RoutingRule.objects.filter(service=service):
                rule.delete()
            service.delete()
            routing_version_bump(service_ids=[])
    except ProtectedError as error:
        # Records of other apps (deployments) keep the service; nothing was deleted.
        raise TransitionNotAllowed(
            f"Service '{service.name}' is still referred to by "
            f"{len(error.protected_objects)} record(s), such as deployments; "
            "delete those first.",
            code="in_use",
        ) from None


# ---------------------------------------------------------------------------------------------
# Halts

HOLDER_MAX_LENGTH = 100
REASON_MAX_LENGTH = 500
_HALT_FIELDS = ["halted_by", "halted_since", "halted_reason", "updated_at"]
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def services_halt(
    *,
    services: Sequence[Service],
    holder: str,
    reason: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    now: datetime | None = None,
) -> list[Service]:
    """Halt ``services`` for ``holder``: every request of a halted service takes the default
    route to its stable version's targets, whatever its rules say, once each proxy has reloaded
    (within its poll interval, or the routing version's database interval with the cache down).
    No rule or weight is written, so `services_release` restores exactly the earlier routing.

    ``holder`` names who holds the halt (a kill switch's activation); a service stays halted
    while any holder remains, and halting it again for the same holder changes nothing. The
    first holder's ``reason`` and ``now`` are the halt's own; one that joins a halt under way
    is added to ``halted_by`` with its reason on its audit entry. Not gated (an emergency never
    waits for a sign-off), and it locks only the services' rows, in primary-key order, never a
    deployment's, so it does not wait for a tick. Four statements, whatever the number of
    services: the rows locked, written, audited (verb ``halt``) and their routing versions
    bumped. Returns the given services that exist, each now held by ``holder``, by primary key.
    """
    holder = _holder(holder)
    reason = _halt_reason(reason)
    ids = sorted({service.pk for service in services if service.pk is not None})
    if not ids:
        return []
    now = now or timezone.now()
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="halt"),
    ):
        locked = _locked_services(Service.objects.filter(pk__in=ids))
        audited: list[tuple[Any, Any, Mapping[str, str]]] = []
        changed: list[Service] = []
        for service in locked:
            holders = list(service.halted_by or [])
            if holder in holders:
                continue
            old = copy.copy(service)
            if not holders:
                service.halted_since = now
                service.halted_reason = reason
            service.halted_by = [*holders, holder]
            service.updated_at = now
            full_clean(service, exclude=_OTHER_THAN_HALT)
            audited.append((old, service, {}))
            changed.append(service)
        _write_halts(changed, audited)
    return locked


def services_release(
    *,
    services: Sequence[Service] | None = None,
    holder: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    now: datetime | None = None,
) -> list[Service]:
    """Lift ``holder``'s halt of ``services`` (None: of every service it holds). A service that
    another holder still holds stays halted, with the halt's moment and reason; one left with
    no holder routes by its rules again, exactly as before the halt. Releasing what the holder
    does not hold changes nothing. Locks, statements and audit (verb ``release``) as
    `services_halt`. Returns the services the holder held and now no longer holds, by primary
    key."""
    holder = _holder(holder)
    reason = _halt_reason(reason)
    if services is None:
        # Every halted service, the holder's picked below: a JSON containment lookup has no
        # SQLite form, and halted services are few.
        chosen = Service.objects.exclude(halted_since=None)
    else:
        ids = sorted({service.pk for service in services if service.pk is not None})
        if not ids:
            return []
        chosen = Service.objects.filter(pk__in=ids)
    now = now or timezone.now()
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="release"),
    ):
        audited: list[tuple[Any, Any, Mapping[str, str]]] = []
        changed: list[Service] = []
        for service in _locked_services(chosen):
            holders = list(service.halted_by or [])
            if holder not in holders:
                continue
            old = copy.copy(service)
            service.halted_by = [item for item in holders if item != holder]
            if not service.halted_by:
                service.halted_since = None
                service.halted_reason = ""
            service.updated_at = now
            audited.append((old, service, {}))
            changed.append(service)
        _write_halts(changed, audited)
    return changed


_OTHER_THAN_HALT = [
    field.name for field in Service._meta.fields if field.name not in set(_HALT_FIELDS)
]


def _holder(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > HOLDER_MAX_LENGTH
        or _CONTROL_CHARACTERS.search(value)
    ):
        raise ValidationFailed(
            f"holder: names who holds the halt in 1 to {HOLDER_MAX_LENGTH} characters, "
            "without control characters.",
            field="holder",
        )
    return value


def _halt_reason(value: Any) -> str:
    """The reason as stored: an emergency is never refused for its wording, so control
    characters (which the engine refuses in anything it explains) become spaces and a long
    reason is cut to the column."""
    text = " ".join(_CONTROL_CHARACTERS.sub(" ", str(value or "")).split())
    return text[:REASON_MAX_LENGTH]


def _locked_services(query: Any) -> list[Service]:
    """The services' rows locked in primary-key order, so that two halts (or a halt and a
    service write) cannot deadlock. ``no_key``: a row another transaction has merely referred
    to (a new deployment of the service) does not make the halt wait."""
    return list(query.select_for_update(no_key=True).order_by("pk"))


def _write_halts(changed: list[Service], audited: list[tuple[Any, Any, Mapping[str, str]]]) -> None:
    if not changed:
        return
    write_rows(Service, changed, _HALT_FIELDS)
    audit_updates(audited)
    routing_version_bump(service_ids=[service.pk for service in changed])
    for service in changed:
        service.routing_version += 1


def _check_names(changes: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValidationFailed(f"{unknown[0]}: cannot be changed here.", field=unknown[0])


# ---------------------------------------------------------------------------------------------
# Targets


@gates.gated(gating.target_create)
def target_create(
    *,
    service: Service,
    name: str,
    endpoint: str,
    version: str,
    weight: Decimal | int | float | str = Decimal("0"),
    healthy: bool = True,
    metadata: dict[str, Any] | None = None,
    health_check: dict[str, Any] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Target:
    target = Target(
        service=service,
        name=name,
        endpoint=endpoint,
        version=version,
        weight=_percent(weight, "weight"),
        healthy=healthy,
        metadata=_json_section(metadata if metadata is not None else {}, "metadata", kind=dict),
        health_check=_health_check(health_check),
    )
    _check_target_name(target)
    full_clean(target)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        data = stored_definition(service)
        data["targets"].append(engine_target(target))
        _check_definition(data, target_index=len(data["targets"]) - 1)
        target.save()
        routing_version_bump(service_ids=[service.pk])
    return target


def _check_target_name(target: Target) -> None:
    # The model's constraint would report this against no field; the name is the one at fault.
    taken = Target.objects.filter(service_id=target.service_id, name=target.name)
    if target.pk is not None:
        taken = taken.exclude(pk=target.pk)
    if taken.exists():
        raise ValidationFailed(
            f"name: service {target.service.name} already has a target named {target.name!r}.",
            field="name",
        )


def _health_check(value: Any, field: str = "health_check") -> dict[str, Any] | None:
    try:
        settings = probes.parse_health_check(value, field=field)
    except InvalidRoutingDefinition as error:
        raise ValidationFailed(f"{error.field}: {error.message}.", field=error.field) from None
    return None if settings is None else settings.to_dict()


@gates.gated(gating.target_update)
def target_update(
    *,
    target: Target,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    **changes: Any,
) -> Target:
    """Change any of ``name``, ``endpoint``, ``version``, ``weight``, ``healthy``, ``metadata``,
    ``health_check``; the change is refused when it would break a rule of the service."""
    _check_names(changes, _TARGET_FIELDS)
    if "weight" in changes:
        changes["weight"] = _percent(changes["weight"], "weight")
    if "health_check" in changes:
        changes["health_check"] = _health_check(changes["health_check"])
    if "metadata" in changes:
        changes["metadata"] = _json_section(changes["metadata"], "metadata", kind=dict) or {}
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        target = Target.objects.select_for_update().select_related("service").get(pk=target.pk)
        old_name = target.name
        for field, value in changes.items():
            setattr(target, field, value)
        _check_target_name(target)
        full_clean(target)
        data = stored_definition(target.service)
        index = next(i for i, item in enumerate(data["targets"]) if item["id"] == old_name)
        data["targets"][index] = engine_target(target)
        if target.name != old_name:
            rename_target(data, old_name, target.name)
        _check_definition(data, target_index=index)
        target.save()
        routing_version_bump(service_ids=[target.service_id])
    return target


@gates.gated(gating.target_delete)
def target_delete(
    *, target: Target, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    used_by = list(
        RoutingRule.objects.filter(rule_targets__target=target).values_list("pk", flat=True)
    )
    if used_by:
        listed = ", ".join(str(pk) for pk in used_by)
        raise TransitionNotAllowed(
            f"Target {target.name} is used by rule {listed}; remove it from the rule first.",
            field="target",
        )
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        data = stored_definition(target.service)
        data["targets"] = [item for item in data["targets"] if item["id"] != target.name]
        _check_definition(data)
        service_id = target.service_id
        target.delete()
        routing_version_bump(service_ids=[service_id])


def target_set_health(
    *,
    target: Target,
    healthy: bool,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Target:
    """Mark a target healthy or unhealthy by hand (probes do the same through their counters)."""
    with (
        transaction.atomic(),
        audit_context(
            actor=actor,
            source=source,
            reason=reason,
            verb="mark_healthy" if healthy else "mark_unhealthy",
        ),
    ):
        target = Target.objects.select_for_update().get(pk=target.pk)
        if target.healthy == healthy:
            return target
        target.healthy = healthy
        target.consecutive_failures = 0
        target.consecutive_successes = 0
        target.save(update_fields=["healthy", "consecutive_failures", "consecutive_successes"])
        routing_version_bump(service_ids=[target.service_id])
    return target


def target_drain_start(
    *,
    target: Target,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Target:
    """Drain ``target``: the proxies send it no new request once they have reloaded (within
    their poll interval), its share going to the other targets of each split as an unhealthy
    target's does, while the requests it has finish; `selectors.drain_status` tells when they
    have. A drain under way keeps its ``draining_since``. Not gated: a rollback drains."""
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="drain"),
    ):
        target = _locked_target(target)
        if target.draining_since is not None:
            return target
        target.draining_since = timezone.now()
        target.save(update_fields=["draining_since", "updated_at"])
        routing_version_bump(service_ids=[target.service_id])
    return target


def target_drain_end(
    *,
    target: Target,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> Target:
    """Put a drained target back in rotation; one that is not draining is left as it is."""
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="undrain"),
    ):
        target = _locked_target(target)
        if target.draining_since is None:
            return target
        target.draining_since = None
        target.save(update_fields=["draining_since", "updated_at"])
        routing_version_bump(service_ids=[target.service_id])
    return target


def _locked_target(target: Target) -> Target:
    locked = Target.objects.select_for_update().filter(pk=target.pk).first()
    if locked is None:
        raise NotFound(f"There is no target {target.pk}.", field="target")
    return locked


# ---------------------------------------------------------------------------------------------
# Rules


@gates.gated(gating.rule_create)
def rule_create(
    *,
    service: Service,
    targets: Mapping[str, Decimal | int | float | str],
    name: str = "",
    priority: int = 100,
    enabled: bool = True,
    strategy: str = Strategy.WEIGHTED,
    strategy_key: str = "",
    conditions: list[dict[str, Any]] | None = None,
    affinity: dict[str, Any] | None = None,
    failover: dict[str, Any] | None = None,
    circuit_breaker: dict[str, Any] | None = None,
    rate_limit: dict[str, Any] | None = None,
    health_check: dict[str, Any] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> RoutingRule:
    """Create a rule. ``targets`` maps target names of the service to percentages, in layout
    order; weighted, header, cookie and query rules need them to sum to 100."""
    rule = RoutingRule(service=service)
    fields = {
        "name": name,
        "priority": priority,
        "enabled": enabled,
        "strategy": strategy,
        "strategy_key": strategy_key,
        "conditions": conditions if conditions is not None else [],
        "affinity": affinity,
        "failover": failover,
        "circuit_breaker": circuit_breaker,
        "rate_limit": rate_limit,
        "health_check": health_check,
    }
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        _assign_rule_fields(rule, fields)
        links = _resolve_targets(service, targets)
        _check_rule(rule, links)
        rule.save()
        _write_links(rule, links)
        routing_version_bump(service_ids=[service.pk])
    return rule


@gates.gated(gating.rule_update)
def rule_update(
    *,
    rule: RoutingRule,
    targets: Mapping[str, Decimal | int | float | str] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    **changes: Any,
) -> RoutingRule:
    """Change any field of a rule; ``targets`` (names to percentages) replaces its targets."""
    _check_names(changes, _RULE_FIELDS)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        rule = RoutingRule.objects.select_for_update().select_related("service").get(pk=rule.pk)
        _assign_rule_fields(rule, changes)
        if targets is None:
            links = [
                (item.target, item.weight) for item in rule.rule_targets.select_related("target")
            ]
        else:
            links = _resolve_targets(rule.service, targets)
        _check_rule(rule, links)
        rule.save()
        _write_links(rule, links)
        routing_version_bump(service_ids=[rule.service_id])
    return rule


@gates.gated(gating.weights)
def rule_set_weights(
    *,
    rule: RoutingRule,
    weights: Mapping[str, Decimal | int | float | str],
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> RoutingRule:
    """Set the split of a rule in one write: ``weights`` maps target names of the rule to
    percentages; targets left out keep theirs. The result must still compile (weights of a
    weighted rule sum to 100)."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValidationFailed("weights: name at least one target of the rule.", field="weights")
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="set_weights"),
    ):
        rule = RoutingRule.objects.select_for_update().select_related("service").get(pk=rule.pk)
        current = list(rule.rule_targets.select_related("target"))
        by_name = {item.target.name: item for item in current}
        new_weights: dict[str, Decimal] = {}
        for name, value in weights.items():
            field = f"weights.{name}"
            if name not in by_name:
                raise ValidationFailed(f"{field}: is not a target of this rule.", field=field)
            new_weights[name] = _percent(value, field)
        links = [(item.target, new_weights.get(item.target.name, item.weight)) for item in current]
        try:
            _check_rule(rule, links)
        except ValidationFailed as error:
            # The caller sent weights, not targets: say so in the field it knows.
            if "targets" in error.fields:
                raise ValidationFailed(
                    error.message.replace("targets:", "weights:", 1),
                    fields={"weights": error.fields["targets"]},
                ) from None
            raise
        for item in current:
            weight = new_weights.get(item.target.name)
            if weight is not None and weight != item.weight:
                item.weight = weight
                item.save(update_fields=["weight"])
        rule.save(update_fields=["updated_at"])
        routing_version_bump(service_ids=[rule.service_id])
    return rule


@dataclass(frozen=True)
class RuleChange:
    """One rule's change for `rules_update_many`: ``weights`` maps target names of the rule to
    percentages (targets left out keep theirs), ``enabled`` turns it on or off (None: as it
    is), ``reason`` replaces the call's reason on this rule's audit entries."""

    rule_id: int
    weights: Mapping[str, Decimal | int | float | str] | None = None
    enabled: bool | None = None
    reason: str = ""


def rules_update_many(
    *,
    changes: Sequence[RuleChange],
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> dict[int, RoutingRule]:
    """`rule_set_weights` (and enabling or disabling) for many rules in one transaction, in a
    number of queries that does not grow with them: the rules locked in one statement, each
    service compiled once with all of its changes, the target rows, the rules, the audit
    entries and the routing versions written in one statement each. A change that names a
    target outside its rule, or that would not compile, raises `ValidationFailed` naming the
    rule, and nothing is written. Returns the rules by id."""
    if not changes:
        return {}
    ids = list(dict.fromkeys(change.rule_id for change in changes))
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="set_weights"),
    ):
        rules = {
            rule.pk: rule
            for rule in RoutingRule.objects.select_for_update(of=("self",))
            .select_related("service")
            .filter(pk__in=ids)
            .order_by("pk")
        }
        missing = [rule_id for rule_id in ids if rule_id not in rules]
        if missing:
            raise ValidationFailed(f"rules: there is no rule {missing[0]}.", field="rules")
        items: dict[int, list[RuleTarget]] = defaultdict(list)
        for item in (
            RuleTarget.objects.filter(rule_id__in=ids)
            .select_related("target")
            .order_by("position", "id")
        ):
            items[item.rule_id].append(item)
        services = {rule.service_id: rule.service for rule in rules.values()}
        data = service_definitions(Service.objects.filter(pk__in=services))
        audited: list[tuple[Any, Any, Mapping[str, str]]] = []
        changed_items: list[RuleTarget] = []
        switched: dict[bool, list[int]] = {True: [], False: []}
        for change in changes:
            rule = rules[change.rule_id]
            attribution = {"reason": change.reason} if change.reason else {}
            by_name = {item.target.name: item for item in items[rule.pk]}
            for name, value in (change.weights or {}).items():
                field = f"weights.{name}"
                item = by_name.get(name)
                if item is None:
                    raise ValidationFailed(
                        f"{field}: is not a target of rule {rule.pk}.", field=field
                    )
                weight = _percent(value, field)
                if weight != item.weight:
                    audited.append((copy.copy(item), item, attribution))
                    item.weight = weight
                    changed_items.append(item)
            if change.enabled is not None and change.enabled != rule.enabled:
                audited.append((copy.copy(rule), rule, attribution))
                rule.enabled = change.enabled
                switched[change.enabled].append(rule.pk)
        for rule in rules.values():
            definition = data[services[rule.service_id].name]
            names = {item.target_id: item.target.name for item in items[rule.pk]}
            index = next(i for i, row in enumerate(definition["rules"]) if row["id"] == rule.pk)
            definition["rules"][index] = engine_rule(rule, items[rule.pk], names)
        for service in services.values():
            try:
                build_service_snapshot(data[service.name])
            except InvalidRoutingDefinition as error:
                raise ValidationFailed(
                    f"Service {service.name}: this change would break its routing: "
                    f"{error.field} {error.message}.",
                    field="rules",
                ) from None
        if changed_items:
            write_rows(RuleTarget, changed_items, ["weight"])
        now = timezone.now()
        for enabled, rule_ids in switched.items():
            if rule_ids:
                RoutingRule.objects.filter(pk__in=rule_ids).update(enabled=enabled)
        RoutingRule.objects.filter(pk__in=ids).update(updated_at=now)
        for rule in rules.values():
            rule.updated_at = now
        audit_updates(audited)
        routing_version_bump(service_ids=list(services))
    return rules


@gates.gated(gating.rule_delete)
def rule_delete(
    *, rule: RoutingRule, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        data = stored_definition(rule.service)
        data["rules"] = [item for item in data["rules"] if item["id"] != rule.pk]
        _check_definition(data)
        service_id = rule.service_id
        rule.delete()
        routing_version_bump(service_ids=[service_id])


def _assign_rule_fields(rule: RoutingRule, fields: Mapping[str, Any]) -> None:
    for field, value in fields.items():
        if field == "conditions":
            value = _json_section(value, field, kind=list)
        elif field in ("affinity", "failover", "circuit_breaker", "rate_limit"):
            value = _json_section(value, field, kind=dict)
        elif field == "health_check":
            value = _health_check(value)
        elif field in ("name", "strategy_key") and value is None:
            value = ""
        setattr(rule, field, value)
    full_clean(rule, exclude=["service"])


def _resolve_targets(service: Service, targets: Mapping[str, Any]) -> list[tuple[Target, Decimal]]:
    if not isinstance(targets, Mapping):
        raise ValidationFailed("targets: must map target names to percentages.", field="targets")
    known = {target.name: target for target in Target.objects.filter(service=service)}
    links: list[tuple[Target, Decimal]] = []
    for position, (name, weight) in enumerate(targets.items()):
        target = known.get(name)
        if target is None:
            field = f"targets[{position}].target"
            raise ValidationFailed(
                f"{field}: service {service.name} has no target named {name!r}.", field=field
            )
        links.append((target, _percent(weight, f"targets[{position}].weight")))
    return links


def _check_rule(rule: RoutingRule, links: list[tuple[Target, Decimal]]) -> None:
    data = stored_definition(rule.service)
    names = {target.pk: target.name for target, _weight in links}
    rule_targets = [
        RuleTarget(target_id=target.pk, weight=weight, position=index)
        for index, (target, weight) in enumerate(links)
    ]
    proposed = engine_rule(rule, rule_targets, names)
    index = next((i for i, item in enumerate(data["rules"]) if item["id"] == rule.pk), None)
    if index is None:
        data["rules"].append(proposed)
        index = len(data["rules"]) - 1
    else:
        data["rules"][index] = proposed
    _check_definition(data, rule_index=index)


def _write_links(rule: RoutingRule, links: list[tuple[Target, Decimal]]) -> None:
    """Update the rule's target rows in place, so the audit trail shows weight diffs rather than
    a delete and a create for every save."""
    existing = {item.target_id: item for item in rule.rule_targets.all()}
    wanted = set()
    for position, (target, weight) in enumerate(links):
        wanted.add(target.pk)
        item = existing.get(target.pk)
        if item is None:
            RuleTarget.objects.create(rule=rule, target=target, weight=weight, position=position)
        elif (item.weight, item.position) != (weight, position):
            item.weight = weight
            item.position = position
            item.save(update_fields=["weight", "position"])
    for target_id, item in existing.items():
        if target_id not in wanted:
            item.delete()


def rule_check(
    *,
    rule: RoutingRule,
    targets: Mapping[str, Decimal | int | float | str] | None = None,
) -> None:
    """Raise ValidationFailed if saving ``rule`` (its fields as assigned, unsaved) with
    ``targets`` (its current ones when None) would not compile. Writes nothing; for forms that
    must show errors before they save."""
    if targets is None and rule.pk is not None:
        links = [(item.target, item.weight) for item in rule.rule_targets.select_related("target")]
    else:
        links = _resolve_targets(rule.service, targets or {})
    _assign_rule_fields(rule, {})
    _check_rule(rule, links)


def target_check(*, target: Target) -> None:
    """Raise ValidationFailed if saving ``target`` as assigned would break its service's
    routing. Writes nothing."""
    _check_target_name(target)
    full_clean(target)
    data = stored_definition(target.service)
    old_name = (
        Target.objects.filter(pk=target.pk).values_list("name", flat=True).first()
        if target.pk
        else None
    )
    if old_name is None:
        data["targets"].append(engine_target(target))
        index = len(data["targets"]) - 1
    else:
        index = next(i for i, item in enumerate(data["targets"]) if item["id"] == old_name)
        data["targets"][index] = engine_target(target)
        if target.name != old_name:
            rename_target(data, old_name, target.name)
    _check_definition(data, target_index=index)


# ---------------------------------------------------------------------------------------------
# Active health checks


@dataclass(frozen=True, slots=True)
class ProbeSummary:
    probed: int
    failed: int
    marked_healthy: list[str]
    marked_unhealthy: list[str]


def targets_probe_due(*, now: datetime | None = None) -> ProbeSummary:
    """Probe every target whose check is due, with real HTTP, and record each outcome.

    Running it twice in a row is harmless: the second run finds nothing due.
    """
    due = selectors.targets_due_for_probe(now=now)
    requests = [
        probes.ProbeRequest(
            key=target.pk, url=probes.probe_url(target.endpoint, settings.path), settings=settings
        )
        for target, settings in due
    ]
    settings_by_pk = {target.pk: settings for target, settings in due}
    results = probes.run_probes(requests)
    healthy: list[str] = []
    unhealthy: list[str] = []
    for result in results:
        change = target_record_probe(
            target_id=result.key,
            ok=result.ok,
            detail=result.detail,
            settings=settings_by_pk[result.key],
        )
        if change is True:
            healthy.append(str(result.key))
        elif change is False:
            unhealthy.append(str(result.key))
    return ProbeSummary(
        probed=len(results),
        failed=sum(1 for result in results if not result.ok),
        marked_healthy=healthy,
        marked_unhealthy=unhealthy,
    )


def target_record_probe(
    *,
    target_id: int,
    ok: bool,
    detail: str,
    settings: probes.HealthCheckSettings,
    now: datetime | None = None,
) -> bool | None:
    """Count one probe outcome; flip the target's health when a threshold is reached.

    Returns the new health when it changed, else None. Counters are bookkeeping and written
    without an audit entry; a change of health is audited and bumps the routing version.
    """
    now = now or timezone.now()
    with transaction.atomic():
        target = Target.objects.select_for_update().filter(pk=target_id).first()
        if target is None:  # deleted while it was being probed
            return None
        if ok:
            successes, failures = target.consecutive_successes + 1, 0
        else:
            successes, failures = 0, target.consecutive_failures + 1
        Target.objects.filter(pk=target.pk).update(
            consecutive_successes=successes,
            consecutive_failures=failures,
            last_checked_at=now,
            last_check_result=detail[:200],
        )
        flip: bool | None = None
        if target.healthy and failures >= settings.unhealthy_threshold:
            flip = False
        elif not target.healthy and successes >= settings.healthy_threshold:
            flip = True
        if flip is None:
            return None
        count = successes if flip else failures
        outcome = "successful" if flip else "failed"
        with audit_context(
            source=Source.SYSTEM,
            verb="mark_healthy" if flip else "mark_unhealthy",
            reason=f"{count} consecutive {outcome} health checks; last: {detail}",
        ):
            target.healthy = flip
            target.save(update_fields=["healthy", "updated_at"])
        routing_version_bump(service_ids=[target.service_id])
    return flip
