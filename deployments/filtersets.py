"""Filters shared by the deployments app's pages and API."""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet

from deployments.choices import DeploymentStatus, EventKind
from deployments.lifecycle import ACTIVE_STATUSES
from deployments.models import Deployment, DeploymentEvent


class DeploymentFilterSet(django_filters.FilterSet):
    service = django_filters.CharFilter(field_name="service__name", label="Service")
    status = django_filters.MultipleChoiceFilter(choices=DeploymentStatus.choices)
    name = django_filters.CharFilter(lookup_expr="icontains", label="Name contains")
    active = django_filters.BooleanFilter(method="filter_active", label="Under way")

    class Meta:
        model = Deployment
        fields = ["service", "status", "name", "canary_version"]

    def filter_active(
        self, queryset: QuerySet[Deployment], name: str, value: bool | None
    ) -> QuerySet[Deployment]:
        under_way = [str(status) for status in ACTIVE_STATUSES]
        if value is True:
            return queryset.filter(status__in=under_way)
        if value is False:
            return queryset.exclude(status__in=under_way)
        return queryset


class DeploymentEventFilterSet(django_filters.FilterSet):
    kind = django_filters.MultipleChoiceFilter(choices=EventKind.choices)
    source = django_filters.CharFilter()

    class Meta:
        model = DeploymentEvent
        fields = ["kind", "source", "phase"]
