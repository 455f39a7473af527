"""Serializers of the rollback app's API."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from canary_site.api.serializers import RelatedName, StrictSerializer
from canary_site.fields import UtcDateTimeField
from deployments.models import Deployment
from health.models import HealthPolicy
from rollback import plans
from rollback.choices import (
    ApproverKind,
    ExecutionState,
    RollbackStrategy,
    RollbackTrigger,
    ScopeKind,
    StepState,
    StepType,
)
from rollback.models import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    RollbackExecution,
    RollbackPlan,
    RollbackStep,
)
from rollback.services import POLICY_FIELDS


class ApprovalDecisionSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username", read_only=True)

    class Meta:
        model = ApprovalDecision
        fields = ["approver", "verdict", "comment", "at"]
        read_only_fields = fields


class ApprovalObjectSerializer(serializers.Serializer):
    type = serializers.CharField(source="object_type")
    id = serializers.CharField(source="object_id")
    repr = serializers.CharField(source="object_repr")
    version = serializers.CharField(source="object_version")


class ApprovalRequestSerializer(serializers.ModelSerializer):
    object = ApprovalObjectSerializer(source="*", read_only=True)
    requester = serializers.CharField(
        source="requester.username", read_only=True, default=None, allow_null=True
    )
    policy = serializers.CharField(
        source="policy.name", read_only=True, default=None, allow_null=True
    )
    approvals = serializers.SerializerMethodField()
    approvers = serializers.SlugRelatedField(many=True, read_only=True, slug_field="username")
    decisions = ApprovalDecisionSerializer(many=True, read_only=True)

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "state",
            "action",
            "object",
            "change",
            "evidence",
            "requester",
            "source",
            "reason",
            "policy",
            "quorum",
            "approvals",
            "one_rejection_rejects",
            "approvers",
            "decisions",
            "created_at",
            "expires_at",
            "closed_at",
            "outcome",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.IntegerField())
    def get_approvals(self, request: ApprovalRequest) -> int:
        counted = getattr(request, "approval_count", None)
        if counted is not None:
            return int(counted)
        return request.decisions.filter(verdict="approve").count()


class DecisionWriteSerializer(StrictSerializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class ApprovalPolicySerializer(serializers.ModelSerializer):
    approver_group = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.all(), allow_null=True, required=False
    )
    approver_users = serializers.SlugRelatedField(
        many=True, slug_field="username", queryset=get_user_model().objects.all(), required=False
    )
    notify_via = serializers.PrimaryKeyRelatedField(
        queryset=HealthPolicy.objects.all(), allow_null=True, required=False
    )

    class Meta:
        model = ApprovalPolicy
        fields = ["id", *POLICY_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class ApprovalPolicyWriteSerializer(StrictSerializer):
    """A policy's fields; the services check what they mean together (quorum, actions)."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    enabled = serializers.BooleanField(required=False)
    scope_kind = serializers.ChoiceField(choices=ScopeKind.choices, required=False)
    scope_value = serializers.CharField(max_length=100, required=False, allow_blank=True)
    actions = serializers.ListField(child=serializers.CharField(max_length=64), max_length=64)
    approver_kind = serializers.ChoiceField(choices=ApproverKind.choices, required=False)
    approver_group = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.all(), allow_null=True, required=False
    )
    approver_users = serializers.SlugRelatedField(
        many=True, slug_field="username", queryset=get_user_model().objects.all(), required=False
    )
    quorum = serializers.IntegerField(required=False, min_value=-32768, max_value=32767)
    ttl_seconds = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
    one_rejection_rejects = serializers.BooleanField(required=False)
    notify_via = serializers.PrimaryKeyRelatedField(
        queryset=HealthPolicy.objects.all(), allow_null=True, required=False
    )

    def to_internal_value(self, data: Any) -> Any:
        return dict(super().to_internal_value(data))


# --- rollback plans and executions ---------------------------------------------------------------


def _words(choices: Any) -> str:
    return ", ".join(choices.values)


# Shown in place of a webhook action's signing secret: reading a plan never reveals it, and a
# plan sent back with the mask keeps the secret it had.
SECRET_MASK = "********"


def masked(definition: Mapping[str, Any]) -> dict[str, Any]:
    """``definition`` with every webhook action's ``config.secret`` replaced by the mask."""
    shown = dict(definition)
    actions = shown.get("actions")
    if isinstance(actions, list):
        shown["actions"] = [_masked_action(action) for action in actions]
    return shown


