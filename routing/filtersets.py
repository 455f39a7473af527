"""Filters shared by the routing app's pages and API."""

from __future__ import annotations

import django_filters

from canary_site.filtersets import NamedFilterSet
from routing.choices import Strategy
from routing.models import RoutingRule, Service, Target


class ServiceFilterSet(NamedFilterSet):
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
