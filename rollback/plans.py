"""Rollback plans: the reader of a plan in the guide's vocabulary, and the steps a plan expands
into for one deployment.

Pure Python (no Django, no database): the services read a plan when it is saved, the validator
when it is checked, the runner when an execution begins. A plan looks like
``rollbackService.createConfig``::

    name: checkout-careful
    strategy: gradual                  # immediate | gradual | phased | blue_green
    strategyConfig: {durationMs: 60000, steps: 4}
    triggers: [automatic, manual]
    autoTriggerEnabled: true
    triggerThresholds:
      - {metric: error_rate, operator: greater_than, threshold: 5, duration: 30,
         consecutiveFailures: 2}
    validation:
      enabled: true
      healthCheckPath: /health
      validationTimeoutMs: 5000
      successCriteria: [{type: health_check, weight: 1, required: true}]
      retryAttempts: 3
      retryDelayMs: 2000
    actions:
      - {id: stop, name: Stop new traffic, type: stop_new_traffic, order: 1, timeoutMs: 30000}
      - {id: drain, name: Drain, type: drain_connections, order: 2, timeoutMs: 60000}
      - {id: flags, name: Flags off, type: update_feature_flags, order: 3, timeoutMs: 15000,
         config: {disable: true}}
    notifications: {enabled: true, onStart: true, onComplete: true, onFailure: true,
                    channels: [email], recipients: [team@example.com]}
    safety: {requireApproval: false, approvers: [], maxRollbackTimeMs: 300000,
             allowConsecutiveRollbacks: false, cooldownPeriodMs: 300000}

How a strategy moves traffic: the plan's ``stop_new_traffic`` action is where the canary leaves
traffic, and the strategy says how (a plan without one gets it first, since a rollback that
leaves the canary in traffic is not one):

- immediate: the canary's share to 0 at once;
- gradual: down in ``steps`` equal steps spread over ``durationMs``;
- phased: back down through the shares of the deployment's own earlier phases, validating
  stable at each, then to 0;
- blue_green: stable validated first (the rollback stops if it is not healthy), all traffic
  switched at once, the canary kept warm at weight 0 for ``keepWarmMs`` before its targets are
  released.

Validation after the traffic has moved is a last step when the plan's validation is on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from canary_site.reading import Section, is_number
from health import analysis


class InvalidPlan(ValueError):
    """A rollback plan that cannot be read; ``field`` is the path of the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class Strategy(StrEnum):
    IMMEDIATE = "immediate"
    GRADUAL = "gradual"
    PHASED = "phased"
    BLUE_GREEN = "blue_green"


