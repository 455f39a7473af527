"""What flows into the metric store: the proxy's outcome aggregates and pushed samples.

Pure: parses and aggregates into `BucketDelta`s (additions to one bucket), which the store
upserts. Every source ends in the same deltas, so every source adds up the same way.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from health.analysis import is_custom_metric
from health.choices import TRAFFIC_METRIC, PushMetric
from health.histogram import BOUNDS, NUM_BUCKETS, Histogram

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:\-/@+]{1,100}")
MAX_COUNT = 10**12  # far above any real bucket; stops a typo from poisoning a series forever


@dataclass(frozen=True, slots=True)
class OutcomeBatchItem:
    """What the routing proxy saw for one version of one service in one time bucket.

    - ``service``, ``version``: the series, as the proxy routes them (``checkout``, ``1.5.0``);
    - ``bucket_start``: an aware datetime inside the bucket; the store floors it to the bucket
      resolution, so a proxy may flush whenever it likes;
    - ``requests``, ``errors``: counts since the proxy's last flush (not running totals);
      ``errors`` never exceeds ``requests``;
    - ``latency``: a `Histogram` of the same requests' latencies in ms (usually ``requests``
      samples, but any count is accepted: a proxy may time only some requests).

    Items are additions: flushing two items for the same bucket adds them up, whichever
    process flushes them and in whatever order.
    """

    service: str
    version: str
    bucket_start: datetime
    requests: int
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)


@dataclass(slots=True)
class BucketDelta:
    """Additions to one bucket of the store; ``start`` is already floored to ``resolution``."""

    service: str
    version: str
    metric: str
    start: datetime
    resolution: int
    requests: int = 0
    errors: int = 0
    latency: list[int] | None = None  # dense counts, NUM_BUCKETS long, or None when empty
    value_sum: float = 0.0
    value_count: int = 0
    value_min: float | None = None
    value_max: float | None = None

    @property
    def key(self) -> tuple[str, str, str, datetime, int]:
        return (self.service, self.version, self.metric, self.start, self.resolution)

    def add_latency_counts(self, counts: Sequence[int]) -> None:
        if self.latency is None:
            self.latency = [0] * NUM_BUCKETS
        mine = self.latency
        for index, count in enumerate(counts):
            if count:
                mine[index] += count

    def add_observation(self, value: float, count: int = 1) -> None:
        self.value_sum += value * count
        self.value_count += count
        self.value_min = value if self.value_min is None else min(self.value_min, value)
        self.value_max = value if self.value_max is None else max(self.value_max, value)

    def merge(self, other: BucketDelta) -> None:
        self.requests += other.requests
        self.errors += other.errors
        if other.latency is not None:
            self.add_latency_counts(other.latency)
        self.value_sum += other.value_sum
        self.value_count += other.value_count
        if other.value_min is not None:
            self.value_min = (
                other.value_min if self.value_min is None else min(self.value_min, other.value_min)
            )
        if other.value_max is not None:
            self.value_max = (
                other.value_max if self.value_max is None else max(self.value_max, other.value_max)
            )

    def sparse_latency(self) -> list[list[int]]:
        if self.latency is None:
            return []
        return [[index, count] for index, count in enumerate(self.latency) if count]

    def additions(
        self,
    ) -> tuple[int, int, list[list[int]], float, int, float | None, float | None]:
        """What the delta adds to its bucket, in the store's column order after the key columns
        (``latency`` sparse)."""
        return (
            self.requests,
            self.errors,
            self.sparse_latency(),
            self.value_sum,
            self.value_count,
            self.value_min,
            self.value_max,
        )


def floor_time(moment: datetime, resolution: int) -> datetime:
    """The start of the ``resolution``-second bucket holding ``moment`` (UTC, epoch-aligned)."""
    seconds = int(moment.timestamp() // resolution) * resolution
    return datetime.fromtimestamp(seconds, tz=UTC)


class Deltas:
    """Deltas keyed by bucket, merged as they are added."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.by_key: dict[tuple[str, str, str, datetime, int], BucketDelta] = {}

    def get(self, service: str, version: str, metric: str, start: datetime) -> BucketDelta:
        key = (service, version, metric, start, self.resolution)
        delta = self.by_key.get(key)
        if delta is None:
            delta = self.by_key[key] = BucketDelta(
                service=service,
                version=version,
                metric=metric,
                start=start,
                resolution=self.resolution,
            )
        return delta

    def add(self, delta: BucketDelta) -> None:
        existing = self.by_key.get(delta.key)
        if existing is None:
            self.by_key[delta.key] = delta
        else:
            existing.merge(delta)

    def sorted(self) -> list[BucketDelta]:
        # One global order: concurrent writers lock rows in the same order and cannot deadlock.
        return [self.by_key[key] for key in sorted(self.by_key)]


