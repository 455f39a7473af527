"""Reads of the deployments app: lists, the tick's batch, readiness, the pages' panels and the
statistics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, FilteredRelation, Prefetch, Q, QuerySet
from django.utils import timezone

from canary_site.exceptions import NotFound, ValidationFailed
from deployments import conf, observing
from deployments.choices import DeploymentStatus, EventKind, PhaseStatus
from deployments.config import DeploymentConfig, format_duration
from deployments.lifecycle import ACTIVE_STATUSES, TERMINAL_STATUSES, person_actions
from deployments.models import Deployment, DeploymentEvent, Phase
from deployments.validation import ValidationReport, validate
from flags import selectors as flag_selectors
from flags.models import Flag
from health import conf as health_conf
from health import selectors as health_selectors
from health.models import HealthPolicy
from routing import selectors as routing_selectors
from routing.choices import ProviderKind
from routing.models import ProviderSync, Service, Target


def deployments() -> QuerySet[Deployment]:
    """Every deployment, newest first, with what lists show."""
    return Deployment.objects.select_related(
        "service", "health_policy", "created_by"
    ).prefetch_related(Prefetch("phases", queryset=Phase.objects.order_by("order")))


def deployment_get(*, deployment_id: int) -> Deployment:
    deployment = deployments().filter(pk=deployment_id).first()
    if deployment is None:
        raise NotFound(f"There is no deployment {deployment_id}.")
    return deployment


def _columns(
    model: Any, names: set[str] | None = None, *, but: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """The columns ``names`` of ``model`` (every one without ``names``), less those in ``but``."""
    # In the model's own order, which `Model.from_db` expects.
    return tuple(
        f.attname
        for f in model._meta.concrete_fields
        if (names is None or f.attname in names) and f.attname not in but
    )


# What the tick reads of a deployment and of its running phase; the configuration, the
# validation report and the other columns stay in the database.
_TICK_DEPLOYMENT_FIELDS = _columns(
    Deployment,
    {
        "id",
        "service_id",
        "name",
        "status",
        "current_phase",
        "canary_share",
        "traffic_shift_strategy",
        "auto_promote",
        "auto_rollback",
        "max_deployment_time_ms",
        "health_policy_id",
        "stable_version",
        "canary_version",
        "started_at",
        "rollback_runner",
    },
)
# A running phase has not ended.
_TICK_PHASE_FIELDS = _columns(Phase, but=frozenset({"ended_at"}))


def deployments_for_tick(*, ids: Sequence[int] | None = None) -> list[Deployment]:
    """The deployments the tick looks at (running, paused, rolling back), oldest first, in one
    query: each with its service (``service.name``, ``service.halted_since``), the phase it is
    running (``running_phase``: the phase of order ``current_phase``, if that one is running,
    else None) and whether it is the last (``on_last_phase``: no phase follows it).

    A thousand rows are read on every tick, so they come as plain values and become model
    instances holding only these columns (another one is read when first touched); the stored
    configuration and the validation report stay in the database.
    """
    rows = (
        Deployment.objects.filter(status__in=[str(status) for status in ACTIVE_STATUSES])
        .annotate(
            running=FilteredRelation(
                "phases",
                condition=Q(phases__order=F("current_phase"), phases__status=PhaseStatus.RUNNING),
            ),
            following=FilteredRelation("phases", condition=Q(phases__order=F("current_phase") + 1)),
        )
        .order_by("pk")
        .values_list(
            *_TICK_DEPLOYMENT_FIELDS,
            "service__name",
            "service__halted_since",
            "following__id",
            *(f"running__{name}" for name in _TICK_PHASE_FIELDS),
        )
    )
    if ids is not None:
        rows = rows.filter(pk__in=list(ids))
    db = rows.db
    width = len(_TICK_DEPLOYMENT_FIELDS)
    found: list[Deployment] = []
    for row in rows:
        deployment = Deployment.from_db(db, _TICK_DEPLOYMENT_FIELDS, row[:width])
        service_name, halted_since = row[width], row[width + 1]
        following, phase = row[width + 2], row[width + 3 :]
        deployment.service = Service.from_db(
            db, ("id", "name", "halted_since"), (deployment.service_id, service_name, halted_since)
        )
        deployment.on_last_phase = following is None
        deployment.running_phase = (
            None if phase[0] is None else Phase.from_db(db, _TICK_PHASE_FIELDS, phase)
        )
        found.append(deployment)
    return found


def health_policies(*, ids: Iterable[int]) -> dict[int, HealthPolicy]:
    """Policies by id, in one query (many deployments share a few policies)."""
    return health_selectors.policies_by_id(ids=ids)


def events(*, deployment: Deployment) -> QuerySet[DeploymentEvent]:
    """A deployment's timeline, newest first."""
    return deployment.events.select_related("actor").order_by("-at", "-id")


