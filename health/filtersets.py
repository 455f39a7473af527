"""Filters shared by the health app's pages and API."""

from __future__ import annotations

import django_filters

from canary_site.filtersets import NamedFilterSet, UtcDateTimeFilter, time_range
from health.choices import AlertSeverity, AlertStatus, Verdict
from health.models import Alert, HealthCheck, HealthPolicy


class HealthPolicyFilterSet(NamedFilterSet):
    class Meta:
        model = HealthPolicy
        fields = ["name", "alerting_enabled"]


class HealthCheckFilterSet(django_filters.FilterSet):
    service = django_filters.CharFilter()
    canary_version = django_filters.CharFilter(label="Canary version")
    stable_version = django_filters.CharFilter(label="Stable version")
    verdict = django_filters.MultipleChoiceFilter(choices=Verdict.choices)
    policy = django_filters.NumberFilter(field_name="policy_id", label="Policy id")
    should_rollback = django_filters.BooleanFilter(label="Should roll back")
    since, until = time_range("window_end")

    class Meta:
        model = HealthCheck
        fields = [
            "service",
            "canary_version",
            "stable_version",
            "verdict",
            "policy",
            "should_rollback",
            "since",
            "until",
        ]


class AlertFilterSet(django_filters.FilterSet):
    service = django_filters.CharFilter()
    canary_version = django_filters.CharFilter(label="Canary version")
    status = django_filters.MultipleChoiceFilter(choices=AlertStatus.choices)
    severity = django_filters.ChoiceFilter(choices=AlertSeverity.choices)
    policy = django_filters.NumberFilter(field_name="policy_id", label="Policy id")
    since = UtcDateTimeFilter(field_name="raised_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["service", "canary_version", "status", "severity", "policy", "since"]
