"""What each lifecycle action does to a deployment, its phases, its routing rule and its linked
flags, planned in memory on the transition batch (`deployments.transitions`) that writes it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from canary_site.choices import Source
from canary_site.exceptions import CanaryError, TransitionNotAllowed, ValidationFailed
from deployments import rollbacks, selectors
from deployments.choices import PhaseStatus
from deployments.judging import judge_phase
from deployments.lifecycle import Action, Outcome
from deployments.models import Deployment, Phase
from deployments.writing import percent
from flags import services as flag_services
from flags.choices import FlagStatus
from flags.models import Flag
from routing import services as routing_services

if TYPE_CHECKING:
    from deployments.transitions import Batch

_HUNDRED = Decimal("100")
_ZERO = Decimal("0")


@dataclass
class Change:
    """What an action did, gathered for the event's evidence and the after-commit follow-ups."""

    evidence: dict[str, Any] = field(default_factory=dict)
    breach: dict[str, Any] | None = None


@dataclass
class ActionContext:
    deployment: Deployment
    phases: list[Phase]
    now: datetime
    actor: Any
    source: str
    reason: str
    change: Change
    batch: Batch
    # What the request asked beyond its verb: who triggered a rollback, a share to step to.
    trigger: str = ""
    share: Decimal | None = None

    @property
    def current(self) -> Phase | None:
        order = self.deployment.current_phase
        if order is None:
            return None
        return next((phase for phase in self.phases if phase.order == order), None)

    def writer(self) -> dict[str, Any]:
        """The attribution every lower service's write carries."""
        return {"actor": self.actor, "source": self.source, "reason": self.attribution()}

    def attribution(self) -> str:
        return self.reason or f"deployment {self.deployment.pk}: {self.deployment.name}"


def _start(ctx: ActionContext) -> None:
    deployment = ctx.deployment
    _check_ready(deployment)
    first = ctx.phases[0]
    for phase in ctx.phases:
        _reset_phase(ctx, phase)
    _begin_phase(ctx, first)
    deployment.current_phase = first.order
    deployment.started_at = ctx.now
    deployment.finished_at = None
    ctx.change.evidence["traffic"] = _set_traffic(ctx, first.traffic_percentage, enable=True)


def _pause(ctx: ActionContext) -> None:
    """Hold the current phase: traffic stays where it is and the tick leaves it alone."""


def _resume(ctx: ActionContext) -> None:
    """Go on with the current phase; its minimum duration counts from when it began."""


def _require_reason_unless_held(ctx: ActionContext, current: Phase, *, verb: str) -> None:
    """A person may promote before the criteria hold, but must say why; the judgement is kept
    as evidence either way."""
    judgement = judge_phase(current, now=ctx.now)
    if judgement.outcome != Outcome.ADVANCE and not ctx.reason:
        raise ValidationFailed(
            "The phase's criteria have not held "
            f"({judgement.reason.removeprefix('Wait: ').rstrip('.')}); say why you {verb} "
            "anyway.",
            field="reason",
            code="reason_required",
        )
    ctx.change.evidence.setdefault("judgement", judgement.to_dict())


def _promote(ctx: ActionContext) -> None:
    current = ctx.current
    assert current is not None  # the table allows promote only once started
    if not ctx.reason or "judgement" not in ctx.change.evidence:
        # The tick promotes on the judgement it has just made, and says so.
        _require_reason_unless_held(ctx, current, verb="promote")
    _end_phase(ctx, current, PhaseStatus.PASSED)
    following = next(phase for phase in ctx.phases if phase.order == current.order + 1)
    _begin_phase(ctx, following)
    ctx.deployment.current_phase = following.order
    ctx.change.evidence["traffic"] = _set_traffic(ctx, following.traffic_percentage)


def _promote_full(ctx: ActionContext) -> None:
    current = ctx.current
    if current is not None and ctx.source != Source.SYSTEM:
        _require_reason_unless_held(ctx, current, verb="promote fully")
    _complete(ctx)


def _succeed(ctx: ActionContext) -> None:
    _complete(ctx)


