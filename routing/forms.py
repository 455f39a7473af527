"""Forms of the routing dashboard and admin. They parse input only; the services validate it by
compiling the routing definition, and `canary_site.forms.add_error_fields` puts their errors
back on the fields they name."""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from django import forms

from canary_site.exceptions import CanaryError
from canary_site.forms import add_error_fields
from routing import services
from routing.choices import ConditionOperator, ConditionSource, Strategy
from routing.models import RoutingRule, Target

JSON_SECTIONS = services.RULE_SECTIONS
RULE_FIELDS = services.RULE_FIELDS


def _json_widget(rows: int = 3) -> forms.Textarea:
    return forms.Textarea(attrs={"rows": rows, "class": "mono", "spellcheck": "false"})


class RuleForm(forms.Form):
    """The rule editor: every field of a rule but its weights, which the slider panel sets."""

    name = forms.CharField(max_length=100, required=False)
    priority = forms.IntegerField(help_text="Lower runs first.")
    enabled = forms.BooleanField(required=False)
    strategy = forms.ChoiceField(choices=Strategy.choices)
    strategy_key = forms.CharField(
        max_length=100,
        required=False,
        help_text="Header, cookie or query parameter naming a target (for those strategies).",
    )
    conditions = forms.JSONField(
        required=False,
        widget=_json_widget(5),
        help_text=(
            "A list of {source, name, operator, values, case_sensitive, negate}; sources: "
            + ", ".join(ConditionSource.values)
            + "; operators: "
            + ", ".join(ConditionOperator.values)
            + "."
        ),
    )
    affinity = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='e.g. {"type": "cookie", "name": "canary_session", "ttl_s": 3600}',
    )
    failover = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='e.g. {"fail_open": true, "retries": 2, "retry_delay_ms": 100}',
    )
    circuit_breaker = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='e.g. {"failure_threshold": 5, "recovery_timeout_s": 30}',
    )
    rate_limit = forms.JSONField(
        required=False, widget=_json_widget(), help_text='e.g. {"rps": 100, "burst": 20}'
    )
    health_check = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='e.g. {"path": "/health", "interval_s": 10, "unhealthy_threshold": 3}',
    )
    reason = forms.CharField(max_length=500, required=False)

    @classmethod
    def for_rule(cls, rule: RoutingRule) -> RuleForm:
        # An absent section shows as an empty box rather than "null".
        initial = {name: getattr(rule, name) for name in RULE_FIELDS}
        return cls(initial={name: value for name, value in initial.items() if value is not None})

    def clean_conditions(self) -> Any:
        return self.cleaned_data["conditions"] or []


class WeightsForm(forms.Form):
    """One percentage per target of a rule. With two targets the page shows one slider, for
    the second (canary) target; the other takes the rest."""

    reason = forms.CharField(max_length=500, required=False)

    def __init__(self, *args: Any, rule: RoutingRule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.links = list(rule.rule_targets.select_related("target"))
        for item in self.links:
            self.fields[f"weight_{item.target.name}"] = forms.DecimalField(
                label=f"{item.target.name} (v{item.target.version})",
                min_value=Decimal("0"),
                max_value=Decimal("100"),
                max_digits=5,
                decimal_places=2,
                required=False,
                initial=item.weight,
            )

    def weights(self) -> OrderedDict[str, Decimal]:
        """Target names to percentages; with two targets a missing one takes the rest."""
        given: OrderedDict[str, Decimal] = OrderedDict()
        for item in self.links:
            value = self.cleaned_data.get(f"weight_{item.target.name}")
            if value is not None:
                given[item.target.name] = value
        if len(self.links) == 2 and len(given) == 1:
            (name, value), *_ = given.items()
            other = next(item.target.name for item in self.links if item.target.name != name)
            given[other] = Decimal("100") - value
        return given


class TargetAdminForm(forms.ModelForm):
    class Meta:
        model = Target
        fields = ["service", *services.TARGET_FIELDS]

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        try:
            services.target_check(target=self.instance)
        except CanaryError as error:
            add_error_fields(self, error)


class RuleAdminForm(forms.ModelForm):
    targets_text = forms.CharField(
        label="Targets",
        help_text="Target names with percentages, in layout order: stable=90, canary=10",
        widget=forms.TextInput(attrs={"size": 60}),
    )

    class Meta:
        model = RoutingRule
        fields = ["service", *RULE_FIELDS]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["targets_text"].initial = ", ".join(
                f"{item.target.name}={item.weight}"
                for item in self.instance.rule_targets.select_related("target")
            )

    def clean_targets_text(self) -> OrderedDict[str, Decimal]:
        parsed: OrderedDict[str, Decimal] = OrderedDict()
        for chunk in self.cleaned_data["targets_text"].split(","):
            name, sep, value = chunk.strip().partition("=")
            if not sep or not name.strip():
                raise forms.ValidationError(f"{chunk.strip()!r} is not name=percentage.")
            try:
                parsed[name.strip()] = Decimal(value.strip())
            except ArithmeticError:
                raise forms.ValidationError(f"{value.strip()!r} is not a number.") from None
        return parsed

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        try:
            services.rule_check(rule=self.instance, targets=self.cleaned_data["targets_text"])
        except CanaryError as error:
            if "targets" in error.fields:
                error.fields["targets_text"] = error.fields.pop("targets")
            add_error_fields(self, error)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class DecideForm(forms.Form):
    """The "test a request" panel: a request described as the proxy would see it."""

    method = forms.ChoiceField(choices=[(method, method) for method in METHODS], initial="GET")
    path = forms.CharField(max_length=2048, initial="/")
    headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}),
        help_text="One per line: X-Beta: 1",
    )
    cookies = forms.CharField(required=False, help_text="As in a Cookie header: a=1; b=2")
    query = forms.CharField(required=False, help_text="As in a URL: a=1&b=2")
    client_ip = forms.GenericIPAddressField(required=False, label="Client IP")

    def clean_path(self) -> str:
        path = self.cleaned_data["path"]
        if not path.startswith("/"):
            raise forms.ValidationError("A path starts with /.")
        return path

    def clean_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["headers"].splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise forms.ValidationError(f"Line {number} is not 'Name: value'.")
            headers[name.strip().lower()] = value.strip()
        return headers

    def clean_cookies(self) -> dict[str, str]:
        cookies: dict[str, str] = {}
        for chunk in self.cleaned_data["cookies"].split(";"):
            name, sep, value = chunk.strip().partition("=")
            if not chunk.strip():
                continue
            if not sep or not name:
                raise forms.ValidationError(f"{chunk.strip()!r} is not name=value.")
            cookies.setdefault(name, value)
        return cookies

    def clean_query(self) -> dict[str, str]:
        query: dict[str, str] = {}
        for name, value in parse_qsl(
            self.cleaned_data["query"].lstrip("?"), keep_blank_values=True
        ):
            query.setdefault(name, value)
        return query
