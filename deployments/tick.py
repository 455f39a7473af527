"""The control loop's step 3: `deployments_tick` (and `deployment_tick` for one deployment).

One bulk health evaluation for every running deployment, one judgement per phase (with its
webhook gates, `deployments.webhooks`), stored in one statement (`_record`), then the
decisions (roll back, advance, succeed, fail, and the starts whose entry gates have opened)
taken through the transition batch (`deployments.transitions`) in one transaction, and last
the gates' calls and the webhooks' news, all at once, written in one statement each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from canary_site.choices import Source
from canary_site.collector import collector_paused
from canary_site.exceptions import CanaryError
from deployments import conf, notifications, observing, selectors, webhooks
from deployments.choices import DeploymentStatus, EventKind
from deployments.config import PhaseConfig, TrafficShiftStrategy, format_duration
from deployments.judging import default_policy
from deployments.lifecycle import Action, Evidence, Outcome, PhaseJudgement, phase_judgement
from deployments.models import Deployment, DeploymentEvent, Phase, phase_config
from deployments.signals import deployment_breached
from deployments.transitions import (
    DeploymentBusy,
    TransitionRequest,
    TransitionResult,
    deployments_transition,
)
from deployments.writing import send, write_rows
from health import conf as health_conf
from health import services as health_services
from health import windows as health_windows
from health.services import EvaluationRequest

logger = logging.getLogger(__name__)


@dataclass
class TickReport:
    """What one tick did; its counts are of deployments."""

    examined: int = 0
    evaluated: int = 0
    waiting: int = 0
    advanced: int = 0
    succeeded: int = 0
    rolled_back: int = 0
    failed: int = 0
    ready: int = 0
    breaches_noted: int = 0
    skipped: int = 0
    started: int = 0
    webhook_calls: int = 0
    webhook_deliveries: int = 0
    errors: list[str] = field(default_factory=list)
    # Seconds spent in each step, for the logs and the benchmark.
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[step] = round(self.timings.get(step, 0.0) + now - since, 4)
        return now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Verdict:
    """One running deployment's judgement this tick, and what to do about it."""

    deployment: Deployment
    phase: Phase
    judgement: PhaseJudgement
    evidence: dict[str, Any]
    log: dict[str, Any]
    log_changed: bool
    policy_breach: bool = False
    held: bool = False


def deployment_tick(*, deployment_id: int, now: datetime | None = None) -> TickReport:
    """The tick for one deployment (after a transition, so a new phase is judged at once)."""
    return deployments_tick(now=now, deployment_ids=[deployment_id])


