"""What each step of a rollback execution does (`rollback.plans.StepType`).

Every step is idempotent: a worker that dies half way through one leaves it running, and the
next worker runs it again from the start without harm (a share already reached is not set
again, a flag already off stays off, a webhook carries the same idempotency key). A step
answers `Done`, `Wait` (look again at a moment: a drain, a pace, a retry) or `Failed`; the
runner enforces its timeout. In a rehearsal nothing moves: traffic and flag steps say what they
would do, webhooks get the dry-run header, validation really runs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from canary_site.exceptions import CanaryError
from deployments import judging, transitions
from deployments.lifecycle import Action
from deployments.models import Deployment
from flags import services as flag_services
from flags.choices import FlagStatus
from flags.models import Flag
from health import notifications as health_notifications
from health import services as health_services
from health import store
from rollback import plans
from rollback.models import RollbackExecution, RollbackStep
from routing import selectors as routing_selectors
from routing import services as routing_services

RUNNER = "its rollback plan"
"""The runner's name on a deployment it rolls back (`deployments.rollbacks`)."""

DRY_RUN_HEADER = "X-Canary-Dry-Run"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# How far back validation reads stable's requests: long enough to hold a fair sample, short
# enough to be the load stable carries now that the canary's share has moved to it.
VALIDATION_WINDOW_SECONDS = 60
POLL = timedelta(seconds=1)


@dataclass(frozen=True)
class Done:
    output: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False


@dataclass(frozen=True)
class Wait:
    """Look again at ``until``; with ``attempt``, the next look is a new try (a retry)."""

    until: datetime
    output: dict[str, Any] = field(default_factory=dict)
    attempt: bool = False


@dataclass(frozen=True)
class Failed:
    error: str
    output: dict[str, Any] = field(default_factory=dict)


Result = Done | Wait | Failed


@dataclass
class StepContext:
    execution: RollbackExecution
    deployment: Deployment
    plan: plans.Plan
    step: RollbackStep
    now: datetime

    @property
    def rehearsal(self) -> bool:
        return self.execution.rehearsal

    def timed_out(self) -> bool:
        started = self.step.started_at or self.now
        return self.now >= started + timedelta(milliseconds=self.step.timeout_ms)


# --------------------------------------------------------------------------- traffic


def _set_share(ctx: StepContext, share: Decimal) -> Result:
    deployment = ctx.deployment
    if ctx.rehearsal:
        return Done(
            {"wouldSetCanaryShare": float(share), "canaryShare": float(deployment.canary_share)}
        )
    if deployment.canary_share <= share:
        # Reached already (by this step before a worker died, or by the rollback's start).
        return Done({"canaryShare": float(deployment.canary_share)})
    (result,) = transitions.deployments_transition(
        requests=[
            transitions.TransitionRequest(
                deployment_id=deployment.pk,
                action=Action.STEP_ROLLBACK,
                reason=f"Rollback #{ctx.execution.pk}: {ctx.step.name}.",
                share=share,
                runner=RUNNER,
                trigger=ctx.execution.trigger,
            )
        ],
        source="system",
        now=ctx.now,
    )
    if result.error is not None:
        if getattr(result.error, "code", "") == "busy":
            return Wait(ctx.now + POLL, {"note": "the deployment's row is busy"})
        return Failed(result.error.message)
    assert result.deployment is not None
    ctx.deployment = result.deployment
    return Done({"canaryShare": float(result.deployment.canary_share), **_evidence(result)})


def _evidence(result: transitions.TransitionResult) -> dict[str, Any]:
    event = result.event
    return {"traffic": event.evidence.get("traffic")} if event is not None else {}


def stop_new_traffic(ctx: StepContext) -> Result:
    return _set_share(ctx, Decimal("0"))


def set_share(ctx: StepContext) -> Result:
    return _set_share(ctx, Decimal(str(ctx.step.config.get("share", "0"))))


def set_weights(ctx: StepContext) -> Result:
    return _set_share(ctx, Decimal(str(ctx.step.config.get("canaryPercentage", 0))))


