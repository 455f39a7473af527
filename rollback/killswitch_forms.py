"""Forms of the kill switch pages: a switch as fields (its trigger conditions as rows) or as
YAML, and the reason of the buttons (trigger, recover, kill all, delete).

A switch's form builds the guide's dictionary (``killSwitchService.createConfig``) that
``kill_switch_create`` and ``kill_switch_update`` read; it converts units (seconds on the page,
milliseconds in the switch) and leaves every check to the switch's reader, so a form and a
pasted switch are judged alike. The condition rows are plain indexed forms
(``condition-0-type``...), so the editor works without JavaScript: "Add a condition" posts the
form back with one more row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from django import forms

from canary_site.exceptions import CanaryError
from canary_site.forms import add_error_fields
from flags.models import Flag
from rollback import killswitches
from rollback.choices import KillSwitchPriority, KillSwitchScope

# The plan form's readers of what a person typed: the same units, the same leniency.
from rollback.forms import _longest, _number, _numeric, _put, _seconds, _text, _words
from routing import selectors as routing_selectors

MAX_CONDITIONS = 20
MS = 1000
ROWS_AT = "triggerConditions"

CONDITION_TYPES = [
    ("", "(no condition)"),
    (killswitches.ConditionType.ERROR_RATE.value, "Error rate above (%)"),
    (killswitches.ConditionType.LATENCY.value, "p95 latency above (ms)"),
    (killswitches.ConditionType.AVAILABILITY.value, "Availability below (%)"),
    (killswitches.ConditionType.CRITICAL_ALERT.value, "A critical alert is open"),
    (killswitches.ConditionType.MANUAL.value, "Manual only"),
]
DEPLOYMENT_ACTIONS = [
    (killswitches.DeploymentAction.PAUSE.value, "Pause the running canaries"),
    (killswitches.DeploymentAction.ROLLBACK.value, "Roll the running canaries back"),
]
RECOVERY_ACTIONS = [
    (killswitches.RecoveryAction.RE_ENABLE_FLAGS.value, "Re-enable the flags it killed"),
    (killswitches.RecoveryAction.RESTORE_TRAFFIC.value, "Restore the traffic it halted"),
    (killswitches.RecoveryAction.RESUME_DEPLOYMENTS.value, "Resume the canaries it paused"),
]


class KillSwitchForm(forms.Form):
    """A switch's settings in the order of the guide's switch."""

    name = forms.CharField(max_length=100, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    scope = forms.ChoiceField(
        choices=KillSwitchScope.choices,
        initial=KillSwitchScope.SERVICE,
        help_text="System: every service and every flag that allows it. Service: one service. "
        "Flag: the flags listed.",
    )
    service = forms.ModelChoiceField(
        queryset=routing_selectors.service_list(),
        required=False,
        to_field_name="name",
        empty_label="(no service)",
        help_text="The service a service switch halts; its conditions watch it by default.",
    )
    flags = forms.ModelMultipleChoiceField(
        queryset=Flag.objects.order_by("key"),
        required=False,
        to_field_name="key",
        label="Flags",
        help_text="The flags a flag switch kills.",
        widget=forms.SelectMultiple(attrs={"size": 6}),
    )
    deployment_action = forms.ChoiceField(
        choices=DEPLOYMENT_ACTIONS,
        initial=killswitches.DeploymentAction.PAUSE.value,
        label="Running canaries",
    )
    grace_period_s = forms.CharField(
        required=False,
        label="Grace period (s)",
        widget=_numeric(),
        help_text="How long a condition must hold before the switch fires.",
    )
    priority = forms.ChoiceField(
        choices=KillSwitchPriority.choices, initial=KillSwitchPriority.HIGH
    )
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled (watched)")
    notifications_enabled = forms.BooleanField(required=False, label="Send notifications")
    channels = forms.CharField(required=False, label="Channels", help_text="e.g. email, slack")
    recipients = forms.CharField(required=False, label="Recipients", help_text="Comma-separated.")
    auto_recovery = forms.BooleanField(required=False, label="Recover automatically")
    recovery_delay_s = forms.CharField(
        required=False,
        label="Recovery delay (s)",
        widget=_numeric(),
        help_text="How long the condition must be clear first.",
    )
    max_attempts = forms.CharField(
        required=False, label="Maximum automatic recoveries", widget=_numeric()
    )
    recovery_actions = forms.MultipleChoiceField(
        choices=RECOVERY_ACTIONS,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="An automatic recovery",
        help_text="None ticked: all three. A person's recovery always puts everything back.",
    )
    condition_count = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_CONDITIONS, widget=forms.HiddenInput
    )


class ConditionRowForm(forms.Form):
    """One trigger condition: what is watched, on which service, past which threshold."""

    type = forms.ChoiceField(choices=CONDITION_TYPES, required=False)
    service = forms.CharField(
        required=False,
        max_length=100,
        label="Service",
        help_text="Blank: the switch's service.",
        widget=forms.TextInput(attrs={"list": "killswitch-services", "size": 14}),
    )
    threshold = forms.CharField(
        required=False, label="Threshold (% or ms)", widget=_numeric(size=7)
    )
    window_s = forms.CharField(required=False, label="Window (s)", widget=_numeric(size=6))
    min_requests = forms.CharField(required=False, label="Min requests", widget=_numeric(size=6))


class KillSwitchTextForm(forms.Form):
    """The switch as YAML (or JSON) in the guide's vocabulary."""

    definition_text = forms.CharField(
        required=False,
        label="The kill switch (YAML)",
        widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false", "class": "config"}),
    )


