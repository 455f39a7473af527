"""Forms of the rollback pages: a plan as fields (its actions as rows) or as YAML, and the small
forms of the buttons (roll back, rehearse, cancel).

A plan's form builds the guide's dictionary that ``rollback_plan_create`` and
``rollback_plan_update`` read; it converts units (seconds on the page, milliseconds in the
plan) and leaves every check to the plan's reader, so a form and a pasted plan are judged alike.
What the form has no field for (trigger thresholds, validation criteria, the notification
switches, a webhook's headers) travels in hidden JSON and comes back unchanged.

The action rows are plain indexed forms (``action-0-type``...), so the editor works without
JavaScript: "Add an action" posts the form back with one more row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from django import forms

from canary_site.exceptions import CanaryError
from canary_site.forms import add_error_fields
from rollback import plans
from rollback.choices import RollbackStrategy, RollbackTrigger
from routing import selectors as routing_selectors

MAX_ACTIONS = 20
MS = 1000

ACTION_TYPES = [("", "(no action)")] + [
    (kind.value, kind.value.replace("_", " ").capitalize()) for kind in plans.ActionType
]


def _numeric(**attrs: Any) -> forms.TextInput:
    return forms.TextInput(attrs={"inputmode": "decimal", **attrs})


class PlanForm(forms.Form):
    """A plan's settings, section by section in the order of the guide's plan."""

    name = forms.CharField(max_length=100, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    service = forms.ModelChoiceField(
        queryset=routing_selectors.service_list(),
        required=False,
        to_field_name="name",
        empty_label="(no service)",
    )
    deployment_id = forms.CharField(
        required=False,
        label="Only for deployment (id)",
        widget=_numeric(),
        help_text="Blank: the plan covers the service (or what names it).",
    )
    is_default = forms.BooleanField(required=False, label="The service's default plan")
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled")
    strategy = forms.ChoiceField(
        choices=RollbackStrategy.choices, initial=RollbackStrategy.IMMEDIATE
    )
    gradual_duration_s = forms.CharField(
        required=False,
        label="Gradual: duration (s)",
        widget=_numeric(),
        help_text="How long the way down takes.",
    )
    gradual_steps = forms.CharField(required=False, label="Gradual: steps", widget=_numeric())
    keep_warm_s = forms.CharField(
        required=False,
        label="Blue-green: keep warm (s)",
        widget=_numeric(),
        help_text="How long the canary stays up at weight 0 before its targets are released.",
    )
    triggers = forms.MultipleChoiceField(
        choices=RollbackTrigger.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: automatic and manual.",
    )
    auto_trigger = forms.BooleanField(
        required=False, initial=True, label="Roll back automatically on a breach"
    )
    validation_enabled = forms.BooleanField(required=False, label="Validate stable afterwards")
    health_check_path = forms.CharField(
        required=False, max_length=500, label="Health check path", initial="/health"
    )
    validation_timeout_s = forms.CharField(
        required=False, label="Validation timeout (s)", widget=_numeric()
    )
    retry_attempts = forms.CharField(required=False, label="Retries", widget=_numeric())
    retry_delay_s = forms.CharField(
        required=False, label="Delay between retries (s)", widget=_numeric()
    )
    require_approval = forms.BooleanField(
        required=False, label="A person's rollback needs an approval"
    )
    approvers = forms.CharField(
        required=False,
        label="Approvers (usernames)",
        help_text="Separated by commas; blank: everyone with the approver role.",
    )
    max_rollback_time_s = forms.CharField(
        required=False, label="Maximum rollback time (s)", widget=_numeric()
    )
    allow_consecutive = forms.BooleanField(
        required=False, initial=True, label="Allow consecutive rollbacks"
    )
    cooldown_s = forms.CharField(
        required=False,
        label="Cooldown (s)",
        widget=_numeric(),
        help_text="Between two rollbacks of the service, when consecutive ones are not allowed.",
    )
    notifications_enabled = forms.BooleanField(required=False, label="Send notifications")
    channels = forms.CharField(required=False, label="Channels", help_text="e.g. email, slack")
    recipients = forms.CharField(required=False, label="Recipients", help_text="Comma-separated.")
    kept = forms.CharField(required=False, widget=forms.HiddenInput)
    action_count = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_ACTIONS, widget=forms.HiddenInput
    )


class ActionRowForm(forms.Form):
    """One action of the plan. The settings that apply depend on the type: a webhook's address
    and secret, the flags to change and how, the canary's share for set weights, a message."""

    key = forms.CharField(required=False, widget=forms.HiddenInput)
    type = forms.ChoiceField(choices=ACTION_TYPES, required=False)
    name = forms.CharField(required=False, max_length=200)
    order = forms.CharField(required=False, widget=_numeric(size=4))
    timeout_s = forms.CharField(
        required=False,
        label="Timeout (s)",
        widget=_numeric(size=6, placeholder=f"{plans.DEFAULT_TIMEOUT_MS // MS}"),
    )
    url = forms.CharField(required=False, label="Webhook URL", max_length=2000)
    secret = forms.CharField(
        required=False, label="Webhook secret", widget=forms.PasswordInput(render_value=True)
    )
    flags = forms.CharField(required=False, label="Flag keys", help_text="Blank: the linked flags.")
    percentage = forms.CharField(required=False, label="Flags to (%)", widget=_numeric(size=6))
    disable = forms.BooleanField(required=False, initial=True, label="Turn the flags off")
    canary_percentage = forms.CharField(
        required=False, label="Canary share (%)", widget=_numeric(size=6)
    )
    message = forms.CharField(required=False, label="Message", max_length=2000)
    extra = forms.CharField(required=False, widget=forms.HiddenInput)