def drain_connections(ctx: StepContext) -> Result:
    """The canary's target takes no new request in any proxy; done when the proxies report
    nothing in flight to it, or (said so) when the step's time is up."""
    target = ctx.deployment.canary_target
    if target is None:
        return Done({"note": "the deployment has no canary target"})
    if not ctx.rehearsal:
        target = routing_services.target_drain_start(
            target=target, reason=f"Rollback #{ctx.execution.pk}: drain the canary."
        )
    status = routing_selectors.drain_status(target=target)
    output = {"target": target.name, "inFlight": status.in_flight, "proxies": status.proxies}
    if ctx.rehearsal:
        return Done({**output, "note": "rehearsal: not drained"})
    if status.drained:
        return Done(output)
    if ctx.timed_out():
        return Done(
            {**output, "note": "the timeout passed with requests in flight"}, timed_out=True
        )
    return Wait(ctx.now + timedelta(milliseconds=250), output)


def release_targets(ctx: StepContext) -> Result:
    """The canary's target leaves the drain it was kept in; the rollback's end retires the
    rule, so it takes no traffic until a deployment gives it some."""
    target = ctx.deployment.canary_target
    if target is None or ctx.rehearsal:
        return Done({"note": "rehearsal: not released" if ctx.rehearsal else "no canary target"})
    if target.draining_since is not None:
        routing_services.target_drain_end(target=target, reason=f"Rollback #{ctx.execution.pk}.")
    return Done({"target": target.name})


def keep_warm(ctx: StepContext) -> Result:
    started = ctx.step.started_at or ctx.now
    until = started + timedelta(milliseconds=int(ctx.step.config.get("durationMs", 0)))
    if ctx.now >= until or ctx.rehearsal:
        return Done({"warmUntil": until.isoformat()})
    return Wait(until, {"warmUntil": until.isoformat()})


# --------------------------------------------------------------------------- flags


def update_feature_flags(ctx: StepContext) -> Result:
    config = ctx.step.config
    keys = config.get("flags") or []
    if keys:
        flags = list(Flag.objects.filter(key__in=keys).order_by("key"))
        missing = sorted(set(keys) - {flag.key for flag in flags})
    else:
        flags = list(ctx.deployment.flags.order_by("key"))
        missing = []
    percentage = config.get("percentage")
    done: dict[str, str] = {}
    notes: list[str] = [f"no flag {key!r}" for key in missing]
    writer = {"source": "system", "reason": f"Rollback #{ctx.execution.pk}: {ctx.step.name}."}
    for flag in flags:
        if ctx.rehearsal:
            done[flag.key] = f"would be {percentage}%" if percentage is not None else "would be off"
            continue
        try:
            if percentage is not None:
                flag = flag_services.flag_set_rollout(
                    flag=flag, percentage=Decimal(str(percentage)), **writer
                )
                done[flag.key] = f"{percentage}%"
            else:
                if flag.status == FlagStatus.ENABLED:
                    flag = flag_services.flag_disable(flag=flag, **writer)
                done[flag.key] = "killed" if flag.status == FlagStatus.KILLED else "off"
        except CanaryError as error:
            # A flag someone else drives or has killed is reported, never a stopped rollback.
            notes.append(f"{flag.key}: {error.message}")
    return Done({"flags": done, **({"notes": notes} if notes else {})})


# --------------------------------------------------------------------------- webhooks, news


