"""The judge on synthetic streams, tick by tick on a simulated clock.

Each stream is Poisson arrivals split between the versions at the phase's share, Bernoulli
errors and log-normal latencies in `health.histogram`'s buckets, summed into the store's
2-second buckets. The production path judges it as the tick does (`bench.judge_sim.replay`:
the windows `health.windows` reads, `health.analysis.evaluate` under the default policy,
`deployments.observing`'s log and evidence, `deployments.lifecycle.phase_judgement`), and
the vectorised judge of `bench/judge_sim.py`, which runs thousands of seeds at once, is held
to it on the same streams. Times are simulated seconds; nothing waits on a wall clock.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bench import judge_sim as sim
from deployments.config import Criterion, Metric, Operator, PhaseConfig, RollbackThresholds
from health import sequential
from health.histogram import NUM_BUCKETS, Histogram

ONE_LOOK = settings(max_examples=1, deadline=None, phases=(Phase.generate,))
"""A test over hundreds of seeded runs at once: hypothesis picks the base seed."""


@pytest.fixture(scope="module")
def setup() -> sim.Setup:
    return sim.Setup.from_settings()


def _fault(setup: sim.Setup, seed: int, runs: int, **change: Any) -> tuple[sim.Scenario, sim.Batch]:
    """``runs`` seeds of a canary at 10% of 50 req/s that turns bad after a healthy minute."""
    scenario = sim.Scenario(
        rate=50, phases=sim.held_phase(10), onset=(60, 69), horizon=180, **change
    )
    return scenario, sim.simulate(setup, scenario, runs, seed, keep=True)


def _delays(first_bucket: np.ndarray, when: np.ndarray) -> np.ndarray:
    """Seconds from the fault's first bucket to ``when`` (inf: never, or before the fault)."""
    delay = when - first_bucket
    return np.where(np.isnan(delay) | (delay < 0), np.inf, delay)


def _production_delays(
    setup: sim.Setup, scenario: sim.Scenario, batch: sim.Batch, runs: int
) -> np.ndarray:
    """The first ``runs`` runs' delays, judged by the production path itself."""
    assert batch.streams is not None
    moments = np.full(runs, np.nan)
    for row in range(runs):
        run = batch.streams.run(row)
        for tick in sim.replay(setup, scenario.phases, run, until=scenario.horizon):
            if tick.outcome == sim.BREACH:
                moments[row] = tick.now
    return _delays(batch.first_bucket[:runs], moments)


# --------------------------------------------------------------------------- the phase's own data


def _stream(setup: sim.Setup, seed: int, canary: np.ndarray, horizon: int) -> sim.RunBuckets:
    """Stable at 45 req/s throughout (0.1% errors), and the canary's requests per bucket as
    given (healthy: stable's error rate and latency)."""
    rng = np.random.default_rng(seed)
    buckets = (sim.WARMUP + horizon) // setup.bucket + 2
    probabilities = sim.latency_probabilities(*sim.STABLE_LATENCY)
    requests = np.zeros((2, buckets), dtype=np.int64)
    requests[0, : len(canary)] = canary[:buckets]
    requests[1] = rng.poisson(45 * setup.bucket, size=buckets)
    errors = rng.binomial(requests, sim.STABLE_ERROR)
    latency = np.zeros((2, buckets, NUM_BUCKETS), dtype=np.int64)
    for version in (0, 1):
        latency[version] = rng.multinomial(requests[version], probabilities)
    return sim.RunBuckets(requests=requests, errors=errors, latency=latency, bucket=setup.bucket)


def _phase(duration_s: int, hold_s: int | None, thresholds: bool) -> PhaseConfig:
    criteria = ()
    if hold_s is not None:
        criteria = (
            Criterion(
                metric=Metric.AVAILABILITY,
                operator=Operator.GREATER_THAN,
                threshold=99.0,
                duration_ms=hold_s * 1000,
            ),
        )
    return PhaseConfig(
        id="phase-1",
        name="10% traffic",
        traffic_percentage=10.0,
        duration_ms=duration_s * 1000,
        success_criteria=criteria,
        rollback_thresholds=(
            RollbackThresholds(error_rate=5.0, latency_p95=1000.0, availability=95.0)
            if thresholds
            else RollbackThresholds()
        ),
    )


def _index(setup: sim.Setup, moment: int) -> int:
    return (moment + sim.WARMUP) // setup.bucket