def _masked_action(action: Any) -> Any:
    if not isinstance(action, dict) or not isinstance(action.get("config"), dict):
        return action
    config = action["config"]
    if not config.get("secret"):
        return action
    return {**action, "config": {**config, "secret": SECRET_MASK}}


def unmasked(definition: Any, stored: Mapping[str, Any]) -> Any:
    """``definition`` as sent, with each masked secret replaced by the stored secret of the
    action with the same ``id`` (a plan read and sent back keeps its secrets); a mask with no
    secret to stand for is left for the caller to refuse."""
    if not isinstance(definition, dict) or not isinstance(definition.get("actions"), list):
        return definition
    secrets = {
        action.get("id"): action["config"].get("secret")
        for action in stored.get("actions") or []
        if isinstance(action, dict) and isinstance(action.get("config"), dict)
    }
    actions = []
    for action in definition["actions"]:
        config = action.get("config") if isinstance(action, dict) else None
        kept = secrets.get(action.get("id")) if isinstance(action, dict) else None
        if isinstance(config, dict) and config.get("secret") == SECRET_MASK and kept:
            action = {**action, "config": {**config, "secret": kept}}
        actions.append(action)
    return {**definition, "actions": actions}


def _spec(plan: RollbackPlan) -> plans.Plan | None:
    """The plan's typed spec, read once per answer; None for a stored definition that no
    longer reads (saved by an older version), which is then shown as it was stored."""
    if not hasattr(plan, "_read_spec"):
        try:
            plan._read_spec = plan.spec  # type: ignore[attr-defined]
        except plans.InvalidPlan:
            plan._read_spec = None  # type: ignore[attr-defined]
    return plan._read_spec  # type: ignore[attr-defined]


def plan_definition(plan: RollbackPlan) -> dict[str, Any]:
    """The plan in the guide's vocabulary with every default filled in, and where it applies:
    what ``PUT /api/v1/rollback/plans/{id}/`` takes back."""
    spec = _spec(plan)
    return masked(
        {
            **(plans.plan_to_dict(spec) if spec is not None else dict(plan.definition or {})),
            "service": plan.service.name if plan.service_id else None,
            "deploymentId": plan.deployment_id,
            "isDefault": plan.is_default,
            "enabled": plan.enabled,
        }
    )


