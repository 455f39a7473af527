"""Serializers of the deployments API: deployments with their phases, timeline events, the
bodies of the lifecycle actions, the creation wrapper and the simple-config helper."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from canary_site.api.serializers import RelatedName, StrictSerializer
from deployments import selectors
from deployments.choices import DeploymentStatus, PhaseStatus
from deployments.config import TrafficShiftStrategy
from deployments.lifecycle import person_actions
from deployments.models import Deployment, DeploymentEvent, Phase


def _words(choices: Any) -> str:
    return ", ".join(choices.values)


class PhaseSerializer(serializers.ModelSerializer):
    # Plain strings in the schema: the enum would collide with other apps' "status" enums.
    status = serializers.CharField(read_only=True, help_text=_words(PhaseStatus))

    class Meta:
        model = Phase
        fields = [
            "order",
            "key",
            "name",
            "traffic_percentage",
            "duration_ms",
            "success_criteria",
            "rollback_thresholds",
            "status",
            "started_at",
            "ended_at",
            "judgement",
            "judged_at",
            "ready_at",
        ]
        read_only_fields = fields


class DeploymentSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text=_words(DeploymentStatus))
    service = serializers.CharField(source="service.name", read_only=True)
    stable_target = RelatedName("stable_target.name")
    canary_target = RelatedName("canary_target.name")
    health_policy = RelatedName("health_policy.name")
    linked_flags = serializers.SerializerMethodField()
    created_by = RelatedName("created_by.username")
    phases = PhaseSerializer(many=True, read_only=True)
    progress = serializers.SerializerMethodField()
    allowed_actions = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "description",
            "service",
            "stable_version",
            "canary_version",
            "stable_target",
            "canary_target",
            "routing_rule",
            "status",
            "current_phase",
            "canary_share",
            "progress",
            "allowed_actions",
            "traffic_shift_strategy",
            "auto_promote",
            "auto_rollback",
            "max_deployment_time_ms",
            "health_policy",
            "linked_flags",
            "notifications",
            "config",
            "validation",
            "created_by",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "phases",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_linked_flags(self, deployment: Deployment) -> list[str]:
        return sorted(flag.key for flag in deployment.flags.all())

    @extend_schema_field(OpenApiTypes.INT)
    def get_progress(self, deployment: Deployment) -> int:
        return selectors.progress_percent(deployment)

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_allowed_actions(self, deployment: Deployment) -> list[str]:
        """The lifecycle actions a person may ask for from the current status: the table's,
        less the tick's own verbs (whatever the caller's role; the action checks it)."""
        return [str(action) for action in person_actions(deployment.status)]


class DeploymentEventSerializer(serializers.ModelSerializer):
    actor = RelatedName("actor.username")
    from_status = serializers.CharField(read_only=True, help_text=_words(DeploymentStatus))
    to_status = serializers.CharField(read_only=True, help_text=_words(DeploymentStatus))

    class Meta:
        model = DeploymentEvent
        fields = [
            "id",
            "at",
            "kind",
            "from_status",
            "to_status",
            "phase",
            "canary_share",
            "actor",
            "source",
            "reason",
            "evidence",
        ]
        read_only_fields = fields


class ActionSerializer(StrictSerializer):
    """The body of a lifecycle action; both fields optional."""

    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=5000,
        help_text="Why. Required to promote when the phase's criteria have not held.",
    )
    phase = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="The phase you are looking at; refused (409) if the deployment has moved on.",
    )


class GateOpenSerializer(StrictSerializer):
    """The body of opening a gate by hand; optional."""

    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=5000,
        help_text="What you checked of the canary yourself.",
    )


class GateSerializer(serializers.Serializer):
    """A webhook gate where it stands now (`deployments.webhooks.GateView`)."""

    name = serializers.CharField(read_only=True)
    type = serializers.CharField(
        read_only=True, help_text="pre-rollout, rollout, confirm-rollout or confirm-promotion"
    )
    url = serializers.CharField(read_only=True)
    phase = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The phase it gates now; null when idle."
    )
    state = serializers.CharField(
        read_only=True, help_text="open, closed, waiting, failing, failed or idle"
    )
    detail = serializers.CharField(read_only=True)
    can_open = serializers.BooleanField(read_only=True)


class DeploymentWriteSerializer(StrictSerializer):
    """The wrapper form of a create or an update. The body may instead be the configuration
    itself, in the guide's camelCase words, as JSON or YAML."""

    config = serializers.JSONField(
        required=False, help_text="The configuration: an object, or JSON or YAML text."
    )
    health_policy = serializers.CharField(
        required=False, allow_null=True, help_text="A health policy's id or name."
    )
    linked_flags = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Keys of flags to drive."
    )
    context = serializers.DictField(
        required=False, allow_null=True, help_text="The validator's context, kept for start."
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=5000)


WRAPPER_FIELDS = frozenset(DeploymentWriteSerializer().fields)


def is_wrapper(data: Any) -> bool:
    """Whether a body is the wrapper form rather than a bare configuration."""
    return isinstance(data, dict) and bool(data) and set(data) <= WRAPPER_FIELDS


class SimpleConfigSerializer(StrictSerializer):
    """The guide's ``createSimpleCanaryConfig`` inputs, plus the way to 100%.

    Each ``source`` is the keyword of `simple_canary_config`, so the validated data is its
    arguments."""

    name = serializers.CharField(max_length=200)
    serviceName = serializers.CharField(max_length=63, source="service_name")
    stableVersion = serializers.CharField(max_length=100, source="stable_version")
    canaryVersion = serializers.CharField(max_length=100, source="canary_version")
    initialPercentage = serializers.FloatField(
        required=False, default=5, min_value=0.01, max_value=100, source="initial_percentage"
    )
    steps = serializers.IntegerField(required=False, default=4, min_value=1, max_value=20)
    strategy = serializers.CharField(
        required=False, default="linear", help_text="linear or exponential."
    )
    phaseDurationMs = serializers.IntegerField(
        required=False, default=300_000, min_value=1, source="phase_duration_ms"
    )
    autoPromote = serializers.BooleanField(required=False, default=True, source="auto_promote")
    autoRollback = serializers.BooleanField(required=False, default=True, source="auto_rollback")
    maxDeploymentTimeMs = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, source="max_deployment_time_ms"
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")

    def validate_strategy(self, value: str) -> str:
        shapes = (TrafficShiftStrategy.LINEAR.value, TrafficShiftStrategy.EXPONENTIAL.value)
        if value not in shapes:
            raise serializers.ValidationError(f"Must be one of {', '.join(shapes)}.")
        return value


class SimpleConfigResultSerializer(serializers.Serializer):
    config = serializers.JSONField()
    yaml = serializers.CharField()
    validation = serializers.JSONField()


class ValidateRequestSerializer(serializers.Serializer):
    """For the schema only: the validator reads the body itself and never answers 400."""

    type = serializers.CharField(required=False, default="canary_deployment")
    config = serializers.JSONField()
    context = serializers.JSONField(required=False)
    strictMode = serializers.BooleanField(required=False, default=False)


class ValidationIssueSerializer(serializers.Serializer):
    field = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()


class ValidationReportSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = ValidationIssueSerializer(many=True)
    warnings = ValidationIssueSerializer(many=True)
    recommendations = serializers.ListField(child=serializers.CharField())
    estimatedTimeToFullPromotionMs = serializers.IntegerField(allow_null=True)
    worstCaseTimeToRollbackMs = serializers.IntegerField(allow_null=True)
