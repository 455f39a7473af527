"""Filters shared by the audit page and GET /api/v1/audit/, and the datetime filter of every app."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from canary_site.choices import Source
from canary_site.fields import UtcDateTimeField
from canary_site.models import AuditEntry

ACTION_CHOICES = [("create", "create"), ("update", "update"), ("delete", "delete")]


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 datetime filter that refuses what the database cannot compare (a 400 naming
    the filter, not a 500) and queries in UTC. Every ``since``/``until`` filter is one."""

    field_class = UtcDateTimeField


def time_range(field_name: str) -> tuple[UtcDateTimeFilter, UtcDateTimeFilter]:
    """The ``since`` and ``until`` filters, both ends included, on the datetime ``field_name``."""
    return (
        UtcDateTimeFilter(field_name=field_name, lookup_expr="gte"),
        UtcDateTimeFilter(field_name=field_name, lookup_expr="lte"),
    )


class NamedFilterSet(django_filters.FilterSet):
    """For records found by name: ``name`` matches any part of it, in any case."""

    name = django_filters.CharFilter(lookup_expr="icontains")


class AuditEntryFilterSet(django_filters.FilterSet):
    object_type = django_filters.CharFilter(
        field_name="content_type__model", lookup_expr="iexact", label="Object type"
    )
    object_id = django_filters.CharFilter(field_name="object_pk", label="Object id")
    object = django_filters.CharFilter(
        field_name="object_repr", lookup_expr="icontains", label="Object"
    )
    actor = django_filters.CharFilter(
        field_name="actor__username", lookup_expr="iexact", label="Actor"
    )
    action = django_filters.CharFilter(method="filter_action", label="Action")
    source = django_filters.ChoiceFilter(choices=Source.choices)
    since, until = time_range("timestamp")

    class Meta:
        model = AuditEntry
        fields = [
            "object_type",
            "object_id",
            "object",
            "actor",
            "action",
            "source",
            "since",
            "until",
        ]

    def filter_action(self, queryset: QuerySet[AuditEntry], name: str, value: str) -> QuerySet:
        """An action is either a verb ("kill") or one of the plain edits."""
        value = value.strip().lower()
        plain = {
            "create": AuditEntry.Action.CREATE,
            "update": AuditEntry.Action.UPDATE,
            "delete": AuditEntry.Action.DELETE,
        }
        if value in plain:
            return queryset.filter(Q(verb=value) | Q(verb="", action=plain[value]))
        return queryset.filter(verb=value)