def _complete(ctx: ActionContext) -> None:
    """All traffic to the canary, and the canary becomes the service's stable version."""
    deployment = ctx.deployment
    current = ctx.current
    for phase in ctx.phases:
        if phase is current:
            _end_phase(ctx, phase, PhaseStatus.PASSED)
        elif phase.status == PhaseStatus.PENDING:
            phase.status = PhaseStatus.SKIPPED
            ctx.batch.save_phase(phase)
    ctx.change.evidence["traffic"] = _set_traffic(ctx, _HUNDRED, release=True)
    if deployment.service.stable_version != deployment.canary_version:
        change = routing_services.StableVersionChange(
            service_id=deployment.service_id,
            stable_version=deployment.canary_version,
            reason=ctx.attribution(),
        )
        ctx.batch.stable.append((deployment, change))
    ctx.change.evidence["stableVersion"] = deployment.canary_version
    _retire_rule(ctx)
    deployment.finished_at = ctx.now


def _rollback(ctx: ActionContext) -> None:
    current = ctx.current
    if current is not None:
        _end_phase(ctx, current, PhaseStatus.ROLLED_BACK)
    handling = ctx.batch.handling.get(ctx.deployment.pk, rollbacks.BUILT_IN)
    ctx.change.evidence.setdefault("fromShare", float(ctx.deployment.canary_share))
    ctx.deployment.rollback_runner = handling.runner
    if handling.runner:
        ctx.change.evidence["runner"] = handling.runner
    if handling.traffic_now:
        ctx.change.evidence["traffic"] = _out_of_traffic(ctx, with_flags=handling.flags_now)
    if ctx.trigger == "automatic":
        ctx.change.breach = dict(ctx.change.evidence)
    ctx.batch.begun.append(ctx)


def _step_rollback(ctx: ActionContext) -> None:
    # A plan's way down: the share it names, the linked flags following it (never up).
    share = min(percent(ctx.share if ctx.share is not None else _ZERO), ctx.deployment.canary_share)
    if share <= _ZERO:
        ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
    else:
        ctx.change.evidence["traffic"] = _set_traffic(ctx, share)


def _finish_rollback(ctx: ActionContext) -> None:
    # Idempotent: a rollback interrupted half-way is finished by taking the canary out again.
    ctx.change.evidence.setdefault("traffic", _out_of_traffic(ctx))
    _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _fail(ctx: ActionContext) -> None:
    _stop(ctx, PhaseStatus.FAILED)


def _abort(ctx: ActionContext) -> None:
    # A deployment that never started has nothing in traffic to undo.
    deployment = ctx.deployment
    in_traffic = deployment.started_at is not None or deployment.routing_rule_id is not None
    _stop(ctx, PhaseStatus.ABORTED, traffic=in_traffic)


def _stop(ctx: ActionContext, status: str, *, traffic: bool = True) -> None:
    """The running phase ended as ``status``; the canary out of traffic and the rule retired."""
    current = ctx.current
    if current is not None and current.status == PhaseStatus.RUNNING:
        _end_phase(ctx, current, status)
    if traffic:
        ctx.change.evidence["traffic"] = _out_of_traffic(ctx)
        _retire_rule(ctx)
    ctx.deployment.finished_at = ctx.now


def _retry(ctx: ActionContext) -> None:
    for phase in ctx.phases:
        _reset_phase(ctx, phase)
    deployment = ctx.deployment
    deployment.current_phase = None
    deployment.started_at = None
    deployment.finished_at = None
    deployment.rollback_runner = ""


EFFECTS: dict[Action, Callable[[ActionContext], None]] = {
    Action.START: _start,
    Action.PAUSE: _pause,
    Action.RESUME: _resume,
    Action.PROMOTE: _promote,
    Action.PROMOTE_FULL: _promote_full,
    Action.SUCCEED: _succeed,
    Action.ROLLBACK: _rollback,
    Action.FINISH_ROLLBACK: _finish_rollback,
    Action.STEP_ROLLBACK: _step_rollback,
    Action.FAIL: _fail,
    Action.ABORT: _abort,
    Action.RETRY: _retry,
}


