"""Reads of the routing app: circuit states, probes due, dashboard data, decisions.

The engine's definitions of services come from ``routing.definition`` and their compiled
snapshots, with the routing version, from ``routing.snapshot``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Max, Prefetch, QuerySet
from django.utils import timezone

from canary_site.exceptions import NotFound
from routing.engine import Decision, InvalidRoutingDefinition, RequestContext, decide
from routing.models import (
    ProviderState,
    ProviderSync,
    RoutingRule,
    RuleTarget,
    Service,
    Target,
)
from routing.probes import HealthCheckSettings, parse_health_check
from routing.snapshot import service_snapshot

logger = logging.getLogger(__name__)

BREAKERS_KEY = "routing:breakers"
"""Cache key where proxies publish their circuit breaker states, keyed by proxy id."""

BREAKER_REPORT_MAX_AGE = 30.0
"""Seconds after which a proxy's breaker report is considered stale (the proxy is gone)."""

IN_FLIGHT_KEY = "routing:in_flight"
"""Cache key where proxies publish their requests in flight per target, keyed by proxy id."""

IN_FLIGHT_REPORT_MAX_AGE = 10.0
"""Seconds after which a proxy's in-flight report is stale (the proxy is gone). A running proxy
publishes at least every two seconds, every half second while a draining target it serves has
requests in flight."""


# ---------------------------------------------------------------------------------------------
# The proxies' reports


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


@dataclass(frozen=True, slots=True)
class DrainStatus:
    """Where the drain of one target stands, from the stored drain and the proxies' reports."""

    draining: bool
    since: datetime | None
    in_flight: int  # requests the live proxies have in flight to the target, summed
    proxies: int  # live proxies (those whose report is fresh)
    loaded: int  # of those, how many route with the drain (or do not serve the service at all)
    drained: bool  # draining, every live proxy has loaded it, and none has a request in flight


def drain_status(*, target: Target) -> DrainStatus:
    """Whether ``target`` is draining and whether its requests in flight have all finished."""
    return drain_statuses(targets=[target])[target.pk]


def drain_statuses(*, targets: Iterable[Target]) -> dict[int, DrainStatus]:
    """`drain_status` of each of ``targets`` (with their services loaded), by primary key, from
    one read of the cache.

    A proxy proves it routes with the drain by listing the target among the draining targets of
    its loaded snapshot; until every live proxy does, some may still send the target new
    requests, so it is not drained whatever the counts say. A proxy that does not serve the
    target's service sends it nothing. When no proxy is running at all nothing is in flight,
    so a draining target is drained at once. With the cache out of reach nothing is known:
    ``proxies`` is 0 and ``drained`` False, for the caller's timeout to decide.
    """
    targets = list(targets)
    if not targets:
        return {}
    try:
        reports = _live_reports(cache.get(IN_FLIGHT_KEY) or {}, IN_FLIGHT_REPORT_MAX_AGE)
    except Exception:
        logger.warning(
            "Could not read the proxies' in-flight reports from the cache", exc_info=True
        )
        return {
            target.pk: DrainStatus(
                draining=target.draining_since is not None,
                since=target.draining_since,
                in_flight=0,
                proxies=0,
                loaded=0,
                drained=False,
            )
            for target in targets
        }
    statuses: dict[int, DrainStatus] = {}
    for target in targets:
        service = target.service.name
        in_flight = 0
        loaded = 0
        for report in reports:
            entry = report.get("services", {}).get(service)
            if entry is None:
                loaded += 1
                continue
            in_flight += int(entry.get("in_flight", {}).get(target.name, 0))
            if target.name in entry.get("draining", ()):
                loaded += 1
        draining = target.draining_since is not None
        statuses[target.pk] = DrainStatus(
            draining=draining,
            since=target.draining_since,
            in_flight=in_flight,
            proxies=len(reports),
            loaded=loaded,
            drained=draining and loaded == len(reports) and in_flight == 0,
        )
    return statuses


def _live_reports(reports: Mapping[str, Any], max_age: float) -> list[Mapping[str, Any]]:
    now = time.time()
    return [report for report in reports.values() if now - float(report.get("at", 0)) <= max_age]


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


def halted_services() -> QuerySet[Service]:
    """The services a halt holds (``services.services_halt``), the longest halted first."""
    return Service.objects.exclude(halted_since=None).order_by("halted_since", "name")


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


# ---------------------------------------------------------------------------------------------
# Traffic providers


def provider_syncs_latest(*, service_ids: Iterable[int]) -> dict[int, ProviderSync]:
    """Each service's latest provider sync record, by service id, in one query."""
    latest = (
        ProviderSync.objects.filter(service_id__in=list(service_ids))
        .values("service_id")
        .annotate(latest=Max("id"))
        .values("latest")
    )
    return {sync.service_id: sync for sync in ProviderSync.objects.filter(pk__in=latest)}


def provider_syncs(*, service: Service) -> QuerySet[ProviderSync]:
    """A service's provider sync records, newest first."""
    return ProviderSync.objects.filter(service=service).order_by("-at", "-id")


def provider_state(*, service: Service) -> ProviderState | None:
    return ProviderState.objects.filter(service=service).first()
