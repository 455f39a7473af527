"""Reads of the flags app: flags with their staleness, segments, keys, evaluations from the
saved state, exposure series and history."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import BooleanField, Case, Q, QuerySet, Sum, Value, When
from django.utils import timezone

from canary_site.exceptions import NotFound
from canary_site.selectors import audit_entries_for
from flags import conf
from flags.definition import engine_flag, rollout_percentage
from flags.evaluation import (
    ErrorCode,
    EvaluationResult,
    InvalidFlagDefinition,
    build_flag_snapshot,
    build_segment_snapshot,
    evaluate,
    evaluation_error,
)
from flags.models import EvaluationKey, Flag, FlagExposure, Segment
from flags.snapshot import FLAG_FIELDS


def _stale_condition(now: datetime) -> Q:
    return Q(expires_on__lt=timezone.localdate(now)) | Q(
        full_rollout_since__lte=now - timedelta(days=conf.stale_after_days())
    )


def flags(*, now: datetime | None = None) -> QuerySet[Flag]:
    """Every flag, with ``is_stale``: past its expiry date, or served to everyone for
    ``CANARY_FLAGS_STALE_DAYS`` (30) days."""
    now = now or timezone.now()
    return (
        Flag.objects.select_related("owner")
        .annotate(
            is_stale=Case(
                When(_stale_condition(now), then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            )
        )
        .order_by("key")
    )


def stale_flags(*, now: datetime | None = None) -> QuerySet[Flag]:
    return flags(now=now).filter(is_stale=True)


def flag_get(*, key: str) -> Flag:
    flag = flags().filter(key=key).first()
    if flag is None:
        raise NotFound(f"No flag named '{key}'.")
    return flag


def flag_stale_reason(*, flag: Flag, now: datetime | None = None) -> str | None:
    """Why the flag is stale, in words, or None."""
    now = now or timezone.now()
    if flag.expires_on is not None and flag.expires_on < timezone.localdate(now):
        return f"It expired on {flag.expires_on:%Y-%m-%d}."
    days = conf.stale_after_days()
    if flag.full_rollout_since is not None and flag.full_rollout_since <= now - timedelta(
        days=days
    ):
        return (
            f"It has served everyone since {flag.full_rollout_since:%Y-%m-%d} "
            f"(over {days} days): time to remove it from the code."
        )
    return None


def flag_rollout_percentage(*, flag: Flag) -> float | None:
    """The share the default rule serves something other than the off variant (None: a split)."""
    return rollout_percentage(flag.default_rule, flag.off_variant)


def kill_switch_flags() -> QuerySet[Flag]:
    """Flags that opted in to being killed by system-wide kill switches."""
    return Flag.objects.filter(kill_switch_enabled=True).order_by("key")


def segments() -> QuerySet[Segment]:
    return Segment.objects.order_by("key")


def segment_get(*, key: str) -> Segment:
    segment = Segment.objects.filter(key=key).first()
    if segment is None:
        raise NotFound(f"No segment named '{key}'.")
    return segment


def segment_usage() -> dict[str, list[str]]:
    """Segment key -> the keys of the flags whose rules name it."""
    usage: dict[str, list[str]] = defaultdict(list)
    for key, rules in Flag.objects.order_by("key").values_list("key", "rules"):
        named: set[str] = set()
        for rule in rules if isinstance(rules, list) else []:
            if isinstance(rule, Mapping):
                named.update(str(name) for name in rule.get("segments") or [])
        for segment_key in sorted(named):
            usage[segment_key].append(key)
    return dict(usage)


def flags_using_segment(*, key: str) -> list[Flag]:
    keys = segment_usage().get(key, [])
    return list(Flag.objects.filter(key__in=keys).order_by("key"))


def flag_evaluate(*, flag: Flag, context: Mapping[str, Any]) -> EvaluationResult:
    """Evaluate the flag as saved (not as a process's snapshot has it) for ``context``.

    For the dashboard's "try a context" panel and the REST ``evaluate`` action: nothing is
    counted as an exposure.
    """
    row = {name: getattr(flag, name) for name in FLAG_FIELDS}
    try:
        snapshot = build_flag_snapshot(engine_flag(row))
    except (InvalidFlagDefinition, TypeError, ValueError) as error:
        return evaluation_error(flag.key, ErrorCode.PARSE_ERROR, str(error))
    named = {
        str(name)
        for rule in flag.rules
        if isinstance(rule, Mapping)
        for name in rule.get("segments") or []
    }
    built = {}
    for segment in Segment.objects.filter(key__in=named):
        try:
            built[segment.key] = build_segment_snapshot(
                {"key": segment.key, "name": segment.name, "constraints": segment.constraints}
            )
        except InvalidFlagDefinition:
            continue  # a segment that no longer builds matches no one, as when serving
    return evaluate(snapshot, context, built)


def evaluation_keys(*, include_revoked: bool = True) -> QuerySet[EvaluationKey]:
    keys = EvaluationKey.objects.select_related("created_by").order_by("revoked_at", "-created_at")
    return keys if include_revoked else keys.filter(revoked_at__isnull=True)


@dataclass(frozen=True)
class ExposureSeries:
    """Counts per variant over evenly spaced buckets, oldest first (zeros included)."""

    buckets: list[datetime]
    counts: dict[str, list[int]]
    step: timedelta

    @property
    def total(self) -> int:
        return sum(sum(values) for values in self.counts.values())


EXPOSURE_WINDOWS: dict[str, tuple[timedelta, timedelta, str]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1), "Last hour, per minute"),
    "24h": (timedelta(hours=24), timedelta(minutes=15), "Last day, per 15 minutes"),
    "7d": (timedelta(days=7), timedelta(hours=1), "Last week, per hour"),
}


def flag_exposure_series(
    *, flag_key: str, window: str = "1h", now: datetime | None = None
) -> ExposureSeries:
    """Exposures of ``flag_key`` per variant over one of :data:`EXPOSURE_WINDOWS`."""
    span, step, _label = EXPOSURE_WINDOWS.get(window, EXPOSURE_WINDOWS["1h"])
    now = now or timezone.now()
    step_seconds = int(step.total_seconds())
    # The last bucket is the one now falls in, so the chart ends with the current minute.
    end_seconds = (int(now.timestamp()) // step_seconds + 1) * step_seconds
    end = datetime.fromtimestamp(end_seconds, tz=now.tzinfo)
    start = end - span
    buckets = [start + step * index for index in range(int(span / step))]
    counts: dict[str, list[int]] = {}
    rows = FlagExposure.objects.filter(
        flag_key=flag_key, bucket_start__gte=start, bucket_start__lt=end
    ).values_list("variant", "bucket_start", "count")
    for variant, bucket_start, count in rows:
        index = int((bucket_start - start).total_seconds()) // step_seconds
        if 0 <= index < len(buckets):
            counts.setdefault(variant, [0] * len(buckets))[index] += count
    return ExposureSeries(buckets=buckets, counts=dict(sorted(counts.items())), step=step)


def flag_exposure_totals(*, flag_key: str, since: datetime | None = None) -> dict[str, int]:
    rows = FlagExposure.objects.filter(flag_key=flag_key)
    if since is not None:
        rows = rows.filter(bucket_start__gte=since)
    return {
        variant: total
        for variant, total in rows.values("variant")
        .annotate(total=Sum("count"))
        .order_by("variant")
        .values_list("variant", "total")
    }


def flag_history(*, flag: Flag) -> QuerySet[Any]:
    """The flag's audit trail, newest first."""
    return audit_entries_for(obj=flag)


def segment_history(*, segment: Segment) -> QuerySet[Any]:
    return audit_entries_for(obj=segment)