def health_policy_named(name: str) -> HealthPolicy | None:
    return health_selectors.policies().filter(name=name).first()


def policy_choices() -> QuerySet[HealthPolicy]:
    """The health policies a deployment may be judged by: the wizard's choices, and what a
    name or id sent to the API is looked up in."""
    return health_selectors.policies()


def flag_choices() -> QuerySet[Flag]:
    """The flags a deployment may drive: the wizard's choices, and what the API's keys name."""
    return flag_selectors.flags()


def health_policy_for(*, value: str | int | None) -> HealthPolicy | None:
    """The health policy a client names by id or by name (None: the default policy);
    `ValidationFailed` on ``health_policy`` when there is none of that id or name."""
    if value in (None, ""):
        return None
    policies = policy_choices()
    policy = policies.filter(pk=int(value)).first() if str(value).isdigit() else None
    policy = policy or policies.filter(name=value).first()
    if policy is None:
        raise ValidationFailed(
            f"health_policy: there is no health policy {value!r}.", field="health_policy"
        )
    return policy


def flags_for(*, keys: Sequence[str]) -> list[Flag]:
    """The flags of these keys, in their order; `ValidationFailed` on ``linked_flags`` naming
    the first key that is no flag."""
    found = {flag.key: flag for flag in flag_choices().filter(key__in=keys)}
    missing = [key for key in keys if key not in found]
    if missing:
        raise ValidationFailed(
            f"linked_flags: there is no flag {missing[0]!r}.", field="linked_flags"
        )
    return [found[key] for key in keys]


def active_deployment_of(*, service_id: int, exclude: int | None = None) -> Deployment | None:
    rows = Deployment.objects.filter(
        service_id=service_id, status__in=[str(status) for status in ACTIVE_STATUSES]
    )
    if exclude is not None:
        rows = rows.exclude(pk=exclude)
    return rows.first()


def start_problems(deployment: Deployment) -> list[dict[str, str]]:
    """Why a deployment cannot start now, as ``{field, code, message}``; empty when it can.

    The configuration is validated again (settings or context may have changed since it was
    stored), and the service must be ready for it.
    """
    report = configuration_report(deployment.config, context=deployment.validation.get("context"))
    problems = [issue.to_dict() for issue in report.errors]
    service = deployment.service
    if service.halted_since is not None:
        # A kill switch holds the service: nothing of it starts until the switch recovers.
        problems.append(
            {
                "field": "serviceName",
                "code": "service_halted",
                "message": f"Service {service.name} is halted ({service.halted_reason}); no "
                "deployment of it may start until the kill switch is recovered.",
            }
        )
    if service.stable_version != deployment.stable_version:
        problems.append(
            {
                "field": "stableVersion",
                "code": "stable_version_mismatch",
                "message": f"stableVersion is {deployment.stable_version}, but service "
                f"{service.name} runs {service.stable_version} as its stable version.",
            }
        )
    for field_name, target, version, endpoint_key in (
        ("stableVersion", deployment.stable_target, deployment.stable_version, "stableEndpoint"),
        ("canaryVersion", deployment.canary_target, deployment.canary_version, "canaryEndpoint"),
    ):
        if target is None:
            endpoint = deployment.config.get(endpoint_key)
            where = f"at {endpoint}" if endpoint else f"running version {version}"
            problems.append(
                {
                    "field": endpoint_key if endpoint else field_name,
                    "code": "no_target",
                    "message": f"Service {service.name} has no target {where}; add it in "
                    "routing first.",
                }
            )
        elif target.version != version:
            problems.append(
                {
                    "field": endpoint_key,
                    "code": "target_version_mismatch",
                    "message": f"Target {target.name} runs {target.version}, not {version}.",
                }
            )
    other = active_deployment_of(service_id=service.pk, exclude=deployment.pk)
    if other is not None:
        problems.append(
            {
                "field": "serviceName",
                "code": "service_already_deploying",
                "message": f"Service {service.name} has a deployment under way "
                f"({other.name}, {other.get_status_display().lower()}); one at a time.",
            }
        )
    return problems