def deployments_tick(
    *, now: datetime | None = None, deployment_ids: Sequence[int] | None = None
) -> TickReport:
    """One step of the control loop over every deployment under way.

    1. A deployment past its maximum time fails (traffic back to stable); one left rolling
       back by an interrupted tick is finished.
    2. Every running deployment's canary is evaluated by the health app in one bulk pass
       (its policy, or the default one), which becomes one observation per metric.
    3. Each current phase is judged (`phase_judgement`): a breach with auto-rollback on rolls
       back (breach signal, canary out of traffic, rolled back, with the evidence); advance
       moves to the next phase or succeeds after the last one, unless a person must promote
       (auto-promote off, or the manual strategy: said once on the timeline); wait records
       the judgement for the pages. A phase ready to advance waits while a confirm-promotion
       gate is closed or a rollout check fails; a rollout check failing its threshold in a
       row is a breach. A breach never waits for a gate.
    4. A pending deployment whose start was asked for while its entry gates were closed
       starts once they are open, or starts and fails at once when a pre-rollout check
       failed (the canary never gets a request).
    5. After the decisions have committed: the gates that waiting deployments need are
       called, with the due news deliveries, all at once (`webhooks.TickGates`); the tick
       acts on their answers at its next pass.

    The number of queries does not grow with the number of deployments: they are read in one
    query, evaluated in one health pass and written in one statement, and the decisions, as
    many as there are, go through one `deployments_transition` batch with the rows locked, on
    the phase each was judged on; a second tick running at the same time skips rows the first
    holds and finds the decision already taken, so it cannot be applied twice.
    """
    now = now or timezone.now()
    report = TickReport()
    clock = time.perf_counter()
    with collector_paused():
        deployments = selectors.deployments_for_tick(ids=deployment_ids)
        gates = webhooks.TickGates.load(now=now, deployment_ids=deployment_ids)
        report.examined = len(deployments)
        clock = report.lap("load", clock)
        overdue: list[Deployment] = []
        running: list[Deployment] = []
        for deployment in deployments:
            if deployment.status == DeploymentStatus.ROLLING_BACK:
                # A rollback with a runner is that runner's to finish (the rollback app's
                # executions, step 4 of the loop); one without is finished here.
                if not deployment.rollback_runner:
                    overdue.append(deployment)
            elif _past_deadline(deployment, now):
                overdue.append(deployment)
            # A kill switch holds the service: nothing advances; the switch's watch pauses it
            # (the halt has already taken its canary out of traffic).
            elif (
                deployment.status == DeploymentStatus.RUNNING
                and deployment.service.halted_since is None
            ):
                running.append(deployment)
        verdicts = _judge_all(running, now, report, gates)
        clock = time.perf_counter()
        _record(verdicts, now, report, gates)
        clock = report.lap("record", clock)
        # Only the few verdicts that take a decision outlive the pause; the rest are freed
        # before the collector runs again.
        decisions = [verdict for verdict in verdicts if _decides(verdict, report)]
        deciding = {id(verdict) for verdict in decisions}
        for verdict in verdicts:
            if verdict.held and id(verdict) not in deciding:
                gates.plan_running(
                    verdict.deployment.pk, verdict.phase, verdict.evidence["judgement"]
                )
        entries = gates.entry_decisions()
        del deployments, running, verdicts

    # Every decision of the tick in one transaction, every row locked at once.
    _decide_all(overdue, decisions, now, report, entries)
    clock = report.lap("decide", clock)
    # The gates are called once the decisions are in: a slow hook delays no decision.
    report.webhook_calls, report.webhook_deliveries = gates.call_and_record()
    report.lap("webhooks", clock)
    return report


OUT_OF_TRAFFIC = "The canary is out of traffic: its weight is 0 and its flags are off."


def _overdue_request(deployment: Deployment, now: datetime) -> TransitionRequest:
    """Finish a rollback an interrupted tick left half way, or fail a deployment past its
    maximum time (traffic back to stable)."""
    if deployment.status == DeploymentStatus.ROLLING_BACK:
        return TransitionRequest(
            deployment_id=deployment.pk,
            action=Action.FINISH_ROLLBACK,
            reason=OUT_OF_TRAFFIC,
            expected_status=deployment.status,
        )
    limit = format_duration(deployment.max_deployment_time_ms)
    return TransitionRequest(
        deployment_id=deployment.pk,
        action=Action.FAIL,
        reason=f"Past the maximum deployment time of {limit} (started "
        f"{deployment.started_at:%Y-%m-%d %H:%M:%S} UTC); traffic is back on "
        "the stable version.",
        evidence={"maxDeploymentTimeMs": deployment.max_deployment_time_ms},
        expected_status=deployment.status,
    )


def _past_deadline(deployment: Deployment, now: datetime) -> bool:
    if deployment.status not in (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED):
        return False
    if deployment.started_at is None:
        return False
    return now - deployment.started_at > timedelta(milliseconds=deployment.max_deployment_time_ms)