def outcome_deltas(items: Iterable[OutcomeBatchItem], *, resolution: int) -> list[BucketDelta]:
    """The proxy's outcomes as deltas, one per bucket; raises ValueError on impossible input."""
    deltas = Deltas(resolution)
    floors: dict[datetime, datetime] = {}
    for index, item in enumerate(items):
        if not isinstance(item, OutcomeBatchItem):
            raise ValueError(f"outcomes[{index}] is not an OutcomeBatchItem")
        _check_name(item.service, f"outcomes[{index}].service")
        _check_name(item.version, f"outcomes[{index}].version")
        if item.bucket_start.tzinfo is None:
            raise ValueError(f"outcomes[{index}].bucket_start must be timezone-aware")
        if item.requests < 0 or item.errors < 0 or item.errors > item.requests:
            raise ValueError(f"outcomes[{index}]: need 0 <= errors <= requests")
        start = floors.get(item.bucket_start)
        if start is None:
            start = floors[item.bucket_start] = floor_time(item.bucket_start, resolution)
        delta = deltas.get(item.service, item.version, TRAFFIC_METRIC, start)
        delta.requests += item.requests
        delta.errors += item.errors
        if item.latency.total:
            delta.add_latency_counts(item.latency.counts)
    return deltas.sorted()


def _check_name(value: Any, field_name: str) -> None:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"{field_name} must be 1 to 100 letters, digits or _.:-/@+")


# --------------------------------------------------------------------------- pushes


