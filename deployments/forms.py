"""Forms of the deployments pages: the creation wizard (a phase editor, or a pasted YAML/JSON
configuration) and the lifecycle action form.

The wizard's phase rows are plain indexed fields (``phase-0-traffic``...), so the editor works
without JavaScript: "Add a phase" posts the form back with one more row; its webhook rows
(``hook-0-name``, ``-type``, ``-url``) work the same way, a row left blank naming no hook. What
the form builds is the guide's configuration dictionary, which the validator and
`deployment_create` read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django import forms

from deployments import selectors
from deployments.choices import TrafficShiftStrategy, WebhookType
from deployments.lifecycle import PERSON_ACTIONS
from routing import selectors as routing_selectors

MAX_PHASES = 12
DEFAULT_ROWS: list[dict[str, str]] = [
    {"traffic": "10", "duration": "300", "availability": "99", "hold": "180"},
    {"traffic": "50", "duration": "300", "availability": "99", "hold": "180"},
    {"traffic": "100", "duration": "300", "availability": "99", "hold": "180"},
]
ROW_FIELDS = (
    "name",
    "traffic",
    "duration",
    "availability",
    "hold",
    "error_rate",
    "latency_p95",
    "min_availability",
)
ROW_DEFAULTS = {"error_rate": "5", "latency_p95": "1000", "min_availability": "95"}
MAX_HOOKS = 10
HOOK_FIELDS = ("name", "type", "url")
HOOK_TYPES = list(WebhookType.choices)


class WizardForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    service = forms.ModelChoiceField(
        queryset=routing_selectors.service_list(), required=False, to_field_name="name"
    )
    stable_version = forms.CharField(
        max_length=100, required=False, help_text="Blank: the service's stable version."
    )
    canary_version = forms.CharField(max_length=100, required=False)
    strategy = forms.ChoiceField(
        choices=TrafficShiftStrategy.choices, initial=TrafficShiftStrategy.PHASED
    )
    auto_promote = forms.BooleanField(required=False, initial=True)
    auto_rollback = forms.BooleanField(required=False, initial=True)
    max_minutes = forms.FloatField(
        min_value=0.1, initial=60, label="Maximum time (minutes)", required=False
    )
    health_policy = forms.ModelChoiceField(
        queryset=selectors.policy_choices(),
        required=False,
        empty_label="Default policy",
        help_text="How the canary is judged against stable, besides the phases' criteria.",
    )
    linked_flags = forms.ModelMultipleChoiceField(
        queryset=selectors.flag_choices(),
        required=False,
        to_field_name="key",
        help_text="Flags whose rollout percentage follows the canary's share.",
    )
    config_text = forms.CharField(
        required=False,
        label="Or paste a configuration (YAML or JSON)",
        widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false"}),
        help_text="When filled, it is used instead of the editor above.",
    )
    phase_count = forms.IntegerField(
        min_value=1, max_value=MAX_PHASES, initial=3, widget=forms.HiddenInput
    )
    hook_count = forms.IntegerField(
        min_value=0, max_value=MAX_HOOKS, initial=0, required=False, widget=forms.HiddenInput
    )


@dataclass
class PhaseRow:
    index: int
    values: dict[str, str]
    errors: list[str] = field(default_factory=list)


def phase_rows(data: Mapping[str, Any] | None, count: int | None = None) -> list[PhaseRow]:
    """The editor's rows from the posted data (or the defaults for a fresh form)."""
    if data is None:
        return [
            PhaseRow(index, {**ROW_DEFAULTS, "name": "", **values})
            for index, values in enumerate(DEFAULT_ROWS)
        ]
    count = max(1, min(MAX_PHASES, count or _count(data)))
    rows = []
    for index in range(count):
        values = {
            name: str(data.get(f"phase-{index}-{name}", ROW_DEFAULTS.get(name, ""))).strip()
            for name in ROW_FIELDS
        }
        rows.append(PhaseRow(index, values))
    return rows