@settings(max_examples=24, deadline=None, phases=(Phase.explicit, Phase.generate))
@given(
    kind=st.sampled_from(["before the phase only", "too few in the phase", "stopped mid-phase"]),
    duration_s=st.sampled_from([0, 30, 60, 300]),
    hold_s=st.sampled_from([None, 0, 30, 180]),
    thresholds=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_a_phase__without_enough_canary_traffic_of_its_own__never_advances(
    setup: sim.Setup,
    kind: str,
    duration_s: int,
    hold_s: int | None,
    thresholds: bool,
    seed: int,
    data: st.DataObject,
) -> None:
    rng = np.random.default_rng(seed)
    horizon = max(duration_s, hold_s or 0) + 120
    canary = np.zeros(_index(setup, horizon) + 2, dtype=np.int64)
    per_bucket = 5 * setup.bucket  # 5 canary requests a second: plenty, while it flows
    if kind == "before the phase only":
        # A previous phase's traffic, right up to this phase's start.
        canary[: _index(setup, 0)] = per_bucket
    elif kind == "too few in the phase":
        few = data.draw(st.integers(0, setup.min_requests - 1), label="canary requests")
        spots = rng.integers(_index(setup, 0), _index(setup, horizon), size=few)
        np.add.at(canary, spots, 1)
    else:
        duration_s = max(duration_s, 60)
        horizon = max(duration_s, hold_s or 0) + 120
        canary = np.zeros(_index(setup, horizon) + 2, dtype=np.int64)
        stop = data.draw(st.integers(30, duration_s - 10), label="stopped at")
        canary[_index(setup, 0) : _index(setup, stop)] = per_bucket
    run = _stream(setup, seed, canary, horizon)
    phase = _phase(duration_s, hold_s, thresholds)

    ticks = list(sim.replay(setup, (phase,), run, until=horizon))

    assert len(ticks) == horizon // setup.tick + 1
    for tick in ticks:
        assert tick.outcome != sim.ADVANCE, tick.judgement.reason
        if tick.now >= duration_s:
            # Its minimum time is over: only the missing traffic holds it.
            assert not tick.judgement.own_traffic.enough, tick.judgement.reason


@pytest.mark.parametrize("hold_s", [None, 30])
def test_a_phase__with_healthy_canary_traffic_of_its_own__advances_after_its_duration(
    setup: sim.Setup, hold_s: int | None
) -> None:
    horizon = 200
    canary = np.zeros(_index(setup, horizon) + 2, dtype=np.int64)
    canary[_index(setup, 0) :] = 5 * setup.bucket
    run = _stream(setup, 7, canary, horizon)

    ticks = list(sim.replay(setup, (_phase(60, hold_s, True),), run, until=horizon))

    assert ticks[-1].outcome == sim.ADVANCE, ticks[-1].judgement.reason
    assert 60 <= ticks[-1].now <= 60 + 4 * setup.tick
    assert ticks[-1].judgement.own_traffic.enough


# --------------------------------------------------------------------------- a 5% fault


@ONE_LOOK
@given(seed=st.integers(0, 2**32 - 1))
def test_a_5_percent_fault__at_10_percent_of_50_rps__is_seen_within_10_s_in_under_95_percent(
    setup: sim.Setup, seed: int
) -> None:
    """Why the issue's "within 10 s of its first bucket in 95% of seeds" is out of reach of
    any rule at the defaults' data delay: the canary gets 5 requests a second, 1 in 20 of
    them fails, and a bucket is read 2 s after it closes by a tick that comes every 5 s. In
    fewer than 95% of the seeds does any bucket judged within 10 s hold even one of the
    fault's errors."""
    _scenario, batch = _fault(setup, seed, 200, canary_error=0.05)

    one_error = _delays(batch.first_bucket, batch.visible[0])

    assert np.mean(one_error <= 10) < 0.95


@ONE_LOOK
@given(seed=st.integers(0, 2**32 - 1))
def test_a_5_percent_fault__at_10_percent_of_50_rps__is_a_breach_within_a_minute_in_95_percent(
    setup: sim.Setup, seed: int
) -> None:
    scenario, batch = _fault(setup, seed, 200, canary_error=0.05)

    vectorised = _delays(batch.first_bucket, batch.rolled_back)
    production = _production_delays(setup, scenario, batch, 40)

    assert np.mean(vectorised <= 60) >= 0.95
    assert np.array_equal(production, vectorised[:40])
    # Rolled back on evidence of the fault, not before it began.
    assert np.all(np.isnan(batch.rolled_back) | (batch.rolled_back >= batch.first_bucket))


@ONE_LOOK
@given(seed=st.integers(0, 2**32 - 1))
def test_a_150x_latency_regression__is_judged_a_breach_within_10_s_in_95_percent_of_seeds(
    setup: sim.Setup, seed: int
) -> None:
    """2 ms to 300 ms at 10% of 50 req/s: every canary request is slow, so the fast window's
    first bucket of the fault is enough."""
    scenario, batch = _fault(setup, seed, 200, stable_latency=(2.0, 0.3), slowdown=150.0)

    vectorised = _delays(batch.first_bucket, batch.rolled_back)
    production = _production_delays(setup, scenario, batch, 40)

    assert np.mean(vectorised <= 10) >= 0.95
    assert np.array_equal(production, vectorised[:40])


# --------------------------------------------------------------------------- healthy canaries


@ONE_LOOK
@given(seed=st.integers(0, 2**32 - 1))
def test_a_healthy_canary__is_rolled_back_at_most_once_in_1000_runs_of_three_phases(
    setup: sim.Setup, seed: int
) -> None:
    """At stable's own error rate and latency, 50 req/s, the wizard's three phases (10%,
    50%, 100% of 5 minutes each) until the last one advances."""
    scenario = sim.Scenario(rate=50, phases=sim.wizard_phases(), horizon=1800)
    rolled_back = promoted = 0
    for offset in range(0, 1000, sim.CHUNK):
        batch = sim.simulate(setup, scenario, sim.CHUNK, seed + offset, keep=offset == 0)
        rolled_back += int(np.sum(~np.isnan(batch.rolled_back)))
        promoted += int(np.sum(~np.isnan(batch.succeeded)))
        if offset == 0:
            # A sample of whole deployments through the production path itself.
            differences, compared = sim.agree(setup, scenario, batch, range(4))
            assert differences == []
            assert compared >= 4 * 3 * 300 // setup.tick

    assert rolled_back <= 1
    assert promoted == 1000 - rolled_back


# --------------------------------------------------------------------------- the vectorised judge


@settings(max_examples=10, deadline=None)
@given(
    rate=st.sampled_from([10, 50, 500]),
    share=st.sampled_from([1, 10, 50]),
    fault=st.sampled_from(
        [{}, {"canary_error": 0.02}, {"canary_error": 0.2}, {"slowdown": 2.0}, {"slowdown": 10.0}]
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_vectorised_judge__takes_the_production_paths_decision_on_every_tick(
    setup: sim.Setup, rate: int, share: int, fault: dict[str, float], seed: int
) -> None:
    scenario = sim.Scenario(
        rate=rate, phases=sim.held_phase(share), onset=(20, 29), horizon=150, **fault
    )
    batch = sim.simulate(setup, scenario, 3, seed, keep=True)

    differences, compared = sim.agree(setup, scenario, batch, range(3))

    assert differences == []
    assert compared >= 3 * math.ceil(20 / setup.tick)


def test_the_vectorised_judge__follows_the_production_path_through_three_phases(
    setup: sim.Setup,
) -> None:
    """Advances included: a canary whose phases each advance, on the same streams."""
    scenario = sim.Scenario(rate=50, phases=sim.wizard_phases(duration_s=60), horizon=900)
    batch = sim.simulate(setup, scenario, 3, 11, keep=True)

    differences, compared = sim.agree(setup, scenario, batch, range(3))

    assert differences == []
    assert np.all(~np.isnan(batch.succeeded))
    assert compared == int(np.sum(batch.succeeded // setup.tick + 1))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(
        st.tuples(st.integers(0, NUM_BUCKETS - 1), st.integers(1, 50)), min_size=1, max_size=12
    ),
    q=st.sampled_from([1.0, 50.0, 95.0, 99.0, 100.0]),
)
def test_percentile__reads_histogram_counts_as_histogram_percentile_does(
    counts: list[tuple[int, int]], q: float
) -> None:
    histogram = Histogram.from_list([list(pair) for pair in counts])

    value = float(sequential.percentile(histogram.counts, q))

    assert value == histogram.percentile(q)
    assert math.isnan(float(sequential.percentile([0] * NUM_BUCKETS, q)))
