"""The control loop's side of the traffic providers: every change of a service's weights is
applied to its data plane, and every tick finds and repairs drift and reads the data plane's
counters into the metric store.

- `providers_apply_after_commit`: called where every routing write bumps its services'
  routing version (``services.routing_version_bump``); once the transaction commits it
  enqueues ``tasks.providers_apply`` for those of the services with an external data plane
  (best effort: the beat's sync applies the change at its next tick anyway).
- `providers_apply` (the task): each service's current snapshot applied, unless the data
  plane already took that routing version.
- `providers_sync` (the beat, every tick): for every service with an external data plane, a
  routing version not applied yet (or a failure to retry) is applied; otherwise the data
  plane is observed and, when it differs from what Canary set, repaired (``ProviderSync``
  with ``drift``); then its counters since the last tick go to the metric store under the
  target's service and version, as the built-in proxy's flushes do, so the health judge and
  the deployments tick treat a canary behind HAProxy or nginx as one behind the proxy.

A worker holds a service's data plane under a lease (``ProviderState.lease_until``) while it
talks to it, so two never write one nginx file or HAProxy backend at once; a service another
worker holds is skipped, and the holder looks again after letting go, so a change committed
meanwhile is applied by one of them. A data plane that cannot be reached is a failed
``ProviderSync`` with the reason, tried again after a wait that doubles from the tick period
(``CANARY_PROVIDER_RETRY_SECONDS``) up to five minutes; ``CANARY_PROVIDER_FAILURE_LIMIT`` (5)
failures in a row raise a critical alert through the health app (canary version
``data-plane``), resolved by the next success. Queries do not grow with the services: each
pass reads them, their states and their definitions in a fixed number of statements and
writes its records, states and metrics in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from health import services as health_services
from health.ingest import OutcomeBatchItem
from health.models import HealthPolicy
from routing.choices import ProviderKind, ProviderSyncAction
from routing.definition import service_definitions
from routing.engine import InvalidRoutingDefinition, ServiceSnapshot, build_service_snapshot
from routing.models import ProviderState, ProviderSync, Service
from routing.providers import conf, provider_for
from routing.providers.base import ApplyResult, Observation, ProviderError, plain_split
from routing.providers.config import InvalidProviderConfig, config_key

logger = logging.getLogger(__name__)

ALERT_VERSION = "data-plane"
"""The canary version of a data plane's alert: it concerns the service, not one canary."""

_ROUNDS = 3
_STATE_FIELDS = [
    "lease_until",
    "applied_version",
    "checked_at",
    "last_ok_at",
    "consecutive_failures",
    "retry_at",
    "last_error",
    "alerted",
    "cursor",
]


@dataclass
class SyncReport:
    """What a pass did, by service name."""

    applied: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    requests: int = 0


@dataclass
class _Work:
    """One service's outcome in a pass, written with the others at its end."""

    service: Service
    state: ProviderState
    rows: list[ProviderSync] = field(default_factory=list)
    items: list[OutcomeBatchItem] = field(default_factory=list)
    raise_alert: str = ""
    resolve_alert: bool = False
    applied: int | None = None


def providers_apply_after_commit(*, service_ids: Sequence[int]) -> None:
    """Once the current transaction commits, enqueue `providers_apply` for those of
    ``service_ids`` served by an external data plane. Never raises: the beat's sync catches
    up with a change whose task could not be enqueued."""
    ids = list(service_ids)
    if not ids or not conf.enqueue():
        return

    def enqueue() -> None:
        try:
            external = list(
                Service.objects.filter(pk__in=ids)
                .exclude(provider=ProviderKind.BUILTIN)
                .values_list("pk", flat=True)
            )
            if external:
                from routing import tasks

                tasks.providers_apply.delay(service_ids=external)
        except Exception:  # a broker or database outage must not fail the committed write
            logger.warning("Could not enqueue providers_apply for %s", ids, exc_info=True)

    transaction.on_commit(enqueue)


def providers_apply(*, service_ids: Iterable[int], now: datetime | None = None) -> SyncReport:
    """Apply each service's current weights to its data plane, unless it has them already."""
    return _run(service_ids=list(service_ids), sync=False, now=now)


def providers_sync(*, now: datetime | None = None) -> SyncReport:
    """The beat's pass over every service with an external data plane: apply what is not
    applied, repair drift, read metrics; sync records past their retention are deleted."""
    now = now or timezone.now()
    report = _run(service_ids=None, sync=True, now=now)
    _release_alerts_of_builtin(now)
    ProviderSync.objects.filter(at__lt=now - timedelta(days=conf.retention_days())).delete()
    return report