def default_reason(action: Action, deployment: Deployment) -> str:
    phase = deployment.current_phase
    texts = {
        Action.START: f"Started: phase {phase} gives the canary {deployment.canary_share}%.",
        Action.PAUSE: "Paused.",
        Action.RESUME: "Resumed.",
        Action.PROMOTE: f"Promoted to phase {phase}: the canary gets {deployment.canary_share}%.",
        Action.PROMOTE_FULL: f"Promoted fully: {deployment.canary_version} is now stable.",
        Action.SUCCEED: f"The last phase passed: {deployment.canary_version} is now stable.",
        Action.ROLLBACK: "Rolling back: the canary is out of traffic.",
        Action.FINISH_ROLLBACK: "Rolled back: the canary is out of traffic.",
        Action.STEP_ROLLBACK: f"Rolling back: the canary is down to {deployment.canary_share}%.",
        Action.FAIL: "Failed: the canary is out of traffic.",
        Action.ABORT: "Aborted: traffic is back on the stable version.",
        Action.RETRY: "Retried: back to pending, to run every phase again.",
    }
    return texts[action]


def _check_ready(deployment: Deployment) -> None:
    """Refuse to start what cannot run: a configuration with errors, a service not ready."""
    # Targets may have been added since the deployment was created.
    if deployment.stable_target is None or deployment.canary_target is None:
        stable, canary = selectors.deployment_targets(deployment.service, deployment.spec)
        deployment.stable_target = deployment.stable_target or stable
        deployment.canary_target = deployment.canary_target or canary
    problems = selectors.start_problems(deployment)
    if problems:
        fields: dict[str, list[str]] = {}
        for issue in problems:
            fields.setdefault(issue["field"], []).append(issue["message"])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TransitionNotAllowed(
            f"The deployment cannot start: {problems[0]['message']}{more}",
            fields=fields,
            code="not_ready",
        )


def _reset_phase(ctx: ActionContext, phase: Phase) -> None:
    _fresh_phase(ctx, phase, PhaseStatus.PENDING, started_at=None)


def _begin_phase(ctx: ActionContext, phase: Phase) -> None:
    _fresh_phase(ctx, phase, PhaseStatus.RUNNING, started_at=ctx.now)


def _fresh_phase(
    ctx: ActionContext, phase: Phase, status: str, *, started_at: datetime | None
) -> None:
    """The phase with nothing observed or judged yet: before a start, or as a retry leaves it."""
    phase.status = status
    phase.started_at = started_at
    phase.ended_at = None
    phase.observations = {}
    phase.judgement = {}
    phase.judged_at = None
    phase.ready_at = None
    phase.breach_seen_at = None
    ctx.batch.save_phase(phase)


def _end_phase(ctx: ActionContext, phase: Phase, status: str) -> None:
    phase.status = status
    phase.ended_at = ctx.now
    ctx.batch.save_phase(phase)


# ---------------------------------------------------------------------------- traffic effects


def _set_traffic(
    ctx: ActionContext,
    share: Decimal,
    *,
    enable: bool = False,
    release: bool = False,
) -> dict[str, Any]:
    """The canary's share in the deployment's routing rule and every linked flag's rollout,
    written with the batch in the caller's transaction. Returns what is set, for the event's
    evidence (the rule's id is filled in once the rule is written)."""
    deployment = ctx.deployment
    share = percent(share)
    done: dict[str, Any] = {"canaryShare": float(share)}
    done["rule"] = _set_rule_weights(ctx, share)
    flags: dict[str, str] = {}
    links = ctx.batch.flags.get(deployment.pk, [])
    writer = ctx.writer()

    def set_flags() -> None:
        for index, flag in enumerate(links):
            if enable and flag.status == FlagStatus.DISABLED:
                flag = flag_services.flag_enable(flag=flag, **writer)
            flag = flag_services.flag_set_rollout(
                flag=flag, percentage=share, controlled_by=deployment.controller, **writer
            )
            if release:
                flag = flag_services.flag_release_control(
                    flag=flag, controlled_by=deployment.controller, **writer
                )
            links[index] = flag
            flags[flag.key] = f"{share}%" if flag.status != FlagStatus.KILLED else "killed"

    if links:
        ctx.batch.later.append(set_flags)
    done["flags"] = flags
    deployment.canary_share = share
    return done