def configuration_report(
    config: Any, *, context: Mapping[str, Any] | None = None
) -> ValidationReport:
    """The validator's report with this server's timing (tick interval, rollback budget)."""
    return validate(config, context=context, timing=conf.timing())


def deployment_targets(
    service: Service, spec: DeploymentConfig
) -> tuple[Target | None, Target | None]:
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


_FAULT_METRICS = ("requests", "error_rate", "latency_p95")


def fault_starts(
    rollbacks: Sequence[tuple[Deployment, Phase, datetime]],
) -> dict[int, datetime]:
    """When each fault being rolled back began, by deployment: the start of its first bad
    bucket in the phase (`observing.fault_start`), up to the end of the window it was judged
    on, as the metric store shows it; so that the time to a rollback is counted from the
    fault, not from the look that judged it. One query for each window end (one, in a tick)."""
    step = health_conf.bucket_seconds()
    by_end: dict[datetime, list[tuple[Deployment, Phase]]] = defaultdict(list)
    for deployment, phase, end in rollbacks:
        if phase.started_at is not None and end > phase.started_at:
            by_end[end].append((deployment, phase))
    found: dict[int, datetime] = {}
    for end, group in by_end.items():
        # The longest phase sets the span; the others read their own buckets from the same
        # points, which end at the same moment.
        span = max(int((end - phase.started_at).total_seconds()) for _d, phase in group) + step
        series = health_selectors.series_many_services(
            services=sorted({d.service.name for d, _p in group}),
            versions=sorted({v for d, _p in group for v in (d.canary_version, d.stable_version)}),
            metrics=_FAULT_METRICS,
            window_seconds=span,
            now=end,
            step_seconds=step,
        )
        for deployment, phase in group:
            start = _fault_start(deployment, phase, series)
            if start is not None:
                found[deployment.pk] = start
    return found


def _fault_start(
    deployment: Deployment, phase: Phase, series: Mapping[tuple[str, str, str], Any]
) -> datetime | None:
    service = deployment.service.name

    def rows(version: str) -> list[tuple[float, float | None, float | None]]:
        requests, rates, p95 = (
            series[(service, version, metric)].values for metric in _FAULT_METRICS
        )
        return [
            (n or 0.0, rate, latency) for n, rate, latency in zip(requests, rates, p95, strict=True)
        ]

    moments = series[(service, deployment.canary_version, "requests")].timestamps
    canary, stable = rows(deployment.canary_version), rows(deployment.stable_version)
    # Only the phase's own buckets: the first whole one after it began, onwards.
    first = next((i for i, moment in enumerate(moments) if moment >= phase.started_at), None)
    if first is None:
        return None
    index = observing.fault_start(canary[first:], stable[first:])
    return None if index is None else moments[first + index]


# ---------------------------------------------------------------------------- page panels


@dataclass
class CriterionView:
    describe: str
    state: str
    detail: str
    held_ms: int
    remaining_ms: int
    latest: float | None


