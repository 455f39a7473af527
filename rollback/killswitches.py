"""Kill switches: the reader of a switch in the guide's vocabulary, and the judge of its trigger
conditions.

Pure Python (no Django, no database). A switch looks like ``killSwitchService.createConfig``::

    name: checkout-stop
    description: Stop the checkout canary and its flags
    scope: service                     # system | service (the guide's "component") | flag
    targetComponent: checkout          # the service, for scope service
    flags: [new-checkout]              # the flags, for scope flag
    deploymentAction: pause            # pause | rollback: what becomes of a running canary
    triggerConditions:
      - {type: error_rate_threshold, component: checkout, threshold: 20, windowMs: 60000}
      - {type: latency_threshold, component: checkout, threshold: 1500}
      - {type: availability_threshold, component: checkout, threshold: 95}
      - {type: critical_alert, component: checkout}
      - {type: manual}
    gracePeriodMs: 30000
    priority: critical                 # low | medium | high | critical
    enabled: true
    notifications: {enabled: true, channels: [email], recipients: [oncall@example.com]}
    autoRecovery: {enabled: true, delayMs: 300000, maxAttempts: 3,
                   recoveryActions: [re_enable_flags, restore_traffic, resume_deployments]}

A condition on a rate holds only on evidence: the error rate's exact lower bound (95%) is above
the threshold, the availability's upper bound below it, over at least ``minRequests`` requests
in the window; thin traffic never fires a switch. Latency holds when the window's p95 is above
the threshold over ``minRequests`` requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from canary_site.reading import Section, is_number
from health import sequential


class InvalidKillSwitch(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class Scope(StrEnum):
    SYSTEM = "system"
    SERVICE = "service"
    FLAG = "flag"


class ConditionType(StrEnum):
    ERROR_RATE = "error_rate_threshold"
    LATENCY = "latency_threshold"
    AVAILABILITY = "availability_threshold"
    CRITICAL_ALERT = "critical_alert"
    MANUAL = "manual"


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class DeploymentAction(StrEnum):
    PAUSE = "pause"
    ROLLBACK = "rollback"


class RecoveryAction(StrEnum):
    RE_ENABLE_FLAGS = "re_enable_flags"
    RESTORE_TRAFFIC = "restore_traffic"
    RESUME_DEPLOYMENTS = "resume_deployments"


PRIORITY_ORDER = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}
DEFAULT_WINDOW_MS = 60_000
DEFAULT_MIN_REQUESTS = 20
# One-sided 95%: the normal quantile the exact bound takes.
CONFIDENCE_Z = 1.645


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    service: str = ""
    threshold: float = 0.0
    window_ms: int = DEFAULT_WINDOW_MS
    min_requests: int = DEFAULT_MIN_REQUESTS

    @property
    def watches_metrics(self) -> bool:
        return self.type in (
            ConditionType.ERROR_RATE,
            ConditionType.LATENCY,
            ConditionType.AVAILABILITY,
        )


@dataclass(frozen=True)
class AutoRecovery:
    enabled: bool = False
    delay_ms: int = 300_000
    max_attempts: int = 3
    actions: tuple[RecoveryAction, ...] = tuple(RecoveryAction)


@dataclass(frozen=True)
class KillSwitchSpec:
    name: str
    description: str = ""
    scope: Scope = Scope.SYSTEM
    service: str = ""
    flags: tuple[str, ...] = ()
    deployment_action: DeploymentAction = DeploymentAction.PAUSE
    conditions: tuple[Condition, ...] = ()
    grace_period_ms: int = 0
    priority: Priority = Priority.HIGH
    enabled: bool = True
    notify_channels: tuple[str, ...] = ()
    notify_recipients: tuple[str, ...] = ()
    auto_recovery: AutoRecovery = field(default_factory=AutoRecovery)

    @property
    def automatic(self) -> bool:
        return any(c.type != ConditionType.MANUAL for c in self.conditions)


_Section = Section


KEYS = (
    "name",
    "description",
    "type",
    "scope",
    "targetComponent",
    "service",
    "flags",
    "targetFlags",
    "deploymentAction",
    "triggerConditions",
    "gracePeriodMs",
    "priority",
    "enabled",
    "notifications",
    "autoRecovery",
)
_SCOPE_ALIASES = {"component": "service"}
_CONDITION_ALIASES = {
    "error_rate": "error_rate_threshold",
    "latency": "latency_threshold",
    "latency_p95": "latency_threshold",
    "availability": "availability_threshold",
    "alert": "critical_alert",
}


def read_kill_switch(data: Any) -> KillSwitchSpec:
    """The typed switch of ``data``; `InvalidKillSwitch` naming the field otherwise."""
    top = _Section(data, "", InvalidKillSwitch, top="kill switch")
    top.only(*KEYS)
    scope = top.choice("scope", Scope, Scope.SYSTEM.value, _SCOPE_ALIASES)
    service_key = "targetComponent" if "targetComponent" in top.data else "service"
    service = top.text(service_key, "", limit=100)
    flags_key = "targetFlags" if "targetFlags" in top.data else "flags"
    flags = top.words(flags_key)
    if scope == Scope.SERVICE and not service:
        top.fail("targetComponent", "names the service a service switch stops")
    if scope == Scope.FLAG and not flags:
        top.fail(flags_key, "lists the flags a flag switch kills")
    conditions = tuple(_condition(item, service) for item in top.objects("triggerConditions"))
    notifications = top.object("notifications")
    notifications.only("enabled", "channels", "recipients")
    recovery = top.object("autoRecovery")
    recovery.only("enabled", "delayMs", "maxAttempts", "recoveryActions")
    actions = tuple(
        RecoveryAction(_word(path, item, RecoveryAction))
        for path, item in recovery.items("recoveryActions")
    )
    return KillSwitchSpec(
        name=top.text("name", limit=100),
        description=top.text("description", "", limit=2000),
        scope=scope,
        service=service,
        flags=flags,
        deployment_action=top.choice(
            "deploymentAction", DeploymentAction, DeploymentAction.PAUSE.value
        ),
        conditions=conditions,
        grace_period_ms=top.integer("gracePeriodMs", 0, maximum=24 * 3_600_000),
        priority=top.choice("priority", Priority, Priority.HIGH.value),
        enabled=top.boolean("enabled", True),
        notify_channels=notifications.words("channels")
        if notifications.boolean("enabled", bool(notifications.data))
        else (),
        notify_recipients=notifications.words("recipients"),
        auto_recovery=AutoRecovery(
            enabled=recovery.boolean("enabled", False),
            delay_ms=recovery.integer("delayMs", 300_000, maximum=7 * 24 * 3_600_000),
            max_attempts=recovery.integer("maxAttempts", 3, minimum=1, maximum=100),
            actions=actions or tuple(RecoveryAction),
        ),
    )


def _word(path: str, value: Any, words: type[StrEnum]) -> str:
    if not isinstance(value, str) or value not in {member.value for member in words}:
        raise InvalidKillSwitch(path, f"must be one of {', '.join(m.value for m in words)}")
    return value


def _condition(item: _Section, default_service: str) -> Condition:
    item.only("type", "component", "service", "threshold", "windowMs", "minRequests")
    kind = item.choice("type", ConditionType, "", _CONDITION_ALIASES)
    service_key = "component" if "component" in item.data else "service"
    service = item.text(service_key, default_service, limit=100) or default_service
    threshold = 0.0
    if kind in (ConditionType.ERROR_RATE, ConditionType.LATENCY, ConditionType.AVAILABILITY):
        if not service:
            item.fail("component", "names the service whose metrics are watched")
        value = item.value("threshold")
        if not is_number(value) or not math.isfinite(value) or value < 0:
            item.fail("threshold", "must be a number of at least 0")
        if kind != ConditionType.LATENCY and value > 100:
            item.fail("threshold", "must be a percentage between 0 and 100")
        threshold = float(value)
    elif kind == ConditionType.CRITICAL_ALERT and not service:
        item.fail("component", "names the service whose critical alerts fire the switch")
    return Condition(
        type=kind,
        service=service if kind != ConditionType.MANUAL else "",
        threshold=threshold,
        window_ms=item.integer("windowMs", DEFAULT_WINDOW_MS, minimum=5_000, maximum=3_600_000),
        min_requests=item.integer("minRequests", DEFAULT_MIN_REQUESTS, minimum=1, maximum=10**6),
    )


# --------------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Window:
    """What one service served over a condition's window (all versions)."""

    requests: int = 0
    errors: int = 0
    latency_p95: float | None = None