class ReasonForm(forms.Form):
    """Why a switch is pressed, recovered or deleted (the services check that one is given)."""

    reason = forms.CharField(
        required=False, max_length=2000, widget=forms.TextInput(attrs={"autocomplete": "off"})
    )


# ----------------------------------------------------------------------------- the rows


def condition_rows(
    data: Mapping[str, Any] | None, count: int | None = None
) -> list[ConditionRowForm]:
    """The condition rows posted in ``data`` (``count`` of them, else ``condition_count``)."""
    if data is None:
        return []
    count = max(0, min(MAX_CONDITIONS, _count(data) if count is None else count))
    rows = [ConditionRowForm(data, prefix=f"condition-{index}") for index in range(count)]
    for row in rows:
        row.is_valid()
    return rows


def _count(data: Mapping[str, Any]) -> int:
    try:
        return int(data.get("condition_count") or 0)
    except (TypeError, ValueError):
        return 0


def initial_rows(definition: Mapping[str, Any]) -> list[ConditionRowForm]:
    """Unbound rows showing a stored switch's conditions."""
    conditions = definition.get("triggerConditions") if isinstance(definition, Mapping) else None
    rows = []
    for index, condition in enumerate(conditions if isinstance(conditions, list) else []):
        if isinstance(condition, Mapping):
            rows.append(
                ConditionRowForm(initial=_row_initial(condition), prefix=f"condition-{index}")
            )
    return rows


def edited_rows(data: Any, rows: list[ConditionRowForm], op: str) -> list[ConditionRowForm]:
    """The rows after "Add a condition" or "Remove"; anything else leaves them as they are."""
    if op == "add-condition" and len(rows) < MAX_CONDITIONS:
        return condition_rows(data, count=len(rows) + 1)
    if op.startswith("remove-condition-"):
        index = op.removeprefix("remove-condition-")
        if not index.isdigit():
            return rows
        kept = [position for position in range(len(rows)) if position != int(index)]
        shifted = data.copy()
        for new, old in enumerate(kept):
            for name in ConditionRowForm.base_fields:
                source, target = f"condition-{old}-{name}", f"condition-{new}-{name}"
                if source in data:
                    shifted.setlist(target, data.getlist(source))
                else:
                    shifted.pop(target, None)
        return condition_rows(shifted, count=len(kept))
    return rows


def _row_initial(condition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": _text(condition.get("type")),
        "service": _text(condition.get("component", condition.get("service"))),
        "threshold": _shown(condition.get("threshold")),
        "window_s": _seconds(condition.get("windowMs")),
        "min_requests": _text(condition.get("minRequests")),
    }


# ------------------------------------------------------------------- form <-> definition


def _shown(number: Any) -> str:
    """A number as typed (``20``, ``99.5``), not as stored (``20.0``)."""
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return _text(number)


def _value(form: forms.Form, name: str) -> Any:
    """A field's cleaned value, or what was typed when it did not clean."""
    cleaned = getattr(form, "cleaned_data", {})
    if name in cleaned:
        return cleaned[name]
    if not form.is_bound:
        return form.initial.get(name)
    key = form.add_prefix(name)
    field_ = form.fields.get(name)
    if isinstance(field_, forms.MultipleChoiceField | forms.ModelMultipleChoiceField):
        getlist = getattr(form.data, "getlist", None)
        return getlist(key) if getlist else form.data.get(key)
    return form.data.get(key)


@dataclass
class Built:
    """The definition a form says, and the row behind each of its conditions."""

    definition: dict[str, Any]
    row_of: list[int] = field(default_factory=list)