@dataclass
class PhaseView:
    phase: Phase
    is_current: bool
    elapsed_ms: int = 0
    time_left_ms: int = 0
    earliest_ms: int = 0
    progress_percent: int = 0
    outcome: str = ""
    reason: str = ""
    criteria: list[CriterionView] = field(default_factory=list)
    thresholds: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def time_left(self) -> str:
        return format_duration(self.time_left_ms)

    @property
    def earliest(self) -> str:
        return format_duration(self.earliest_ms)

    @property
    def duration(self) -> str:
        return format_duration(int(self.phase.duration_ms))


def phase_views(deployment: Deployment, *, now: datetime | None = None) -> list[PhaseView]:
    """Every phase with, for the one running, its progress and each criterion's state."""
    now = now or timezone.now()
    views: list[PhaseView] = []
    for phase in deployment.phases.all():
        is_current = phase.order == deployment.current_phase and deployment.is_active
        view = PhaseView(phase=phase, is_current=is_current)
        view.thresholds = list((phase.rollback_thresholds or {}).items())
        judgement = phase.judgement or {}
        if phase.started_at is not None:
            end = phase.ended_at or now
            view.elapsed_ms = max(0, int((end - phase.started_at).total_seconds() * 1000))
            duration = max(1, int(phase.duration_ms))
            view.time_left_ms = max(0, int(phase.duration_ms) - view.elapsed_ms)
            view.progress_percent = min(100, int(100 * view.elapsed_ms / duration))
        if phase.status in (PhaseStatus.PASSED, PhaseStatus.SKIPPED):
            view.progress_percent = 100
        if judgement:
            view.outcome = judgement.get("outcome", "")
            view.reason = judgement.get("reason", "")
            view.earliest_ms = int(judgement.get("earliestAdvanceMs") or 0)
            if is_current and phase.judged_at is not None:
                # The judgement is a few seconds old; its clocks have run on since.
                since = int((now - phase.judged_at).total_seconds() * 1000)
                view.earliest_ms = max(0, view.earliest_ms - since)
        for item in judgement.get("criteria", []):
            latest = item.get("latest") or {}
            view.criteria.append(
                CriterionView(
                    describe=_describe(item),
                    state=item.get("state", ""),
                    detail=item.get("detail", ""),
                    held_ms=int(item.get("heldMs") or 0),
                    remaining_ms=int(item.get("remainingMs") or 0),
                    latest=latest.get("value"),
                )
            )
        if not view.criteria:
            for item in phase.success_criteria or []:
                view.criteria.append(
                    CriterionView(
                        describe=_describe(item),
                        state="pending" if phase.status == PhaseStatus.PENDING else "no_data",
                        detail="",
                        held_ms=0,
                        remaining_ms=int(item.get("durationMs") or 0),
                        latest=None,
                    )
                )
        views.append(view)
    return views


def _describe(item: dict[str, Any]) -> str:
    symbol = {"greater_than": ">", "less_than": "<", "equals": "="}.get(item.get("operator"), "?")
    hold = int(item.get("durationMs") or 0)
    text = f"{item.get('metric')} {symbol} {item.get('threshold')}"
    return f"{text} for {format_duration(hold)}" if hold else text


def progress_percent(deployment: Deployment) -> int:
    """How far along the deployment is: phases done, and the share of the current one run."""
    phases = list(deployment.phases.all())
    if not phases:
        return 0
    if deployment.status == DeploymentStatus.SUCCEEDED:
        return 100
    done = sum(1 for phase in phases if phase.status in (PhaseStatus.PASSED, PhaseStatus.SKIPPED))
    current = next((p for p in phases if p.status == PhaseStatus.RUNNING), None)
    partial = 0.0
    if current is not None and current.started_at is not None and current.duration_ms:
        elapsed = (timezone.now() - current.started_at).total_seconds() * 1000
        partial = min(0.99, elapsed / float(current.duration_ms))
    return int(100 * (done + partial) / len(phases))


