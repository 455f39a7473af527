"""Reads of the routing app: engine snapshots, the routing version, probes due, dashboard data.

Snapshots are built from four queries whatever the number of services, targets and rules
(services, targets, rules, rule targets), so a proxy reload costs the same for one service or
a thousand.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Prefetch, QuerySet
from django.utils import timezone

from canary_site.conf import setting
from canary_site.exceptions import NotFound
from canary_site.versions import VersionToken
from routing.engine import (
    Decision,
    InvalidRoutingDefinition,
    RequestContext,
    ServiceSnapshot,
    build_service_snapshot,
    decide,
)
from routing.models import RoutingRule, RuleTarget, Service, Target
from routing.probes import HealthCheckSettings, parse_health_check

logger = logging.getLogger(__name__)

ROUTING_VERSION_KEY = "routing:version"
"""Cache key every proxy polls; any change of its value means "reload your snapshots"."""

BREAKERS_KEY = "routing:breakers"
"""Cache key where proxies publish their circuit breaker states, keyed by proxy id."""

BREAKER_REPORT_MAX_AGE = 30.0
"""Seconds after which a proxy's breaker report is considered stale (the proxy is gone)."""


def percent_to_basis_points(value: Decimal | int | float | str) -> int:
    """100.00% is 10,000 basis points, the engine's unit."""
    return int((Decimal(str(value)) * 100).to_integral_value())


def basis_points_to_percent(value: int) -> Decimal:
    return (Decimal(value) / 100).quantize(Decimal("0.01"))


# ---------------------------------------------------------------------------------------------
# Engine snapshots


def target_data(target: Target) -> dict[str, Any]:
    """A target in the engine's shape; its name is the engine's target id."""
    return {
        "id": target.name,
        "name": target.name,
        "endpoint": target.endpoint,
        "version": target.version,
        "healthy": target.healthy,
        "weight": percent_to_basis_points(target.weight),
    }


def rule_data(
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


def _snapshot_data(services: QuerySet[Service]) -> dict[str, dict[str, Any]]:
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
            "targets": [target_data(target) for target in targets_by_service[service.pk]],
            "rules": [
                rule_data(rule, targets_by_rule[rule.pk], names)
                for rule in rules_by_service[service.pk]
            ],
        }
        for service in service_list
    }


def service_snapshot_data(
    *, name: str | None = None, service_id: int | None = None
) -> dict[str, Any] | None:
    """The engine's plain-dict definition of one service (by name or primary key), or None
    when there is no such service."""
    services = (
        Service.objects.filter(name=name)
        if name is not None
        else Service.objects.filter(pk=service_id)
    )
    data = _snapshot_data(services)
    return next(iter(data.values()), None)


def all_snapshot_data() -> dict[str, dict[str, Any]]:
    """Every service's engine definition, by service name, in four queries."""
    return _snapshot_data(Service.objects.all())


def service_snapshot(*, name: str) -> ServiceSnapshot | None:
    data = service_snapshot_data(name=name)
    return None if data is None else build_service_snapshot(data)


def build_snapshots(data: dict[str, dict[str, Any]]) -> dict[str, ServiceSnapshot]:
    """Compile definitions; a service that does not compile is left out and logged, so one bad
    row (written around the services, say by hand in SQL) cannot take every service down."""
    snapshots: dict[str, ServiceSnapshot] = {}
    for name, definition in data.items():
        try:
            snapshots[name] = build_service_snapshot(definition)
        except InvalidRoutingDefinition as error:
            logger.error("Routing for service %s does not compile: %s", name, error)
    return snapshots


def all_snapshots() -> dict[str, ServiceSnapshot]:
    return build_snapshots(all_snapshot_data())


# ---------------------------------------------------------------------------------------------
# Routing version and the proxies' reports


def _database_routing_version() -> str:
    """Every service's id and ``routing_version``, digested: every routing write bumps its
    service's column in its transaction, and creating or deleting a service changes the ids."""
    digest = hashlib.blake2b(digest_size=8)
    for pk, version in Service.objects.order_by("pk").values_list("pk", "routing_version"):
        digest.update(f"{pk}:{version};".encode())
    return digest.hexdigest()


ROUTING_VERSION = VersionToken(
    name="routing",
    cache_key=ROUTING_VERSION_KEY,
    database_version=_database_routing_version,
    database_interval=lambda: float(setting("CANARY_ROUTING_DB_VERSION_SECONDS", 2)),
    log=logger,
)
"""The routing version (:mod:`canary_site.versions`): a token in the cache, replaced after each
routing write commits, and the services' versions in the database, read at most every
``CANARY_ROUTING_DB_VERSION_SECONDS`` (2 s), so proxies reload while the cache is down too."""


def routing_version() -> str:
    """The routing version as one string; any change means "reload your snapshots". Never
    raises: a cache or database outage leaves its part as last read, logged once."""
    return ROUTING_VERSION.read()


@dataclass(frozen=True, slots=True)
class BreakerState:
    service: str
    target: str
    state: str  # closed | open | half_open
    proxies: int  # how many proxies report this state


def circuit_states(*, service: str | None = None) -> list[BreakerState]:
    """Circuit breaker states the running proxies published, worst state first per target.

    Each proxy keeps its own breakers, so one target may be open in one proxy and closed in
    another; the dashboard shows the worst, with how many proxies agree.
    """
    try:
        reports = cache.get(BREAKERS_KEY) or {}
    except Exception:
        logger.warning("Could not read circuit states from the cache", exc_info=True)
        return []
    now = time.time()
    severity = {"open": 2, "half_open": 1, "closed": 0}
    worst: dict[tuple[str, str], list[Any]] = {}
    for report in reports.values():
        if now - float(report.get("at", 0)) > BREAKER_REPORT_MAX_AGE:
            continue
        for service_name, targets in report.get("services", {}).items():
            if service is not None and service_name != service:
                continue
            for target, state in targets.items():
                key = (service_name, target)
                current = worst.get(key)
                if current is None or severity.get(state, 0) > severity.get(current[0], 0):
                    worst[key] = [state, 1]
                elif current[0] == state:
                    current[1] += 1
    return [
        BreakerState(service=key[0], target=key[1], state=value[0], proxies=value[1])
        for key, value in sorted(worst.items())
    ]


