"""Filters shared by the rollback app's pages and API."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet

from canary_site.gates import GATED_ACTIONS
from rollback.choices import RequestState
from rollback.models import ApprovalPolicy, ApprovalRequest
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