class RollbackPlanDefinitionSerializer(serializers.Serializer):
    """For the schema only: a plan in the guide's vocabulary (``rollbackService.createConfig``),
    read by `rollback.plans.read_plan`, which names the field at fault (``actions[0].type``)."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    service = serializers.CharField(
        required=False, allow_null=True, help_text="The service the plan covers, by name."
    )
    deploymentId = serializers.IntegerField(
        required=False, allow_null=True, help_text="The one deployment the plan covers."
    )
    isDefault = serializers.BooleanField(
        required=False, help_text="The service's plan for deployments that name none."
    )
    enabled = serializers.BooleanField(required=False)
    strategy = serializers.CharField(required=False, help_text=_words(RollbackStrategy))
    strategyConfig = serializers.DictField(
        required=False, help_text="durationMs and steps (gradual), keepWarmMs (blue_green)."
    )
    triggers = serializers.ListField(
        child=serializers.CharField(), required=False, help_text=_words(RollbackTrigger)
    )
    autoTriggerEnabled = serializers.BooleanField(required=False)
    triggerThresholds = serializers.ListField(child=serializers.DictField(), required=False)
    validation = serializers.DictField(required=False)
    actions = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="Each {id, name, type, order, timeoutMs, config}; a webhook's config.secret "
        f"reads back as {SECRET_MASK!r}, and sent back so it is kept.",
    )
    notifications = serializers.DictField(required=False)
    safety = serializers.DictField(
        required=False,
        help_text="requireApproval, approvers, maxRollbackTimeMs, allowConsecutiveRollbacks, "
        "cooldownPeriodMs.",
    )


class RollbackPlanWriteSerializer(StrictSerializer):
    """The wrapper form of a plan's create or update; the body may instead be the plan itself,
    as JSON or YAML."""

    definition = serializers.JSONField(help_text="The plan in the guide's vocabulary.")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class RollbackPlanSerializer(serializers.ModelSerializer):
    service = RelatedName("service.name")
    deploymentId = serializers.IntegerField(source="deployment_id", read_only=True, allow_null=True)
    isDefault = serializers.BooleanField(source="is_default", read_only=True)
    strategy = serializers.CharField(read_only=True, help_text=_words(RollbackStrategy))
    definition = serializers.SerializerMethodField()
    worstCaseMs = serializers.SerializerMethodField(
        method_name="get_worst_case_ms",
        help_text="The longest a rollback by this plan may take from full traffic: each "
        "step's pace and timeout.",
    )
    created_by = RelatedName("created_by.username")

    class Meta:
        model = RollbackPlan
        fields = [
            "id",
            "name",
            "description",
            "service",
            "deploymentId",
            "isDefault",
            "enabled",
            "strategy",
            "definition",
            "worstCaseMs",
            "created_at",
            "updated_at",
            "created_by",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField())
    def get_definition(self, plan: RollbackPlan) -> dict[str, Any]:
        return plan_definition(plan)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_worst_case_ms(self, plan: RollbackPlan) -> int | None:
        spec = _spec(plan)
        if spec is None:
            return None
        return plans.worst_case_ms(plans.expand(spec, share=Decimal(100)))


class PreviewSerializer(StrictSerializer):
    """The body of a preview: the deployment the plan would roll back."""

    deployment = serializers.PrimaryKeyRelatedField(
        queryset=Deployment.objects.select_related("service"), help_text="A deployment's id."
    )


class DeploymentRefSerializer(PreviewSerializer):
    """The body of a rehearsal: the deployment to run the plan against, and why."""

    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class UtcDateTime(serializers.DateTimeField):
    """A datetime the database can compare (`canary_site.fields.UtcDateTimeField`), in UTC."""

    def to_internal_value(self, value: Any) -> Any:
        try:
            return UtcDateTimeField().clean(value)
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.messages) from None


class StatisticsQuerySerializer(StrictSerializer):
    service = serializers.CharField(required=False, max_length=100, help_text="A service's name.")
    since = UtcDateTime(required=False, help_text="Count the rollbacks begun since then.")


class RollbackStepSerializer(serializers.ModelSerializer):
    type = serializers.CharField(read_only=True, help_text=_words(StepType))
    state = serializers.CharField(read_only=True, help_text=_words(StepState))

    class Meta:
        model = RollbackStep
        fields = [
            "position",
            "key",
            "type",
            "name",
            "state",
            "attempts",
            "timeout_ms",
            "after_ms",
            "started_at",
            "finished_at",
            "timed_out",
            "output",
            "error",
        ]
        read_only_fields = fields


class RollbackExecutionSerializer(serializers.ModelSerializer):
    plan = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    deployment = serializers.PrimaryKeyRelatedField(read_only=True)
    requested_by = RelatedName("requested_by.username")
    approval = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    # Plain strings in the schema: the enums would collide with the other apps' "state" and
    # "strategy" enums.
    strategy = serializers.CharField(read_only=True, help_text=_words(RollbackStrategy))
    trigger = serializers.CharField(read_only=True, help_text=_words(RollbackTrigger))
    state = serializers.CharField(read_only=True, help_text=_words(ExecutionState))
    ended = serializers.BooleanField(read_only=True)

    class Meta:
        model = RollbackExecution
        fields = [
            "id",
            "plan",
            "plan_name",
            "strategy",
            "deployment",
            "service",
            "trigger",
            "rehearsal",
            "state",
            "ended",
            "requested_by",
            "source",
            "reason",
            "evidence",
            "impact",
            "validation",
            "approval",
            "breach_at",
            "created_at",
            "started_at",
            "out_of_traffic_at",
            "finished_at",
            "deadline_at",
            "outcome",
        ]
        read_only_fields = fields


class RollbackExecutionDetailSerializer(RollbackExecutionSerializer):
    """An execution with the plan it ran (as it was when it began) and its steps in order."""

    definition = serializers.SerializerMethodField()
    steps = RollbackStepSerializer(many=True, read_only=True)

    class Meta(RollbackExecutionSerializer.Meta):
        fields = [*RollbackExecutionSerializer.Meta.fields, "definition", "steps"]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField())
    def get_definition(self, execution: RollbackExecution) -> dict[str, Any]:
        return masked(execution.definition or {})


class CancelSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class RollbackRequestSerializer(StrictSerializer):
    """The body of a person's rollback of a deployment."""

    reason = serializers.CharField(max_length=2000, help_text="Why; required.")
    plan = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=2**31 - 1,
        help_text="A rollback plan's id; by default the deployment's own plan.",
    )