def _judge_all(
    running: list[Deployment], now: datetime, report: TickReport, gates: webhooks.TickGates
) -> list[_Verdict]:
    """Evaluate every running canary in one health pass and judge its current phase, with
    its gates."""
    pairs: list[tuple[Deployment, Phase]] = []
    for deployment in running:
        phase = deployment.running_phase
        if phase is None or phase.started_at is None:
            report.errors.append(f"deployment {deployment.pk}: no running phase")
            continue
        pairs.append((deployment, phase))
    if not pairs:
        return []
    # A few policies serve many deployments: read once, not once per row.
    policies = selectors.health_policies(
        ids={d.health_policy_id for d, _ in pairs if d.health_policy_id is not None}
    )
    default = None
    if any(policies.get(d.health_policy_id) is None for d, _ in pairs):
        default = default_policy()
    requests = [
        EvaluationRequest(
            service=deployment.service.name,
            canary_version=deployment.canary_version,
            stable_version=deployment.stable_version,
            policy=policies.get(deployment.health_policy_id) or default,
            planned_canary_share=float(phase.traffic_percentage),
            # Each phase on its own traffic: the share changes only when a phase begins.
            window_start=phase.started_at,
        )
        for deployment, phase in pairs
    ]
    # A phase that began after the latest window closed has no traffic of its own to judge
    # yet (the tick right after a transition): nothing is asked of the health app for it.
    end = health_windows.window_end(
        now, resolution=health_conf.bucket_seconds(), settle=health_conf.settle_seconds()
    )
    judged = [i for i, (_d, phase) in enumerate(pairs) if phase.started_at < end]
    clock = time.perf_counter()
    checks: list[Any] = [None] * len(pairs)
    for index, check in zip(
        judged, _evaluate([requests[i] for i in judged], now, report), strict=True
    ):
        checks[index] = check
    clock = report.lap("health", clock)
    report.evaluated = sum(1 for check in checks if check is not None)

    max_gap = conf.max_gap()
    min_requests, z = conf.phase_min_requests(), conf.threshold_z()
    verdicts: list[_Verdict] = []
    specs: dict[Any, _PhaseSpec] = {}  # deployments made from one template share their phases
    for (deployment, phase), check in zip(pairs, checks, strict=True):
        spec, metrics, keep = _phase_spec(phase, specs, max_gap)
        log: dict[str, Any] = dict(phase.observations or {})
        changed = False
        evidence: dict[str, Any] = {"phase": phase.order}
        policy_breach = False
        seen = Evidence.from_dict(log.get("e"))
        if check is not None:
            values = observing.canary_values(check.result, metrics)
            log, changed = observing.record(log, at=check.window_end, values=values)
            log = observing.trim(log, keep=keep, since=phase.started_at)
            seen = observing.evidence(check.result, at=check.window_end)
            log["e"] = seen.to_dict()
            evidence["healthCheck"] = {
                "id": check.pk,
                "verdict": check.verdict,
                "message": check.message,
                "windowEnd": check.window_end.isoformat(),
                "shouldRollback": check.should_rollback,
                "canary": values,
            }
            policy_breach = bool(check.should_rollback)
        elif seen is not None:
            log["e"] = seen.to_dict()
        judgement = phase_judgement(
            spec,
            started_at=phase.started_at,
            now=now,
            observations=observing.observations(log, spec),
            max_gap=max_gap,
            evidence=seen,
            min_requests=min_requests,
            z=z,
        )
        judgement = gates.judge(deployment, phase, _with_policy(judgement, check, policy_breach))
        evidence["judgement"] = judgement.to_dict()
        gate_evidence = gates.gate_evidence(deployment.pk, phase.order)
        if gate_evidence:
            evidence["webhooks"] = gate_evidence
        verdicts.append(
            _Verdict(deployment, phase, judgement, evidence, log, changed, policy_breach)
        )
    report.lap("judge", clock)
    return verdicts


_PhaseSpec = tuple[PhaseConfig, list[str], timedelta]


def _phase_spec(phase: Phase, cache: dict[Any, _PhaseSpec], max_gap: timedelta) -> _PhaseSpec:
    """The phase's configuration, the metrics it is judged on and the history it keeps; read
    once for every phase of the same settings."""
    # repr tells JSON values apart as well as a dump does, in a fraction of the time (two
    # equal settings written in another key order only miss the cache).
    key = (
        phase.key,
        phase.name,
        str(phase.traffic_percentage),
        phase.duration_ms,
        repr(phase.success_criteria),
        repr(phase.rollback_thresholds),
    )
    found = cache.get(key)
    if found is None:
        spec = phase_config(phase)
        found = cache[key] = (
            spec,
            observing.needed_metrics(spec),
            observing.keep_for(spec, max_gap),
        )
    return found