def _release_alerts_of_builtin(now: datetime) -> None:
    """A service moved back to the built-in proxy has no data plane left to reach: the alert
    its old one raised is resolved."""
    left = list(
        ProviderState.objects.filter(alerted=True, service__provider=ProviderKind.BUILTIN)
        .select_related("service")
        .order_by("pk")
    )
    if not left:
        return
    with transaction.atomic():
        ProviderState.objects.filter(pk__in=[state.pk for state in left]).update(
            alerted=False, consecutive_failures=0, retry_at=None
        )
        for state in left:
            health_services.alerts_resolve_for(
                service=state.service.name,
                canary_version=ALERT_VERSION,
                reason="The service is served by the built-in proxy now.",
                now=now,
            )


def _run(*, service_ids: list[int] | None, sync: bool, now: datetime | None) -> SyncReport:
    report = SyncReport()
    query = Service.objects.exclude(provider=ProviderKind.BUILTIN)
    if service_ids is not None:
        query = query.filter(pk__in=service_ids)
    ids = list(query.order_by("pk").values_list("pk", flat=True))
    if not ids:
        return report
    ProviderState.objects.bulk_create(
        [ProviderState(service_id=pk) for pk in ids], ignore_conflicts=True
    )
    for round_number in range(_ROUNDS):
        moment = now or timezone.now()
        applied = _pass(ids, sync=sync and round_number == 0, now=moment, report=report)
        # A change committed while this pass held the lease may have been skipped by its own
        # task: look once more at what moved since.
        ids = [
            pk
            for pk, version in Service.objects.filter(pk__in=list(applied)).values_list(
                "pk", "routing_version"
            )
            if version != applied[pk]
        ]
        if not ids:
            break
        now = None
    return report


def _claim(ids: list[int], *, now: datetime, backoff: bool) -> dict[int, ProviderState]:
    """The states of ``ids`` that no other worker holds (and, with ``backoff``, whose wait
    after a failure is over), leased to this one."""
    with transaction.atomic():
        query = (
            ProviderState.objects.select_for_update(skip_locked=True)
            .filter(service_id__in=ids)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        )
        if backoff:
            query = query.filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))
        states = {state.service_id: state for state in query.order_by("pk")}
        if states:
            ProviderState.objects.filter(pk__in=list(states)).update(
                lease_until=now + timedelta(seconds=conf.lease_seconds())
            )
    return states


def _pass(ids: list[int], *, sync: bool, now: datetime, report: SyncReport) -> dict[int, int]:
    """One pass over ``ids``; returns the routing version each service's data plane took."""
    states = _claim(ids, now=now, backoff=sync)
    skipped = [pk for pk in ids if pk not in states]
    if skipped:  # held by another worker, or waiting after a failure
        report.skipped += list(
            Service.objects.filter(pk__in=skipped).order_by("pk").values_list("name", flat=True)
        )
    if not states:
        return {}
    try:
        query = Service.objects.filter(pk__in=list(states)).order_by("pk")
        services = list(query)
        definitions = service_definitions(query)  # the evaluated query: its rows read once
        works = [
            _serve(service, states[service.pk], definitions.get(service.name), sync=sync, now=now)
            for service in services
        ]
        _write(works, now=now)
    except BaseException:
        ProviderState.objects.filter(pk__in=list(states)).update(lease_until=None)
        raise
    applied: dict[int, int] = {}
    for work in works:
        name = work.service.name
        if any(not row.ok for row in work.rows):
            report.failed.append(name)
        elif any(row.drift for row in work.rows):
            report.repaired.append(name)
        elif work.rows:
            report.applied.append(name)
        report.requests += sum(item.requests for item in work.items)
        if work.applied is not None:
            applied[work.service.pk] = work.applied
    return applied


def _serve(
    service: Service,
    state: ProviderState,
    definition: dict[str, Any] | None,
    *,
    sync: bool,
    now: datetime,
) -> _Work:
    work = _Work(service=service, state=state)
    provider = provider_for(service.provider)
    state.lease_until = None
    state.checked_at = now
    if provider is None or definition is None:  # back to the built-in proxy, or deleted
        return work
    snapshot: ServiceSnapshot | None = None
    action = ProviderSyncAction.APPLY
    observation: Observation | None = None
    result: ApplyResult | None = None
    try:
        try:
            snapshot = build_service_snapshot(definition)
        except InvalidRoutingDefinition as error:
            raise ProviderError(
                f"the service's routing does not compile ({error.field}: {error.message}), "
                "so nothing was applied"
            ) from None
        behind = state.applied_version != snapshot.version or state.consecutive_failures > 0
        if behind:
            result = provider.apply(service, snapshot)
        elif sync:
            action = ProviderSyncAction.CHECK
            observation = provider.observe(service, snapshot)
            if observation.drift:
                action = ProviderSyncAction.REPAIR
                result = provider.apply(service, snapshot)
    except (ProviderError, InvalidProviderConfig) as error:
        _failed(work, snapshot, action=action, message=_message(error), now=now)
        return work
    _succeeded(work, snapshot, action=action, result=result, observation=observation, now=now)
    if sync:
        # Counters are read after the weights are in place, and kept per data plane: a new
        # runtimeApi, backend or access log starts counting afresh.
        key = config_key(service.provider, service.provider_config)
        cursor = dict(state.cursor or {})
        try:
            reading = provider.metrics(
                service, snapshot, cursor if cursor.pop("of", None) == key else {}
            )
        except (ProviderError, InvalidProviderConfig) as error:
            message = f"its counters could not be read: {_message(error)}"
            _failed(work, snapshot, action=ProviderSyncAction.CHECK, message=message, now=now)
            return work
        state.cursor = {**reading.cursor, "of": key}
        work.items = _items(service, snapshot, reading.outcomes, now)
    return work


