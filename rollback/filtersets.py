"""Filters shared by the rollback app's pages and API."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet

from canary_site.filtersets import time_range
from canary_site.gates import GATED_ACTIONS
from rollback.choices import (
    ActivationState,
    ActivationTrigger,
    ExecutionState,
    KillSwitchPriority,
    KillSwitchScope,
    RequestState,
    RollbackStrategy,
    RollbackTrigger,
    SwitchState,
)
from rollback.models import (
    ApprovalPolicy,
    ApprovalRequest,
    KillSwitch,
    KillSwitchActivation,
    RollbackExecution,
    RollbackPlan,
)
from rollback.selectors import awaiting


class ApprovalRequestFilterSet(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=RequestState.choices)
    action = django_filters.ChoiceFilter(
        choices=[(name, name) for name in GATED_ACTIONS], label="Action"
    )
    requester = django_filters.CharFilter(
        field_name="requester__username", lookup_expr="iexact", label="Requester"
    )
    mine = django_filters.BooleanFilter(method="filter_mine", label="Asked by me")
    awaiting_me = django_filters.BooleanFilter(method="filter_awaiting_me", label="Awaiting me")

    class Meta:
        model = ApprovalRequest
        fields = ["state", "action", "requester", "mine", "awaiting_me"]

    def _user(self) -> Any:
        return getattr(self.request, "user", None)

    def filter_mine(self, queryset: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return queryset
        user = self._user()
        mine = queryset.filter(requester_id=getattr(user, "pk", None))
        return mine if value else queryset.exclude(pk__in=mine.values("pk"))

    def filter_awaiting_me(self, queryset: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return queryset
        waiting = awaiting(self._user(), queryset)
        return waiting if value else queryset.exclude(pk__in=waiting.values("pk"))


class ApprovalPolicyFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = ApprovalPolicy
        fields = ["name", "enabled", "scope_kind", "approver_kind"]


class RollbackPlanFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    service = django_filters.CharFilter(field_name="service__name", label="Service")
    deployment = django_filters.NumberFilter(field_name="deployment_id", label="Deployment id")
    strategy = django_filters.ChoiceFilter(choices=RollbackStrategy.choices)

    class Meta:
        model = RollbackPlan
        fields = ["name", "service", "deployment", "strategy", "enabled", "is_default"]


class RollbackExecutionFilterSet(django_filters.FilterSet):
    service = django_filters.CharFilter(label="Service")
    deployment = django_filters.NumberFilter(field_name="deployment_id", label="Deployment id")
    plan = django_filters.NumberFilter(field_name="plan_id", label="Plan id")
    state = django_filters.MultipleChoiceFilter(choices=ExecutionState.choices)
    trigger = django_filters.ChoiceFilter(choices=RollbackTrigger.choices)
    since, until = time_range("created_at")

    class Meta:
        model = RollbackExecution
        fields = [
            "service",
            "deployment",
            "plan",
            "state",
            "trigger",
            "rehearsal",
            "since",
            "until",
        ]


class KillSwitchFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    scope = django_filters.ChoiceFilter(choices=KillSwitchScope.choices)
    state = django_filters.MultipleChoiceFilter(choices=SwitchState.choices)
    priority = django_filters.MultipleChoiceFilter(choices=KillSwitchPriority.choices)
    service = django_filters.CharFilter(field_name="service__name", label="Service")

    class Meta:
        model = KillSwitch
        fields = ["name", "scope", "state", "priority", "enabled", "service"]


class KillSwitchActivationFilterSet(django_filters.FilterSet):
    switch = django_filters.NumberFilter(field_name="switch_id", label="Kill switch id")
    trigger = django_filters.ChoiceFilter(choices=ActivationTrigger.choices)
    state = django_filters.ChoiceFilter(choices=ActivationState.choices)
    since, until = time_range("activated_at")

    class Meta:
        model = KillSwitchActivation
        fields = ["switch", "trigger", "state", "since", "until"]
