"""Reads of the rollback app: approvals; a rollback's impact before it runs, the statistics
and history of executions, and the canary's share over one."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max, Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from canary_site.exceptions import NotFound
from deployments import conf as deployments_conf
from deployments.choices import EventKind
from deployments.models import Deployment, DeploymentEvent
from deployments.selectors import ShareSeries
from flags.definition import rollout_percentage
from flags.models import FlagExposure
from health import store
from health.choices import TRAFFIC_METRIC
from rollback import plans
from rollback.choices import (
    ENDED_EXECUTION_STATES,
    ExecutionState,
    RequestState,
    RollbackStrategy,
    RollbackTrigger,
    Verdict,
)
from rollback.models import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    RollbackExecution,
    RollbackPlan,
    RollbackStep,
)
from rollback.services.executions import built_in_steps, cooldown_left
from rollback.services.plans import plans_for


def approval_requests() -> QuerySet[ApprovalRequest]:
    """Every request, newest first, with what a list shows of it."""
    return (
        ApprovalRequest.objects.select_related("requester", "policy")
        .prefetch_related(
            Prefetch("decisions", queryset=ApprovalDecision.objects.select_related("approver"))
        )
        .annotate(
            approval_count=Count("decisions", filter=Q(decisions__verdict=Verdict.APPROVE)),
        )
        .order_by("-created_at", "-id")
    )


def approval_request_get(*, request_id: int) -> ApprovalRequest:
    found = approval_requests().filter(pk=request_id).first()
    if found is None:
        raise NotFound(f"There is no approval request {request_id}.")
    return found


def awaiting(
    user: Any, queryset: QuerySet[ApprovalRequest] | None = None, *, now: datetime | None = None
) -> QuerySet[ApprovalRequest]:
    """The pending requests ``user`` may still decide: open, named among the approvers, not
    their own and not decided by them yet."""
    queryset = approval_requests() if queryset is None else queryset
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    return (
        queryset.filter(
            state=RequestState.PENDING,
            expires_at__gt=now or timezone.now(),
            approvers=user,
        )
        .exclude(requester=user)
        .exclude(decisions__approver=user)
    )


def awaiting_count(user: Any) -> int:
    return awaiting(user, ApprovalRequest.objects.all()).count()


def approval_policies() -> QuerySet[ApprovalPolicy]:
    return ApprovalPolicy.objects.select_related("approver_group", "notify_via").prefetch_related(
        "approver_users"
    )


@dataclass(frozen=True)
class DiffRow:
    field: str
    before: str
    after: str
    changed: bool


def diff_rows(change: Mapping[str, Any]) -> list[DiffRow]:
    """A request's before and after, field by field, for a person to read."""
    before = change.get("before") or {}
    after = change.get("after") or {}
    names = list(dict.fromkeys([*before, *after]))
    return [
        DiffRow(
            field=name,
            before=_shown(before.get(name, MISSING)),
            after=_shown(after.get(name, MISSING)),
            changed=before.get(name, MISSING) != after.get(name, MISSING),
        )
        for name in names
    ]


MISSING = object()


def _shown(value: Any) -> str:
    if value is MISSING:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


# --- a rollback's impact, before it runs -------------------------------------------------------

# The traffic a rollback moves is read over the last minute of the metric store (its figures
# are per minute), and the flags' evaluations over the last whole minute of their exposure
# counts (kept per minute).
IMPACT_WINDOW_SECONDS = 60