def switch_definition(form: KillSwitchForm, rows: Sequence[ConditionRowForm]) -> Built:
    """The guide's switch from the form and its rows (blank numbers left out, so the reader's
    defaults apply)."""
    form.is_valid()
    service = _value(form, "service")
    flags = _value(form, "flags") or []
    definition: dict[str, Any] = {
        "name": _text(_value(form, "name")).strip(),
        "description": _text(_value(form, "description")).strip(),
        "scope": _text(_value(form, "scope")) or KillSwitchScope.SYSTEM.value,
        "targetComponent": _name(service),
        "flags": [_key(flag) for flag in flags],
        "deploymentAction": _text(_value(form, "deployment_action"))
        or killswitches.DeploymentAction.PAUSE.value,
    }
    built = Built(definition)
    conditions = []
    for index, row in enumerate(rows):
        condition = _condition(row)
        if condition is not None:
            conditions.append(condition)
            built.row_of.append(index)
    definition["triggerConditions"] = conditions
    _put(definition, "gracePeriodMs", _number(_value(form, "grace_period_s"), scale=MS))
    definition["priority"] = _text(_value(form, "priority")) or KillSwitchPriority.HIGH.value
    definition["enabled"] = bool(_value(form, "enabled"))
    definition["notifications"] = {
        "enabled": bool(_value(form, "notifications_enabled")),
        "channels": _words(_value(form, "channels")),
        "recipients": _words(_value(form, "recipients")),
    }
    recovery: dict[str, Any] = {"enabled": bool(_value(form, "auto_recovery"))}
    _put(recovery, "delayMs", _number(_value(form, "recovery_delay_s"), scale=MS))
    _put(recovery, "maxAttempts", _number(_value(form, "max_attempts")))
    actions = _value(form, "recovery_actions")
    recovery["recoveryActions"] = list(actions) if isinstance(actions, list | tuple) else []
    definition["autoRecovery"] = recovery
    return built


def _name(service: Any) -> str:
    if service is None:
        return ""
    return service.name if hasattr(service, "name") else _text(service).strip()


def _key(flag: Any) -> str:
    return flag.key if hasattr(flag, "key") else _text(flag).strip()


def _condition(row: ConditionRowForm) -> dict[str, Any] | None:
    kind = _text(_value(row, "type"))
    if not kind:
        return None
    condition: dict[str, Any] = {"type": kind}
    service = _text(_value(row, "service")).strip()
    if service:
        condition["component"] = service
    if kind != killswitches.ConditionType.MANUAL:
        _put(condition, "threshold", _number(_value(row, "threshold")))
        _put(condition, "windowMs", _number(_value(row, "window_s"), scale=MS))
        _put(condition, "minRequests", _number(_value(row, "min_requests")))
    return condition