def call_webhook(ctx: StepContext) -> Result:
    """A signed POST with the same idempotency key on every attempt; 2xx is done, anything else
    is tried again until the step's time is up."""
    config = ctx.step.config
    execution = ctx.execution
    payload = {
        "event": "rollback.step",
        "execution": execution.pk,
        "deployment": ctx.deployment.pk,
        "service": execution.service,
        "trigger": execution.trigger,
        "rehearsal": execution.rehearsal,
        "step": ctx.step.key,
        "reason": execution.reason,
    }
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    key = f"rollback-{execution.pk}-{ctx.step.key}"
    headers = {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: key,
        health_notifications.DELIVERY_HEADER: key,
        **{str(k): str(v) for k, v in (config.get("headers") or {}).items()},
    }
    secret = config.get("secret") or health_notifications.conf.webhook_secret()
    if secret:
        headers[health_notifications.SIGNATURE_HEADER] = health_notifications.sign(body, secret)
    if execution.rehearsal:
        headers[DRY_RUN_HEADER] = "true"
    request = urllib.request.Request(config["url"], data=body, headers=headers, method="POST")
    left = max(0.1, (ctx.step.timeout_ms / 1000) - _elapsed(ctx))
    try:
        with urllib.request.urlopen(request, timeout=min(left, 10.0)) as response:
            status = response.status
            answer = response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, answer = error.code, ""
    except (urllib.error.URLError, OSError) as error:
        status, answer = 0, str(getattr(error, "reason", error))
    output = {"status": status, "idempotencyKey": key, "answer": answer[:500]}
    if 200 <= status < 300:
        return Done(output)
    if ctx.timed_out():
        return Failed(f"the webhook answered {status or 'nothing'}: {answer[:200]}", output)
    return Wait(ctx.now + POLL, output, attempt=True)


def _elapsed(ctx: StepContext) -> float:
    started = ctx.step.started_at or ctx.now
    return (ctx.now - started).total_seconds()


def notify(ctx: StepContext) -> Result:
    config = ctx.step.config
    notifications = ctx.plan.notifications
    channels = config.get("channels") or list(notifications.channels)
    recipients = config.get("recipients") or list(notifications.recipients)
    message = config.get("message") or f"Rollback #{ctx.execution.pk} of {ctx.execution.service}."
    if not channels:
        return Done({"note": "no channels to tell"})
    if ctx.rehearsal:
        return Done({"wouldTell": channels, "recipients": recipients})
    ids = queue_news(ctx.execution, ctx.step.key, message, channels=channels, recipients=recipients)
    return Done({"queued": len(ids), "channels": channels})


def queue_news(
    execution: RollbackExecution,
    what: str,
    text: str,
    *,
    channels: list[str] | tuple[str, ...],
    recipients: list[str] | tuple[str, ...],
    now: datetime | None = None,
) -> list[int]:
    """Queue news of ``execution`` to ``channels``, once per execution and ``what``."""
    policy = execution.deployment.health_policy or judging.default_policy()
    subject = f"[canary] {execution.service}: {text}"[:200]
    payload = {
        "event": f"rollback.{what}",
        "text": text,
        "execution": execution.pk,
        "deployment": execution.deployment_id,
        "service": execution.service,
        "state": execution.state,
        "trigger": execution.trigger,
        "rehearsal": execution.rehearsal,
    }
    return health_services.notifications_queue_many(
        news=[
            health_services.News(
                key=f"rollback:{execution.pk}:{what}",
                policy=policy,
                subject=subject,
                payload=payload,
                channels=list(channels),
                recipients=list(recipients),
            )
        ],
        now=now,
    )


# --------------------------------------------------------------------------- validation


def validate(ctx: StepContext) -> Result:
    """Stable answers its health check path and the success criteria hold for it under the
    load it carries now; tried again after ``retryDelayMs`` up to ``retryAttempts`` times."""
    validation = ctx.plan.validation
    if not validation.enabled:
        validation = plans.Validation(enabled=True, criteria=(_HEALTH_CHECK,))
    report = validation_report(ctx.deployment, validation, ctx.now)
    ctx.execution.validation = report
    if report["passed"]:
        return Done(report)
    if ctx.step.attempts <= validation.retry_attempts and not ctx.timed_out():
        return Wait(
            ctx.now + timedelta(milliseconds=validation.retry_delay_ms), report, attempt=True
        )
    return Failed(f"Stable did not validate: {report['summary']}", report)


_HEALTH_CHECK = plans.Criterion(plans.CriterionType.HEALTH_CHECK, 1.0, True, None)