def rollback_impact(
    *,
    deployment: Deployment,
    plan: RollbackPlan | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What rolling ``deployment`` back by ``plan`` (None: the plan that covers it, else the
    built-in one) would do now: the traffic and flags it moves, whether stable can take the
    load, the steps and the longest it may take. Seven queries, however many flags.

    ``requiresApproval`` and ``cooldownLeftSeconds`` hold for a person's rollback; an automatic
    one is never held and runs the built-in plan within a cooldown.
    """
    now = now or timezone.now()
    deployment = Deployment.objects.select_related("service", "stable_target", "routing_rule").get(
        pk=deployment.pk
    )
    if plan is None:
        plan = plans_for([deployment]).get(deployment.pk)
    spec, readable = _readable(plan)
    share = deployment.canary_share
    if plan is None or not readable:
        steps = built_in_steps()
    else:
        earlier = [
            phase.traffic_percentage
            for phase in deployment.phases.order_by("order")
            if phase.order < (deployment.current_phase or 0)
        ]
        steps = plans.expand(spec, share=share, earlier_shares=earlier)
    traffic = _traffic(deployment, now)
    last = (
        RollbackExecution.objects.filter(service=deployment.service.name, rehearsal=False)
        .exclude(state=ExecutionState.CANCELLED)
        .aggregate(last=Max("created_at"))["last"]
    )
    left = cooldown_left(spec, last, now)
    return {
        "deployment": deployment.pk,
        "service": deployment.service.name,
        "canaryShare": float(share),
        "requestsPerMinute": traffic["canary"]["requests"] * 60 / IMPACT_WINDOW_SECONDS,
        "stableRequestsPerMinute": traffic["stable"]["requests"] * 60 / IMPACT_WINDOW_SECONDS,
        "trafficWindowSeconds": IMPACT_WINDOW_SECONDS,
        "affinity": _affinity(deployment),
        "flags": _linked_flags(deployment, now),
        "stable": _stable(deployment, spec, traffic["stable"]),
        "strategy": spec.strategy.value,
        "steps": [step.name for step in steps],
        # The validate steps carry the validation's own worst case (every attempt timing out,
        # with the delays between them), so the sum of the steps is the whole of it.
        "worstCaseMs": plans.worst_case_ms(steps),
        "maxRollbackTimeMs": spec.safety.max_rollback_time_ms,
        "plan": spec.name,
        "requiresApproval": spec.safety.require_approval,
        "cooldownLeftSeconds": math.ceil(left.total_seconds()) if left is not None else 0,
    }


def _readable(plan: RollbackPlan | None) -> tuple[plans.Plan, bool]:
    """The plan's spec, and whether it reads; one that no longer does rolls back as the
    built-in plan (as the runner does)."""
    if plan is None:
        return plans.BUILTIN, True
    try:
        return plan.spec, True
    except plans.InvalidPlan:
        return plans.BUILTIN, False


def _traffic(deployment: Deployment, now: datetime) -> dict[str, dict[str, int]]:
    """The canary's and stable's requests and errors over the last minute, in one query."""
    versions = {"canary": deployment.canary_version, "stable": deployment.stable_version}
    groups = store.grouped(
        services=[deployment.service.name],
        spans=[(list(versions.values()), IMPACT_WINDOW_SECONDS)],
        end=now,
        group_seconds=IMPACT_WINDOW_SECONDS,
        metrics=[TRAFFIC_METRIC],
    )
    found = {"canary": {"requests": 0, "errors": 0}, "stable": {"requests": 0, "errors": 0}}
    for group in groups:
        if group.index != 0:
            continue
        for side, version in versions.items():
            if group.version == version:
                found[side]["requests"] += group.requests
                found[side]["errors"] += min(group.errors, group.requests)
    return found


PINNED_NOT_COUNTED = (
    "The proxy counts requests, not sessions: how many sessions are pinned to the canary is "
    "not counted."
)


def _affinity(deployment: Deployment) -> dict[str, Any]:
    """The session affinity of the deployment's routing rule. A sticky key keeps its bucket on
    the rule's layout, and the canary's range only shrinks on the way down, so the sessions
    pinned to the canary move to stable; none comes back."""
    rule = deployment.routing_rule
    affinity = rule.affinity if rule is not None else None
    if not isinstance(affinity, Mapping) or not affinity.get("type"):
        note = (
            "No session affinity: each request is routed afresh, so the canary's requests go "
            "to stable from the next one on."
            if rule is not None
            else "The deployment has no routing rule now: nothing of its traffic is split."
        )
        return {"enabled": False, "by": None, "pinnedSessions": None, "note": note}
    by = f"{affinity['type']} {affinity.get('name', '')}".strip()
    return {
        "enabled": True,
        "by": by,
        "pinnedSessions": None,
        "note": f"Sessions pinned to the canary (by the {by}) move to stable. "
        + PINNED_NOT_COUNTED,
    }


def _linked_flags(deployment: Deployment, now: datetime) -> list[dict[str, Any]]:
    """Each linked flag now, with its evaluations in the last whole minute (two queries)."""
    flags = list(deployment.flags.order_by("key"))
    if not flags:
        return []
    minute = now.replace(second=0, microsecond=0)
    counts = dict(
        FlagExposure.objects.filter(
            flag_key__in=[flag.key for flag in flags],
            bucket_start__gte=minute - timedelta(seconds=IMPACT_WINDOW_SECONDS),
            bucket_start__lt=minute,
        )
        .values("flag_key")
        .annotate(total=Sum("count"))
        .values_list("flag_key", "total")
    )
    return [
        {
            "key": flag.key,
            "status": flag.status,
            "percentage": rollout_percentage(flag.default_rule, flag.off_variant),
            "evaluationsPerMinute": float(counts.get(flag.key, 0)) * 60 / IMPACT_WINDOW_SECONDS,
            "controlledBy": flag.controlled_by,
        }
        for flag in flags
    ]


def _stable(deployment: Deployment, spec: plans.Plan, traffic: Mapping[str, int]) -> dict[str, Any]:
    """Whether stable can take the canary's load: its target's health and last probe, and
    its error rate over the last minute against the plan's own bar for it (its validation's
    error-rate criterion, else the criterion's default)."""
    target = deployment.stable_target
    requests, errors = traffic["requests"], traffic["errors"]
    bar = next(
        (
            criterion.threshold
            for criterion in spec.validation.criteria
            if criterion.type == plans.CriterionType.ERROR_RATE and criterion.threshold is not None
        ),
        plans.CRITERION_DEFAULTS[plans.CriterionType.ERROR_RATE],
    )
    rate = 100.0 * errors / requests if requests else None
    # Too few requests say nothing either way; the judge asks as many of a window.
    enough = requests >= deployments_conf.default_min_requests()
    problems: list[str] = []
    probe = None
    if target is None:
        problems.append("the deployment has no stable target")
    else:
        if target.last_checked_at is not None:
            probe = {
                "at": target.last_checked_at.isoformat(),
                "result": target.last_check_result,
                "consecutiveFailures": target.consecutive_failures,
                "consecutiveSuccesses": target.consecutive_successes,
            }
        if not target.healthy:
            last = f" (last probe: {target.last_check_result})" if probe else ""
            problems.append(f"its target {target.name} is marked unhealthy{last}")
        if target.draining_since is not None:
            problems.append(f"its target {target.name} is draining")
    if rate is not None and enough and rate > bar:
        problems.append(
            f"its error rate is {rate:.2f}% over the last {IMPACT_WINDOW_SECONDS} s "
            f"({errors} of {requests} requests), above {bar:g}%"
        )
    warning = None
    if problems:
        warning = (
            f"Rolling back onto an unhealthy stable: {'; '.join(problems)}. The canary's "
            "traffic would move to it."
        )
    return {
        "version": deployment.stable_version,
        "target": target.name if target is not None else None,
        "healthy": not problems,
        "lastProbe": probe,
        "errorRate": rate,
        "sampleSize": requests,
        "errors": errors,
        "errorRateThreshold": bar,
        "enoughRequests": enough,
        "warning": warning,
    }


# --- statistics and history ----------------------------------------------------------------------


def seconds_to_out_of_traffic(
    breach_at: datetime | None, started_at: datetime | None, out_of_traffic_at: datetime | None
) -> float | None:
    """From the fault's first bad window (else the rollback's start) to the canary out of
    traffic, in seconds; None while it is in traffic."""
    begun = breach_at or started_at
    if begun is None or out_of_traffic_at is None:
        return None
    return max(0.0, (out_of_traffic_at - begun).total_seconds())


def seconds_to_done(started_at: datetime | None, finished_at: datetime | None) -> float | None:
    if started_at is None or finished_at is None:
        return None
    return max(0.0, (finished_at - started_at).total_seconds())


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, 95th percentile (linear between the closest ranks), maximum and count, in
    seconds; None for each with no values."""
    ordered = sorted(float(value) for value in values)
    if not ordered:
        return {"median": None, "p95": None, "max": None, "count": 0}
    return {
        "median": round(_quantile(ordered, 0.5), 3),
        "p95": round(_quantile(ordered, 0.95), 3),
        "max": round(ordered[-1], 3),
        "count": len(ordered),
    }


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


TRIGGERS = tuple(RollbackTrigger.values)
STATES = tuple(ExecutionState.values)
STRATEGIES = tuple(RollbackStrategy.values)
_STATISTICS_COLUMNS = (
    "service",
    "trigger",
    "state",
    "strategy",
    "rehearsal",
    "breach_at",
    "started_at",
    "out_of_traffic_at",
    "finished_at",
)


@dataclass
class _Tally:
    """The figures of one set of executions, added row by row."""

    total: int = 0
    rehearsals: int = 0
    by_trigger: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIGGERS, 0))
    by_state: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    by_strategy: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STRATEGIES, 0))
    out_of_traffic: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)

    def add(self, row: Mapping[str, Any]) -> None:
        if row["rehearsal"]:
            self.rehearsals += 1
            return
        self.total += 1
        for counts, key in (
            (self.by_trigger, row["trigger"]),
            (self.by_state, row["state"]),
            (self.by_strategy, row["strategy"]),
        ):
            counts[key] = counts.get(key, 0) + 1
        out = seconds_to_out_of_traffic(
            row["breach_at"], row["started_at"], row["out_of_traffic_at"]
        )
        if out is not None:
            self.out_of_traffic.append(out)
        if row["state"] in ENDED_EXECUTION_STATES:
            done = seconds_to_done(row["started_at"], row["finished_at"])
            if done is not None:
                self.done.append(done)

    def figures(self) -> dict[str, Any]:
        ended = sum(self.by_state[str(state)] for state in ENDED_EXECUTION_STATES)
        succeeded = self.by_state[ExecutionState.SUCCEEDED]
        return {
            "total": self.total,
            "rehearsals": self.rehearsals,
            "byTrigger": self.by_trigger,
            "byState": self.by_state,
            "byStrategy": self.by_strategy,
            "ended": ended,
            "succeeded": succeeded,
            "successRate": round(100.0 * succeeded / ended, 2) if ended else None,
            "timeToOutOfTraffic": spread(self.out_of_traffic),
            "timeToDone": spread(self.done),
        }


def rollback_statistics(
    *,
    service: str | None = None,
    since: datetime | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """How rollbacks went, overall and per service (``services``, by name), from one query of
    the few columns needed: counts by trigger, state and strategy; the success rate (succeeded
    of those ended, in percent); the seconds from the fault's first bad window (else the
    rollback's start) to the canary out of traffic, and from start to end. Rehearsals are
    counted apart (``rehearsals``) and in nothing else."""
    rows = RollbackExecution.objects.all()
    if service:
        rows = rows.filter(service=getattr(service, "name", service))
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if now is not None:
        rows = rows.filter(created_at__lte=now)
    overall = _Tally()
    per_service: dict[str, _Tally] = defaultdict(_Tally)
    for row in rows.order_by().values(*_STATISTICS_COLUMNS).iterator(chunk_size=2000):
        overall.add(row)
        per_service[row["service"]].add(row)
    return {
        "since": since.isoformat() if since is not None else None,
        **overall.figures(),
        "services": [
            {"service": name, **tally.figures()} for name, tally in sorted(per_service.items())
        ],
    }


def executions() -> QuerySet[RollbackExecution]:
    """Every rollback and rehearsal, newest first, with what a list shows of each."""
    return RollbackExecution.objects.select_related(
        "deployment", "deployment__service", "plan", "requested_by", "approval"
    ).order_by("-created_at", "-id")


def execution_history(
    *,
    limit: int | None = 10,
    service: str | None = None,
    deployment: Deployment | int | None = None,
) -> QuerySet[RollbackExecution]:
    """The latest ``limit`` executions (None: all), newest first: the guide's
    ``getExecutionHistory(limit)``; of one service or one deployment when given."""
    rows = executions()
    if service:
        rows = rows.filter(service=getattr(service, "name", service))
    if deployment is not None:
        rows = rows.filter(deployment_id=getattr(deployment, "pk", deployment))
    return rows[: max(0, int(limit))] if limit is not None else rows


# The timeline entries that set the canary's share while a rollback runs.
SHARE_EVENT_KINDS = (
    EventKind.ROLLBACK,
    EventKind.STEP_ROLLBACK,
    EventKind.FINISH_ROLLBACK,
    EventKind.FAIL,
)


def execution_detail(*, execution_id: int) -> RollbackExecution | None:
    """One execution with its steps in order and its deployment's rollback events
    (``deployment.rollback_events``, for `execution_share`); None when there is none."""
    try:
        pk = int(execution_id)
    except (TypeError, ValueError):
        return None
    return (
        executions()
        .prefetch_related(
            Prefetch("steps", queryset=RollbackStep.objects.order_by("position")),
            Prefetch(
                "deployment__events",
                queryset=DeploymentEvent.objects.filter(kind__in=SHARE_EVENT_KINDS)
                .exclude(canary_share=None)
                .order_by("at", "id"),
                to_attr="rollback_events",
            ),
        )
        .filter(pk=pk)
        .first()
    )


def execution_share(*, execution: RollbackExecution, now: datetime | None = None) -> ShareSeries:
    """The canary's share while ``execution`` ran, as steps: where it began (the share the
    rollback found), then each share the rollback's transitions set, to its end (or now). Empty
    for a rehearsal (nothing moves) or one that has not begun."""
    start = execution.started_at
    if execution.rehearsal or start is None:
        return ShareSeries([], [])
    end = execution.finished_at or now or timezone.now()
    events: Iterable[DeploymentEvent] | None = getattr(
        execution.deployment, "rollback_events", None
    )
    if events is None:
        events = (
            DeploymentEvent.objects.filter(
                deployment_id=execution.deployment_id, kind__in=SHARE_EVENT_KINDS
            )
            .exclude(canary_share=None)
            .order_by("at", "id")
        )
    times: list[datetime] = []
    shares: list[float] = []
    found = _share((execution.evidence or {}).get("fromShare"))
    if found is not None:
        times.append(start)
        shares.append(found)
    for event in events:
        if start <= event.at <= end:
            times.append(event.at)
            shares.append(float(event.canary_share))
    if times:
        times.append(end)
        shares.append(shares[-1])
    return ShareSeries(times, shares)


def _share(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(Decimal(str(value)))
    except (ArithmeticError, ValueError, TypeError):
        return None
