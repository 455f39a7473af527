"""Admin of the rollback app. Policies are saved, and requests approved, rejected or cancelled,
through ``rollback.services``, so the admin enforces the same rules as the dashboard and the API:
no self-approval, nobody counting twice, the quorum, the version check. Rollback plans are
edited as their definition, checked and saved by the plan services; executions are records,
read-only, and their one action (Cancel) is the service's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from canary_site.admin import (
    ReadOnlyAdminMixin,
    RefusableDeleteMixin,
    ServiceValidatedForm,
    each_through_service,
)
from canary_site.choices import Source
from rollback import services
from rollback.api.serializers import masked, unmasked
from rollback.definition_admin import DefinitionAdminForm, DefinitionEditedAdminMixin
from rollback.models import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    RollbackExecution,
    RollbackPlan,
    RollbackStep,
)

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


class RollbackPlanAdminForm(DefinitionAdminForm):
    """A plan is its definition (the guide's vocabulary); name, service, strategy and the rest
    are read from it by the services."""

    noun = "rollback plan"

    class Meta:
        model = RollbackPlan
        fields = ["definition"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A webhook's secret is never shown; saved back masked, it stays as stored.
        if self.instance.pk:
            self.initial["definition"] = masked(self.instance.definition)

    def clean_definition(self) -> Any:
        stored = self.instance.definition if self.instance.pk else {}
        return unmasked(self.cleaned_data.get("definition"), stored or {})

    def spec_of(self, definition: Any) -> Any:
        return services.rollback_plan_validate(definition=definition)


@admin.register(RollbackPlan)
class RollbackPlanAdmin(DefinitionEditedAdminMixin, RefusableDeleteMixin, admin.ModelAdmin):
    form = RollbackPlanAdminForm
    list_display = ["name", "service", "strategy", "is_default", "enabled", "updated_at"]
    list_filter = ["strategy", "enabled", "is_default"]
    search_fields = ["name", "description", "service__name"]
    readonly_fields = [
        "name",
        "description",
        "service",
        "deployment",
        "is_default",
        "enabled",
        "strategy",
        "created_by",
        "created_at",
        "updated_at",
    ]

    def create_through_service(self, *, definition: Any, **by: Any) -> RollbackPlan:
        return services.rollback_plan_create(definition=definition, **by)

    def update_through_service(self, *, obj: Any, definition: Any, **by: Any) -> RollbackPlan:
        return services.rollback_plan_update(plan=obj, definition=definition, **by)

    def delete_through_service(self, *, obj: Any, **by: Any) -> None:
        services.rollback_plan_delete(plan=obj, **by)


class StepInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = RollbackStep
    fields = [
        "position",
        "name",
        "type",
        "state",
        "attempts",
        "started_at",
        "finished_at",
        "timed_out",
        "output",
        "error",
    ]
    readonly_fields = fields
    ordering = ["position"]
    extra = 0
    can_delete = False


@admin.register(RollbackExecution)
class RollbackExecutionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Executions are written by the rollback services and the beat: nothing is edited here;
    Cancel calls the same service as the execution's page."""

    list_display = [
        "pk",
        "plan_name",
        "service",
        "deployment",
        "trigger",
        "rehearsal",
        "state",
        "requested_by",
        "created_at",
    ]
    list_filter = ["state", "trigger", "rehearsal", "strategy"]
    search_fields = ["plan_name", "service", "reason", "requested_by__username"]
    inlines = [StepInline]
    fields = [
        "state",
        "plan",
        "plan_name",
        "strategy",
        "deployment",
        "service",
        "trigger",
        "rehearsal",
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
        "plan_as_it_ran",
    ]
    readonly_fields = fields
    actions = ["cancel_executions"]

    @admin.display(description="Plan as it ran")
    def plan_as_it_ran(self, obj: RollbackExecution) -> str:
        return json.dumps(masked(obj.definition or {}), indent=2, sort_keys=True)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rollback.change_rollbackexecution")

    @admin.action(description="Cancel (the selected rollbacks)", permissions=["cancel"])
    def cancel_executions(
        self, request: HttpRequest, queryset: QuerySet[RollbackExecution]
    ) -> None:
        each_through_service(
            self,
            request,
            queryset,
            lambda execution: services.rollback_execution_cancel(
                execution=execution,
                actor=request.user,
                source=Source.UI,
                reason="Cancelled in the admin.",
            ),
            name_of=lambda execution: f"#{execution.pk}",
            label="Cancelled",
            noun="rollback",
        )


# The kill switches register their own admins.
from rollback import killswitch_admin  # noqa: E402, F401
