"""The validator of rollback plans: ``type: "rollback"`` of `deployments.validation.validate`
(and so of ``POST /api/v1/validate``), registered when the rollback app is ready.

It reads the plan as the services would (`rollback.plans.read_plan`) and says what would make it
fail or mislead. Every finding names its field and a stable code:

- **Schema** [required, unknown_field, invalid_type, invalid_choice, invalid_value]: each
  action is read on its own, so every bad action is reported; after a problem elsewhere the
  section at fault is set aside and the rest read again, so problems in other sections are
  reported too. Where the plan applies (``service``, ``deploymentId``, ``isDefault``) is checked
  against the database [not_found, invalid_value].
- **Actions in order**: two actions with one ``order`` [duplicate_action_order]; an action that
  moves traffic after a ``validate`` action, which then judged stable before the move
  [traffic_after_validation]; no action taking the canary to 0 while ``set_weights`` leaves it
  in traffic [canary_left_in_traffic]; no ``stop_new_traffic`` at all (a recommendation: one is
  added first); a ``validate`` action whose timeout cuts the validation's retries short
  [validation_cut_short].
- **Time**: each action's ``timeoutMs`` [timeout_exceeds_max_rollback_time] and the plan's
  worst case [rollback_time_exceeds_max] within ``safety.maxRollbackTimeMs``. The worst case is
  `plans.worst_case_ms` of the plan's steps (`plans.expand`): every step's timeout and pace,
  the validation steps carrying the validation's own worst case (every attempt timing out, with
  the delays between). The steps are those of a rollback from the last phase of the plan's
  deployment (``deploymentId``), else from 100% with no earlier phase. It is the report's
  ``worstCaseTimeToRollbackMs``.
- **Gradual pace** [gradual_exceeds_breach_budget]: ``strategyConfig.durationMs`` keeps the
  canary in traffic that long after a breach. The budget is the context's ``maxRollbackTime``
  less the time a fault takes to be seen and acted on (data delay, evaluation window,
  evaluation, tick: `Timing`), else the time the deployment validator's worst-case time to
  rollback allows for taking the canary out (``CANARY_DEPLOYMENT_ROLLBACK_ACTION_MS``).
- **Safety**: approval asked with nobody who may approve [approval_without_approvers,
  unknown_approver, approver_cannot_approve]; approvers named with approval off
  [approvers_ignored]; a cooldown that does nothing [cooldown_does_nothing] or is ignored
  [cooldown_ignored].
- **Context**: a webhook over plain http in production (a warning) or where https is required
  (an error) [insecure_webhook].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from canary_site.exceptions import ValidationFailed
from deployments.config import (
    INVALID_CHOICE,
    INVALID_TYPE,
    INVALID_VALUE,
    REQUIRED,
    UNKNOWN_FIELD,
    ConfigError,
    format_duration,
    load_text,
)
from deployments.validation import Context, Findings, Timing
from rollback import plans

MAX_PASSES = 100
"""Readings of one plan at most; each sets a part aside, so a plan has far fewer."""

_ACTIONS_AT = re.compile(r"actions\[(\d+)\]")
_TOP_KEY = re.compile(r"^([^.\[]+)(.*)$")
_SECTION_KEY = re.compile(r"^\.([^.\[]+)")
_MOVES_TRAFFIC = (plans.ActionType.STOP_NEW_TRAFFIC.value, plans.ActionType.SET_WEIGHTS.value)


def validate_rollback_plan(raw: Any, context: Context, timing: Timing, findings: Findings) -> None:
    """The checks of a rollback plan; see the module docstring."""
    if isinstance(raw, str | bytes):
        try:
            raw = load_text(raw)
        except ConfigError as error:
            for problem in error.errors:
                findings.error(problem.field, problem.code, problem.message)
            return
    if not isinstance(raw, Mapping):
        findings.error("config", INVALID_TYPE, "config must be an object: a rollback plan.")
        return
    reading = _read(raw, findings)
    if reading.plan is None:
        return
    deployment = _check_placement(raw, reading, findings)
    actions = _raw_actions(raw, reading.action_indexes)
    _check_order(actions, findings)
    _check_time(reading, actions, deployment, findings)
    _check_gradual(reading, context, timing, findings)
    _check_safety(reading, findings)
    _check_webhooks(actions, context, findings)
    _recommend(reading, actions, findings)


# --------------------------------------------------------------------------- reading


@dataclass
class _Reading:
    plan: plans.Plan | None = None
    # The original position of each action the plan was read with (the bad ones left out).
    action_indexes: list[int] = field(default_factory=list)
    # Parts set aside to read the rest (``actions``, ``safety``, ``safety.approvers``):
    # a check that needs one of them says nothing rather than judge a default.
    damaged: set[str] = field(default_factory=set)

    def intact(self, *parts: str) -> bool:
        """Whether none of ``parts`` (a section, or one field of it) was set aside."""
        return not any(part in self.damaged for part in parts)


def _read(raw: Mapping[str, Any], findings: Findings) -> _Reading:
    reading = _Reading()
    working = dict(raw)
    seen: set[tuple[str, str]] = set()

    def report(error: plans.InvalidPlan, indexes: list[int]) -> None:
        where = _renumber(error.field, indexes)
        message = _renumber(error.message, indexes)
        if (where, message) not in seen:
            seen.add((where, message))
            findings.error(where or "config", _code(message), _sentence(where, message))

    actions = raw.get("actions")
    if isinstance(actions, list):
        kept = []
        for index, item in enumerate(actions):
            try:
                plans.read_plan({"name": "action", "actions": [item]})
            except plans.InvalidPlan as error:
                report(error, [index])
                reading.damaged.add("actions")
                continue
            kept.append(item)
            reading.action_indexes.append(index)
        working["actions"] = kept
    for _ in range(MAX_PASSES):
        try:
            reading.plan = plans.read_plan(working)
            break
        except plans.InvalidPlan as error:
            report(error, reading.action_indexes)
            if not _set_aside(working, error.field, error.message, reading):
                break
    return reading


def _renumber(text: str, indexes: list[int]) -> str:
    """``actions[k]`` of the plan as read back to the position it has in the plan as sent."""

    def original(match: re.Match[str]) -> str:
        position = int(match.group(1))
        return f"actions[{indexes[position] if position < len(indexes) else position}]"

    return _ACTIONS_AT.sub(original, text)


# The readers' words for a value of the wrong JSON kind.
_KINDS = (
    "must be a string",
    "must be a non-empty string",
    "must be a list",
    "must be an object",
    "must be a whole number",
    "must be a number",
    "must be true or false",
)


def _sentence(where: str, message: str) -> str:
    if message.startswith("unknown field"):
        return f"{where} is an unknown field{message[len('unknown field') :]}."
    return f"{where or 'The plan'} {message}."


def _code(message: str) -> str:
    if message in ("is required", "must not be empty"):
        return REQUIRED
    if message.startswith("unknown field"):
        return UNKNOWN_FIELD
    if message.startswith("must be one of"):
        return INVALID_CHOICE
    if message.startswith(_KINDS):
        return INVALID_TYPE
    return INVALID_VALUE


def _set_aside(working: dict[str, Any], at: str, message: str, reading: _Reading) -> bool:
    """Set aside the part of ``working`` at fault so that the rest can be read; False when
    nothing can be (the plan itself is not an object)."""
    match = _TOP_KEY.match(at)
    if match is None:
        return False
    top, rest = match.groups()
    # A field the reader does not know changes nothing the checks read once it is set aside.
    unknown = message.startswith("unknown field")
    if top not in working:
        if top == "name":
            working["name"] = "plan"  # the checks never read the name
            return True
        return False
    if not unknown or not rest:
        reading.damaged.add(top)
    if top == "actions":
        found = _ACTIONS_AT.match(at)
        items = working.get("actions")
        if found is not None and isinstance(items, list) and int(found.group(1)) < len(items):
            position = int(found.group(1))
            working["actions"] = [item for i, item in enumerate(items) if i != position]
            del reading.action_indexes[position]
            return True
        reading.action_indexes.clear()
        del working["actions"]
        return True
    section = working[top]
    nested = _SECTION_KEY.match(rest)
    if nested is not None and isinstance(section, Mapping) and nested.group(1) in section:
        key = nested.group(1)
        if not unknown:
            reading.damaged.discard(top)
            reading.damaged.add(f"{top}.{key}")
        working[top] = {k: v for k, v in section.items() if k != key}
        return True
    del working[top]
    return True


def _raw_actions(raw: Mapping[str, Any], indexes: list[int]) -> list[tuple[int, dict[str, Any]]]:
    """The actions that read, as sent, with their positions, in the order they run (by
    ``order``, ties as written: the reader's stable sort)."""
    items = raw.get("actions") if isinstance(raw.get("actions"), list) else []
    found = [(index, items[index]) for index in indexes if isinstance(items[index], Mapping)]
    return sorted(found, key=lambda pair: _order(*pair))


def _order(index: int, action: Mapping[str, Any]) -> int:
    order = action.get("order")
    return order if isinstance(order, int) and not isinstance(order, bool) else index + 1


# --------------------------------------------------------------------------- placement


def _check_placement(raw: Mapping[str, Any], reading: _Reading, findings: Findings) -> Any:
    """Where the plan applies, as the services check it when it is saved; the deployment it
    names, if any."""
    from rollback.services.plans import plan_placement

    try:
        return plan_placement(raw)["deployment"]
    except ValidationFailed as error:
        where = next(iter(error.fields), "config")
        code = "not_found" if "there is no" in error.message else INVALID_VALUE
        findings.error(where, code, error.message)
        return None
    except (ArithmeticError, ValueError, TypeError):
        # An id no deployment can have (YAML's .inf); the services do not catch it yet.
        value = raw.get("deploymentId")
        findings.error(
            "deploymentId", "not_found", f"deploymentId: there is no deployment {value!r}."
        )
        return None


# --------------------------------------------------------------------------- actions


def _check_order(actions: list[tuple[int, dict[str, Any]]], findings: Findings) -> None:
    first_with: dict[int, int] = {}
    validated_at: int | None = None
    for index, action in actions:
        order = _order(index, action)
        if order in first_with:
            earlier = first_with[order]
            findings.warning(
                f"actions[{index}].order",
                "duplicate_action_order",
                f"actions[{index}].order {order} is also actions[{earlier}]'s: actions of one "
                f"order run as written (actions[{earlier}] first); give each its own order.",
            )
        else:
            first_with[order] = index
        kind = str(action.get("type", "")).replace("-", "_")
        if kind == plans.ActionType.VALIDATE.value and validated_at is None:
            validated_at = index
        elif kind in _MOVES_TRAFFIC and validated_at is not None:
            findings.warning(
                f"actions[{index}].type",
                "traffic_after_validation",
                f"actions[{index}] ({kind}) moves traffic after the validate action "
                f"actions[{validated_at}]: that validation judged stable before this move, so "
                "it says nothing of the load stable carries after it. Validate after the last "
                "move.",
            )
    kinds = [str(action.get("type", "")).replace("-", "_") for _, action in actions]
    stop = plans.ActionType.STOP_NEW_TRAFFIC.value
    weights = [
        (index, action)
        for index, action in actions
        if str(action.get("type", "")).replace("-", "_") == plans.ActionType.SET_WEIGHTS.value
    ]
    if stop not in kinds and weights:
        shares = [_weight(action) for _, action in weights]
        if all(share > 0 for share in shares):
            index = weights[-1][0]
            findings.warning(
                f"actions[{index}].config.canaryPercentage",
                "canary_left_in_traffic",
                f"No action takes the canary to 0%: set_weights leaves it at "
                f"{_n(shares[-1])}%, and no stop_new_traffic is added to a plan that sets "
                "weights, so the canary leaves traffic only when the rollback ends, after its "
                "validation. Add a stop_new_traffic action.",
            )


def _weight(action: Mapping[str, Any]) -> float:
    config = action.get("config") or {}
    value = config.get("canaryPercentage", 0) if isinstance(config, Mapping) else 0
    return float(value) if isinstance(value, int | float) else 0.0


# --------------------------------------------------------------------------- time


def _check_time(
    reading: _Reading,
    actions: list[tuple[int, dict[str, Any]]],
    deployment: Any,
    findings: Findings,
) -> None:
    plan = reading.plan
    assert plan is not None
    # The maximum is the plan's own unless it was set aside (then nothing is compared).
    limit = (
        plan.safety.max_rollback_time_ms
        if reading.intact("safety", "safety.maxRollbackTimeMs")
        else None
    )
    for index, action in actions:
        timeout = action.get("timeoutMs", plans.DEFAULT_TIMEOUT_MS)
        if limit is not None and isinstance(timeout, int) and timeout > limit:
            findings.error(
                f"actions[{index}].timeoutMs",
                "timeout_exceeds_max_rollback_time",
                f"actions[{index}].timeoutMs {format_duration(timeout)} is longer than "
                f"safety.maxRollbackTimeMs {format_duration(limit)}: the rollback fails at its "
                "maximum time before this action may time out.",
            )
    if not reading.intact("validation"):
        return
    _check_validate_actions(plan, actions, findings)
    if not reading.intact("actions", "strategy", "strategyConfig"):
        return
    share, earlier = _shares(deployment)
    steps = plans.expand(plan, share=share, earlier_shares=earlier)
    worst = plans.worst_case_ms(steps)
    findings.worst_case_time_to_rollback_ms = worst
    if limit is not None and worst > limit:
        where = (
            f"a rollback of deployment {deployment.pk} from its last phase"
            if deployment is not None
            else "a rollback from 100%"
        )
        findings.error(
            "safety.maxRollbackTimeMs",
            "rollback_time_exceeds_max",
            f"The plan can take {format_duration(worst)} in its worst case ({where}: "
            f"{_breakdown(steps)}), more than safety.maxRollbackTimeMs "
            f"{format_duration(limit)}: a rollback that needs its timeouts fails at its "
            "maximum time.",
        )
    if plan.strategy == plans.Strategy.PHASED and deployment is None:
        per_phase = _phase_cost(plan)
        findings.recommend(
            f"The worst case of {format_duration(worst)} is for a rollback with no earlier "
            f"phase: a phased rollback adds {format_duration(per_phase)} (a step down and a "
            "validation of stable) for each earlier phase of the deployment; name the "
            "deployment (deploymentId) to have it counted."
        )


def _check_validate_actions(
    plan: plans.Plan, actions: list[tuple[int, dict[str, Any]]], findings: Findings
) -> None:
    needed = plan.validation.worst_case_ms
    for index, action in actions:
        if str(action.get("type", "")).replace("-", "_") != plans.ActionType.VALIDATE.value:
            continue
        timeout = action.get("timeoutMs", plans.DEFAULT_TIMEOUT_MS)
        if isinstance(timeout, int) and plan.validation.enabled and timeout < needed:
            findings.warning(
                f"actions[{index}].timeoutMs",
                "validation_cut_short",
                f"actions[{index}].timeoutMs {format_duration(timeout)} is shorter than the "
                f"validation's worst case of {format_duration(needed)} "
                f"({plan.validation.retry_attempts + 1} attempts of validationTimeoutMs with "
                "retryDelayMs between): its later attempts are cut off.",
            )


def _shares(deployment: Any) -> tuple[Decimal, list[Decimal]]:
    """A rollback from the deployment's last phase, back through all the others; from 100%
    with none when the plan names no deployment."""
    if deployment is None:
        return Decimal("100"), []
    shares = [phase.traffic_percentage for phase in deployment.phases.order_by("order")]
    if not shares:
        return Decimal("100"), []
    return max(shares), shares[:-1]


def _phase_cost(plan: plans.Plan) -> int:
    with_one = plans.expand(plan, share=Decimal("100"), earlier_shares=[Decimal("50")])
    without = plans.expand(plan, share=Decimal("100"), earlier_shares=[])
    return plans.worst_case_ms(with_one) - plans.worst_case_ms(without)


def _breakdown(steps: list[plans.StepSpec]) -> str:
    validation = sum(step.timeout_ms for step in steps if step.type == plans.StepType.VALIDATE)
    pace = sum(step.after_ms for step in steps)
    others = sum(step.timeout_ms for step in steps if step.type != plans.StepType.VALIDATE)
    parts = [
        (f"the steps' timeouts {format_duration(others)}", others),
        (f"the gradual pace {format_duration(pace)}", pace),
        (f"validation {format_duration(validation)}", validation),
    ]
    return ", ".join(text for text, value in parts if value) or "nothing to wait for"


def _check_gradual(reading: _Reading, context: Context, timing: Timing, findings: Findings) -> None:
    plan = reading.plan
    assert plan is not None
    if plan.strategy != plans.Strategy.GRADUAL or not reading.intact("strategyConfig"):
        return
    duration = plan.gradual_duration_ms
    # The time a fault takes to be seen and acted on, before the rollback's own time begins.
    detection = timing.worst_case_rollback_ms - timing.rollback_action_ms
    if context.max_rollback_time_ms is not None:
        budget = max(0, context.max_rollback_time_ms - detection)
        source = (
            f"this environment's maxRollbackTime of "
            f"{format_duration(context.max_rollback_time_ms)} less the "
            f"{format_duration(detection)} a fault takes to be seen and acted on (data delay, "
            "evaluation window, evaluation, tick)"
        )
    else:
        budget = timing.rollback_action_ms
        source = (
            "the time the deployment validator's worst-case time to rollback allows for "
            "taking the canary out of traffic (CANARY_DEPLOYMENT_ROLLBACK_ACTION_MS)"
        )
    if duration > budget:
        findings.warning(
            "strategyConfig.durationMs",
            "gradual_exceeds_breach_budget",
            f"strategyConfig.durationMs {format_duration(duration)} is longer than the breach "
            f"budget of {format_duration(budget)}, {source}: a gradual rollback keeps the "
            "canary in traffic for its whole duration, so a breach is out of traffic later "
            "than the estimate.",
        )


# --------------------------------------------------------------------------- safety


def _check_safety(reading: _Reading, findings: Findings) -> None:
    plan = reading.plan
    assert plan is not None
    fields = ("requireApproval", "approvers", "allowConsecutiveRollbacks", "cooldownPeriodMs")
    if not reading.intact("safety", *(f"safety.{name}" for name in fields)):
        return
    safety = plan.safety
    if safety.require_approval:
        _check_approvers(safety.approvers, findings)
    elif safety.approvers:
        findings.warning(
            "safety.approvers",
            "approvers_ignored",
            "safety.approvers names people but safety.requireApproval is off: nobody is asked.",
        )
    if not safety.allow_consecutive_rollbacks and not safety.cooldown_period_ms:
        findings.warning(
            "safety.cooldownPeriodMs",
            "cooldown_does_nothing",
            "safety.allowConsecutiveRollbacks is false but safety.cooldownPeriodMs is 0: no "
            "rollback is ever refused, so it does nothing; give the cooldown a length.",
        )
    elif safety.allow_consecutive_rollbacks and safety.cooldown_period_ms:
        findings.warning(
            "safety.cooldownPeriodMs",
            "cooldown_ignored",
            f"safety.cooldownPeriodMs is {format_duration(safety.cooldown_period_ms)} but "
            "safety.allowConsecutiveRollbacks is true: the cooldown holds only when "
            "consecutive rollbacks are not allowed.",
        )


def _check_approvers(names: tuple[str, ...], findings: Findings) -> None:
    from django.contrib.auth import get_user_model

    from rollback.choices import ApproverKind
    from rollback.models import ApprovalPolicy
    from rollback.services.approvals import possible_approvers, role_approvers

    if not names:
        able = role_approvers()
        if not able:
            findings.warning(
                "safety.requireApproval",
                "approval_without_approvers",
                "safety.requireApproval is on, safety.approvers names nobody and nobody holds "
                "the approver role: a person's rollback would be refused, with nobody to "
                "approve it.",
            )
        elif len(able) == 1:
            findings.recommend(
                "Only one person may approve a rollback, and nobody approves their own: that "
                "person could not roll back without another approver."
            )
        return
    users = dict(
        get_user_model()
        .objects.filter(username__in=names, is_active=True)
        .values_list("username", "pk")
    )
    unknown = [name for name in names if name not in users]
    if unknown:
        findings.warning(
            "safety.approvers",
            "unknown_approver",
            f"safety.approvers names {', '.join(unknown)}, who "
            f"{'is not an active user' if len(unknown) == 1 else 'are not active users'} here.",
        )
    able = set(
        possible_approvers(
            ApprovalPolicy(approver_kind=ApproverKind.USERS), users=list(users.values())
        )
    )
    unable = [name for name, pk in users.items() if pk not in able]
    if unable:
        findings.warning(
            "safety.approvers",
            "approver_cannot_approve",
            f"safety.approvers names {', '.join(sorted(unable))}, who may not approve (no "
            "approver or admin role).",
        )
    if not able:
        findings.warning(
            "safety.requireApproval",
            "approval_without_approvers",
            "safety.requireApproval is on but nobody named in safety.approvers may approve: a "
            "person's rollback would wait for an approval nobody can give until it expires.",
        )
    elif len(able) == 1:
        findings.recommend(
            "Name at least two approvers: nobody approves their own rollback, so the one "
            "approver could not roll back without another."
        )


# --------------------------------------------------------------------------- context


def _check_webhooks(
    actions: list[tuple[int, dict[str, Any]]], context: Context, findings: Findings
) -> None:
    for index, action in actions:
        if str(action.get("type", "")).replace("-", "_") != plans.ActionType.CALL_WEBHOOK.value:
            continue
        config = action.get("config") or {}
        url = config.get("url") if isinstance(config, Mapping) else None
        if not isinstance(url, str) or not url.strip().lower().startswith("http://"):
            continue
        where = f"actions[{index}].config.url"
        message = f"{where} uses plain http: the rollback's signed call travels unencrypted."
        if context.require_https:
            findings.error(where, "insecure_webhook", f"{message} This environment requires https.")
        elif context.production:
            findings.warning(where, "insecure_webhook", message)


def _recommend(
    reading: _Reading, actions: list[tuple[int, dict[str, Any]]], findings: Findings
) -> None:
    plan = reading.plan
    assert plan is not None
    kinds = {str(action.get("type", "")).replace("-", "_") for _, action in actions}
    if reading.intact("actions") and not kinds & set(_MOVES_TRAFFIC):
        findings.recommend(
            "The plan has no stop_new_traffic action: one is added first (a 30s timeout), so "
            "the canary leaves traffic before anything else runs; write it in to choose its "
            "place and timeout."
        )
    # Phased and blue-green rollbacks validate stable on their way whatever the plan says.
    quick = plan.strategy in (plans.Strategy.IMMEDIATE, plans.Strategy.GRADUAL)
    if quick and reading.intact("validation") and not plan.validation.enabled:
        findings.recommend(
            "Turn validation on: it checks that stable is healthy once it carries the "
            "canary's traffic, and fails the rollback loudly when it is not."
        )


def _n(value: float) -> str:
    return f"{value:g}"
