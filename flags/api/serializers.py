"""Serializers of the flags API. Reads are model serializers; writes are strict serializers whose
validated data goes to ``flags.services``, which validates the definition with the engine."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from canary_site.api.serializers import RelatedName, StrictSerializer
from canary_site.selectors import user_named
from flags import selectors
from flags.choices import FlagStatus, FlagType, ValueType
from flags.definition import DEFINITION_FIELDS
from flags.models import Flag, Segment

DEFINITION_HELP = (
    "The engine's shape (docs/flags.md): variants [{name, value}], rules [{name, segments, "
    "constraints, serve}], a serve is {variant}, {rollout: {percentage, variant}} or "
    "{split: [{variant, weight}]} with weights in percent summing to 100."
)


class FlagSerializer(serializers.ModelSerializer):
    owner = RelatedName("owner.username")
    stale = serializers.SerializerMethodField()
    stale_reason = serializers.SerializerMethodField()
    rollout_percentage = serializers.SerializerMethodField()

    class Meta:
        model = Flag
        fields = [
            "key",
            "name",
            "description",
            "flag_type",
            "status",
            *DEFINITION_FIELDS,
            "expires_on",
            "owner",
            "tags",
            "kill_switch_enabled",
            "version",
            "controlled_by",
            "killed_reason",
            "killed_at",
            "rollout_percentage",
            "full_rollout_since",
            "stale",
            "stale_reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_stale(self, flag: Flag) -> bool:
        return selectors.flag_stale_reason(flag=flag) is not None

    def get_stale_reason(self, flag: Flag) -> str | None:
        return selectors.flag_stale_reason(flag=flag)

    def get_rollout_percentage(self, flag: Flag) -> float | None:
        return selectors.flag_rollout_percentage(flag=flag)


class FlagWriteSerializer(StrictSerializer):
    """Create (``key`` required) or change a flag. PUT and PATCH both change only the fields
    they are given; the status changes through enable, disable and kill."""

    key = serializers.CharField(max_length=100, required=False)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)
    flag_type = serializers.ChoiceField(choices=FlagType.choices, required=False)
    value_type = serializers.ChoiceField(choices=ValueType.choices, required=False)
    status = serializers.ChoiceField(
        choices=[FlagStatus.ENABLED, FlagStatus.DISABLED],
        required=False,
        help_text="Only when creating; default disabled.",
    )
    variants = serializers.JSONField(required=False, help_text=DEFINITION_HELP)
    off_variant = serializers.CharField(max_length=100, required=False)
    rules = serializers.JSONField(required=False)
    default_rule = serializers.JSONField(required=False)
    targets = serializers.JSONField(required=False)
    stickiness = serializers.CharField(max_length=100, required=False)
    salt = serializers.CharField(max_length=100, required=False, allow_blank=True)
    expires_on = serializers.DateField(required=False, allow_null=True)
    owner = serializers.CharField(
        max_length=150, required=False, allow_null=True, allow_blank=True, help_text="A username."
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=50), required=False, allow_empty=True
    )
    kill_switch_enabled = serializers.BooleanField(required=False)
    version = serializers.IntegerField(
        min_value=1,
        required=False,
        help_text="Changes only: the flag's version as you read it; 409 if it has changed since.",
    )

    def validate_owner(self, value: str | None) -> Any:
        return user_named(value or "", error=serializers.ValidationError)


RULE_HELP = "{name, segments, constraints, serve}, as in the flag's ``rules`` (docs/flags.md)."
VERSION_HELP = "The flag's version as you read it; 409 if it has changed since."


class RuleAddSerializer(StrictSerializer):
    rule = serializers.JSONField(help_text=RULE_HELP)
    version = serializers.IntegerField(
        min_value=1,
        required=False,
        help_text=f"{VERSION_HELP} Without it the rule is appended to the rules as they are.",
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class RuleUpdateSerializer(StrictSerializer):
    rule = serializers.JSONField(help_text=RULE_HELP)
    version = serializers.IntegerField(min_value=1, help_text=VERSION_HELP)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class RuleMoveSerializer(StrictSerializer):
    to = serializers.IntegerField(min_value=0, help_text="The rule's new position, from 0.")
    version = serializers.IntegerField(min_value=1, help_text=VERSION_HELP)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class RuleDeleteSerializer(StrictSerializer):
    """The query of a rule's DELETE."""

    version = serializers.IntegerField(min_value=1, help_text=VERSION_HELP)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class KillSerializer(StrictSerializer):
    reason = serializers.CharField(help_text="Why the flag is being killed; kept with the flag.")


class ReasonSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class RolloutSerializer(StrictSerializer):
    percentage = serializers.DecimalField(
        max_digits=5, decimal_places=2, min_value=0, max_value=100
    )
    variant = serializers.CharField(max_length=100, required=False)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class EvaluateSerializer(StrictSerializer):
    context = serializers.DictField(required=False, default=dict)


class EvaluationResultSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.JSONField(allow_null=True)
    variant = serializers.CharField(allow_null=True)
    reason = serializers.CharField()
    error_code = serializers.CharField(allow_null=True)
    error_message = serializers.CharField(allow_null=True)
    metadata = serializers.DictField()
    explanation = serializers.CharField()


class SegmentSerializer(serializers.ModelSerializer):
    used_by = serializers.SerializerMethodField()

    class Meta:
        model = Segment
        fields = [
            "key",
            "name",
            "description",
            "constraints",
            "version",
            "used_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_used_by(self, segment: Segment) -> list[str]:
        usage = self.context.get("segment_usage")
        if usage is None:
            usage = selectors.segment_usage()
        return usage.get(segment.key, [])


class SegmentWriteSerializer(StrictSerializer):
    key = serializers.CharField(max_length=100, required=False)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)
    constraints = serializers.JSONField(
        required=False, help_text="[{attribute, operator, values, case_insensitive, negate}]"
    )