def _evaluate(requests: list[EvaluationRequest], now: datetime, report: TickReport) -> list[Any]:
    """The health pass; if the bulk call refuses one request, the others are still judged."""
    if not requests:
        return []
    try:
        return list(health_services.health_evaluate_many(requests=requests, now=now))
    except CanaryError as error:
        report.errors.append(f"bulk evaluation: {error.message}")
    checks: list[Any] = []
    for request in requests:
        try:
            checks.append(health_services.health_evaluate_many(requests=[request], now=now)[0])
        except CanaryError as error:
            report.errors.append(f"{request.service} {request.canary_version}: {error.message}")
            checks.append(None)
    return checks


def _with_policy(judgement: PhaseJudgement, check: Any, policy_breach: bool) -> PhaseJudgement:
    """Fold the health policy's own verdict into the phase's: its auto-rollback is a breach.
    (A verdict that is not healthy already holds the phase: see `phase_judgement`.)"""
    if check is None:
        return judgement
    if policy_breach and judgement.outcome != Outcome.BREACH:
        return _replace(
            judgement,
            outcome=Outcome.BREACH,
            reason=f"Roll back: the health policy '{check.policy_name}' asks for it: "
            f"{check.message}",
        )
    return judgement


def _replace(judgement: PhaseJudgement, **changes: Any) -> PhaseJudgement:
    from dataclasses import replace

    return replace(judgement, **changes)


def _needs_person(deployment: Deployment) -> bool:
    return (
        not deployment.auto_promote
        or deployment.traffic_shift_strategy == TrafficShiftStrategy.MANUAL
    )


def _record(
    verdicts: list[_Verdict], now: datetime, report: TickReport, gates: webhooks.TickGates
) -> None:
    """Store every judgement in one transaction and one statement, with the notes a person
    needs once (ready to promote; a breach left to them), and only for rows this tick holds
    whose phase has not moved on since they were judged."""
    if not verdicts:
        return
    with transaction.atomic():
        held = _lock_for_tick([verdict.deployment.pk for verdict in verdicts])
        changed_phases: list[Phase] = []
        events: list[DeploymentEvent] = []
        breached: list[_Verdict] = []
        for verdict in verdicts:
            deployment, phase = verdict.deployment, verdict.phase
            if held.get(deployment.pk) != (DeploymentStatus.RUNNING, phase.order):
                report.skipped += 1
                continue
            verdict.held = True
            outcome = verdict.judgement.outcome
            note = ""
            if outcome == Outcome.BREACH and not deployment.auto_rollback:
                if phase.breach_seen_at is None:
                    phase.breach_seen_at = now
                    note = EventKind.BREACH
            elif outcome != Outcome.BREACH:
                phase.breach_seen_at = None
            if outcome == Outcome.ADVANCE and _needs_person(deployment) and phase.ready_at is None:
                phase.ready_at = now
                note = EventKind.READY
            fresh = _worth_writing(phase, verdict, now) or bool(note)
            phase.observations = verdict.log
            phase.judgement = verdict.evidence["judgement"]
            phase.judged_at = now
            if fresh:
                changed_phases.append(phase)
            if note == EventKind.READY:
                report.ready += 1
                events.append(_note_event(verdict, note, now))
            elif note == EventKind.BREACH:
                report.breaches_noted += 1
                events.append(_note_event(verdict, note, now))
                breached.append(verdict)
        if changed_phases:
            write_rows(Phase, changed_phases, _JUDGEMENT_FIELDS)
        if events:
            DeploymentEvent.objects.bulk_create(events)
            webhooks.queue_events(events, hooks=gates.hooks(), now=now)
            notifications.news_queue(
                notifications.breach_news(deployment=event.deployment, event=event)
                for event in events
                if event.kind == EventKind.BREACH
            )
        if breached:
            transaction.on_commit(_breach_notices(breached))


_JUDGEMENT_FIELDS = ["observations", "judgement", "judged_at", "ready_at", "breach_seen_at"]


