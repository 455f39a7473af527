"""Filters shared by the routing app's pages and API."""

from __future__ import annotations

import django_filters

from routing.choices import Strategy
from routing.models import RoutingRule, Service, Target


class ServiceFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Service
        fields = ["name", "stable_version"]


class TargetFilterSet(django_filters.FilterSet):
    service = django_filters.CharFilter(field_name="service__name", label="Service")
    version = django_filters.CharFilter()
    healthy = django_filters.BooleanFilter()

    class Meta:
        model = Target
        fields = ["service", "version", "healthy"]


class RuleFilterSet(django_filters.FilterSet):
    service = django_filters.CharFilter(field_name="service__name", label="Service")
    enabled = django_filters.BooleanFilter()
    strategy = django_filters.ChoiceFilter(choices=Strategy.choices)

    class Meta:
        model = RoutingRule
        fields = ["service", "enabled", "strategy"]
