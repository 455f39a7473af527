"""Serializers of the rollback app's API."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from canary_site.api.serializers import StrictSerializer
from health.models import HealthPolicy
from rollback.choices import ApproverKind, ScopeKind
from rollback.models import ApprovalDecision, ApprovalPolicy, ApprovalRequest
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
