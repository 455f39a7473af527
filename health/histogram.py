"""Latency histograms on one fixed, system-wide set of log-spaced buckets.

Every process (proxies, workers, provider adapters) bins latencies into the same buckets, so
histograms from different processes and time buckets merge by adding counts, and a percentile
over any window is computed from the merged counts without keeping raw samples.

Bucket layout (a contract: stored histograms are only meaningful with these bounds):

- bucket 0 holds latencies in [0, 1 ms] (negative values are clamped into it);
- bucket i, for 1 <= i <= 115, holds (BOUNDS[i-1], BOUNDS[i]] with BOUNDS[i] = 1.1 ** i ms,
  rounded to the microsecond (1, 1.1, 1.21, 1.331, 1.464, ... 57,565.038 ms): each bucket is
  10% wider than the one below it, so a percentile read from a bucket is within 10% of the truth;
- bucket 116 holds (57,565.038 ms, 60,000 ms]: BOUNDS[116] = 60,000 ms closes the finite range;
- bucket 117, the overflow bucket, holds everything above 60 s. It has no upper bound, so it is
  read as a point mass at 60,000 ms: percentiles and the mean that land in it say "at least 60 s".

Percentiles interpolate linearly inside a bucket, which is the inverse of the piecewise-linear
cumulative distribution the counts describe; it is monotonic in q and, because the cumulative
distribution of a merge is a weighted average of the inputs' ones, a percentile of a merged
histogram always lies between the inputs' percentiles.

Storage: `to_list()` gives a sparse `[[bucket index, count], ...]` list of the non-empty buckets
for a JSON column; `from_list()` reads it back, and also accepts a dense list of NUM_BUCKETS
counts.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from fractions import Fraction
from itertools import accumulate
from typing import Any

MIN_BOUND_MS = 1.0
MAX_BOUND_MS = 60_000.0
GROWTH = Fraction(11, 10)


def _build_bounds() -> tuple[float, ...]:
    # Exact rational powers rounded to whole microseconds: the same floats on every platform,
    # whatever its libm does with pow().
    bounds: list[float] = []
    power = Fraction(1)
    while power * 1000 < MAX_BOUND_MS * 1000:
        bounds.append(round(power * 1000) / 1000)
        power *= GROWTH
    bounds.append(MAX_BOUND_MS)
    return tuple(bounds)


BOUNDS: tuple[float, ...] = _build_bounds()
"""Upper bounds of the finite buckets, in milliseconds, ascending; 117 of them."""

NUM_BUCKETS: int = len(BOUNDS) + 1
"""The finite buckets plus the overflow bucket."""

OVERFLOW_INDEX: int = len(BOUNDS)

_LOWERS: tuple[float, ...] = (0.0, *BOUNDS)
# The overflow bucket is read as a point mass at its lower bound (see the module docstring).
_UPPERS: tuple[float, ...] = (*BOUNDS, MAX_BOUND_MS)
_MIDPOINTS: tuple[float, ...] = tuple(
    (low + high) / 2 for low, high in zip(_LOWERS, _UPPERS, strict=True)
)


def bucket_index(latency_ms: float) -> int:
    """The index of the bucket that holds `latency_ms` (0 .. NUM_BUCKETS - 1)."""
    return bisect_left(BOUNDS, latency_ms)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The (lower, upper] bounds of a bucket in ms; the overflow bucket's upper bound is inf."""
    if not 0 <= index < NUM_BUCKETS:
        raise IndexError(f"bucket index {index} is outside 0..{NUM_BUCKETS - 1}")
    if index == OVERFLOW_INDEX:
        return MAX_BOUND_MS, float("inf")
    return _LOWERS[index], _UPPERS[index]