def _message(error: Exception) -> str:
    return error.message if isinstance(error, ProviderError) else str(error)


def _succeeded(
    work: _Work,
    snapshot: ServiceSnapshot,
    *,
    action: str,
    result: ApplyResult | None,
    observation: Observation | None,
    now: datetime,
) -> None:
    state = work.state
    work.applied = snapshot.version
    state.applied_version = snapshot.version
    state.last_ok_at = now
    state.retry_at = None
    state.consecutive_failures = 0
    state.last_error = ""
    if state.alerted:
        state.alerted = False
        work.resolve_alert = True
    if result is None:
        return  # a quiet look: everything in place, nothing to record
    drift = observation.drift if observation is not None else ()
    detail = result.detail
    if drift:
        detail = f"Drift: {'; '.join(drift)}. Repaired: {detail}"
    work.rows.append(
        ProviderSync(
            service=work.service,
            at=now,
            provider=work.service.provider,
            action=action,
            ok=True,
            drift=bool(drift),
            routing_version=snapshot.version,
            detail=detail,
            weights=result.weights,
            observed=observation.weights if drift and observation is not None else None,
        )
    )


def _failed(
    work: _Work, snapshot: ServiceSnapshot | None, *, action: str, message: str, now: datetime
) -> None:
    state = work.state
    state.consecutive_failures += 1
    wait = min(
        conf.retry_max_seconds(),
        conf.retry_base_seconds() * 2 ** (state.consecutive_failures - 1),
    )
    state.retry_at = now + timedelta(seconds=wait)
    state.last_error = message[:1000]
    count = state.consecutive_failures
    tail = f" ({count} in a row; tried again in {wait:g} s, or at the next change)"
    if count >= conf.failure_limit() and not state.alerted:
        state.alerted = True
        work.raise_alert = message
    work.resolve_alert = False
    logger.warning("Data plane of %s: %s%s", work.service.name, message, tail)
    work.rows.append(
        ProviderSync(
            service=work.service,
            at=now,
            provider=work.service.provider,
            action=action,
            ok=False,
            routing_version=snapshot.version
            if snapshot is not None
            else work.service.routing_version,
            detail=f"{message}{tail}.",
            weights=plain_split(snapshot).percents() if snapshot is not None else {},
        )
    )


def _items(
    service: Service, snapshot: ServiceSnapshot, outcomes: Iterable[Any], now: datetime
) -> list[OutcomeBatchItem]:
    versions = {target.name: target.version for target in snapshot.targets}
    return [
        OutcomeBatchItem(
            service=service.name,
            version=versions[outcome.target],
            bucket_start=now,
            requests=outcome.requests,
            errors=outcome.errors,
            latency=outcome.latency,
        )
        for outcome in outcomes
        if outcome.target in versions and outcome.requests > 0
    ]


def _write(works: list[_Work], *, now: datetime) -> None:
    rows = [row for work in works for row in work.rows]
    items = [item for work in works for item in work.items]
    with transaction.atomic():
        if rows:
            ProviderSync.objects.bulk_create(rows)
        ProviderState.objects.bulk_update([work.state for work in works], _STATE_FIELDS)
        if items:
            health_services.metrics_record_outcomes(outcomes=items)
        raising = [work for work in works if work.raise_alert]
        policy = _alert_policy() if raising else None
        for work in raising:
            label = ProviderKind(work.service.provider).label
            limit = conf.failure_limit()
            health_services.alert_raise(
                service=work.service.name,
                canary_version=ALERT_VERSION,
                stable_version=work.service.stable_version,
                policy=policy,
                title=f"{work.service.name}: its {label} data plane cannot be reached",
                message=f"{limit} attempts in a row failed to give the data plane its weights; "
                f"the latest: {work.raise_alert}. Until it is reached, it serves whatever "
                "weights it had, rollbacks included.",
                now=now,
            )
        for work in works:
            if work.resolve_alert:
                health_services.alerts_resolve_for(
                    service=work.service.name,
                    canary_version=ALERT_VERSION,
                    reason="The data plane took its weights again.",
                    now=now,
                )


def _alert_policy() -> HealthPolicy | None:
    name = conf.alert_policy_name()
    return HealthPolicy.objects.filter(name=name).first() if name else None