class PlanTextForm(forms.Form):
    """The plan as YAML (or JSON) in the guide's vocabulary."""

    definition_text = forms.CharField(
        required=False,
        label="The plan (YAML)",
        widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false", "class": "config"}),
    )


class ReasonForm(forms.Form):
    """Why: a rollback's, a rehearsal's or a cancellation's reason (the services check it)."""

    reason = forms.CharField(required=False, max_length=2000)


# ----------------------------------------------------------------------------- the rows


def action_rows(data: Mapping[str, Any] | None, count: int | None = None) -> list[ActionRowForm]:
    """The action rows posted in ``data`` (``count`` of them, else the posted ``action_count``)."""
    if data is None:
        return []
    count = max(0, min(MAX_ACTIONS, _count(data) if count is None else count))
    rows = [ActionRowForm(data, prefix=f"action-{index}") for index in range(count)]
    for row in rows:
        row.is_valid()
    return rows


def initial_rows(definition: Mapping[str, Any]) -> list[ActionRowForm]:
    """Unbound rows showing a stored plan's actions."""
    actions = definition.get("actions") if isinstance(definition, Mapping) else None
    rows = []
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        if isinstance(action, Mapping):
            rows.append(ActionRowForm(initial=_row_initial(action), prefix=f"action-{index}"))
    return rows


def _count(data: Mapping[str, Any]) -> int:
    try:
        return int(data.get("action_count") or 0)
    except (TypeError, ValueError):
        return 0


def _row_initial(action: Mapping[str, Any]) -> dict[str, Any]:
    config = action.get("config") if isinstance(action.get("config"), Mapping) else {}
    shown = {"url", "secret", "flags", "percentage", "disable", "canaryPercentage", "message"}
    extra = {key: value for key, value in config.items() if key not in shown}
    flags = config.get("flags")
    return {
        "key": _text(action.get("id")),
        "type": _text(action.get("type")),
        "name": _text(action.get("name")),
        "order": _text(action.get("order")),
        "timeout_s": _seconds(action.get("timeoutMs")),
        "url": _text(config.get("url")),
        "secret": _text(config.get("secret")),
        "flags": ", ".join(str(f) for f in flags) if isinstance(flags, list) else _text(flags),
        "percentage": _text(config.get("percentage")),
        "disable": config.get("disable", True) is not False,
        "canary_percentage": _text(config.get("canaryPercentage")),
        "message": _text(config.get("message")),
        "extra": json.dumps(extra) if extra else "",
    }


# ------------------------------------------------------------------- form <-> definition


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _seconds(ms: Any) -> str:
    """Milliseconds as the seconds the form shows (``1.5``, ``30``)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return _text(ms)
    seconds = ms / MS
    return f"{seconds:g}"


def _number(text: Any, *, scale: float = 1.0) -> Any:
    """A typed number, or the text as typed so the plan's reader names what is wrong with it."""
    text = _text(text).strip()
    if text == "":
        return None
    try:
        value = float(text) * scale
    except ValueError:
        return text
    if value != value or value in (float("inf"), float("-inf")):
        return text
    return int(value) if value.is_integer() else value