def _out_of_traffic(ctx: ActionContext, *, with_flags: bool = True) -> dict[str, Any]:
    """Canary weight 0 and every linked flag off, now (the flags are left to a plan's own
    action without ``with_flags``). A flag or a rule that cannot be changed (killed already, driven
    by someone else, edited by hand) is reported, never allowed to stop the rollback."""
    deployment = ctx.deployment
    done: dict[str, Any] = {"canaryShare": 0.0}
    done["rule"] = _set_rule_weights(ctx, _ZERO, create=False, tolerant=True)
    flags: dict[str, str] = {}
    links = ctx.batch.flags.get(deployment.pk, [])
    writer = ctx.writer()

    def flags_off() -> None:
        for index, flag in enumerate(links):
            flags[flag.key], links[index] = _flag_off(deployment, flag, writer)

    if links and with_flags:
        ctx.batch.later.append(flags_off)
    done["flags"] = flags
    deployment.canary_share = _ZERO
    return done


def _flag_off(deployment: Deployment, flag: Flag, writer: Mapping[str, Any]) -> tuple[str, Flag]:
    controller = deployment.controller
    notes = []
    try:
        if flag.controlled_by in ("", controller):
            flag = flag_services.flag_set_rollout(
                flag=flag, percentage=0, controlled_by=controller, **writer
            )
        if flag.status == FlagStatus.ENABLED:
            flag = flag_services.flag_disable(flag=flag, **writer)
        if flag.controlled_by == controller:
            flag = flag_services.flag_release_control(flag=flag, controlled_by=controller, **writer)
    except CanaryError as error:
        notes.append(error.message)
    state = "killed" if flag.status == FlagStatus.KILLED else "off"
    return (f"{state} ({'; '.join(notes)})" if notes else state), flag


def _set_rule_weights(
    ctx: ActionContext, share: Decimal, *, create: bool = True, tolerant: bool = False
) -> Any:
    """Split the service between the stable and the canary target in the deployment's rule,
    creating (or re-enabling) the rule when the canary enters traffic. Returns what is set;
    the batch fills in the rule's id once it is written."""
    deployment = ctx.deployment
    stable, canary = deployment.stable_target, deployment.canary_target
    if stable is None or canary is None:
        # Nothing routes to a canary without a target; the start check requires both.
        return None
    weights = {stable.name: _HUNDRED - share, canary.name: share}
    plan = ctx.batch.rules.get(deployment.pk)
    exists = deployment.routing_rule is not None or (plan is not None and plan.create)
    if not exists and not create:
        return None
    plan = ctx.batch.rule_plan(deployment, ctx.attribution())
    plan.tolerant = plan.tolerant or tolerant
    if not exists:
        plan.create = True
        plan.enabled = True
    elif not plan.currently_enabled():
        if not create:
            return {"id": deployment.routing_rule_id, "weights": {}}
        plan.enabled = True
    plan.weights = weights
    report: dict[str, Any] = {
        "id": deployment.routing_rule_id,
        "weights": {name: float(value) for name, value in weights.items()},
    }
    plan.reports.append(report)
    return report


def _retire_rule(ctx: ActionContext) -> None:
    """A finished deployment's rule is disabled, not deleted: requests take the service's
    default route (its stable version, the canary's after a success), no old catch-all rule
    shadows the next deployment's, and a retry enables it again."""
    deployment = ctx.deployment
    plan = ctx.batch.rules.get(deployment.pk)
    if deployment.routing_rule is None and (plan is None or not plan.create):
        return
    plan = ctx.batch.rule_plan(deployment, ctx.attribution())
    if plan.currently_enabled():
        plan.enabled = False