class SampleError(ValueError):
    """A pushed sample that cannot be stored; ``field`` names it (``samples[3].value``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


SAMPLE_FIELDS = frozenset({"service", "version", "metric", "value", "timestamp", "count"})
PUSH_METRICS = frozenset(PushMetric.values)
# What a sample's value adds to its delta, by metric.
_REQUESTS, _ERRORS, _LATENCY, _CUSTOM = "requests", "errors", "latency", "custom"


def parse_samples(
    samples: Any,
    *,
    resolution: int,
    now: datetime,
    max_future_seconds: float,
    max_age_seconds: float,
) -> list[BucketDelta]:
    """Validate pushed samples and aggregate them into deltas.

    A sample is ``{"service", "version", "metric", "value", "timestamp"[, "count"]}``:

    - ``requests`` / ``errors``: ``value`` is a whole, non-negative count;
    - ``latency_ms``: ``value`` is one latency in ms (>= 0), observed ``count`` times (1);
    - ``custom:<name>``: ``value`` is one observation of a custom metric, ``count`` times.

    ``timestamp`` is an ISO 8601 time with its offset or Unix seconds. Raises SampleError
    naming the first bad field.
    """
    if not isinstance(samples, list):
        raise SampleError("samples", "must be a list")
    deltas = Deltas(resolution)
    now_ts = now.timestamp()
    latest = now_ts + max_future_seconds
    earliest = now_ts - max_age_seconds
    starts: dict[float, datetime] = {}
    # Names and metrics repeat across a batch: each distinct one is checked once.
    good_names: set[str] = set()
    good_metrics: set[str] = set(PUSH_METRICS)
    # A batch repeats (service, version, metric, timestamp) many times over (a latency per
    # request): once checked, such a key maps straight to its delta and what to add there.
    targets: dict[tuple[Any, Any, Any, Any], tuple[BucketDelta, str]] = {}
    kinds = {
        str(PushMetric.REQUESTS): _REQUESTS,
        str(PushMetric.ERRORS): _ERRORS,
        str(PushMetric.LATENCY_MS): _LATENCY,
    }
    for index, sample in enumerate(samples):
        if type(sample) is not dict and not isinstance(sample, Mapping):
            raise SampleError(f"samples[{index}]", "must be an object")
        if not SAMPLE_FIELDS.issuperset(sample):
            unknown = next(key for key in sample if key not in SAMPLE_FIELDS)
            raise SampleError(f"samples[{index}].{unknown}", "unknown field")
        service = sample.get("service")
        version = sample.get("version")
        metric = sample.get("metric")
        stamp = sample.get("timestamp")
        try:
            key = (service, version, metric, stamp)
            target = targets.get(key)
        except TypeError:  # an unhashable field: the checks below name it
            key = None
            target = None
        if target is None:
            for name, value in (("service", service), ("version", version)):
                if not isinstance(value, str) or value not in good_names:
                    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
                        raise SampleError(
                            f"samples[{index}].{name}",
                            "must be 1 to 100 letters, digits or _.:-/@+",
                        )
                    good_names.add(value)
            if not isinstance(metric, str) or metric not in good_metrics:
                if not (isinstance(metric, str) and is_custom_metric(metric)):
                    raise SampleError(
                        f"samples[{index}].metric",
                        f"unknown metric {metric!r}; use requests, errors, latency_ms or "
                        "custom:<name>",
                    )
                good_metrics.add(metric)
            kind = kinds.get(metric, _CUSTOM)
        else:
            kind = target[1]
        value = sample.get("value")
        value_type = type(value)
        if not (value_type is float or value_type is int) and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise SampleError(f"samples[{index}].value", "must be a finite number")
        if value_type is not int and not math.isfinite(value):
            raise SampleError(f"samples[{index}].value", "must be a finite number")
        count = sample.get("count", 1)
        if count != 1 or "count" in sample:
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
                raise SampleError(
                    f"samples[{index}].count", f"must be a whole number from 1 to {MAX_COUNT}"
                )
            if kind is _REQUESTS or kind is _ERRORS:
                raise SampleError(
                    f"samples[{index}].count", "is for latency_ms and custom metrics; send value"
                )
        if target is None:
            if type(stamp) is not float or not math.isfinite(stamp):
                stamp = _timestamp(stamp, f"samples[{index}].timestamp")
            if not earliest <= stamp <= latest:
                if stamp > latest:
                    raise SampleError(
                        f"samples[{index}].timestamp",
                        f"is {stamp - now_ts:.0f}s in the future; at most "
                        f"{max_future_seconds:g}s allowed",
                    )
                raise SampleError(
                    f"samples[{index}].timestamp",
                    "is older than the metric store keeps (retention)",
                )
            bucket_ts = stamp - stamp % resolution
            start = starts.get(bucket_ts)
            if start is None:
                start = starts[bucket_ts] = datetime.fromtimestamp(bucket_ts, tz=UTC)
            series_metric = metric if kind is _CUSTOM else TRAFFIC_METRIC
            target = (deltas.get(service, version, series_metric, start), kind)
            if key is not None:
                targets[key] = target
        delta = target[0]
        if kind is _LATENCY:
            if value < 0:
                raise SampleError(f"samples[{index}].value", "a latency cannot be negative")
            latency = delta.latency
            if latency is None:
                latency = delta.latency = [0] * NUM_BUCKETS
            latency[bisect_left(BOUNDS, value)] += count
        elif kind is _CUSTOM:
            delta.add_observation(float(value), count)
        else:
            if not 0 <= value <= MAX_COUNT or (
                value_type is not int and not float(value).is_integer()
            ):
                raise SampleError(
                    f"samples[{index}].value",
                    f"a count must be a whole number from 0 to {MAX_COUNT}",
                )
            if kind is _REQUESTS:
                delta.requests += int(value)
            else:
                delta.errors += int(value)
    return deltas.sorted()


def _timestamp(value: Any, field_name: str) -> float:
    if isinstance(value, bool) or value is None:
        raise SampleError(field_name, "is required: ISO 8601 with an offset, or Unix seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise SampleError(field_name, "must be a finite number of Unix seconds")
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise SampleError(field_name, f"{value!r} is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise SampleError(field_name, "needs a UTC offset (e.g. Z or +00:00)")
        return moment.timestamp()
    raise SampleError(field_name, "must be an ISO 8601 time or Unix seconds")
