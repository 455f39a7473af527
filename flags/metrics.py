"""The flags app's state on /metrics: flags by status and the evaluations served per flag and
variant, read from the database when Prometheus scrapes, in two queries.

Evaluations are the exposure counts (`flags.exposures`): each process writes what it served
every few seconds, so a count reaches the page within ``CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS``.
Only flags that exist are labelled, which bounds the labels; a variant is one its flag served.
"""

from __future__ import annotations

from django.db.models import Count, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from canary_site.metrics import StateCollector
from flags.choices import FlagStatus
from flags.models import Flag, FlagExposure


class FlagsCollector(StateCollector):
    what = "flags' metrics"

    def families(self) -> dict[str, Metric]:
        return {
            "flags": GaugeMetricFamily("canary_flags", "Flags by status.", labels=["status"]),
            "evaluations": CounterMetricFamily(
                "canary_flag_evaluations",
                "Flag evaluations served over OFREP, by flag and variant, as stored in the "
                "exposure counts (retention removes the oldest: Prometheus reads the drop as "
                "a counter reset).",
                labels=["flag", "variant"],
            ),
        }

    def fill(self, families: dict[str, Metric]) -> None:
        statuses = dict(
            Flag.objects.order_by()
            .values_list("status")
            .annotate(count=Count("pk"))
            .values_list("status", "count")
        )
        for status in FlagStatus.values:
            families["flags"].add_metric([status], statuses.get(status, 0))
        served = (
            FlagExposure.objects.filter(flag_key__in=Flag.objects.values("key"))
            .order_by("flag_key", "variant")
            .values_list("flag_key", "variant")
            .annotate(total=Sum("count"))
            .values_list("flag_key", "variant", "total")
        )
        for flag, variant, total in served:
            families["evaluations"].add_metric([flag, variant], total)


collector = FlagsCollector()
