"""Serializers of the health API. Writes are StrictSerializers; services validate the rest."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from canary_site.api.serializers import BlankableURLField, RelatedName, StrictSerializer
from health.ingest import NAME_PATTERN
from health.models import Alert, HealthCheck, HealthPolicy
from health.selectors import MAX_WINDOW_SECONDS, is_series_metric
from health.services import POLICY_FIELDS

NAME_MESSAGE = "Use 1 to 100 letters, digits or _.:-/@+."
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# What a check and an alert are about, first in both: the canary, its baseline and the policy.
SUBJECT_FIELDS = ["id", "service", "canary_version", "stable_version", "policy", "policy_name"]


class NameField(serializers.RegexField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NAME_PATTERN, max_length=100, **kwargs)
        self.error_messages["invalid"] = NAME_MESSAGE


class HealthPolicySerializer(serializers.ModelSerializer):
    slack_webhook_url = BlankableURLField(read_only=True)
    webhook_url = BlankableURLField(read_only=True)

    class Meta:
        model = HealthPolicy
        fields = ["id", *POLICY_FIELDS, "created_at", "updated_at"]
        read_only_fields = fields


class HealthPolicyWriteSerializer(StrictSerializer):
    """A policy to create or change; ``policy`` is the analysis dict (see health.analysis)."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    policy = serializers.JSONField(required=False)
    alerting_enabled = serializers.BooleanField(required=False)
    alert_channels = serializers.ListField(child=serializers.CharField(), required=False)
    alert_recipients = serializers.ListField(child=serializers.CharField(), required=False)
    slack_webhook_url = BlankableURLField(required=False, allow_blank=True, max_length=200)
    webhook_url = BlankableURLField(required=False, allow_blank=True, max_length=200)
    alert_cooldown_seconds = serializers.IntegerField(
        required=False, min_value=0, max_value=7 * 86400
    )
    escalation_rules = serializers.JSONField(required=False)

    def validate_policy(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be an object.")
        return value

    def validate_escalation_rules(self, value: Any) -> Any:
        if not isinstance(value, list):
            raise serializers.ValidationError("Must be a list.")
        return value


class HealthCheckSerializer(serializers.ModelSerializer):
    results = serializers.ListField(read_only=True)
    rollback_checks = serializers.ListField(read_only=True)
    inputs = serializers.SerializerMethodField()

    class Meta:
        model = HealthCheck
        fields = [
            *SUBJECT_FIELDS,
            "window_seconds",
            "window_end",
            "planned_canary_share",
            "verdict",
            "should_rollback",
            "message",
            "results",
            "rollback_checks",
            "inputs",
            "created_at",
        ]
        read_only_fields = fields

    def get_inputs(self, check: HealthCheck) -> dict[str, Any]:
        return dict(check.result.get("inputs", {}))


class HealthCheckCreateSerializer(StrictSerializer):
    """Evaluate a canary now under a policy; the answer is the stored check."""

    service = NameField()
    canary_version = NameField()
    stable_version = NameField(required=False, allow_null=True, allow_blank=True)
    policy = serializers.PrimaryKeyRelatedField(queryset=HealthPolicy.objects.all())
    window_seconds = serializers.IntegerField(required=False, min_value=1, max_value=86_400)
    planned_canary_share = serializers.FloatField(
        required=False, allow_null=True, min_value=0, max_value=100
    )


class AlertSerializer(serializers.ModelSerializer):
    policy_name = RelatedName("policy.name")
    acknowledged_by = RelatedName("acknowledged_by.username")
    resolved_by = RelatedName("resolved_by.username")
    last_check = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Alert
        fields = [
            *SUBJECT_FIELDS,
            "severity",
            "status",
            "title",
            "message",
            "check_count",
            "last_check",
            "raised_at",
            "last_seen_at",
            "last_notified_at",
            "cooldown_until",
            "escalation_level",
            "acknowledged_by",
            "acknowledged_at",
            "resolved_by",
            "resolved_at",
            "resolution",
        ]
        read_only_fields = fields


class AlertActionSerializer(StrictSerializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=1000)


class SampleListField(serializers.JSONField):
    """The list as parsed: each sample is checked once, by the service, which names the field
    of the first bad one (``samples[3].value``); re-checking here would double the cost of a
    push."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, list):
            raise serializers.ValidationError("Send samples as a list.")
        return data


class MetricsPushSerializer(StrictSerializer):
    """A batch of samples for the metric store."""

    idempotency_key = serializers.CharField(required=False, max_length=200)
    samples = SampleListField(
        help_text=(
            'A list of {"service", "version", "metric", "value", "timestamp"[, "count"]}; '
            "metric is requests, errors, latency_ms or custom:<name>."
        )
    )


class PushResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    buckets = serializers.IntegerField()
    duplicate = serializers.BooleanField()
    idempotency_key = serializers.CharField(allow_null=True)


@extend_schema_field(OpenApiTypes.STR)
class DurationField(serializers.Field):
    """Seconds as a number or with a unit: 900, 15m, 1h, 2d."""

    default_error_messages = {"invalid": "Give seconds (900) or a duration (15m, 1h, 2d)."}

    def to_internal_value(self, data: Any) -> int:
        match = _DURATION.fullmatch(str(data).strip())
        if not match:
            self.fail("invalid")
        return int(match.group(1)) * _UNITS[match.group(2)]

    def to_representation(self, value: int) -> int:
        return value


class SeriesQuerySerializer(StrictSerializer):
    service = NameField()
    version = NameField()
    metric = serializers.CharField(max_length=110)
    window = DurationField(required=False, default=900)
    step = DurationField(required=False)

    def validate_metric(self, value: str) -> str:
        if not is_series_metric(value):
            raise serializers.ValidationError(
                "Unknown metric; use requests, errors, error_rate, availability, latency_p50, "
                "latency_p95, latency_p99, throughput or custom:<name>."
            )
        return value

    def validate_window(self, value: int) -> int:
        if not 1 <= value <= MAX_WINDOW_SECONDS:
            raise serializers.ValidationError(
                f"A window is 1 second to {MAX_WINDOW_SECONDS // 86400} days."
            )
        return value

    def validate_step(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("A step is at least 1 second.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        step = attrs.get("step")
        if step and attrs["window"] / step > 2000:
            raise serializers.ValidationError({"step": "At most 2,000 points per series."})
        return attrs


class SeriesSerializer(serializers.Serializer):
    service = serializers.CharField()
    version = serializers.CharField()
    metric = serializers.CharField()
    step_seconds = serializers.IntegerField()
    timestamps = serializers.ListField(child=serializers.DateTimeField())
    values = serializers.ListField(child=serializers.FloatField(allow_null=True))