def validation_report(
    deployment: Deployment, validation: plans.Validation, now: datetime
) -> dict[str, Any]:
    """Each criterion's result for stable, the weighted score, and whether it passed: every
    required criterion holds, and with none required, at least half the weight does."""
    results = []
    rates = _stable_rates(deployment, now)
    for criterion in validation.criteria:
        if criterion.type == plans.CriterionType.HEALTH_CHECK:
            ok, detail = _health_check(deployment, validation)
        else:
            ok, detail = _criterion(criterion, rates)
        results.append(
            {
                "type": criterion.type.value,
                "required": criterion.required,
                "weight": criterion.weight,
                "passed": ok,
                "detail": detail,
            }
        )
    total = sum(result["weight"] for result in results) or 1.0
    score = sum(result["weight"] for result in results if result["passed"]) / total
    required = [result for result in results if result["required"]]
    passed = all(r["passed"] for r in required) if required else score >= 0.5
    failing = [f"{r['type']}: {r['detail']}" for r in results if not r["passed"]]
    return {
        "passed": passed,
        "score": round(score, 3),
        "criteria": results,
        "summary": "; ".join(failing) if failing else "every criterion held",
        "at": now.isoformat(),
    }


def _health_check(deployment: Deployment, validation: plans.Validation) -> tuple[bool, str]:
    target = deployment.stable_target
    if target is None:
        return False, "the deployment has no stable target"
    url = target.endpoint.rstrip("/") + validation.health_check_path
    request = urllib.request.Request(url, headers={"User-Agent": "canary-rollback-validation"})
    try:
        with urllib.request.urlopen(request, timeout=validation.timeout_ms / 1000) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        return False, f"GET {url} failed: {getattr(error, 'reason', error)}"
    return 200 <= status < 300, f"GET {url} answered {status}"


def _stable_rates(deployment: Deployment, now: datetime) -> dict[str, Any]:
    groups = store.grouped(
        services=[deployment.service.name],
        spans=[([deployment.stable_version], VALIDATION_WINDOW_SECONDS)],
        end=now,
        group_seconds=VALIDATION_WINDOW_SECONDS,
    )
    requests = sum(group.requests for group in groups if group.index == 0)
    errors = sum(min(group.errors, group.requests) for group in groups if group.index == 0)
    p95 = None
    for group in groups:
        if group.index == 0 and group.latency_text:
            histogram = group.histogram()
            if histogram.total:
                p95 = histogram.percentile(95)
    return {"requests": requests, "errors": errors, "latency_p95": p95}


def _criterion(criterion: plans.Criterion, rates: dict[str, Any]) -> tuple[bool, str]:
    requests, errors = rates["requests"], rates["errors"]
    bar = criterion.threshold
    if criterion.type == plans.CriterionType.LATENCY_P95:
        p95 = rates["latency_p95"]
        if p95 is None:
            return False, "no latency measured for stable"
        return p95 <= bar, f"p95 {p95:.0f} ms (at most {bar:g} ms)"
    if not requests:
        return False, f"no requests to stable in the last {VALIDATION_WINDOW_SECONDS} s"
    rate = 100.0 * errors / requests
    if criterion.type == plans.CriterionType.ERROR_RATE:
        return (
            rate <= bar,
            f"{errors} errors in {requests} requests ({rate:.2f}%, at most {bar:g}%)",
        )
    availability = 100.0 - rate
    return (
        availability >= bar,
        f"availability {availability:.2f}% over {requests} requests (at least {bar:g}%)",
    )


ACTIONS: dict[str, Callable[[StepContext], Result]] = {
    plans.StepType.STOP_NEW_TRAFFIC: stop_new_traffic,
    plans.StepType.SET_SHARE: set_share,
    plans.StepType.SET_WEIGHTS: set_weights,
    plans.StepType.DRAIN_CONNECTIONS: drain_connections,
    plans.StepType.UPDATE_FEATURE_FLAGS: update_feature_flags,
    plans.StepType.CALL_WEBHOOK: call_webhook,
    plans.StepType.NOTIFY: notify,
    plans.StepType.VALIDATE: validate,
    plans.StepType.KEEP_WARM: keep_warm,
    plans.StepType.RELEASE_TARGETS: release_targets,
}