# ---------------------------------------------------------------------------------------------
# Active health checks


def effective_health_checks() -> list[tuple[Target, HealthCheckSettings]]:
    """Every target with an enabled check: its own, else that of the first enabled rule (by
    priority) that lists it and has one. Four queries."""
    rules = list(
        RoutingRule.objects.filter(enabled=True)
        .exclude(health_check=None)
        .order_by("priority", "id")
        .prefetch_related(Prefetch("rule_targets", queryset=RuleTarget.objects.only("target_id")))
    )
    from_rules: dict[int, HealthCheckSettings] = {}
    for rule in rules:
        settings = _parsed(rule.health_check, f"rule {rule.pk}")
        if settings is None:
            continue
        for item in rule.rule_targets.all():
            from_rules.setdefault(item.target_id, settings)
    checks: list[tuple[Target, HealthCheckSettings]] = []
    for target in Target.objects.select_related("service").order_by("pk"):
        settings = (
            _parsed(target.health_check, f"target {target.pk}")
            if target.health_check is not None
            else from_rules.get(target.pk)
        )
        if settings is not None and settings.enabled:
            checks.append((target, settings))
    return checks


def _parsed(data: Any, owner: str) -> HealthCheckSettings | None:
    try:
        return parse_health_check(data)
    except InvalidRoutingDefinition as error:
        logger.error("Ignoring the invalid health check of %s: %s", owner, error)
        return None


# Beat ticks are not exact; a target checked a moment less than its interval ago is due anyway,
# or a 10 s interval on a 5 s tick would drift to 15 s.
PROBE_SLACK = timedelta(milliseconds=500)


def targets_due_for_probe(
    *, now: datetime | None = None
) -> list[tuple[Target, HealthCheckSettings]]:
    now = now or timezone.now()
    return [
        (target, settings)
        for target, settings in effective_health_checks()
        if target.last_checked_at is None
        or now - target.last_checked_at + PROBE_SLACK >= timedelta(seconds=settings.interval_s)
    ]


# ---------------------------------------------------------------------------------------------
# Dashboard and API reads


def service_list() -> QuerySet[Service]:
    return (
        Service.objects.annotate(
            target_count=Count("targets", distinct=True), rule_count=Count("rules", distinct=True)
        )
        .prefetch_related(Prefetch("targets", queryset=Target.objects.order_by("version", "name")))
        .order_by("name")
    )


def service_get(*, name: str) -> Service | None:
    return Service.objects.filter(name=name).first()


def target_list() -> QuerySet[Target]:
    return Target.objects.select_related("service")


def rule_list() -> QuerySet[RoutingRule]:
    return RoutingRule.objects.select_related("service").prefetch_related(
        Prefetch("rule_targets", queryset=RuleTarget.objects.select_related("target"))
    )


def rules_for_service(*, service: Service) -> QuerySet[RoutingRule]:
    return rule_list().filter(service=service).order_by("priority", "id")


def outcome_series(
    *,
    service: str,
    versions: Sequence[str],
    window_seconds: int = 600,
    now: datetime | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """Requests per second and error rate (%) per version of ``service`` over the last
    ``window_seconds``, from the metric store the proxies flush their outcomes to:
    ``{version: {"timestamps": [...], "rps": [...], "error_rate": [...]}}``."""
    from health import selectors as health_selectors

    if not versions:
        return {}
    found = health_selectors.series_many(
        service=service,
        versions=list(versions),
        metrics=["throughput", "error_rate"],
        window_seconds=window_seconds,
        now=now,
    )
    return {
        version: {
            "timestamps": list(found[(version, "throughput")].timestamps),
            "rps": list(found[(version, "throughput")].values),
            "error_rate": list(found[(version, "error_rate")].values),
        }
        for version in versions
    }


def decision_for(
    *,
    service: str,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    client_ip: str = "",
) -> Decision:
    """What the engine decides for a described request, from the stored rules.

    Stateless: health flags count, but no proxy's circuit breakers or rate limits do, since
    each proxy keeps its own.
    """
    snapshot = service_snapshot(name=service)
    if snapshot is None:
        raise NotFound(f"No service named {service!r}.", field="service")
    header_pairs = [(str(name), str(value)) for name, value in (headers or {}).items()]
    context = RequestContext.from_http(method, path, header_pairs, client_ip=client_ip)
    if cookies:
        context = replace(context, cookies={**context.cookies, **cookies})
    if query:
        context = replace(context, query={**context.query, **query})
    return decide(snapshot, context)


def decision_summary(decision: Decision) -> dict[str, Any]:
    """A decision as plain data: the decide endpoint's body and the dashboard panel's context."""
    target = decision.target
    rule = decision.rule
    return {
        "service": decision.service.name,
        "routing_version": decision.service.version,
        "target": None
        if target is None
        else {
            "id": target.id,
            "name": target.name,
            "endpoint": target.endpoint,
            "version": target.version,
        },
        "reason": str(decision.reason),
        "rule_id": None if rule is None else rule.id,
        "rule_name": None if rule is None else rule.name,
        "bucket": decision.bucket,
        "sticky_key": decision.sticky_key,
        "key_issued": decision.key_issued,
        "set_cookie": decision.set_cookie_header(),
        "explanation": decision.explain(),
    }