def _worth_writing(phase: Phase, verdict: _Verdict, now: datetime) -> bool:
    """Whether a judgement says anything the stored one does not: a new observation, another
    outcome or criterion state, a cleared breach, or clocks older than half a tick. Two ticks
    at the same moment write once."""
    if verdict.log_changed or phase.judged_at is None:
        return True
    stored = phase.judgement or {}
    new = verdict.evidence["judgement"]
    if stored.get("outcome") != new["outcome"]:
        return True
    if [c.get("state") for c in stored.get("criteria", [])] != [
        c["state"] for c in new["criteria"]
    ]:
        return True
    if phase.breach_seen_at is not None and new["outcome"] != Outcome.BREACH:
        return True
    return (now - phase.judged_at).total_seconds() >= conf.tick_seconds() / 2


def _breach_notices(verdicts: list[_Verdict]) -> Callable[[], None]:
    def notify() -> None:
        for verdict in verdicts:
            send(
                deployment_breached,
                deployment=verdict.deployment,
                phase=verdict.phase.order,
                evidence=verdict.evidence,
                reason=verdict.judgement.reason,
                rolled_back=False,
            )

    return notify


def _note_event(verdict: _Verdict, note: str, now: datetime) -> DeploymentEvent:
    deployment = verdict.deployment
    if note == EventKind.READY:
        who = (
            "the manual strategy"
            if deployment.traffic_shift_strategy == TrafficShiftStrategy.MANUAL
            else "auto-promote is off"
        )
        reason = f"{verdict.judgement.reason} A person promotes: {who}."
    else:
        reason = f"{verdict.judgement.reason} Auto-rollback is off: a person decides."
    return DeploymentEvent(
        deployment=deployment,
        kind=note,
        from_status=deployment.status,
        to_status=deployment.status,
        phase=verdict.phase.order,
        canary_share=deployment.canary_share,
        source=Source.SYSTEM,
        reason=reason[:5000],
        evidence=verdict.evidence,
        at=now,
    )


def _lock_for_tick(ids: list[int]) -> dict[int, tuple[str, int | None]]:
    """Lock the rows this tick may write, skipping those another process holds (PostgreSQL);
    SQLite's write transaction is already the only writer. Status and phase are read inside
    the lock, so a decision taken meanwhile is seen."""
    if connection.vendor != "postgresql":
        rows = Deployment.objects.filter(pk__in=ids)
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True, of=("self",))
        return {
            pk: (status, phase)
            for pk, status, phase in rows.values_list("pk", "status", "current_phase")
        }
    # The ids as one array parameter: a thousand placeholders cost more to send than the lock.
    table = connection.ops.quote_name(Deployment._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, status, current_phase FROM {table} WHERE id = ANY(%s::bigint[]) "
            "FOR UPDATE SKIP LOCKED",
            [list(ids)],
        )
        return {pk: (status, phase) for pk, status, phase in cursor.fetchall()}


def _decides(verdict: _Verdict, report: TickReport) -> bool:
    """Whether a stored verdict takes a decision (rollback, promote, succeed); one that does
    not is counted as waiting."""
    if not verdict.held:
        return False
    outcome = verdict.judgement.outcome
    if outcome == Outcome.BREACH and verdict.deployment.auto_rollback:
        return True
    if outcome == Outcome.ADVANCE and not _needs_person(verdict.deployment):
        return True
    report.waiting += 1
    return False