class Trigger(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"
    KILL_SWITCH = "kill_switch"


class ActionType(StrEnum):
    STOP_NEW_TRAFFIC = "stop_new_traffic"
    DRAIN_CONNECTIONS = "drain_connections"
    UPDATE_FEATURE_FLAGS = "update_feature_flags"
    SET_WEIGHTS = "set_weights"
    CALL_WEBHOOK = "call_webhook"
    NOTIFY = "notify"
    VALIDATE = "validate"


class StepType(StrEnum):
    """What an execution's step does: the plan's action types, and the steps a strategy adds
    (a share on the way down, keeping the canary warm, releasing its targets)."""

    STOP_NEW_TRAFFIC = "stop_new_traffic"
    SET_SHARE = "set_share"
    DRAIN_CONNECTIONS = "drain_connections"
    UPDATE_FEATURE_FLAGS = "update_feature_flags"
    SET_WEIGHTS = "set_weights"
    CALL_WEBHOOK = "call_webhook"
    NOTIFY = "notify"
    VALIDATE = "validate"
    KEEP_WARM = "keep_warm"
    RELEASE_TARGETS = "release_targets"


class CriterionType(StrEnum):
    HEALTH_CHECK = "health_check"
    ERROR_RATE = "error_rate"
    LATENCY_P95 = "latency_p95"
    AVAILABILITY = "availability"


# The operators of trigger thresholds, in the guide's words and the health judge's.
OPERATORS: dict[str, analysis.Operator] = {
    "greater_than": analysis.Operator.GT,
    "greater_than_or_equal": analysis.Operator.GTE,
    "less_than": analysis.Operator.LT,
    "less_than_or_equal": analysis.Operator.LTE,
    "gt": analysis.Operator.GT,
    "gte": analysis.Operator.GTE,
    "lt": analysis.Operator.LT,
    "lte": analysis.Operator.LTE,
}
TRIGGER_METRICS = (
    analysis.ERROR_RATE,
    analysis.LATENCY_P50,
    analysis.LATENCY_P95,
    analysis.LATENCY_P99,
    analysis.AVAILABILITY,
)
# A criterion's default bar when the plan names none: what "healthy" means for stable.
CRITERION_DEFAULTS: dict[CriterionType, float] = {
    CriterionType.ERROR_RATE: 1.0,
    CriterionType.LATENCY_P95: 1000.0,
    CriterionType.AVAILABILITY: 99.0,
}
MAX_TIMEOUT_MS = 3_600_000
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_ROLLBACK_MS = 300_000
DEFAULT_KEEP_WARM_MS = 60_000
DEFAULT_GRADUAL_MS = 60_000
DEFAULT_GRADUAL_STEPS = 4


@dataclass(frozen=True)
class TriggerThreshold:
    metric: str
    operator: analysis.Operator
    threshold: float
    duration_ms: int
    consecutive_failures: int


@dataclass(frozen=True)
class Criterion:
    type: CriterionType
    weight: float
    required: bool
    threshold: float | None


@dataclass(frozen=True)
class Validation:
    enabled: bool = False
    health_check_path: str = "/health"
    timeout_ms: int = 5_000
    criteria: tuple[Criterion, ...] = ()
    retry_attempts: int = 0
    retry_delay_ms: int = 1_000

    @property
    def worst_case_ms(self) -> int:
        """Every attempt timing out, with the delay between them."""
        if not self.enabled:
            return 0
        attempts = self.retry_attempts + 1
        return attempts * self.timeout_ms + self.retry_attempts * self.retry_delay_ms


@dataclass(frozen=True)
class PlanAction:
    id: str
    name: str
    type: ActionType
    order: int
    timeout_ms: int
    config: dict[str, Any]


@dataclass(frozen=True)
class Notifications:
    enabled: bool = False
    on_start: bool = True
    on_progress: bool = False
    on_complete: bool = True
    on_failure: bool = True
    channels: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Safety:
    require_approval: bool = False
    approvers: tuple[str, ...] = ()
    max_rollback_time_ms: int = DEFAULT_MAX_ROLLBACK_MS
    allow_consecutive_rollbacks: bool = True
    cooldown_period_ms: int = 0


@dataclass(frozen=True)
class Plan:
    name: str
    description: str = ""
    strategy: Strategy = Strategy.IMMEDIATE
    gradual_duration_ms: int = DEFAULT_GRADUAL_MS
    gradual_steps: int = DEFAULT_GRADUAL_STEPS
    keep_warm_ms: int = DEFAULT_KEEP_WARM_MS
    triggers: tuple[Trigger, ...] = (Trigger.AUTOMATIC, Trigger.MANUAL)
    auto_trigger_enabled: bool = True
    trigger_thresholds: tuple[TriggerThreshold, ...] = ()
    validation: Validation = field(default_factory=Validation)
    actions: tuple[PlanAction, ...] = ()
    notifications: Notifications = field(default_factory=Notifications)
    safety: Safety = field(default_factory=Safety)

    def allows(self, trigger: Trigger | str) -> bool:
        """Whether this plan runs for ``trigger``; a kill switch counts as automatic."""
        trigger = Trigger(trigger)
        if trigger == Trigger.KILL_SWITCH:
            trigger = Trigger.AUTOMATIC
        return trigger in self.triggers

    @property
    def takes_traffic_at_once(self) -> bool:
        """Whether the canary's share goes to 0 in the rollback's first step (so in the very
        transaction that starts it)."""
        return self.strategy == Strategy.IMMEDIATE and _traffic_first(self.actions)


BUILTIN = Plan(
    name="built-in immediate",
    description="All canary traffic to stable at once and the linked flags off.",
    strategy=Strategy.IMMEDIATE,
)
"""What rolls a deployment back when no plan covers it."""


# --------------------------------------------------------------------------------- reading


class _Section(Section):
    __slots__ = ()

    def number(self, key: str, *, minimum: float | None = None) -> float:
        value = self.value(key)
        if not is_number(value) or not math.isfinite(value):
            self.fail(key, "must be a number")
        if minimum is not None and value < minimum:
            self.fail(key, f"must be at least {minimum:g}")
        return float(value)


PLAN_KEYS = (
    "name",
    "description",
    "type",
    "service",
    "deploymentId",
    "isDefault",
    "enabled",
    "strategy",
    "strategyConfig",
    "triggers",
    "autoTriggerEnabled",
    "triggerThresholds",
    "validation",
    "actions",
    "notifications",
    "safety",
)


def read_plan(data: Any) -> Plan:
    """The typed plan of ``data`` (a dict in the guide's vocabulary); `InvalidPlan` naming the
    field otherwise. ``service``, ``deploymentId`` and ``isDefault`` say where the plan
    applies; the services read them, the plan itself does not need them."""
    top = _Section(data, "", InvalidPlan, top="plan")
    top.only(*PLAN_KEYS)
    strategy = top.choice("strategy", Strategy, Strategy.IMMEDIATE.value)
    tuning = top.object("strategyConfig")
    tuning.only("durationMs", "steps", "keepWarmMs", "validateEachPhase")
    triggers = tuple(
        Trigger(_word(path, item, Trigger)) for path, item in top.items("triggers")
    ) or (Trigger.AUTOMATIC, Trigger.MANUAL)
    plan = Plan(
        name=top.text("name", limit=100),
        description=top.text("description", "", limit=2000),
        strategy=strategy,
        gradual_duration_ms=tuning.integer(
            "durationMs", DEFAULT_GRADUAL_MS, minimum=0, maximum=MAX_TIMEOUT_MS
        ),
        gradual_steps=tuning.integer("steps", DEFAULT_GRADUAL_STEPS, minimum=1, maximum=20),
        keep_warm_ms=tuning.integer(
            "keepWarmMs", DEFAULT_KEEP_WARM_MS, minimum=0, maximum=MAX_TIMEOUT_MS
        ),
        triggers=tuple(dict.fromkeys(triggers)),
        auto_trigger_enabled=top.boolean("autoTriggerEnabled", True),
        trigger_thresholds=tuple(
            _threshold(section) for section in top.objects("triggerThresholds")
        ),
        validation=_validation(top.object("validation")),
        actions=_actions(top),
        notifications=_notifications(top.object("notifications")),
        safety=_safety(top.object("safety")),
    )
    return plan


def _word(path: str, value: Any, words: type[StrEnum]) -> str:
    spelled = value.replace("-", "_") if isinstance(value, str) else value
    if spelled not in {member.value for member in words}:
        allowed = ", ".join(member.value for member in words)
        raise InvalidPlan(path, f"must be one of {allowed}")
    return spelled


def _threshold(section: _Section) -> TriggerThreshold:
    section.only("metric", "operator", "threshold", "duration", "durationMs", "consecutiveFailures")
    metric = section.value("metric")
    if metric not in TRIGGER_METRICS:
        section.fail("metric", f"must be one of {', '.join(TRIGGER_METRICS)}")
    operator = section.value("operator", "greater_than")
    if operator not in OPERATORS:
        section.fail("operator", f"must be one of {', '.join(OPERATORS)}")
    # The guide's ``duration`` is in seconds; ``durationMs`` says the same in milliseconds.
    if "durationMs" in section.data:
        duration_ms = section.integer("durationMs", 0, maximum=MAX_TIMEOUT_MS)
    else:
        duration_ms = 1000 * section.integer("duration", 60, minimum=0, maximum=3600)
    return TriggerThreshold(
        metric=metric,
        operator=OPERATORS[operator],
        threshold=section.number("threshold", minimum=0),
        duration_ms=duration_ms,
        consecutive_failures=section.integer("consecutiveFailures", 1, minimum=1, maximum=100),
    )


def _validation(section: _Section) -> Validation:
    section.only(
        "enabled",
        "healthCheckPath",
        "validationTimeoutMs",
        "successCriteria",
        "retryAttempts",
        "retryDelayMs",
    )
    path = section.text("healthCheckPath", "/health", limit=500)
    if not path.startswith("/"):
        section.fail("healthCheckPath", "must start with /")
    criteria = []
    for item in section.objects("successCriteria"):
        item.only("type", "weight", "required", "threshold")
        kind = item.choice("type", CriterionType)
        threshold = None
        if item.data.get("threshold") is not None:
            threshold = item.number("threshold", minimum=0)
        weight = item.data.get("weight", 1)
        if not is_number(weight) or not math.isfinite(weight) or weight <= 0:
            item.fail("weight", "must be a number above 0")
        criteria.append(
            Criterion(
                type=kind,
                weight=float(weight),
                required=item.boolean("required", True),
                threshold=threshold if threshold is not None else CRITERION_DEFAULTS.get(kind),
            )
        )
    enabled = section.boolean("enabled", bool(section.data))
    if enabled and not criteria:
        criteria.append(Criterion(CriterionType.HEALTH_CHECK, 1.0, True, None))
    return Validation(
        enabled=enabled,
        health_check_path=path,
        timeout_ms=section.integer("validationTimeoutMs", 5_000, minimum=100, maximum=600_000),
        criteria=tuple(criteria),
        retry_attempts=section.integer("retryAttempts", 0, maximum=20),
        retry_delay_ms=section.integer("retryDelayMs", 1_000, maximum=600_000),
    )


def _actions(top: _Section) -> tuple[PlanAction, ...]:
    actions: list[PlanAction] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(top.objects("actions")):
        item.only("id", "name", "type", "order", "timeoutMs", "config")
        kind = item.choice("type", ActionType)
        identifier = item.text("id", f"{kind.value}-{index + 1}", limit=100)
        if identifier in seen:
            item.fail("id", f"is used twice (also {seen[identifier]})")
        seen[identifier] = item.field("id")
        config = item.object("config")
        _check_config(kind, config)
        actions.append(
            PlanAction(
                id=identifier,
                name=item.text("name", kind.value.replace("_", " ").capitalize(), limit=200),
                type=kind,
                order=item.integer("order", index + 1, minimum=0, maximum=1000),
                timeout_ms=item.integer(
                    "timeoutMs", DEFAULT_TIMEOUT_MS, minimum=100, maximum=MAX_TIMEOUT_MS
                ),
                config=dict(config.data),
            )
        )
    # A stable sort: actions of equal order keep the order they were written in.
    return tuple(sorted(actions, key=lambda action: action.order))


def _check_config(kind: ActionType, config: _Section) -> None:
    """Each action's ``config``, checked when the plan is saved rather than when it runs."""
    if kind == ActionType.UPDATE_FEATURE_FLAGS:
        config.only("disable", "percentage", "flags")
        disable = config.boolean("disable", True)
        if config.data.get("percentage") is not None:
            percentage = config.number("percentage", minimum=0)
            if percentage > 100:
                config.fail("percentage", "must be between 0 and 100")
        elif not disable:
            config.fail("disable", "must be true unless a percentage is given")
        config.words("flags")
    elif kind == ActionType.SET_WEIGHTS:
        config.only("canaryPercentage")
        share = config.number("canaryPercentage", minimum=0) if config.data else 0.0
        if share > 100:
            config.fail("canaryPercentage", "must be between 0 and 100")
    elif kind == ActionType.CALL_WEBHOOK:
        config.only("url", "secret", "headers")
        url = config.text("url", limit=2000)
        if not url.startswith(("http://", "https://")):
            config.fail("url", "must be an http:// or https:// address")
        config.text("secret", "", limit=500)
        headers = config.object("headers")
        for key, value in headers.data.items():
            if not isinstance(value, str):
                headers.fail(str(key), "must be a string")
    elif kind == ActionType.NOTIFY:
        config.only("message", "channels", "recipients")
        config.text("message", "", limit=2000)
        config.words("channels")
        config.words("recipients")
    else:
        # Stopping traffic, draining and validating take their settings from the plan.
        config.only()


def _notifications(section: _Section) -> Notifications:
    section.only(
        "enabled", "onStart", "onProgress", "onComplete", "onFailure", "channels", "recipients"
    )
    return Notifications(
        enabled=section.boolean("enabled", bool(section.data)),
        on_start=section.boolean("onStart", True),
        on_progress=section.boolean("onProgress", False),
        on_complete=section.boolean("onComplete", True),
        on_failure=section.boolean("onFailure", True),
        channels=section.words("channels"),
        recipients=section.words("recipients"),
    )


def _safety(section: _Section) -> Safety:
    section.only(
        "requireApproval",
        "approvers",
        "maxRollbackTimeMs",
        "allowConsecutiveRollbacks",
        "cooldownPeriodMs",
    )
    return Safety(
        require_approval=section.boolean("requireApproval", False),
        approvers=section.words("approvers"),
        max_rollback_time_ms=section.integer(
            "maxRollbackTimeMs", DEFAULT_MAX_ROLLBACK_MS, minimum=1_000, maximum=24 * 3_600_000
        ),
        allow_consecutive_rollbacks=section.boolean("allowConsecutiveRollbacks", True),
        cooldown_period_ms=section.integer("cooldownPeriodMs", 0, maximum=7 * 24 * 3_600_000),
    )


# --------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class StepSpec:
    """One step of an execution: what it does, with what, and how long it may take.
    ``after_ms`` is how long after the step before it this one may begin (a gradual
    rollback's pace)."""

    key: str
    type: StepType
    name: str
    timeout_ms: int
    config: dict[str, Any] = field(default_factory=dict)
    after_ms: int = 0


def _traffic_first(actions: Sequence[PlanAction]) -> bool:
    """Whether the canary leaves traffic before anything else runs: the first action moves
    traffic, or none does (then the strategy's moves come first)."""
    moving = (ActionType.STOP_NEW_TRAFFIC, ActionType.SET_WEIGHTS)
    if not any(action.type in moving for action in actions):
        return True
    return bool(actions) and actions[0].type == ActionType.STOP_NEW_TRAFFIC


def expand(plan: Plan, *, share: Decimal, earlier_shares: Sequence[Decimal] = ()) -> list[StepSpec]:
    """The steps of ``plan`` for a canary at ``share``, whose earlier phases ran at
    ``earlier_shares`` (in phase order): the actions in order, the plan's ``stop_new_traffic``
    expanded by the strategy, and validation last when the plan's validation is on."""
    actions = list(plan.actions)
    if not any(
        action.type in (ActionType.STOP_NEW_TRAFFIC, ActionType.SET_WEIGHTS) for action in actions
    ):
        actions.insert(
            0,
            PlanAction(
                id="stop-new-traffic",
                name="Stop new traffic",
                type=ActionType.STOP_NEW_TRAFFIC,
                order=0,
                timeout_ms=DEFAULT_TIMEOUT_MS,
                config={},
            ),
        )
    steps: list[StepSpec] = []
    for action in actions:
        if action.type == ActionType.STOP_NEW_TRAFFIC:
            steps += _traffic_steps(plan, action, share, earlier_shares)
        else:
            steps.append(
                StepSpec(
                    key=action.id,
                    type=StepType(action.type.value),
                    name=action.name,
                    timeout_ms=action.timeout_ms,
                    config=dict(action.config),
                )
            )
    if plan.strategy == Strategy.BLUE_GREEN:
        steps.append(
            StepSpec(
                key="keep-warm",
                type=StepType.KEEP_WARM,
                name="Keep the canary warm",
                timeout_ms=plan.keep_warm_ms + DEFAULT_TIMEOUT_MS,
                config={"durationMs": plan.keep_warm_ms},
            )
        )
        steps.append(
            StepSpec(
                key="release-targets",
                type=StepType.RELEASE_TARGETS,
                name="Release the canary's targets",
                timeout_ms=DEFAULT_TIMEOUT_MS,
            )
        )
    if plan.validation.enabled and (not steps or steps[-1].type != StepType.VALIDATE):
        steps.append(_validate_step("validate", "Validate stable", plan.validation))
    return steps


def _validate_step(key: str, name: str, validation: Validation) -> StepSpec:
    return StepSpec(
        key=key,
        type=StepType.VALIDATE,
        name=name,
        timeout_ms=max(validation.worst_case_ms, validation.timeout_ms),
    )


def _traffic_steps(
    plan: Plan, action: PlanAction, share: Decimal, earlier: Sequence[Decimal]
) -> list[StepSpec]:
    stop = StepSpec(
        key=action.id,
        type=StepType.STOP_NEW_TRAFFIC,
        name=action.name,
        timeout_ms=action.timeout_ms,
    )
    if plan.strategy == Strategy.GRADUAL and share > 0:
        count = plan.gradual_steps
        pace = plan.gradual_duration_ms // count
        steps = [
            StepSpec(
                key=f"{action.id}-{index}",
                type=StepType.SET_SHARE,
                name=f"Canary to {_percent(share * (count - index) / count)}%",
                timeout_ms=action.timeout_ms,
                config={"share": _percent(share * (count - index) / count)},
                after_ms=0 if index == 1 else pace,
            )
            for index in range(1, count)
        ]
        return [*steps, _replace_after(stop, pace if count > 1 else 0)]
    if plan.strategy == Strategy.PHASED:
        validation = plan.validation if plan.validation.enabled else Validation(enabled=True)
        steps = []
        for index, earlier_share in enumerate(
            sorted({s for s in earlier if 0 < s < share}, reverse=True)
        ):
            value = _percent(earlier_share)
            steps.append(
                StepSpec(
                    key=f"{action.id}-phase-{index + 1}",
                    type=StepType.SET_SHARE,
                    name=f"Canary back to {value}%",
                    timeout_ms=action.timeout_ms,
                    config={"share": value},
                )
            )
            steps.append(
                _validate_step(f"validate-phase-{index + 1}", f"Validate at {value}%", validation)
            )
        return [*steps, stop]
    if plan.strategy == Strategy.BLUE_GREEN:
        validation = plan.validation if plan.validation.enabled else Validation(enabled=True)
        before = _validate_step(
            "validate-stable-first", "Validate stable before switching", validation
        )
        return [StepSpec(**{**before.__dict__, "config": {"before_switch": True}}), stop]
    return [stop]


def _replace_after(step: StepSpec, after_ms: int) -> StepSpec:
    return StepSpec(**{**step.__dict__, "after_ms": after_ms})


def _percent(value: Decimal) -> str:
    text = f"{Decimal(value).quantize(Decimal('0.01')):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def worst_case_ms(steps: Sequence[StepSpec]) -> int:
    """The longest an execution of ``steps`` can take: each step's pace and its timeout."""
    return sum(step.after_ms + step.timeout_ms for step in steps)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """``plan`` back in the guide's vocabulary (what a plan with every default filled in says)."""
    return {
        "name": plan.name,
        "description": plan.description,
        "strategy": plan.strategy.value,
        "strategyConfig": {
            "durationMs": plan.gradual_duration_ms,
            "steps": plan.gradual_steps,
            "keepWarmMs": plan.keep_warm_ms,
        },
        "triggers": [trigger.value for trigger in plan.triggers],
        "autoTriggerEnabled": plan.auto_trigger_enabled,
        "triggerThresholds": [
            {
                "metric": threshold.metric,
                "operator": next(k for k, v in OPERATORS.items() if v == threshold.operator),
                "threshold": threshold.threshold,
                "durationMs": threshold.duration_ms,
                "consecutiveFailures": threshold.consecutive_failures,
            }
            for threshold in plan.trigger_thresholds
        ],
        "validation": {
            "enabled": plan.validation.enabled,
            "healthCheckPath": plan.validation.health_check_path,
            "validationTimeoutMs": plan.validation.timeout_ms,
            "successCriteria": [
                {
                    "type": criterion.type.value,
                    "weight": criterion.weight,
                    "required": criterion.required,
                    **(
                        {"threshold": criterion.threshold}
                        if criterion.threshold is not None
                        else {}
                    ),
                }
                for criterion in plan.validation.criteria
            ],
            "retryAttempts": plan.validation.retry_attempts,
            "retryDelayMs": plan.validation.retry_delay_ms,
        },
        "actions": [
            {
                "id": action.id,
                "name": action.name,
                "type": action.type.value,
                "order": action.order,
                "timeoutMs": action.timeout_ms,
                "config": action.config,
            }
            for action in plan.actions
        ],
        "notifications": {
            "enabled": plan.notifications.enabled,
            "onStart": plan.notifications.on_start,
            "onProgress": plan.notifications.on_progress,
            "onComplete": plan.notifications.on_complete,
            "onFailure": plan.notifications.on_failure,
            "channels": list(plan.notifications.channels),
            "recipients": list(plan.notifications.recipients),
        },
        "safety": {
            "requireApproval": plan.safety.require_approval,
            "approvers": list(plan.safety.approvers),
            "maxRollbackTimeMs": plan.safety.max_rollback_time_ms,
            "allowConsecutiveRollbacks": plan.safety.allow_consecutive_rollbacks,
            "cooldownPeriodMs": plan.safety.cooldown_period_ms,
        },
    }
