"""Forms of the health pages: a health policy as fields, its thresholds, rollback thresholds and
escalation rules as rows.

A policy's form builds the policy document ``health.analysis.build_policy`` reads and the
alerting settings ``health.alerting.validate_alerting`` reads, and leaves every check to them
(through ``health_policy_create`` and ``health_policy_update``), so a form and a REST body are
judged alike. Every key the reader knows has a field, so a policy written over REST and edited
here keeps all it said.

The rows are plain indexed forms (``threshold-0-metric``...), so the editor works without
JavaScript: "Add a threshold" posts the form back with one more row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django import forms

from canary_site.exceptions import CanaryError, ValidationFailed, full_clean
from canary_site.forms import add_error_fields
from health import alerting, analysis
from health.models import HealthPolicy

MAX_ROWS = 20
CUSTOM = "custom"
"""The metric select's choice for ``custom:<name>``; the name is the row's own field."""

METRIC_LABELS = {
    analysis.AVAILABILITY: "Availability (%)",
    analysis.ERROR_RATE: "Error rate (%)",
    analysis.LATENCY_P50: "Latency p50 (ms)",
    analysis.LATENCY_P95: "Latency p95 (ms)",
    analysis.LATENCY_P99: "Latency p99 (ms)",
    analysis.THROUGHPUT: "Throughput (requests/s)",
}
UNITS = {
    analysis.AVAILABILITY: "%",
    analysis.ERROR_RATE: "%",
    analysis.LATENCY_P50: "ms",
    analysis.LATENCY_P95: "ms",
    analysis.LATENCY_P99: "ms",
    analysis.THROUGHPUT: "requests/s",
}
METRIC_CHOICES = (
    [("", "(choose a metric)")]
    + [(metric, METRIC_LABELS[metric]) for metric in analysis.METRICS]
    + [(CUSTOM, "Custom metric (its mean)")]
)
OPERATOR_CHOICES = [
    (analysis.Operator.GT.value, "above"),
    (analysis.Operator.GTE.value, "at or above"),
    (analysis.Operator.LT.value, "below"),
    (analysis.Operator.LTE.value, "at or below"),
]
SEVERITY_CHOICES = [
    (analysis.Verdict.CRITICAL.value, "Critical"),
    (analysis.Verdict.WARNING.value, "Warning"),
    (analysis.Verdict.INCONCLUSIVE.value, "Inconclusive"),
]
NO_DATA_CHOICES = [
    (analysis.NoDataRule.INCONCLUSIVE.value, "Inconclusive: wait for more traffic"),
    (analysis.NoDataRule.FAIL.value, "Fail: count it as critical"),
    (analysis.NoDataRule.IGNORE.value, "Ignore: leave the check out"),
]
COMPARISON_CHOICES = [(analysis.ERROR_RATE, "Error rate"), (analysis.LATENCY, "Latency")]
CHANNEL_CHOICES = [
    (alerting.Channel.EMAIL.value, "Email"),
    (alerting.Channel.SLACK.value, "Slack"),
    (alerting.Channel.WEBHOOK.value, "Webhook"),
]
ESCALATION_SEVERITY_CHOICES = [
    ("", "(choose)"),
    (alerting.Severity.WARNING.value, "Warning"),
    (alerting.Severity.CRITICAL.value, "Critical"),
]


def _number(
    label: str,
    *,
    whole: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    help_text: str = "",
) -> forms.CharField:
    """A number input whose text goes to the reader as typed (a number, or the text itself), so
    the reader says what is wrong with it."""
    attrs: dict[str, Any] = {"step": "1" if whole else "any"}
    if minimum is not None:
        attrs["min"] = f"{minimum:g}"
    if maximum is not None:
        attrs["max"] = f"{maximum:g}"
    return forms.CharField(
        required=False, label=label, help_text=help_text, widget=forms.NumberInput(attrs=attrs)
    )


def _switch(label: str, help_text: str = "") -> forms.BooleanField:
    return forms.BooleanField(required=False, label=label, help_text=help_text)


def _ticks(choices: Sequence[tuple[str, str]], label: str, help_text: str = "") -> Any:
    return forms.MultipleChoiceField(
        choices=choices,
        required=False,
        label=label,
        help_text=help_text,
        widget=forms.CheckboxSelectMultiple,
    )


class PolicyForm(forms.Form):
    """A policy's settings, section by section in the order of the policy document."""

    name = forms.CharField(max_length=100, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    window_seconds = _number(
        "Window (seconds)",
        whole=True,
        minimum=1,
        help_text="The current window: thresholds, trends and the traffic split are judged on it.",
    )
    fast_window_seconds = _number(
        "Fast window (seconds)",
        whole=True,
        minimum=1,
        maximum=3600,
        help_text="The last few seconds, judged on their own so a gross fault is caught at once.",
    )
    min_requests = _number(
        "Minimum requests",
        whole=True,
        minimum=1,
        help_text="A window with fewer requests is no data; no data is never a pass.",
    )
    no_data = forms.ChoiceField(
        choices=NO_DATA_CHOICES, required=False, label="A window without enough data counts as"
    )

    comparison_enabled = _switch("Compare the canary with stable")
    comparison_metrics = _ticks(COMPARISON_CHOICES, "Compared on")
    comparison_tolerance_percent = _number(
        "Tolerance (% worse than stable)",
        minimum=0,
        help_text="Relative: 50 lets stable's 1% error rate be 1.5% on the canary.",
    )
    comparison_margin_points = _number(
        "Minimum effect on the error rate (percentage points)",
        minimum=0,
        maximum=100,
        help_text="A smaller difference is never a degradation.",
    )
    comparison_margin_ms = _number("Minimum effect on latency (ms)", minimum=0)
    comparison_latency_percentile = _number(
        "Latency percentile compared", minimum=0, maximum=100, help_text="e.g. 95"
    )
    comparison_alpha = _number(
        "False alarms per phase (alpha)",
        minimum=0,
        maximum=1,
        help_text="Between 0 and 1: 0.01 is one phase in a hundred rolled back for nothing.",
    )
    comparison_fast_alpha = _number(
        "Fast window's false alarms per look (alpha)", minimum=0, maximum=1
    )
    comparison_baseline_window_seconds = _number(
        "Stable's baseline before the phase (seconds)", whole=True, minimum=1, maximum=86_400
    )
    comparison_severity = forms.ChoiceField(
        choices=SEVERITY_CHOICES, required=False, label="A degradation is"
    )
    comparison_rollback = _switch(
        "A degradation asks for a rollback", "Acted on only with automatic rollback on."
    )

    trend_enabled = _switch("Look for worsening trends")
    trend_metrics = _ticks(list(METRIC_LABELS.items()), "Metrics watched")
    trend_custom_metrics = forms.CharField(
        required=False,
        max_length=2000,
        label="Custom metrics watched",
        help_text="Their names (what follows custom:), separated by commas.",
    )
    trend_windows = _number("Windows looked at", whole=True, minimum=3)
    trend_min_windows = _number("Windows with data needed", whole=True, minimum=3)
    trend_alpha = _number("Significance (alpha)", minimum=0, maximum=1)
    trend_severity = forms.ChoiceField(
        choices=SEVERITY_CHOICES, required=False, label="A worsening trend is"
    )

    sample_ratio_enabled = _switch("Check the canary's share of traffic against the planned one")
    sample_ratio_alpha = _number("Significance (alpha)", minimum=0, maximum=1)
    sample_ratio_severity = forms.ChoiceField(
        choices=SEVERITY_CHOICES, required=False, label="A split off the plan is"
    )

    auto_rollback_enabled = _switch(
        "Roll back automatically", "Off: breaches are reported, never acted on."
    )

    alerting_enabled = _switch("Send alerts and deployment news")
    alert_channels = _ticks(CHANNEL_CHOICES, "Channels")
    alert_recipients = forms.CharField(
        required=False,
        max_length=10_000,
        label="Email recipients",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Separated by commas or new lines.",
    )
    slack_webhook_url = forms.CharField(
        required=False,
        max_length=200,
        label="Slack webhook URL",
        widget=forms.URLInput,
        help_text="Blank: the site's (CANARY_SLACK_WEBHOOK_URL).",
    )
    webhook_url = forms.CharField(
        required=False,
        max_length=200,
        label="Webhook URL",
        widget=forms.URLInput,
        help_text="Signed JSON. Blank: the site's (CANARY_WEBHOOK_URL).",
    )
    alert_cooldown_seconds = forms.IntegerField(
        min_value=0,
        initial=300,
        label="Cooldown (seconds)",
        help_text="No repeated notification for the same canary within this time.",
    )


class _MetricRow(forms.Form):
    """What a threshold row and a rollback threshold row share: the metric and when it is bad."""

    metric = forms.ChoiceField(choices=METRIC_CHOICES, required=False, label="Metric")
    custom_metric = forms.CharField(required=False, max_length=100, label="Custom metric name")
    operator = forms.ChoiceField(
        choices=OPERATOR_CHOICES, required=False, initial="gt", label="Bad when it is"
    )

    @property
    def unit_suffix(self) -> str:
        """The unit of the row's values, for their labels: `` (ms)``."""
        unit = UNITS.get(str(_value(self, "metric") or ""), "")
        return f" ({unit})" if unit else ""


class ThresholdRowForm(_MetricRow):
    """One absolute bound on the canary's own metric: warning, critical or both."""

    warning = _number("Warning at")
    critical = _number("Critical at")
    consecutive_failures = _number("Windows in a row", whole=True, minimum=1)


class RollbackRowForm(_MetricRow):
    """One bound whose breach rolls the canary back (with automatic rollback on)."""

    threshold = _number("Roll back at")
    consecutive_violations = _number("Windows in a row", whole=True, minimum=1)


class EscalationRowForm(forms.Form):
    """Who else is told when an alert of a severity stays unacknowledged."""

    severity = forms.ChoiceField(
        choices=ESCALATION_SEVERITY_CHOICES, required=False, label="Alert severity"
    )
    delay_seconds = _number("Unacknowledged for (seconds)", whole=True, minimum=0)
    recipients = forms.CharField(
        required=False, max_length=10_000, label="Email recipients", help_text="Comma-separated."
    )
    channels = _ticks(CHANNEL_CHOICES, "Channels", "None ticked: the policy's.")


# ----------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class RowKind:
    """One kind of row: its form, its prefix, the path of its items in the service's errors."""

    prefix: str
    form: type[forms.Form]
    path: str
    noun: str
    ignored: tuple[str, ...] = ()
    """Fields that always have a value, left out when telling a blank row."""

    @property
    def count_field(self) -> str:
        return f"{self.prefix}_count"


THRESHOLDS = RowKind(
    "threshold", ThresholdRowForm, "policy.thresholds", "Threshold", ignored=("operator",)
)
ROLLBACKS = RowKind(
    "rollback",
    RollbackRowForm,
    "policy.auto_rollback.thresholds",
    "Rollback threshold",
    ignored=("operator",),
)
ESCALATIONS = RowKind("escalation", EscalationRowForm, "escalation_rules", "Escalation rule")
KINDS = (THRESHOLDS, ROLLBACKS, ESCALATIONS)

Rows = dict[str, list[forms.Form]]
"""Each kind's rows by its prefix."""


def posted_rows(data: Mapping[str, Any], counts: Mapping[str, int] | None = None) -> Rows:
    """Every kind's rows posted in ``data`` (as many as ``counts`` says, else the posted
    ``<kind>_count``)."""
    rows: Rows = {}
    for kind in KINDS:
        count = (counts or {}).get(kind.prefix)
        if count is None:
            count = _count(data, kind)
        count = max(0, min(MAX_ROWS, count))
        rows[kind.prefix] = [kind.form(data, prefix=f"{kind.prefix}-{i}") for i in range(count)]
        for row in rows[kind.prefix]:
            row.is_valid()
    return rows


def _count(data: Mapping[str, Any], kind: RowKind) -> int:
    try:
        return int(data.get(kind.count_field) or 0)
    except (TypeError, ValueError):
        return 0


def edited_rows(data: Any, rows: Rows, op: str) -> Rows:
    """The rows after "Add a threshold" (``add-threshold``) or a row's "Remove"
    (``remove-threshold-1``); any other op re-renders them as they are."""
    for kind in KINDS:
        current = len(rows[kind.prefix])
        if op == f"add-{kind.prefix}" and current < MAX_ROWS:
            return posted_rows(data, _counts(rows, **{kind.prefix: current + 1}))
        index = op.removeprefix(f"remove-{kind.prefix}-")
        if index != op and index.isdecimal():
            kept = [position for position in range(current) if position != int(index)]
            shifted = data.copy()
            for new, old in enumerate(kept):
                for name in kind.form.base_fields:
                    source, target = f"{kind.prefix}-{old}-{name}", f"{kind.prefix}-{new}-{name}"
                    if source in data:
                        shifted.setlist(target, data.getlist(source))
                    else:
                        shifted.pop(target, None)
            for name in kind.form.base_fields:
                shifted.pop(f"{kind.prefix}-{len(kept)}-{name}", None)
            return posted_rows(shifted, _counts(rows, **{kind.prefix: len(kept)}))
    return rows


def _counts(rows: Rows, **changed: int) -> dict[str, int]:
    return {prefix: len(found) for prefix, found in rows.items()} | changed


def _blank(row: forms.Form, kind: RowKind) -> bool:
    return all(
        _value(row, name) in (None, "", [], ()) for name in row.fields if name not in kind.ignored
    )


# ------------------------------------------------------------------- form <-> document


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def shown_number(value: Any) -> str:
    """A stored number as the form shows it: ``300``, ``0.05``, ``1e-05``."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _typed(text: Any) -> Any:
    """A typed number, or the text as typed so the reader names what is wrong with it."""
    text = _text(text).strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    if value != value or value in (float("inf"), float("-inf")):
        return text
    return int(value) if value.is_integer() else value


def _words(text: Any) -> list[str]:
    return [word for word in re.split(r"[,\s]+", _text(text)) if word]


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def _value(form: forms.Form, name: str) -> Any:
    """A field's cleaned value, or what was typed when it did not clean."""
    cleaned = getattr(form, "cleaned_data", {})
    if name in cleaned:
        return cleaned[name]
    if not form.is_bound:
        return form.initial.get(name, form.fields[name].initial)
    widget = form.fields[name].widget
    return widget.value_from_datadict(form.data, form.files, form.add_prefix(name))


def _metric_of(row: forms.Form) -> str:
    metric = _text(_value(row, "metric"))
    if metric == CUSTOM:
        name = _text(_value(row, "custom_metric")).strip()
        return f"{analysis.CUSTOM_PREFIX}{name.removeprefix(analysis.CUSTOM_PREFIX)}"
    return metric


def _metric_fields(metric: str) -> dict[str, str]:
    if analysis.is_custom_metric(metric) or metric.startswith(analysis.CUSTOM_PREFIX):
        return {"metric": CUSTOM, "custom_metric": metric[len(analysis.CUSTOM_PREFIX) :]}
    return {"metric": metric, "custom_metric": ""}


@dataclass
class Built:
    """What a form says, as the service's arguments, and the row behind each listed item."""

    document: dict[str, Any]
    settings: dict[str, Any]
    row_of: dict[str, list[int]] = field(default_factory=dict)
    checked_trend_metrics: int = 0


def policy_arguments(form: PolicyForm, rows: Rows) -> Built:
    """The policy document and the other fields of ``health_policy_create`` from the form and
    its rows (blank fields left out, so the reader's defaults apply; blank rows left out)."""
    form.is_valid()
    document: dict[str, Any] = {}
    for key in ("window_seconds", "fast_window_seconds", "min_requests"):
        _put(document, key, _typed(_value(form, key)))
    _put(document, "no_data", _value(form, "no_data") or None)
    built = Built(document=document, settings={})

    items, built.row_of[THRESHOLDS.prefix] = _items(rows[THRESHOLDS.prefix], THRESHOLDS)
    document["thresholds"] = [
        _bound(row, ("warning", "critical", "consecutive_failures")) for row in items
    ]

    comparison: dict[str, Any] = {
        "enabled": bool(_value(form, "comparison_enabled")),
        "metrics": list(_value(form, "comparison_metrics") or []),
    }
    for key in (
        "tolerance_percent",
        "margin_points",
        "margin_ms",
        "alpha",
        "fast_alpha",
        "latency_percentile",
        "baseline_window_seconds",
    ):
        _put(comparison, key, _typed(_value(form, f"comparison_{key}")))
    _put(comparison, "severity", _value(form, "comparison_severity") or None)
    comparison["rollback"] = bool(_value(form, "comparison_rollback"))
    document["comparison"] = comparison

    ticked = list(_value(form, "trend_metrics") or [])
    built.checked_trend_metrics = len(ticked)
    custom = [
        f"{analysis.CUSTOM_PREFIX}{name.removeprefix(analysis.CUSTOM_PREFIX)}"
        for name in _words(_value(form, "trend_custom_metrics"))
    ]
    trend: dict[str, Any] = {
        "enabled": bool(_value(form, "trend_enabled")),
        "metrics": ticked + custom,
    }
    for key in ("windows", "min_windows", "alpha"):
        _put(trend, key, _typed(_value(form, f"trend_{key}")))
    _put(trend, "severity", _value(form, "trend_severity") or None)
    document["trend"] = trend

    sample_ratio: dict[str, Any] = {"enabled": bool(_value(form, "sample_ratio_enabled"))}
    _put(sample_ratio, "alpha", _typed(_value(form, "sample_ratio_alpha")))
    _put(sample_ratio, "severity", _value(form, "sample_ratio_severity") or None)
    document["sample_ratio"] = sample_ratio

    items, built.row_of[ROLLBACKS.prefix] = _items(rows[ROLLBACKS.prefix], ROLLBACKS)
    document["auto_rollback"] = {
        "enabled": bool(_value(form, "auto_rollback_enabled")),
        "thresholds": [_bound(row, ("threshold", "consecutive_violations")) for row in items],
    }

    items, built.row_of[ESCALATIONS.prefix] = _items(rows[ESCALATIONS.prefix], ESCALATIONS)
    rules = []
    for row in items:
        rule: dict[str, Any] = {
            "severity": _value(row, "severity") or None,
            "delay_seconds": _typed(_value(row, "delay_seconds")),
            "recipients": _words(_value(row, "recipients")),
        }
        channels = list(_value(row, "channels") or [])
        if channels:
            rule["channels"] = channels
        rules.append(rule)

    cooldown = _value(form, "alert_cooldown_seconds")
    built.settings = {
        "name": _text(_value(form, "name")).strip(),
        "description": _text(_value(form, "description")).strip(),
        "alerting_enabled": bool(_value(form, "alerting_enabled")),
        "alert_channels": list(_value(form, "alert_channels") or []),
        "alert_recipients": _words(_value(form, "alert_recipients")),
        "slack_webhook_url": _text(_value(form, "slack_webhook_url")).strip(),
        "webhook_url": _text(_value(form, "webhook_url")).strip(),
        "alert_cooldown_seconds": cooldown if isinstance(cooldown, int) else 300,
        "escalation_rules": rules,
    }
    return built


def _items(rows: Sequence[forms.Form], kind: RowKind) -> tuple[list[forms.Form], list[int]]:
    """The rows that say something, and the position of each among all rows."""
    kept = [(index, row) for index, row in enumerate(rows) if not _blank(row, kind)]
    return [row for _index, row in kept], [index for index, _row in kept]


def _bound(row: forms.Form, numbers: Sequence[str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "metric": _metric_of(row),
        "operator": _value(row, "operator") or None,
    }
    for name in numbers:
        _put(item, name, _typed(_value(row, name)))
    return item


def policy_initial(policy: HealthPolicy | None) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The form's initial values and each kind's rows' for a stored policy (the reader's
    defaults for a new one), as the reader reads it."""
    try:
        spec = analysis.build_policy(policy.policy if policy is not None else {})
    except analysis.InvalidPolicy:
        spec = analysis.Policy()
    document = spec.to_dict()
    initial: dict[str, Any] = {
        "name": policy.name if policy is not None else "",
        "description": policy.description if policy is not None else "",
        "window_seconds": shown_number(document["window_seconds"]),
        "fast_window_seconds": shown_number(document["fast_window_seconds"]),
        "min_requests": shown_number(document["min_requests"]),
        "no_data": document["no_data"],
    }
    for section in ("comparison", "trend", "sample_ratio"):
        for key, value in document[section].items():
            if key == "metrics" or isinstance(value, bool) or key == "severity":
                initial[f"{section}_{key}"] = value
            else:
                initial[f"{section}_{key}"] = shown_number(value)
    trend_metrics = document["trend"]["metrics"]
    initial["trend_metrics"] = [name for name in trend_metrics if name in METRIC_LABELS]
    initial["trend_custom_metrics"] = ", ".join(
        name[len(analysis.CUSTOM_PREFIX) :]
        for name in trend_metrics
        if name.startswith(analysis.CUSTOM_PREFIX)
    )
    initial["auto_rollback_enabled"] = document["auto_rollback"]["enabled"]
    thresholds = [
        {
            **_metric_fields(item["metric"]),
            "operator": item["operator"],
            "warning": shown_number(item["warning"]),
            "critical": shown_number(item["critical"]),
            "consecutive_failures": shown_number(item["consecutive_failures"]),
        }
        for item in document["thresholds"]
    ]
    rollbacks = [
        {
            **_metric_fields(item["metric"]),
            "operator": item["operator"],
            "threshold": shown_number(item["threshold"]),
            "consecutive_violations": shown_number(item["consecutive_violations"]),
        }
        for item in document["auto_rollback"]["thresholds"]
    ]
    escalations: list[dict[str, Any]] = []
    if policy is None:
        initial |= {"alerting_enabled": True, "alert_cooldown_seconds": 300}
        # A new policy shows one empty row of thresholds, so their columns are seen.
        thresholds = thresholds or [{"operator": "gt"}]
    else:
        initial |= {
            "alerting_enabled": policy.alerting_enabled,
            "alert_channels": list(policy.alert_channels or []),
            "alert_recipients": "\n".join(policy.alert_recipients or []),
            "slack_webhook_url": policy.slack_webhook_url,
            "webhook_url": policy.webhook_url,
            "alert_cooldown_seconds": policy.alert_cooldown_seconds,
        }
        escalations = [
            {
                "severity": rule.get("severity", ""),
                "delay_seconds": shown_number(rule.get("delay_seconds")),
                "recipients": ", ".join(rule.get("recipients") or []),
                "channels": list(rule.get("channels") or []),
            }
            for rule in policy.escalation_rules or []
            if isinstance(rule, Mapping)
        ]
    rows = {
        THRESHOLDS.prefix: _unbound(THRESHOLDS, thresholds),
        ROLLBACKS.prefix: _unbound(ROLLBACKS, rollbacks),
        ESCALATIONS.prefix: _unbound(ESCALATIONS, escalations),
    }
    return initial, rows


def _unbound(kind: RowKind, items: Sequence[Mapping[str, Any]]) -> list[forms.Form]:
    return [
        kind.form(initial=dict(item), prefix=f"{kind.prefix}-{index}")
        for index, item in enumerate(items[:MAX_ROWS])
    ]


# ------------------------------------------------------------------------ errors to fields

_SECTIONS = ("comparison", "trend", "sample_ratio", "auto_rollback")


def policy_form_field(path: str, built: Built | None = None) -> str | None:
    """The form field a service's field path belongs to (None: the whole form):
    ``policy.comparison.alpha`` is ``comparison_alpha``, ``alert_recipients[2]`` is
    ``alert_recipients``."""
    parts = re.split(r"[.\[]", path)
    if parts[0] != "policy":
        return parts[0] if parts[0] in PolicyForm.base_fields else None
    if len(parts) < 2:
        return None
    if parts[1] in _SECTIONS and len(parts) > 2:
        name = f"{parts[1]}_{parts[2]}"
        if name == "trend_metrics" and built is not None:
            index = re.match(r"policy\.trend\.metrics\[(\d+)\]", path)
            if index and int(index.group(1)) >= built.checked_trend_metrics:
                name = "trend_custom_metrics"
        if name in PolicyForm.base_fields:
            return name
    if parts[1] in _SECTIONS:
        return f"{parts[1]}_enabled"
    return parts[1] if parts[1] in PolicyForm.base_fields else None


@dataclass(frozen=True)
class Place:
    """Where a path's error is shown: the form, or a kind's row, and the field in it."""

    kind: RowKind | None
    row: int | None
    name: str | None
    inner: str
    whole: bool = True
    """Whether the field is all the path names (else the message says the rest)."""


def place_of(path: str, rows: Rows, built: Built) -> Place:
    for kind in KINDS:
        match = re.fullmatch(rf"{re.escape(kind.path)}\[(\d+)\]\.?(.*)", path)
        row_of = built.row_of.get(kind.prefix, [])
        if match and int(match.group(1)) < len(row_of):
            index = row_of[int(match.group(1))]
            inner = match.group(2)
            head = re.split(r"[.\[]", inner, maxsplit=1)[0]
            row = rows[kind.prefix][index]
            whole = head == inner
            if head == "metric" and _value(row, "metric") == CUSTOM:
                head = "custom_metric"
            name = head if head in row.fields else None
            return Place(kind, index, name, inner, whole=whole and name is not None)
    return Place(None, None, policy_form_field(path, built), path)


def where(place: Place, form: PolicyForm, rows: Rows) -> str:
    """The words a person reads for a place: ``Threshold 2: Critical at``."""
    if place.kind is not None and place.row is not None:
        said = f"{place.kind.noun} {place.row + 1}"
        if place.name is not None:
            said = f"{said}: {rows[place.kind.prefix][place.row][place.name].label}"
        return said
    if place.name is not None and place.name in form.fields:
        return str(form[place.name].label)
    return ""


def show_policy_error(form: PolicyForm, rows: Rows, error: CanaryError, built: Built) -> None:
    """The service's error next to the field it names: ``policy.thresholds[i].critical`` on the
    critical value of the row behind the policy's threshold ``i``."""
    if not error.fields:
        form.add_error(None, error.message)
        return
    on_form: dict[str, list[str]] = {}
    for path, messages in error.fields.items():
        place = place_of(path, rows, built)
        if place.kind is None or place.row is None:
            on_form.setdefault(path, []).extend(messages)
            continue
        row = rows[place.kind.prefix][place.row]
        for message in messages:
            said = message if place.whole or not place.inner else f"{place.inner}: {message}"
            row.add_error(place.name, said)
    if on_form:
        add_error_fields(
            form, CanaryError(error.message, fields=on_form), lambda p: policy_form_field(p, built)
        )


_TEXT_SETTINGS = ("name", "description", "slack_webhook_url", "webhook_url")


def policy_problems(built: Built, policy: HealthPolicy | None) -> list[tuple[str, str]]:
    """What the service would refuse in ``built``, as (field path, message), without saving:
    the policy's reader, the alerting settings' reader, then the row's own checks (a taken
    name, a URL that is none)."""
    problems: list[tuple[str, str]] = []
    candidate = HealthPolicy()
    if policy is not None:
        # The row being edited: its own name is not taken.
        candidate.pk, candidate._state.adding = policy.pk, False
    try:
        candidate.policy = analysis.build_policy(built.document).to_dict()
    except analysis.InvalidPolicy as error:
        problems.append((f"policy.{error.field}", error.message))
    settings = built.settings
    try:
        config = alerting.validate_alerting(
            channels=settings["alert_channels"],
            recipients=settings["alert_recipients"],
            escalation_rules=settings["escalation_rules"],
        )
    except alerting.InvalidAlerting as error:
        problems.append((error.field, error.message))
    else:
        candidate.alert_channels = config.channels
        candidate.alert_recipients = config.recipients
        candidate.escalation_rules = config.escalation_rules
    for name in ("name", "description", "alerting_enabled", "slack_webhook_url", "webhook_url"):
        setattr(candidate, name, settings[name])
    candidate.alert_cooldown_seconds = settings["alert_cooldown_seconds"]
    if any("\x00" in str(settings[name]) for name in _TEXT_SETTINGS):
        # The form has refused it already; PostgreSQL cannot even be asked whether it is taken.
        return problems
    try:
        full_clean(candidate)
    except ValidationFailed as error:
        for path, messages in error.fields.items():
            if path not in {found for found, _message in problems} and path != "policy":
                problems.extend((path, message) for message in messages)
    return problems