def _words(text: Any) -> list[str]:
    return [word for word in re.split(r"[,\s]+", _text(text)) if word]


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(_text(text) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def _value(form: forms.Form, name: str) -> Any:
    """A field's cleaned value, or what was typed when it did not clean."""
    cleaned = getattr(form, "cleaned_data", {})
    if name in cleaned:
        return cleaned[name]
    return form.data.get(form.add_prefix(name)) if form.is_bound else form.initial.get(name)


@dataclass
class Built:
    """The definition a form says, and the row behind each of its actions."""

    definition: dict[str, Any]
    row_of: list[int] = field(default_factory=list)


def plan_definition(form: PlanForm, rows: Sequence[ActionRowForm]) -> Built:
    """The guide's plan from the form and its rows (blank fields left out, so the plan's
    defaults apply and its reader says what is required)."""
    form.is_valid()
    kept = _json(_value(form, "kept"))
    service = _value(form, "service")
    definition: dict[str, Any] = {"name": _text(_value(form, "name")).strip()}
    description = _text(_value(form, "description")).strip()
    if description:
        definition["description"] = description
    if service:
        definition["service"] = service.name if hasattr(service, "name") else str(service)
    _put(definition, "deploymentId", _number(_value(form, "deployment_id")))
    definition["isDefault"] = bool(_value(form, "is_default"))
    definition["enabled"] = bool(_value(form, "enabled"))
    definition["strategy"] = _text(_value(form, "strategy")) or plans.Strategy.IMMEDIATE.value
    tuning: dict[str, Any] = {}
    _put(tuning, "durationMs", _number(_value(form, "gradual_duration_s"), scale=MS))
    _put(tuning, "steps", _number(_value(form, "gradual_steps")))
    _put(tuning, "keepWarmMs", _number(_value(form, "keep_warm_s"), scale=MS))
    _put(tuning, "validateEachPhase", kept.get("validateEachPhase"))
    if tuning:
        definition["strategyConfig"] = tuning
    triggers = _value(form, "triggers")
    definition["triggers"] = list(triggers) if isinstance(triggers, list | tuple) else []
    definition["autoTriggerEnabled"] = bool(_value(form, "auto_trigger"))
    if kept.get("triggerThresholds"):
        definition["triggerThresholds"] = kept["triggerThresholds"]
    validation: dict[str, Any] = {"enabled": bool(_value(form, "validation_enabled"))}
    path = _text(_value(form, "health_check_path")).strip()
    if path:
        validation["healthCheckPath"] = path
    _put(validation, "validationTimeoutMs", _number(_value(form, "validation_timeout_s"), scale=MS))
    _put(validation, "retryAttempts", _number(_value(form, "retry_attempts")))
    _put(validation, "retryDelayMs", _number(_value(form, "retry_delay_s"), scale=MS))
    if kept.get("successCriteria"):
        validation["successCriteria"] = kept["successCriteria"]
    definition["validation"] = validation
    built = Built(definition)
    definition["actions"] = []
    for index, row in enumerate(rows):
        action = _action(row)
        if action is not None:
            definition["actions"].append(action)
            built.row_of.append(index)
    notifications: dict[str, Any] = {"enabled": bool(_value(form, "notifications_enabled"))}
    switches = kept.get("notifications")
    if isinstance(switches, dict):
        notifications.update({key: value for key, value in switches.items() if key[:2] == "on"})
    notifications["channels"] = _words(_value(form, "channels"))
    notifications["recipients"] = _words(_value(form, "recipients"))
    definition["notifications"] = notifications
    safety: dict[str, Any] = {
        "requireApproval": bool(_value(form, "require_approval")),
        "approvers": _words(_value(form, "approvers")),
        "allowConsecutiveRollbacks": bool(_value(form, "allow_consecutive")),
    }
    _put(safety, "maxRollbackTimeMs", _number(_value(form, "max_rollback_time_s"), scale=MS))
    _put(safety, "cooldownPeriodMs", _number(_value(form, "cooldown_s"), scale=MS))
    definition["safety"] = safety
    return built


def _action(row: ActionRowForm) -> dict[str, Any] | None:
    kind = _text(_value(row, "type"))
    if not kind:
        return None
    action: dict[str, Any] = {"type": kind}
    key = _text(_value(row, "key")).strip()
    if key:
        action["id"] = key
    name = _text(_value(row, "name")).strip()
    if name:
        action["name"] = name
    _put(action, "order", _number(_value(row, "order")))
    _put(action, "timeoutMs", _number(_value(row, "timeout_s"), scale=MS))
    config = _json(_value(row, "extra"))
    if kind == plans.ActionType.CALL_WEBHOOK:
        config["url"] = _text(_value(row, "url")).strip()
        secret = _text(_value(row, "secret"))
        if secret:
            config["secret"] = secret
    elif kind == plans.ActionType.UPDATE_FEATURE_FLAGS:
        flags = _words(_value(row, "flags"))
        if flags:
            config["flags"] = flags
        percentage = _number(_value(row, "percentage"))
        if percentage is not None:
            config["percentage"] = percentage
            config["disable"] = False
        else:
            config["disable"] = bool(_value(row, "disable"))
    elif kind == plans.ActionType.SET_WEIGHTS:
        _put(config, "canaryPercentage", _number(_value(row, "canary_percentage")))
    elif kind == plans.ActionType.NOTIFY:
        message = _text(_value(row, "message")).strip()
        if message:
            config["message"] = message
    if config:
        action["config"] = config
    return action


def plan_initial(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The form's initial values for a stored plan (its defaults filled in where it says
    nothing, as the plan's reader reads it)."""
    try:
        spec = plans.read_plan(dict(definition))
    except plans.InvalidPlan:
        spec = plans.Plan(name=_text(definition.get("name")))
    validation = definition.get("validation") if isinstance(definition, Mapping) else None
    notifications = definition.get("notifications")
    tuning = definition.get("strategyConfig")
    kept: dict[str, Any] = {}
    if definition.get("triggerThresholds"):
        kept["triggerThresholds"] = definition["triggerThresholds"]
    if isinstance(validation, Mapping) and validation.get("successCriteria"):
        kept["successCriteria"] = validation["successCriteria"]
    if isinstance(notifications, Mapping):
        switches = {key: value for key, value in notifications.items() if key[:2] == "on"}
        if switches:
            kept["notifications"] = switches
    if isinstance(tuning, Mapping) and "validateEachPhase" in tuning:
        kept["validateEachPhase"] = tuning["validateEachPhase"]
    safety = spec.safety
    return {
        "name": spec.name,
        "description": spec.description,
        "service": _text(definition.get("service")) or None,
        "deployment_id": _text(definition.get("deploymentId")),
        "is_default": definition.get("isDefault") is True,
        "enabled": definition.get("enabled", True) is not False,
        "strategy": spec.strategy.value,
        "gradual_duration_s": _seconds(spec.gradual_duration_ms),
        "gradual_steps": str(spec.gradual_steps),
        "keep_warm_s": _seconds(spec.keep_warm_ms),
        "triggers": [trigger.value for trigger in spec.triggers],
        "auto_trigger": spec.auto_trigger_enabled,
        "validation_enabled": spec.validation.enabled,
        "health_check_path": spec.validation.health_check_path,
        "validation_timeout_s": _seconds(spec.validation.timeout_ms),
        "retry_attempts": str(spec.validation.retry_attempts),
        "retry_delay_s": _seconds(spec.validation.retry_delay_ms),
        "require_approval": safety.require_approval,
        "approvers": ", ".join(safety.approvers),
        "max_rollback_time_s": _seconds(safety.max_rollback_time_ms),
        "allow_consecutive": safety.allow_consecutive_rollbacks,
        "cooldown_s": _seconds(safety.cooldown_period_ms),
        "notifications_enabled": spec.notifications.enabled,
        "channels": ", ".join(spec.notifications.channels),
        "recipients": ", ".join(spec.notifications.recipients),
        "kept": json.dumps(kept) if kept else "",
    }


def plan_yaml(definition: Mapping[str, Any]) -> str:
    """The plan as YAML, its keys in the order written."""
    return yaml.safe_dump(dict(definition), sort_keys=False, allow_unicode=True, width=100)


STARTER: dict[str, Any] = {
    "name": "",
    "description": "",
    "service": "",
    "isDefault": False,
    "strategy": "gradual",
    "strategyConfig": {"durationMs": 60000, "steps": 4},
    "triggers": ["automatic", "manual"],
    "autoTriggerEnabled": True,
    "validation": {
        "enabled": True,
        "healthCheckPath": "/health",
        "validationTimeoutMs": 5000,
        "retryAttempts": 2,
        "retryDelayMs": 2000,
    },
    "actions": [
        {"id": "stop", "name": "Stop new traffic", "type": "stop_new_traffic", "order": 1},
        {
            "id": "flags",
            "name": "Flags off",
            "type": "update_feature_flags",
            "order": 2,
            "config": {"disable": True},
        },
    ],
    "safety": {"requireApproval": False, "maxRollbackTimeMs": 300000},
}
"""What the YAML editor of a new plan starts from."""


# ------------------------------------------------------------------------ errors to fields

# A plan's field paths and the form field each belongs to (the longest match wins).
PLAN_FIELDS: dict[str, str] = {
    "name": "name",
    "description": "description",
    "service": "service",
    "deploymentId": "deployment_id",
    "isDefault": "is_default",
    "enabled": "enabled",
    "strategy": "strategy",
    "strategyConfig": "strategy",
    "strategyConfig.durationMs": "gradual_duration_s",
    "strategyConfig.steps": "gradual_steps",
    "strategyConfig.keepWarmMs": "keep_warm_s",
    "triggers": "triggers",
    "autoTriggerEnabled": "auto_trigger",
    "triggerThresholds": "auto_trigger",
    "validation": "validation_enabled",
    "validation.healthCheckPath": "health_check_path",
    "validation.validationTimeoutMs": "validation_timeout_s",
    "validation.retryAttempts": "retry_attempts",
    "validation.retryDelayMs": "retry_delay_s",
    "safety": "require_approval",
    "safety.approvers": "approvers",
    "safety.maxRollbackTimeMs": "max_rollback_time_s",
    "safety.allowConsecutiveRollbacks": "allow_consecutive",
    "safety.cooldownPeriodMs": "cooldown_s",
    "notifications": "notifications_enabled",
    "notifications.channels": "channels",
    "notifications.recipients": "recipients",
}
ROW_FIELDS: dict[str, str] = {
    "id": "name",
    "type": "type",
    "name": "name",
    "order": "order",
    "timeoutMs": "timeout_s",
    "config": "type",
    "config.url": "url",
    "config.secret": "secret",
    "config.headers": "url",
    "config.flags": "flags",
    "config.percentage": "percentage",
    "config.disable": "disable",
    "config.canaryPercentage": "canary_percentage",
    "config.message": "message",
    "config.channels": "message",
    "config.recipients": "message",
}


def _longest(path: str, table: Mapping[str, str]) -> str | None:
    best = None
    for prefix in table:
        if (path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return table[best] if best is not None else None


def plan_form_field(path: str) -> str | None:
    """The form field a plan's field path belongs to (None: the whole form)."""
    return _longest(path, PLAN_FIELDS)


def show_plan_error(
    form: PlanForm, rows: Sequence[ActionRowForm], error: CanaryError, row_of: Sequence[int]
) -> None:
    """The service's error next to the field it names: ``actions[i].timeoutMs`` on the timeout
    of the row behind the plan's action ``i``, ``safety.cooldownPeriodMs`` on the cooldown."""
    fields: dict[str, list[str]] = {}
    for path, messages in error.fields.items():
        # The services' messages begin with the path; the form says it once, shorter.
        said = [message.removeprefix(f"{path}: ") for message in messages]
        match = re.fullmatch(r"actions\[(\d+)\]\.?(.*)", path)
        if match and int(match.group(1)) < len(row_of):
            inner = _longest(match.group(2), ROW_FIELDS) or "type"
            if match.group(2):
                said = [f"{match.group(2)}: {message}" for message in said]
            path = f"actions[{row_of[int(match.group(1))]}].{inner}"
        fields.setdefault(path, []).extend(said)
    add_error_fields(
        form,
        CanaryError(error.message, fields=fields),
        plan_form_field,
        rows=rows,
        rows_at="actions",
    )
