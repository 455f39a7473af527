"""The sequential engine's two paths: plain numbers (the judge, one canary at a time) and numpy
arrays (the simulation benchmark, thousands of runs at once) give the same answers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from health import sequential
from health.histogram import NUM_BUCKETS

MARGINS = st.builds(
    sequential.Margin,
    relative=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    absolute=st.sampled_from([0.0, 0.0005, 0.01, 5.0]),
    alpha=st.sampled_from([0.001, 0.01, 0.05]),
    fast_alpha=st.sampled_from([1e-6, 0.0001, 0.01]),
)


@st.composite
def samples(draw: Any, most: int = 200_000) -> tuple[int, int]:
    """(bad, total) counts, the edges (none, all, nothing at all) among them."""
    total = draw(st.one_of(st.just(0), st.integers(1, 20), st.integers(0, most)))
    bad = draw(st.one_of(st.just(0), st.just(total), st.integers(0, total)))
    return bad, total


@st.composite
def histograms(draw: Any) -> list[int]:
    """Latency counts as `Histogram.counts` holds them: empty, a spike, or spread over buckets."""
    counts = [0] * NUM_BUCKETS
    for _ in range(draw(st.integers(0, 6))):
        index = draw(st.integers(0, NUM_BUCKETS - 1))
        counts[index] += draw(st.integers(1, 5_000))
    return counts


def same(scalar: Any, array: Any) -> bool:
    """Equal to ~1e-12 relative, NaN equal to NaN, a bool to a bool."""
    expected = np.asarray(array)
    if expected.dtype == bool:
        return isinstance(scalar, bool) and scalar == bool(expected)
    assert isinstance(scalar, float), type(scalar)
    value = float(expected)
    if math.isnan(value):
        return math.isnan(scalar)
    return math.isclose(scalar, value, rel_tol=1e-12, abs_tol=1e-300)


def as_arrays(*values: Any) -> list[np.ndarray]:
    return [np.asarray(value) for value in values]


def same_decision(scalar: sequential.Decision, array: sequential.Decision) -> None:
    for name in sequential.Decision.__dataclass_fields__:
        assert same(getattr(scalar, name), getattr(array, name)), name
    assert same(scalar.breach, array.breach)


@settings(max_examples=300, deadline=None)
@given(
    sample=samples(),
    z=st.sampled_from([sequential.Z95, sequential.Z99_ONE_SIDED, 3.9]),
)
def test_wilson__numbers_and_arrays__agree(sample: tuple[int, int], z: float) -> None:
    scalar = sequential.wilson(*sample, z)
    array = sequential.wilson(*as_arrays(*sample), z)
    assert all(same(s, a) for s, a in zip(scalar, array, strict=True))
    assert 0.0 <= scalar[0] <= scalar[1] <= 1.0


@settings(max_examples=300, deadline=None)
@given(sample=samples(), p=st.floats(0.0, 1.0))
def test_tests_of_a_rate__numbers_and_arrays__agree(sample: tuple[int, int], p: float) -> None:
    bad, total = sample
    assert same(sequential.poisson_upper(bad, total), sequential.poisson_upper(*as_arrays(*sample)))
    assert same(
        sequential.binomial_tail(bad, total, p), sequential.binomial_tail(*as_arrays(bad, total, p))
    )
    assert same(
        sequential.log_evalue(bad, total, p), sequential.log_evalue(*as_arrays(bad, total, p))
    )


@settings(max_examples=300, deadline=None)
@given(
    canary_phase=samples(),
    canary_fast=samples(5_000),
    stable_reference=samples(),
    stable_phase=samples(),
    stable_fast=samples(5_000),
    margin=MARGINS,
)
def test_judge_errors__numbers_and_arrays__decide_alike(
    canary_phase: tuple[int, int],
    canary_fast: tuple[int, int],
    stable_reference: tuple[int, int],
    stable_phase: tuple[int, int],
    stable_fast: tuple[int, int],
    margin: sequential.Margin,
) -> None:
    samples_ = {
        "canary_phase": canary_phase,
        "canary_fast": canary_fast,
        "stable_reference": stable_reference,
        "stable_phase": stable_phase,
        "stable_fast": stable_fast,
    }
    scalar = sequential.judge_errors(**samples_, margin=margin)
    array = sequential.judge_errors(
        **{name: tuple(as_arrays(*pair)) for name, pair in samples_.items()}, margin=margin
    )
    same_decision(scalar, array)


@settings(max_examples=300, deadline=None)
@given(
    canary_phase=histograms(),
    canary_fast=histograms(),
    stable_reference=histograms(),
    stable_phase=histograms(),
    stable_fast=histograms(),
    q=st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9]),
    margin=MARGINS,
)
def test_judge_latency__histograms_as_lists_and_as_arrays__decide_alike(
    canary_phase: list[int],
    canary_fast: list[int],
    stable_reference: list[int],
    stable_phase: list[int],
    stable_fast: list[int],
    q: float,
    margin: sequential.Margin,
) -> None:
    counts = {
        "canary_phase": canary_phase,
        "canary_fast": canary_fast,
        "stable_reference": stable_reference,
        "stable_phase": stable_phase,
        "stable_fast": stable_fast,
    }
    scalar = sequential.judge_latency(**counts, q=q, margin=margin)
    array = sequential.judge_latency(
        **{name: np.asarray(value) for name, value in counts.items()}, q=q, margin=margin
    )
    same_decision(scalar, array)
    assert same(
        sequential.latency_threshold(
            stable_reference=stable_reference,
            stable_phase=stable_phase,
            stable_fast=stable_fast,
            q=q,
            margin=margin,
        ),
        array.threshold,
    )


@settings(max_examples=300, deadline=None)
@given(
    counts=histograms(),
    qs=st.lists(st.sampled_from([0.5, 50.0, 95.0, 99.0, 99.9]), min_size=1, max_size=3),
    upper=st.booleans(),
)
def test_quantile_bounds__a_list_and_an_array__agree(
    counts: list[int], qs: list[float], upper: bool
) -> None:
    lows, highs = sequential.quantile_intervals(counts, tuple(qs))
    array_lows, array_highs = sequential.quantile_intervals(np.asarray(counts), tuple(qs))
    assert all(same(s, a) for s, a in zip(lows, array_lows, strict=True))
    assert all(same(s, a) for s, a in zip(highs, array_highs, strict=True))
    for q in qs:
        assert same(
            sequential.quantile_bound(counts, q, upper=upper),
            sequential.quantile_bound(np.asarray(counts), q, upper=upper),
        )


def test_judge_errors__of_numbers__answers_in_floats_and_bools() -> None:
    decision = sequential.judge_errors(
        canary_phase=(40, 1_000),
        canary_fast=(10, 100),
        stable_reference=(1, 5_000),
        stable_phase=(1, 4_000),
        stable_fast=(0, 400),
        margin=sequential.Margin(relative=0.5, absolute=0.0005, alpha=0.01, fast_alpha=0.0001),
    )
    assert isinstance(decision.log_evalue, float) and isinstance(decision.fast_p, float)
    assert decision.phase_breach is True and decision.fast_breach is True
    assert decision.breach is True
    assert math.isnan(decision.threshold)
