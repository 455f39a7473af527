"""Dashboard forms of the flags app. They parse what people type into the stored definition's
shape; the services validate it, and `canary_site.forms.add_error_fields` puts each error the
services raise next to the field it names."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django import forms

from canary_site.selectors import user_named
from flags.choices import SINGLE_VALUE_OPERATORS, FlagType, Operator, ServeKind, ValueType

# --- variants as text -----------------------------------------------------------------------------


def variants_to_text(variants: list[Any], value_type: str) -> str:
    """One ``name = value`` line per variant; values are JSON, except plain text for strings."""
    lines = []
    for variant in variants:
        if not isinstance(variant, Mapping):
            continue
        value = variant.get("value")
        if value_type == ValueType.STRING and isinstance(value, str) and not _looks_quoted(value):
            shown = value
        else:
            shown = json.dumps(value)
        lines.append(f"{variant.get('name')} = {shown}")
    return "\n".join(lines)


def _looks_quoted(text: str) -> bool:
    return text.startswith('"') and text.endswith('"') and len(text) >= 2


def text_to_variants(text: str, value_type: str) -> list[dict[str, Any]]:
    variants = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, equals, raw = line.partition("=")
        name, raw = name.strip(), raw.strip()
        if not equals or not name:
            raise forms.ValidationError(f"Line {number}: write it as 'name = value'.")
        if value_type == ValueType.STRING and not _looks_quoted(raw):
            value: Any = raw
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                raise forms.ValidationError(
                    f'Line {number}: {raw!r} is not a JSON value (true, 3, 2.5, "text", {{...}}).'
                ) from None
        variants.append({"name": name, "value": value})
    return variants


def _split_values(text: str, operator: str) -> list[str]:
    if operator == Operator.EXISTS:
        return []
    text = text.strip()
    if operator in SINGLE_VALUE_OPERATORS:
        return [text] if text else []
    return [part.strip() for part in text.split(",") if part.strip()]


def _tags_text(tags: list[str]) -> str:
    return ", ".join(tags)


# --- flag forms -------------------------------------------------------------------------------


class FlagCreateForm(forms.Form):
    key = forms.CharField(
        max_length=100,
        help_text="How code asks for the flag, e.g. new-checkout. It cannot change later.",
    )
    name = forms.CharField(max_length=200, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    flag_type = forms.ChoiceField(choices=FlagType.choices, label="Type")
    value_type = forms.ChoiceField(
        choices=ValueType.choices,
        label="Value type",
        help_text="Boolean flags get the variants on and off.",
    )
    variants = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "blue = #1c7ed6\ngreen = #2f9e44"}),
        help_text="Other types: one 'name = value' per line; the first is served when off.",
    )
    tags = forms.CharField(required=False, help_text="Comma-separated, e.g. checkout, q3.")
    expires_on = forms.DateField(
        required=False, label="Expires on", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        value_type = data.get("value_type") or ValueType.BOOLEAN
        text = data.get("variants") or ""
        try:
            data["variants"] = text_to_variants(text, value_type) if text.strip() else None
        except forms.ValidationError as error:
            self.add_error("variants", error)
        return data


class FlagDetailsForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    flag_type = forms.ChoiceField(choices=FlagType.choices, label="Type")
    owner = forms.CharField(max_length=150, required=False, help_text="A username.")
    tags = forms.CharField(required=False, help_text="Comma-separated.")
    expires_on = forms.DateField(
        required=False, label="Expires on", widget=forms.DateInput(attrs={"type": "date"})
    )
    stickiness = forms.CharField(
        max_length=100, help_text="The context attribute percentages are bucketed on."
    )
    kill_switch_enabled = forms.BooleanField(
        required=False,
        label="System-wide kill switches may kill this flag",
    )

    @classmethod
    def for_flag(cls, flag: Any) -> FlagDetailsForm:
        return cls(
            initial={
                "name": flag.name,
                "description": flag.description,
                "flag_type": flag.flag_type,
                "owner": flag.owner.username if flag.owner else "",
                "tags": _tags_text(flag.tags),
                "expires_on": flag.expires_on,
                "stickiness": flag.stickiness,
                "kill_switch_enabled": flag.kill_switch_enabled,
            },
            prefix="details",
        )

    def clean_owner(self) -> Any:
        return user_named(self.cleaned_data.get("owner", ""), error=forms.ValidationError)


class VariantsForm(forms.Form):
    value_type = forms.ChoiceField(choices=ValueType.choices, label="Value type")
    variants = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="One 'name = value' per line. Values are JSON; plain text for string flags.",
    )
    off_variant = forms.CharField(
        max_length=100, label="Served when off", help_text="The variant a disabled flag serves."
    )

    @classmethod
    def for_flag(cls, flag: Any) -> VariantsForm:
        return cls(
            initial={
                "value_type": flag.value_type,
                "variants": variants_to_text(flag.variants, flag.value_type),
                "off_variant": flag.off_variant,
            },
            prefix="variants",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "variants" in data:
            try:
                data["variants"] = text_to_variants(
                    data["variants"], data.get("value_type") or ValueType.BOOLEAN
                )
            except forms.ValidationError as error:
                self.add_error("variants", error)
        return data


class ServeFields(forms.Form):
    """What a rule or the default rule serves: a variant, a rollout, or a weighted split."""

    serve_kind = forms.ChoiceField(
        choices=ServeKind.choices, widget=forms.RadioSelect, label="Serve", initial="variant"
    )
    serve_variant = forms.ChoiceField(label="Variant", required=False)
    rollout_percentage = forms.DecimalField(
        label="Rollout %",
        required=False,
        min_value=0,
        max_value=100,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "0.01"}),
    )
    rollout_variant = forms.ChoiceField(label="Rolled-out variant", required=False)

    def __init__(self, *args: Any, variants: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variant_names = variants
        choices = [(name, name) for name in variants]
        self.fields["serve_variant"].choices = choices
        self.fields["rollout_variant"].choices = choices
        for name in variants:
            self.fields[self.weight_field(name)] = forms.DecimalField(
                label=f"Weight of {name} (%)",
                required=False,
                min_value=0,
                max_value=100,
                decimal_places=2,
                widget=forms.NumberInput(attrs={"step": "0.01"}),
            )

    def weight_field(self, variant: str) -> str:
        return f"weight_{self.variant_names.index(variant)}"

    @property
    def weight_fields(self) -> list[Any]:
        return [self[self.weight_field(name)] for name in self.variant_names]

    @staticmethod
    def initial_for(serve: Any, variants: list[str]) -> dict[str, Any]:
        initial: dict[str, Any] = {"serve_kind": ServeKind.VARIANT}
        if not isinstance(serve, Mapping):
            return initial
        if "variant" in serve:
            initial["serve_variant"] = serve["variant"]
        elif isinstance(serve.get("rollout"), Mapping):
            initial["serve_kind"] = ServeKind.ROLLOUT
            initial["rollout_percentage"] = serve["rollout"].get("percentage")
            initial["rollout_variant"] = serve["rollout"].get("variant")
        elif isinstance(serve.get("split"), list):
            initial["serve_kind"] = ServeKind.SPLIT
            for item in serve["split"]:
                if isinstance(item, Mapping) and item.get("variant") in variants:
                    index = variants.index(item["variant"])
                    initial[f"weight_{index}"] = item.get("weight")
        return initial

    def serve(self) -> dict[str, Any]:
        """The stored serve of the cleaned data."""
        data = self.cleaned_data
        kind = data.get("serve_kind")
        if kind == ServeKind.ROLLOUT:
            percentage = data.get("rollout_percentage")
            return {
                "rollout": {
                    "percentage": _number(percentage if percentage is not None else 0),
                    "variant": data.get("rollout_variant"),
                }
            }
        if kind == ServeKind.SPLIT:
            split = []
            for name in self.variant_names:
                weight = data.get(self.weight_field(name))
                if weight:
                    split.append({"variant": name, "weight": _number(weight)})
            return {"split": split}
        return {"variant": data.get("serve_variant")}

    def serve_error_field(self, path: str) -> str | None:
        """The form field for an error path under a serve (``rollout.percentage``)."""
        if path.startswith("rollout.percentage") or path == "rollout":
            return "rollout_percentage"
        if path.startswith("rollout.variant"):
            return "rollout_variant"
        match = re.match(r"split\[(\d+)\]", path)
        if match:
            split = self.serve().get("split", [])
            index = int(match.group(1))
            if index < len(split) and split[index]["variant"] in self.variant_names:
                return self.weight_field(split[index]["variant"])
        if path.startswith("variant"):
            return "serve_variant"
        return "serve_kind"


def _number(value: Decimal | float | int) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number


class ConstraintForm(forms.Form):
    attribute = forms.CharField(max_length=100, required=False)
    operator = forms.ChoiceField(choices=Operator.choices)
    values = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Comma-separated; one value for regex and comparisons.",
    )
    case_insensitive = forms.BooleanField(required=False, label="Any case")
    negate = forms.BooleanField(required=False, label="Negate")

    @staticmethod
    def initial_for(constraint: Mapping[str, Any]) -> dict[str, Any]:
        values = constraint.get("values") or []
        return {
            "attribute": constraint.get("attribute", ""),
            "operator": constraint.get("operator", Operator.IN),
            "values": ", ".join(str(value) for value in values),
            "case_insensitive": bool(constraint.get("case_insensitive")),
            "negate": bool(constraint.get("negate")),
        }

    def constraint(self) -> dict[str, Any] | None:
        data = self.cleaned_data
        if not data.get("attribute"):
            return None
        return {
            "attribute": data["attribute"].strip(),
            "operator": data["operator"],
            "values": _split_values(data.get("values") or "", data["operator"]),
            "case_insensitive": bool(data.get("case_insensitive")),
            "negate": bool(data.get("negate")),
        }


def constraint_formset(
    data: Any = None, *, constraints: list[Any] | None = None, extra: int = 0
) -> Any:
    initial = [ConstraintForm.initial_for(c) for c in constraints or [] if isinstance(c, Mapping)]
    formset_class = forms.formset_factory(ConstraintForm, extra=extra, can_delete=True)
    return formset_class(data, initial=initial or None, prefix="constraints")


def constraints_of(formset: Any) -> list[dict[str, Any]]:
    constraints = []
    for form in formset.forms:
        if form.cleaned_data.get("DELETE"):
            continue
        constraint = form.constraint()
        if constraint is not None:
            constraints.append(constraint)
    return constraints


class RuleForm(ServeFields):
    name = forms.CharField(max_length=100, required=False, help_text="e.g. beta testers")
    segments = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, help_text="All must match."
    )
    # The flag's version when the page was opened: a rule is named by its position, so a save
    # against rules that have changed since is refused rather than applied to the wrong one.
    version = forms.IntegerField(min_value=1, widget=forms.HiddenInput)

    field_order = ["name", "segments"]

    def __init__(self, *args: Any, segment_keys: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["segments"].choices = [(key, key) for key in segment_keys]


class DefaultRuleForm(ServeFields):
    pass


class RolloutForm(forms.Form):
    percentage = forms.DecimalField(
        min_value=0,
        max_value=100,
        decimal_places=2,
        label="Rollout %",
        widget=forms.NumberInput(attrs={"type": "range", "step": "0.01", "min": 0, "max": 100}),
    )


class TargetsForm(forms.Form):
    """One list of subjects (targetingKey values) per variant."""

    def __init__(self, *args: Any, variants: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variant_names = variants
        for index, name in enumerate(variants):
            self.fields[f"variant_{index}"] = forms.CharField(
                required=False,
                label=f"Always serve {name!r} to",
                widget=forms.Textarea(attrs={"rows": 2}),
                help_text="targetingKey values, comma- or newline-separated.",
            )

    @staticmethod
    def initial_for(targets: list[Any], variants: list[str]) -> dict[str, Any]:
        initial = {}
        for target in targets:
            if isinstance(target, Mapping) and target.get("variant") in variants:
                index = variants.index(target["variant"])
                initial[f"variant_{index}"] = ", ".join(target.get("values") or [])
        return initial

    def targets(self) -> list[dict[str, Any]]:
        targets = []
        for index, name in enumerate(self.variant_names):
            text = self.cleaned_data.get(f"variant_{index}") or ""
            values = [part for part in re.split(r"[,\s]+", text) if part]
            if values:
                targets.append({"variant": name, "values": values})
        return targets

    def field_for(self, path: str) -> str | None:
        match = re.match(r"targets\[(\d+)\]", path)
        if match:
            targets = self.targets()
            index = int(match.group(1))
            if index < len(targets):
                return f"variant_{self.variant_names.index(targets[index]['variant'])}"
        return None


class TryForm(forms.Form):
    targeting_key = forms.CharField(
        max_length=500, required=False, label="targetingKey", help_text="The user, e.g. user-42."
    )
    attributes = forms.CharField(
        required=False,
        label="Other attributes (JSON object)",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"country": "NL"}'}),
    )

    def clean_attributes(self) -> dict[str, Any]:
        text = (self.cleaned_data.get("attributes") or "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise forms.ValidationError("Write the attributes as a JSON object.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Write the attributes as a JSON object.")
        return value

    def context(self) -> dict[str, Any]:
        context = dict(self.cleaned_data.get("attributes") or {})
        if self.cleaned_data.get("targeting_key"):
            context["targetingKey"] = self.cleaned_data["targeting_key"]
        return context


class KillForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        label="Reason",
        help_text="Required: why everyone must get the off variant now.",
    )


class SegmentForm(forms.Form):
    key = forms.CharField(max_length=100, help_text="How rules name it. It cannot change later.")
    name = forms.CharField(max_length=200, required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class EvaluationKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Who uses it, e.g. checkout-service.")
    rate_limit = forms.IntegerField(
        required=False,
        min_value=1,
        label="Rate limit",
        help_text="Evaluations a second; empty for the default.",
    )
