"""Tests of the shared latency histogram: bucket layout, percentiles, merging and storage."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from health.histogram import (
    BOUNDS,
    MAX_BOUND_MS,
    MIN_BOUND_MS,
    NUM_BUCKETS,
    OVERFLOW_INDEX,
    Histogram,
    bucket_bounds,
    bucket_index,
)

# --------------------------------------------------------------------------- strategies

sparse_counts = st.dictionaries(
    st.integers(min_value=0, max_value=NUM_BUCKETS - 1),
    st.integers(min_value=1, max_value=10**6),
    max_size=25,
)
histograms = sparse_counts.map(lambda counts: Histogram.from_list(sorted(counts.items())))
non_empty_histograms = sparse_counts.filter(bool).map(
    lambda counts: Histogram.from_list(sorted(counts.items()))
)
latencies = st.floats(min_value=0.0, max_value=200_000.0, allow_nan=False)
quantiles = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


def observed_range(histogram: Histogram) -> tuple[float, float]:
    """Lower bound of the first non-empty bucket, upper bound of the last one."""
    used = [index for index, count in enumerate(histogram.counts) if count]
    return bucket_bounds(used[0])[0], bucket_bounds(used[-1])[1]


def close_enough(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# --------------------------------------------------------------------------- layout


def test_bounds__span_one_millisecond_to_sixty_seconds_in_ten_percent_steps() -> None:
    assert BOUNDS[0] == MIN_BOUND_MS == 1.0
    assert BOUNDS[-1] == MAX_BOUND_MS == 60_000.0
    assert len(BOUNDS) == 117
    assert NUM_BUCKETS == 118
    assert BOUNDS[:5] == (1.0, 1.1, 1.21, 1.331, 1.464)
    for lower, upper in pairwise(BOUNDS):
        assert lower < upper <= lower * 1.1 + 0.001


@pytest.mark.parametrize(
    ("latency_ms", "index"),
    [
        (-5.0, 0),
        (0.0, 0),
        (0.5, 0),
        (1.0, 0),
        (1.05, 1),
        (1.1, 1),
        (1.2, 2),
        (60_000.0, OVERFLOW_INDEX - 1),
        (60_000.1, OVERFLOW_INDEX),
        (3_600_000.0, OVERFLOW_INDEX),
    ],
)
def test_bucket_index__places_a_latency_in_the_bucket_whose_upper_bound_is_inclusive(
    latency_ms: float, index: int
) -> None:
    assert bucket_index(latency_ms) == index


@given(latencies)
def test_bucket_index__returns_the_bucket_whose_bounds_hold_the_latency(latency: float) -> None:
    lower, upper = bucket_bounds(bucket_index(latency))
    assert lower < latency <= upper or (lower == 0.0 and latency == 0.0)


def test_bucket_bounds__when_index_is_outside_the_layout__raises() -> None:
    with pytest.raises(IndexError):
        bucket_bounds(NUM_BUCKETS)


# --------------------------------------------------------------------------- percentiles and mean


def test_percentile__interpolates_linearly_inside_a_bucket() -> None:
    histogram = Histogram()
    histogram.record(105.0, count=10)
    lower, upper = bucket_bounds(bucket_index(105.0))

    assert histogram.percentile(0) == lower
    assert histogram.percentile(50) == pytest.approx((lower + upper) / 2)
    assert histogram.percentile(100) == upper


def test_percentile__of_a_spread_sample__is_within_ten_percent_of_the_exact_value() -> None:
    values = [float(value) for value in range(1, 10_001)]
    histogram = Histogram.from_values(values)

    for q in (50, 90, 95, 99):
        exact = values[int(q / 100 * len(values)) - 1]
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.1)


def test_percentile__in_the_overflow_bucket__reads_sixty_seconds() -> None:
    histogram = Histogram.from_values([10.0, 90_000.0, 120_000.0])

    assert histogram.percentile(99) == MAX_BOUND_MS


def test_percentiles__answer_several_quantiles_in_any_order() -> None:
    histogram = Histogram.from_values(float(v) for v in range(1, 1000))

    p99, p50 = histogram.percentiles((99, 50))

    assert (p99, p50) == (histogram.percentile(99), histogram.percentile(50))


def test_percentile__of_an_empty_histogram__raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        Histogram().percentile(50)


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile__outside_zero_to_one_hundred__raises(q: float) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        Histogram.from_values([5.0]).percentile(q)


def test_mean__reads_each_bucket_at_its_midpoint() -> None:
    histogram = Histogram.from_values([105.0] * 3 + [1005.0])
    low_a, high_a = bucket_bounds(bucket_index(105.0))
    low_b, high_b = bucket_bounds(bucket_index(1005.0))

    assert histogram.mean() == pytest.approx((3 * (low_a + high_a) / 2 + (low_b + high_b) / 2) / 4)


def test_mean__of_an_empty_histogram__raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        Histogram().mean()


# --------------------------------------------------------------------------- merging


def test_merge__adds_counts_and_leaves_both_inputs_untouched() -> None:
    a = Histogram.from_values([1.0, 10.0, 10.0])
    b = Histogram.from_values([10.0, 500.0])

    merged = a.merge(b)

    assert merged.total == 5
    assert merged.counts[bucket_index(10.0)] == 3
    assert (a.total, b.total) == (3, 2)
    assert merged == a + b == Histogram.merged([a, b])


def test_update__adds_the_other_histogram_in_place() -> None:
    a = Histogram.from_values([1.0, 10.0])
    a.update(Histogram.from_values([10.0]))

    assert a.total == 3
    assert a.counts[bucket_index(10.0)] == 2


@given(histograms, histograms)
def test_merge__is_commutative(a: Histogram, b: Histogram) -> None:
    assert a.merge(b) == b.merge(a)


@given(histograms, histograms, histograms)
def test_merge__is_associative(a: Histogram, b: Histogram, c: Histogram) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(histograms, histograms)
def test_merge__adds_the_totals(a: Histogram, b: Histogram) -> None:
    merged = a.merge(b)

    assert merged.total == a.total + b.total == sum(merged.counts)


@given(st.lists(latencies, max_size=50), st.lists(latencies, max_size=50))
def test_merge__equals_the_histogram_of_the_pooled_values(a: list[float], b: list[float]) -> None:
    assert Histogram.from_values(a).merge(Histogram.from_values(b)) == Histogram.from_values(a + b)


# --------------------------------------------------------------------------- percentile properties


@given(non_empty_histograms, quantiles, quantiles)
def test_percentile__is_monotonic_in_q(histogram: Histogram, q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))

    assert histogram.percentile(low) <= histogram.percentile(high)


@given(non_empty_histograms, quantiles)
def test_percentile__stays_within_the_bounds_of_the_observed_buckets(
    histogram: Histogram, q: float
) -> None:
    lower, upper = observed_range(histogram)

    assert lower <= histogram.percentile(q) <= upper


@given(st.lists(latencies, min_size=1, max_size=200), quantiles)
def test_percentile__of_recorded_values__stays_within_their_buckets(
    values: list[float], q: float
) -> None:
    histogram = Histogram.from_values(values)
    lowest = bucket_bounds(bucket_index(min(values)))[0]
    highest = bucket_bounds(bucket_index(max(values)))[1]

    assert lowest <= histogram.percentile(q) <= highest


@given(non_empty_histograms, non_empty_histograms, quantiles)
def test_percentile__of_a_merge__lies_between_the_inputs_percentiles(
    a: Histogram, b: Histogram, q: float
) -> None:
    merged = a.merge(b).percentile(q)
    low, high = sorted((a.percentile(q), b.percentile(q)))

    assert low <= merged or close_enough(low, merged)
    assert merged <= high or close_enough(merged, high)


# --------------------------------------------------------------------------- storage


@given(histograms)
def test_to_list__round_trips_through_json(histogram: Histogram) -> None:
    stored = json.loads(json.dumps(histogram.to_list()))

    assert Histogram.from_list(stored) == histogram
    assert Histogram.from_list(stored).total == histogram.total


def test_to_list__is_sparse() -> None:
    histogram = Histogram.from_values([0.5, 10.0, 10.0, 90_000.0])

    assert histogram.to_list() == [[0, 1], [bucket_index(10.0), 2], [OVERFLOW_INDEX, 1]]


def test_from_list__reads_a_dense_list_of_counts() -> None:
    counts = [0] * NUM_BUCKETS
    counts[3] = 7

    histogram = Histogram.from_list(counts)

    assert histogram.total == 7
    assert histogram.to_list() == [[3, 7]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([[NUM_BUCKETS, 1]], "outside"),
        ([[0, -1]], "negative"),
        ([[0, 1.5]], "integer"),
        ([[0, 1, 2]], "index, count"),
        ([1, 2, 3], "buckets"),
    ],
)
def test_from_list__when_data_is_malformed__raises(data: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram.from_list(data)