def hook_rows(data: Mapping[str, Any] | None, count: int | None = None) -> list[PhaseRow]:
    """The webhook rows from the posted data (none for a fresh form)."""
    if data is None:
        return []
    if count is None:
        try:
            count = int(data.get("hook_count") or 0)
        except (TypeError, ValueError):
            count = 0
    count = max(0, min(MAX_HOOKS, count))
    return [
        PhaseRow(
            index,
            {name: str(data.get(f"hook-{index}-{name}", "")).strip() for name in HOOK_FIELDS},
        )
        for index in range(count)
    ]


def _count(data: Mapping[str, Any]) -> int:
    try:
        return int(data.get("phase_count") or 1)
    except (TypeError, ValueError):
        return 1


def _number(text: str, *, scale: float = 1.0) -> Any:
    """A typed number, or the text as typed so the validator names what is wrong with it."""
    if text == "":
        return None
    try:
        value = float(text) * scale
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


def editor_config(
    form: WizardForm, rows: list[PhaseRow], hooks: list[PhaseRow] | None = None
) -> dict[str, Any]:
    """The guide's configuration from the editor's fields (blank fields left out, so the
    validator says which are required)."""
    data = form.cleaned_data if hasattr(form, "cleaned_data") else {}
    service = data.get("service")
    config: dict[str, Any] = {}
    for key, value in (
        ("name", data.get("name") or None),
        ("description", data.get("description") or None),
        ("serviceName", service.name if service else None),
        (
            "stableVersion",
            data.get("stable_version") or (service.stable_version if service else None),
        ),
        ("canaryVersion", data.get("canary_version") or None),
        ("trafficShiftStrategy", data.get("strategy") or None),
    ):
        if value is not None:
            config[key] = value
    config["autoPromote"] = bool(data.get("auto_promote"))
    config["autoRollback"] = bool(data.get("auto_rollback"))
    minutes = data.get("max_minutes")
    if minutes:
        config["maxDeploymentTimeMs"] = int(minutes * 60_000)
    phases = []
    for row in rows:
        values = row.values
        phase: dict[str, Any] = {}
        if values.get("name"):
            phase["name"] = values["name"]
        for key, source, scale in (
            ("trafficPercentage", "traffic", 1.0),
            ("durationMs", "duration", 1000.0),
        ):
            number = _number(values.get(source, ""), scale=scale)
            if number is not None:
                phase[key] = number
        availability = _number(values.get("availability", ""))
        if availability is not None:
            criterion = {
                "metric": "availability",
                "operator": "greater_than",
                "threshold": availability,
            }
            hold = _number(values.get("hold", ""), scale=1000.0)
            if hold is not None:
                criterion["durationMs"] = hold
            phase["successCriteria"] = [criterion]
        thresholds = {}
        for key, source in (
            ("errorRate", "error_rate"),
            ("latencyP95", "latency_p95"),
            ("availability", "min_availability"),
        ):
            number = _number(values.get(source, ""))
            if number is not None:
                thresholds[key] = number
        if thresholds:
            phase["rollbackThresholds"] = thresholds
        phases.append(phase)
    config["phases"] = phases
    webhooks = [
        {name: row.values[name] for name in HOOK_FIELDS if row.values.get(name)}
        for row in hooks or []
        if any(row.values.values())
    ]
    if webhooks:
        config["webhooks"] = webhooks
    return config


def attach_row_errors(
    rows: list[PhaseRow], issues: list[dict[str, str]], hooks: list[PhaseRow] | None = None
) -> None:
    for issue in issues:
        name = issue.get("field", "")
        for row in rows:
            if name.startswith(f"phases[{row.index}]"):
                row.errors.append(issue["message"])
        # Blank rows are left out of the configuration, so its positions count filled rows.
        filled = [row for row in hooks or [] if any(row.values.values())]
        for position, row in enumerate(filled):
            if name == f"webhooks[{position}]" or name.startswith(f"webhooks[{position}]."):
                row.errors.append(issue["message"])


class ActionForm(forms.Form):
    """A lifecycle button's form: the action, why, and the phase the person is looking at."""

    action = forms.ChoiceField(choices=[(str(verb), str(verb)) for verb in PERSON_ACTIONS])
    reason = forms.CharField(required=False, max_length=5000)
    phase = forms.IntegerField(required=False, min_value=1)