def switch_initial(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The form's initial values for a stored switch (its defaults filled in, as the switch's
    reader reads it)."""
    try:
        spec = killswitches.read_kill_switch(dict(definition))
    except killswitches.InvalidKillSwitch:
        spec = killswitches.KillSwitchSpec(name=_text(definition.get("name")))
    return {
        "name": spec.name,
        "description": spec.description,
        "scope": spec.scope.value,
        "service": spec.service or None,
        "flags": list(spec.flags),
        "deployment_action": spec.deployment_action.value,
        "grace_period_s": _seconds(spec.grace_period_ms),
        "priority": spec.priority.value,
        "enabled": spec.enabled,
        "notifications_enabled": bool(spec.notify_channels),
        "channels": ", ".join(spec.notify_channels),
        "recipients": ", ".join(spec.notify_recipients),
        "auto_recovery": spec.auto_recovery.enabled,
        "recovery_delay_s": _seconds(spec.auto_recovery.delay_ms),
        "max_attempts": str(spec.auto_recovery.max_attempts),
        "recovery_actions": [action.value for action in spec.auto_recovery.actions],
    }


def switch_yaml(definition: Mapping[str, Any]) -> str:
    """The switch as YAML, its keys in the order written."""
    return yaml.safe_dump(dict(definition), sort_keys=False, allow_unicode=True, width=100)


STARTER: dict[str, Any] = {
    "name": "",
    "description": "",
    "scope": "service",
    "targetComponent": "",
    "flags": [],
    "deploymentAction": "pause",
    "triggerConditions": [
        {"type": "error_rate_threshold", "threshold": 20, "windowMs": 60000, "minRequests": 20},
        {"type": "manual"},
    ],
    "gracePeriodMs": 30000,
    "priority": "high",
    "enabled": True,
    "notifications": {"enabled": False, "channels": [], "recipients": []},
    "autoRecovery": {
        "enabled": False,
        "delayMs": 300000,
        "maxAttempts": 3,
        "recoveryActions": ["re_enable_flags", "restore_traffic", "resume_deployments"],
    },
}
"""What the YAML editor of a new switch starts from."""

NEW_ROWS: list[dict[str, Any]] = [{"type": "manual"}]
"""The conditions the form of a new switch starts with."""


# ------------------------------------------------------------------------ errors to fields

# A switch's field paths and the form field each belongs to (the longest match wins).
SWITCH_FIELDS: dict[str, str] = {
    "name": "name",
    "description": "description",
    "scope": "scope",
    "type": "scope",
    "targetComponent": "service",
    "service": "service",
    "flags": "flags",
    "targetFlags": "flags",
    "deploymentAction": "deployment_action",
    "gracePeriodMs": "grace_period_s",
    "priority": "priority",
    "enabled": "enabled",
    "notifications": "notifications_enabled",
    "notifications.channels": "channels",
    "notifications.recipients": "recipients",
    "autoRecovery": "auto_recovery",
    "autoRecovery.delayMs": "recovery_delay_s",
    "autoRecovery.maxAttempts": "max_attempts",
    "autoRecovery.recoveryActions": "recovery_actions",
}
ROW_FIELDS: dict[str, str] = {
    "type": "type",
    "component": "service",
    "service": "service",
    "threshold": "threshold",
    "windowMs": "window_s",
    "minRequests": "min_requests",
}
# The form's words for the fields the reader counts in milliseconds.
_IN_SECONDS = {"grace_period_s", "recovery_delay_s", "window_s"}
_BETWEEN = re.compile(r"must be between (\d+) and (\d+)")
_CONDITION = re.compile(rf"{ROWS_AT}\[(\d+)\]\.?(.*)")


def switch_form_field(path: str) -> str | None:
    """The form field a switch's field path belongs to (None: the whole form)."""
    return _longest(path, SWITCH_FIELDS)


def in_form_units(message: str, name: str | None) -> str:
    """The reader's message in the form's units: seconds where the form asks seconds."""
    if name not in _IN_SECONDS:
        return message
    return _BETWEEN.sub(
        lambda match: (
            f"must be between {int(match.group(1)) / MS:g} and {int(match.group(2)) / MS:g} s"
        ),
        message,
    )


@dataclass(frozen=True)
class Place:
    """Where on the form a switch's field path is: the field, and the row (None: the top)."""

    name: str | None
    row: int | None = None

    def where(self, form: KillSwitchForm) -> str:
        if self.row is not None:
            label = ConditionRowForm.base_fields[self.name or "type"].label or self.name or ""
            return f"Condition {self.row + 1}: {str(label).lower()}"
        if self.name in form.fields:
            return str(form[self.name].label)
        return ""


def place_of(path: str, row_of: Sequence[int]) -> Place:
    """The form's place of ``path``: ``triggerConditions[1].threshold`` is the threshold of
    the row behind the switch's condition 1 (rows left blank are not conditions)."""
    match = _CONDITION.fullmatch(path)
    if match and int(match.group(1)) < len(row_of):
        inner = _longest(match.group(2), ROW_FIELDS) if match.group(2) else None
        return Place(inner or "type", row_of[int(match.group(1))])
    return Place(switch_form_field(path))


def issues_of(error: CanaryError) -> list[tuple[str, str]]:
    """(path, message) for each of a service error's fields, the message without the path the
    services begin it with; the error's message when it names no field."""
    said = [
        (path, message.removeprefix(f"{path}: "))
        for path, messages in error.fields.items()
        for message in messages
    ]
    return said or [("", error.message)]


def show_switch_error(
    form: KillSwitchForm,
    rows: Sequence[ConditionRowForm],
    error: CanaryError,
    row_of: Sequence[int],
) -> None:
    """The service's error next to the field it names: ``triggerConditions[i].threshold`` on
    the threshold of the row behind condition ``i``, ``autoRecovery.delayMs`` on the delay."""
    fields: dict[str, list[str]] = {}
    for path, message in issues_of(error):
        place = place_of(path, row_of)
        if place.row is not None:
            key = f"{ROWS_AT}[{place.row}].{place.name}"
        elif place.name is not None:
            key = place.name
        else:
            key = "__all__"
            message = f"{path}: {message}" if path else message
        fields.setdefault(key, []).append(in_form_units(message, place.name))
    add_error_fields(form, CanaryError(error.message, fields=fields), rows=rows, rows_at=ROWS_AT)