@dataclass(frozen=True)
class Reading:
    """A condition's verdict: whether it holds, and the sentence with its numbers."""

    holds: bool
    sentence: str
    numbers: dict[str, Any] = field(default_factory=dict)


def judge(condition: Condition, window: Window | None, critical_alerts: int) -> Reading:
    """Whether ``condition`` holds now, given the service's window and its open critical
    alerts."""
    kind = condition.type
    if kind == ConditionType.MANUAL:
        return Reading(False, "manual only")
    if kind == ConditionType.CRITICAL_ALERT:
        holds = critical_alerts > 0
        return Reading(
            holds,
            f"{critical_alerts} critical alert(s) open on {condition.service}",
            {"criticalAlerts": critical_alerts},
        )
    window = window or Window()
    seconds = condition.window_ms // 1000
    numbers: dict[str, Any] = {
        "requests": window.requests,
        "errors": window.errors,
        "threshold": condition.threshold,
        "windowSeconds": seconds,
    }
    if window.requests < condition.min_requests:
        return Reading(
            False,
            f"{window.requests} requests to {condition.service} in {seconds} s, fewer than the "
            f"{condition.min_requests} a verdict needs",
            numbers,
        )
    if kind == ConditionType.LATENCY:
        p95 = window.latency_p95
        numbers["latencyP95"] = p95
        holds = p95 is not None and p95 > condition.threshold
        shown = "unknown" if p95 is None else f"{p95:.0f} ms"
        return Reading(
            holds,
            f"p95 latency of {condition.service} {shown} over {window.requests} requests "
            f"(threshold {condition.threshold:g} ms)",
            numbers,
        )
    rate = 100.0 * window.errors / window.requests
    lower = 100.0 * float(sequential.exact_lower(window.errors, window.requests, CONFIDENCE_Z))
    numbers.update(errorRate=round(rate, 3), lowerBound=round(lower, 3))
    if kind == ConditionType.ERROR_RATE:
        holds = lower > condition.threshold
        return Reading(
            holds,
            f"{window.errors} errors in {window.requests} requests to {condition.service} "
            f"({rate:.2f}%, at least {lower:.2f}% at 95% confidence; threshold "
            f"{condition.threshold:g}%)",
            numbers,
        )
    # Availability is below the threshold beyond doubt when the error rate's lower bound is
    # above what the threshold leaves.
    availability = 100.0 - rate
    holds = 100.0 - lower < condition.threshold
    numbers["availability"] = round(availability, 3)
    return Reading(
        holds,
        f"availability of {condition.service} {availability:.2f}% over {window.requests} "
        f"requests (at most {100.0 - lower:.2f}% at 95% confidence; threshold "
        f"{condition.threshold:g}%)",
        numbers,
    )


