"""Filters shared by the flags app's pages and API: search, status, type, tag and stale."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet
from django_filters.widgets import BooleanWidget

from flags.choices import FlagStatus, FlagType
from flags.models import Flag, Segment


class BooleanSelect(BooleanWidget):
    """Any, yes or no, read from ``true``/``false`` (the API's spelling) with plain labels."""

    def __init__(self, attrs: dict[str, str] | None = None) -> None:
        super().__init__(attrs)
        self.choices = [("", "Any"), ("true", "Yes"), ("false", "No")]


class FlagFilterSet(django_filters.FilterSet):
    """Expects the queryset of :func:`flags.selectors.flags` (it filters on ``is_stale``)."""

    search = django_filters.CharFilter(method="filter_search", label="Search")
    status = django_filters.ChoiceFilter(
        choices=FlagStatus.choices, label="Status", empty_label="Any"
    )
    type = django_filters.ChoiceFilter(
        field_name="flag_type", choices=FlagType.choices, label="Type", empty_label="Any"
    )
    tag = django_filters.CharFilter(method="filter_tag", label="Tag")
    stale = django_filters.BooleanFilter(
        field_name="is_stale",
        widget=BooleanSelect(),
        label="Stale",
    )

    class Meta:
        model = Flag
        fields = ["search", "status", "type", "tag", "stale"]

    def filter_search(self, queryset: QuerySet[Flag], name: str, value: str) -> QuerySet[Flag]:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(key__icontains=value) | Q(name__icontains=value) | Q(description__icontains=value)
        )

    def filter_tag(self, queryset: QuerySet[Flag], name: str, value: str) -> QuerySet[Flag]:
        tag = value.strip().lower()
        if not tag:
            return queryset
        # Tags are a JSON list of strings; the quoted form matches one whole tag on SQLite and
        # PostgreSQL alike (JSON "contains" is not available on SQLite).
        return queryset.filter(tags__icontains=f'"{tag}"')


class SegmentFilterSet(django_filters.FilterSet):
    search = django_filters.CharFilter(method="filter_search", label="Search")

    class Meta:
        model = Segment
        fields = ["search"]

    def filter_search(
        self, queryset: QuerySet[Segment], name: str, value: str
    ) -> QuerySet[Segment]:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(key__icontains=value) | Q(name__icontains=value) | Q(description__icontains=value)
        )