class Histogram:
    """Counts of latencies per bucket, with the total kept alongside.

    Mutable so that a proxy can `record()` into one cheaply; treat a histogram as frozen once
    it is handed to analysis or stored.
    """

    __slots__ = ("counts", "total")

    counts: list[int]
    total: int

    def __init__(self, counts: Sequence[int] | None = None) -> None:
        if counts is None:
            self.counts = [0] * NUM_BUCKETS
            self.total = 0
            return
        if len(counts) != NUM_BUCKETS:
            raise ValueError(f"a histogram has {NUM_BUCKETS} buckets, got {len(counts)} counts")
        self.counts = [_count(value) for value in counts]
        self.total = sum(self.counts)

    @classmethod
    def from_values(cls, latencies_ms: Iterable[float]) -> Histogram:
        histogram = cls()
        for latency in latencies_ms:
            histogram.record(latency)
        return histogram

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        """One histogram holding the counts of all of `histograms`."""
        return sum(histograms, cls())

    def record(self, latency_ms: float, count: int = 1) -> None:
        self.counts[bisect_left(BOUNDS, latency_ms)] += count
        self.total += count

    def update(self, other: Histogram) -> None:
        """Add `other`'s counts into this histogram, in place."""
        counts = self.counts
        for index, count in enumerate(other.counts):
            if count:
                counts[index] += count
        self.total += other.total

    def merge(self, other: Histogram) -> Histogram:
        """A new histogram with the counts of both."""
        result = Histogram.__new__(Histogram)
        result.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        result.total = self.total + other.total
        return result

    __add__ = merge

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.counts == other.counts

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"Histogram(total={self.total}, buckets={self.to_list()})"

    def __bool__(self) -> bool:
        return self.total > 0

    def percentile(self, q: float) -> float:
        """The q-th percentile (q in 0..100) in ms; raises ValueError on an empty histogram."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Sequence[float]) -> tuple[float, ...]:
        """Several percentiles (each q in 0..100) from one pass over the counts."""
        if self.total <= 0:
            raise ValueError("percentile of an empty histogram")
        counts = self.counts
        cumulative = list(accumulate(counts))
        results: list[float] = []
        for q in qs:
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"percentile must be within 0..100, got {q}")
            rank = q / 100.0 * self.total
            # The first bucket whose cumulative count reaches the rank, which is never empty;
            # at q = 0 every bucket reaches it, so take the first non-empty one instead.
            index = bisect_left(cumulative, rank) if rank > 0.0 else bisect_right(cumulative, 0)
            before = cumulative[index] - counts[index]
            low = _LOWERS[index]
            results.append(low + (_UPPERS[index] - low) * (rank - before) / counts[index])
        return tuple(results)

    def mean(self) -> float:
        """The mean in ms, reading each bucket at its midpoint (the overflow at 60 s)."""
        if self.total <= 0:
            raise ValueError("mean of an empty histogram")
        weighted = 0.0
        for count, midpoint in zip(self.counts, _MIDPOINTS, strict=True):
            if count:
                weighted += count * midpoint
        return weighted / self.total

    def to_list(self) -> list[list[int]]:
        """Sparse `[[bucket index, count], ...]` of the non-empty buckets, for JSON storage."""
        return [[index, count] for index, count in enumerate(self.counts) if count]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> Histogram:
        """Read `to_list()` output, or a dense list of NUM_BUCKETS counts."""
        if not data:
            return cls()
        if all(isinstance(item, Sequence) and not isinstance(item, str) for item in data):
            histogram = cls()
            for item in data:
                if len(item) != 2:
                    raise ValueError(f"a sparse bucket is [index, count], got {item!r}")
                index, count = item
                if isinstance(index, bool) or not isinstance(index, int):
                    raise ValueError(f"bucket index must be an integer, got {index!r}")
                if not 0 <= index < NUM_BUCKETS:
                    raise ValueError(f"bucket index {index} is outside 0..{NUM_BUCKETS - 1}")
                count = _count(count)
                histogram.counts[index] += count
                histogram.total += count
            return histogram
        return cls(data)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a bucket count must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"a bucket count cannot be negative, got {value}")
    return value