def _decide_all(
    overdue: list[Deployment],
    decisions: list[_Verdict],
    now: datetime,
    report: TickReport,
    entries: Sequence[webhooks.EntryDecision] = (),
) -> None:
    """Take the tick's decisions through the transition service, all in one transaction:
    rollbacks first, then failures past the maximum time, then advances, then the starts
    whose entry gates have spoken. A row another process holds, or a deployment that moved
    on since it was judged, is left for the next tick."""
    requests: list[TransitionRequest] = []
    # For each request: the report's counter, and the request it follows (its result counts
    # only if that one was done).
    counting: list[tuple[str | None, int | None]] = []
    rollbacks = [v for v in decisions if v.judgement.outcome == Outcome.BREACH]
    advances = [v for v in decisions if v.judgement.outcome != Outcome.BREACH]
    faults = selectors.fault_starts(
        [(verdict.deployment, verdict.phase, _judged_until(verdict, now)) for verdict in rollbacks]
    )
    for verdict in rollbacks:
        deployment = verdict.deployment
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.ROLLBACK,
                reason=verdict.judgement.reason,
                evidence={**verdict.evidence, **_fault_evidence(faults.get(deployment.pk))},
                expected_phase=verdict.phase.order,
                expected_status=deployment.status,
            )
        )
        counting.append((None, None))
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.FINISH_ROLLBACK,
                reason=OUT_OF_TRAFFIC,
                expected_status=DeploymentStatus.ROLLING_BACK,
            )
        )
        counting.append(("rolled_back", len(requests) - 2))
    for deployment in overdue:
        requests.append(_overdue_request(deployment, now))
        counting.append(
            (
                "rolled_back" if deployment.status == DeploymentStatus.ROLLING_BACK else "failed",
                None,
            )
        )
    for verdict in advances:
        deployment = verdict.deployment
        last = deployment.on_last_phase
        requests.append(
            TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.SUCCEED if last else Action.PROMOTE,
                reason=verdict.judgement.reason,
                evidence=verdict.evidence,
                expected_phase=verdict.phase.order,
                expected_status=deployment.status,
            )
        )
        counting.append(("succeeded" if last else "advanced", None))
    for entry in entries:
        requests.append(
            TransitionRequest(
                deployment_id=entry.deployment.pk,
                action=Action.START,
                reason=entry.start_reason,
                evidence=entry.evidence,
                expected_status=DeploymentStatus.PENDING,
            )
        )
        counting.append((None if entry.fail_reason else "started", None))
        if entry.fail_reason:
            requests.append(
                TransitionRequest(
                    deployment_id=entry.deployment.pk,
                    action=Action.FAIL,
                    reason=entry.fail_reason,
                    evidence=entry.evidence,
                    expected_status=DeploymentStatus.RUNNING,
                )
            )
            counting.append(("failed", len(requests) - 2))
    if not requests:
        return
    try:
        results = deployments_transition(
            requests=requests, source=Source.SYSTEM, skip_locked=True, now=now
        )
    except CanaryError as error:
        report.errors.append(f"decisions: {error.message}")
        logger.warning("Tick could not take its decisions: %s", error)
        return
    refused: list[tuple[int, str]] = []
    for result, (counter, follows) in zip(results, counting, strict=True):
        if follows is not None and not results[follows].done:
            continue
        _count(report, result, counter)
        error = result.error
        if (
            str(result.request.action) == Action.START
            and error is not None
            and not isinstance(error, DeploymentBusy)
            and getattr(error, "code", "") != "moved_on"
        ):
            refused.append((result.request.deployment_id, error.message))
    if refused:
        # A start that cannot go ahead is not asked again every tick: a person asks anew.
        webhooks.starts_refused(refused=refused, now=now)


def _judged_until(verdict: _Verdict, now: datetime) -> datetime:
    check = verdict.evidence.get("healthCheck") or {}
    return datetime.fromisoformat(check["windowEnd"]) if check.get("windowEnd") else now


def _fault_evidence(start: datetime | None) -> dict[str, Any]:
    # The time to the rollback counts from the fault's first bad bucket, not from the look
    # that judged it.
    return {} if start is None else {"faultStart": start.isoformat()}


def _count(report: TickReport, result: TransitionResult, counter: str | None) -> None:
    request, error = result.request, result.error
    if error is None:
        if counter:
            setattr(report, counter, getattr(report, counter) + 1)
        return
    if isinstance(error, DeploymentBusy) or getattr(error, "code", "") == "moved_on":
        # Another tick, or a person, decided first.
        report.skipped += 1
        return
    if getattr(error, "code", "") == "runner":
        # The rollback began and its plan's execution finishes it.
        if counter:
            setattr(report, counter, getattr(report, counter) + 1)
        return
    report.errors.append(f"deployment {request.deployment_id} {request.action}: {error.message}")
    logger.warning(
        "Tick could not %s deployment %s: %s", request.action, request.deployment_id, error
    )