def actions_for(deployment: Deployment, user: Any) -> list[str]:
    """The lifecycle actions a person may press now (`lifecycle.person_actions`), for those
    whose role may change deployments."""
    if not user.has_perm("deployments.change_deployment"):
        return []
    return [str(action) for action in person_actions(deployment.status)]


# ---------------------------------------------------------------------------- charts' data


@dataclass
class ShareSeries:
    """The canary's planned share over time, as steps from the timeline."""

    times: list[datetime]
    shares: list[float]


def run_span(deployment: Deployment, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The deployment's run: from its start (its creation, before one) to its end, or now."""
    now = now or timezone.now()
    start = deployment.started_at or deployment.created_at
    end = deployment.finished_at or now
    return start, max(start, min(end, now))


def planned_share(deployment: Deployment, *, now: datetime | None = None) -> ShareSeries:
    """The canary's share as the run set it: from the start to the end (an earlier run's
    steps, before a retry, are not this run's)."""
    start, end = run_span(deployment, now=now)
    times: list[datetime] = []
    shares: list[float] = []
    events = deployment.events.exclude(canary_share=None).filter(at__gte=start, at__lte=end)
    for event in events.order_by("at", "id"):
        times.append(event.at)
        shares.append(float(event.canary_share))
    if times and not deployment.is_terminal:
        times.append(end)
        shares.append(shares[-1])
    return ShareSeries(times, shares)


def chart_window_seconds(deployment: Deployment, *, now: datetime | None = None) -> int:
    """The charts' span: the run, from its start to its end (or now)."""
    start, end = run_span(deployment, now=now)
    span = int((end - start).total_seconds())
    return max(1, min(span, health_selectors.MAX_WINDOW_SECONDS))


def health_series(deployment: Deployment, *, now: datetime | None = None) -> dict[Any, Any]:
    """Canary and stable over the deployment's run only (one query): the steps from the one
    holding its start to the last whole one before its end (or now), so another run's
    traffic, before it or after it, does not show on its charts."""
    metrics = ["requests", "error_rate", "latency_p95"]
    start, end = run_span(deployment, now=now)
    window = chart_window_seconds(deployment, now=now)
    step = health_selectors.series_step(max(window, 60))
    # One step more than the span, so the step holding the start is read, then cut below.
    found = health_selectors.series_many(
        service=deployment.service.name,
        versions=[deployment.canary_version, deployment.stable_version],
        metrics=metrics,
        window_seconds=window + step,
        now=end,
        step_seconds=step,
    )
    width = timedelta(seconds=step)
    for key, series in found.items():
        keep = [i for i, moment in enumerate(series.timestamps) if moment + width > start]
        found[key] = replace(
            series,
            timestamps=[series.timestamps[i] for i in keep],
            values=[series.values[i] for i in keep],
        )
    return found


# ---------------------------------------------------------------------------- statistics


@dataclass
class PhaseStat:
    order: int
    name: str
    runs: int
    average_ms: int
    longest_ms: int

    @property
    def average(self) -> str:
        return format_duration(self.average_ms)

    @property
    def longest(self) -> str:
        return format_duration(self.longest_ms)


@dataclass
class Statistics:
    total: int
    by_status: dict[str, int]
    finished: int
    succeeded: int
    success_rate: float | None
    phase_times: list[PhaseStat]
    breach_to_rollback_ms: list[int]
    mean_breach_to_rollback_ms: int | None
    max_breach_to_rollback_ms: int | None
    mean_duration_ms: int | None

    @property
    def mean_breach_to_rollback(self) -> str:
        if self.mean_breach_to_rollback_ms is None:
            return "—"
        return format_duration(self.mean_breach_to_rollback_ms)

    @property
    def max_breach_to_rollback(self) -> str:
        if self.max_breach_to_rollback_ms is None:
            return "—"
        return format_duration(self.max_breach_to_rollback_ms)

    @property
    def mean_duration(self) -> str:
        if self.mean_duration_ms is None:
            return "—"
        return format_duration(self.mean_duration_ms)


def statistics(*, since: datetime | None = None) -> Statistics:
    """Success rate of finished deployments, time per phase (by position) and the time from a
    fault's first bad bucket to the canary being out of traffic, in four queries."""
    rows = Deployment.objects.all()
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    statuses = list(rows.values_list("status", "started_at", "finished_at"))
    by_status: dict[str, int] = defaultdict(int)
    durations: list[int] = []
    for status, started, finished in statuses:
        by_status[status] += 1
        if started and finished and status == DeploymentStatus.SUCCEEDED:
            durations.append(int((finished - started).total_seconds() * 1000))
    finished = sum(by_status.get(str(status), 0) for status in TERMINAL_STATUSES)
    succeeded = by_status.get(DeploymentStatus.SUCCEEDED, 0)

    per_phase: dict[int, list[int]] = defaultdict(list)
    names: dict[int, str] = {}
    phases = Phase.objects.filter(
        deployment__in=rows, started_at__isnull=False, ended_at__isnull=False
    ).values_list("order", "name", "started_at", "ended_at")
    for order, name, started, ended in phases:
        per_phase[order].append(int((ended - started).total_seconds() * 1000))
        names.setdefault(order, name)
    phase_times = [
        PhaseStat(
            order=order,
            name=names[order],
            runs=len(times),
            average_ms=int(sum(times) / len(times)),
            longest_ms=max(times),
        )
        for order, times in sorted(per_phase.items())
    ]

    delays: list[int] = []
    rollbacks = DeploymentEvent.objects.filter(
        deployment__in=rows, kind=EventKind.ROLLBACK, source="system"
    ).values_list("deployment_id", "at", "evidence")
    finishes = {
        (deployment_id, at)
        for deployment_id, at in DeploymentEvent.objects.filter(
            deployment__in=rows, kind=EventKind.FINISH_ROLLBACK
        ).values_list("deployment_id", "at")
    }
    finished_at: dict[int, list[datetime]] = defaultdict(list)
    for deployment_id, at in finishes:
        finished_at[deployment_id].append(at)
    for deployment_id, at, evidence in rollbacks:
        seen = _breach_time(evidence)
        ends = sorted(moment for moment in finished_at.get(deployment_id, []) if moment >= at)
        if seen is None or not ends:
            continue
        delays.append(max(0, int((ends[0] - seen).total_seconds() * 1000)))
    return Statistics(
        total=len(statuses),
        by_status=dict(by_status),
        finished=finished,
        succeeded=succeeded,
        success_rate=(100.0 * succeeded / finished) if finished else None,
        phase_times=phase_times,
        breach_to_rollback_ms=delays,
        mean_breach_to_rollback_ms=int(sum(delays) / len(delays)) if delays else None,
        max_breach_to_rollback_ms=max(delays) if delays else None,
        mean_duration_ms=int(sum(durations) / len(durations)) if durations else None,
    )


def _breach_time(evidence: Any) -> datetime | None:
    """When the fault began: its first bad bucket, as the tick found it when it rolled back;
    for a rollback recorded without it, when the breaching observation was measured (the end
    of its health window)."""
    if (evidence or {}).get("faultStart"):
        return datetime.fromisoformat(evidence["faultStart"])
    judgement = (evidence or {}).get("judgement") or {}
    moments = [item.get("at") for item in judgement.get("breaches", []) if item.get("at")]
    check = (evidence or {}).get("healthCheck") or {}
    if not moments and check.get("windowEnd"):
        moments = [check["windowEnd"]]
    if not moments:
        return None
    return min(datetime.fromisoformat(moment) for moment in moments)


def provider_sync(deployment: Deployment) -> ProviderSync | None:
    """The latest result of giving the deployment's service's external data plane (HAProxy,
    nginx) its weights; None behind the built-in proxy, or before the first."""
    service = deployment.service
    if service.provider == ProviderKind.BUILTIN:
        return None
    return routing_selectors.provider_syncs_latest(service_ids=[service.pk]).get(service.pk)


def tick_interval() -> str:
    return format_duration(int(conf.tick_seconds() * 1000))
