"""Admin of the rollback app. Policies are saved, and requests approved, rejected or cancelled,
through ``rollback.services``, so the admin enforces the same rules as the dashboard and the API:
no self-approval, nobody counting twice, the quorum, the version check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from canary_site.admin import ReadOnlyAdminMixin, ServiceValidatedForm, each_through_service
from canary_site.choices import Source
from rollback import services
from rollback.models import ApprovalDecision, ApprovalPolicy, ApprovalRequest

EDITABLE = [name for name in services.POLICY_FIELDS if name != "approver_users"]


class ApprovalPolicyAdminForm(ServiceValidatedForm):
    candidate_fields = EDITABLE

    class Meta:
        model = ApprovalPolicy
        fields = list(services.POLICY_FIELDS)

    def validate(self, candidate: ApprovalPolicy, data: dict[str, Any]) -> None:
        services.approval_policy_validate(
            policy=candidate, users=list(data.get("approver_users") or [])
        )


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    form = ApprovalPolicyAdminForm
    list_display = ["name", "enabled", "scope_kind", "scope_value", "quorum", "approver_kind"]
    list_filter = ["enabled", "scope_kind", "approver_kind"]
    search_fields = ["name", "description"]
    filter_horizontal = ["approver_users"]

    def save_model(
        self, request: HttpRequest, obj: ApprovalPolicy, form: Any, change: bool
    ) -> None:
        data = {name: form.cleaned_data.get(name) for name in services.POLICY_FIELDS}
        data["approver_users"] = list(data.get("approver_users") or [])
        if change:
            policy = services.approval_policy_update(
                policy=obj, changes=data, actor=request.user, source=Source.UI
            )
        else:
            policy = services.approval_policy_create(**data, actor=request.user, source=Source.UI)
        obj.pk = policy.pk
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The service has set the approvers already.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request: HttpRequest, obj: ApprovalPolicy) -> None:
        services.approval_policy_delete(policy=obj, actor=request.user, source=Source.UI)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApprovalPolicy]) -> None:
        for policy in queryset:
            services.approval_policy_delete(policy=policy, actor=request.user, source=Source.UI)


class DecisionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ApprovalDecision
    fields = ["approver", "verdict", "comment", "at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


def _decision_action(
    name: str, description: str, service: Callable[..., Any], permission: str
) -> Callable[..., None]:
    def run(modeladmin: ApprovalRequestAdmin, request: HttpRequest, queryset: QuerySet) -> None:
        each_through_service(
            modeladmin,
            request,
            queryset,
            lambda approval: service(request_id=approval.pk, actor=request.user, source=Source.UI),
            name_of=lambda approval: f"#{approval.pk}",
            label=description,
            noun="request",
        )

    run.__name__ = name
    return admin.action(
        description=f"{description} (the selected requests)", permissions=[permission]
    )(run)


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Requests are opened by the gated services and closed by decisions: nothing is edited
    here, and the actions call the same services as the inbox."""

    list_display = ["pk", "action", "object_repr", "state", "requester", "created_at", "expires_at"]
    list_filter = ["state", "action"]
    search_fields = ["object_repr", "reason", "requester__username"]
    inlines = [DecisionInline]
    fields = [
        "state",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "object_version",
        "change",
        "evidence",
        "requester",
        "source",
        "reason",
        "policy",
        "quorum",
        "one_rejection_rejects",
        "created_at",
        "expires_at",
        "closed_at",
        "outcome",
    ]
    readonly_fields = fields
    actions = ["approve_requests", "reject_requests", "cancel_requests"]

    approve_requests = _decision_action(
        "approve_requests", "Approve", services.approval_request_approve, "approve"
    )
    reject_requests = _decision_action(
        "reject_requests", "Reject", services.approval_request_reject, "approve"
    )
    cancel_requests = _decision_action(
        "cancel_requests", "Cancel", services.approval_request_cancel, "view"
    )

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rollback.approve_approvalrequest")