def spec_to_dict(spec: KillSwitchSpec) -> dict[str, Any]:
    """``spec`` in the guide's vocabulary, every default written out."""
    return {
        "name": spec.name,
        "description": spec.description,
        "scope": spec.scope.value,
        "targetComponent": spec.service,
        "flags": list(spec.flags),
        "deploymentAction": spec.deployment_action.value,
        "triggerConditions": [
            {
                "type": c.type.value,
                **({"component": c.service} if c.service else {}),
                **({"threshold": c.threshold} if c.watches_metrics else {}),
                **(
                    {"windowMs": c.window_ms, "minRequests": c.min_requests}
                    if c.watches_metrics
                    else {}
                ),
            }
            for c in spec.conditions
        ],
        "gracePeriodMs": spec.grace_period_ms,
        "priority": spec.priority.value,
        "enabled": spec.enabled,
        "notifications": {
            "enabled": bool(spec.notify_channels),
            "channels": list(spec.notify_channels),
            "recipients": list(spec.notify_recipients),
        },
        "autoRecovery": {
            "enabled": spec.auto_recovery.enabled,
            "delayMs": spec.auto_recovery.delay_ms,
            "maxAttempts": spec.auto_recovery.max_attempts,
            "recoveryActions": [a.value for a in spec.auto_recovery.actions],
        },
    }
