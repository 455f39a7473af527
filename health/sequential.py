"""The evidence behind the health judge: intervals, anytime-valid tests and their decisions.

A pure engine (numpy and scipy's special functions; no Django). Every function takes counts as
numbers or as numpy arrays of any shape and answers element by element, so the judge
(`health.analysis`, one canary at a time) and the simulation benchmark (`bench/judge_sim.py`,
thousands of seeded runs at once) take their decisions with the same code. Plain numbers (and
a histogram as a plain list of counts) take a pure-Python path: numpy's cost per call on a
single number is many times the arithmetic, and the judge makes dozens of such calls a canary.
It is the same formulas, the same IEEE operations in the same order (numpy's own log and exp,
on the alternatives' vector), so it answers what the array path answers, bit for bit
(`tests/health/test_sequential.py` holds the two together); it returns floats and bools.

The canary is compared with stable on two kinds of window, each with its own test:

- **the phase window** (everything since ``window_start``, the canary's own traffic) holds a
  sequential test made for a look on every tick: a mixture likelihood ratio, or e-value,

      E = sum_j w_j * (theta_j / p0) ** k * ((1 - theta_j) / (1 - p0)) ** (n - k)

  of ``k`` bad requests (errors, or requests slower than the latency threshold) in ``n``,
  against the null rate ``p0``, over alternatives ``theta_j`` whose odds are `ODDS_RATIOS`
  times those of ``p0``, weighted by `WEIGHTS` (they sum to 1). For a fixed ``p0``, E is a
  nonnegative martingale, with mean 1, under any canary whose rate is at most ``p0``; by
  Ville's inequality the chance that it ever reaches ``1 / alpha``, however often it is looked
  at, is at most ``alpha``. That is the test's false-alarm rate per phase: looking every tick
  costs nothing. The alternatives span rates from twice to 64 times the null odds, so a gross
  fault is caught on a few errors and a subtle one as its evidence accumulates.
- **the fast window** (the last few seconds) holds a one-look exact binomial test,
  ``P(X >= k | n, p0) < fast_alpha``, for faults that begin after a long healthy stretch,
  whose evidence the phase's sums dilute. Each look errs with probability at most
  ``fast_alpha`` at the null's edge, so a phase of L looks errs at most L times that; the
  default, with the margins below, keeps a canary as good as stable far inside that edge
  (the simulation benchmark measures the rate).

The null rate ``p0`` is what the canary may do without being rolled back: stable's rate plus a
meaningful margin, ``(1 + relative) * s + absolute``, where ``s`` is stable's rate read with
caution: the upper 95% bound (exact, Poisson) of its reference traffic (its last
``baseline_window_seconds`` before the phase and all of the phase), or the 99% lower Wilson
bound of its rate in the phase or in the fast window when that is higher (a fault both versions
share, such as a failing dependency, raises stable's rate as much as the canary's and rolls
nothing back). Latency is judged the same way on the requests slower than a threshold ``T``:
``T`` is stable's percentile ``q`` (its upper 95% bound from the histogram, or the lower bound
of its phase or fast percentile when higher) times ``1 + relative``, and at least ``absolute``
ms above it; a canary whose percentile ``q`` is at most ``T`` has at most ``1 - q / 100`` of
its requests above ``T``, which is the null rate. So "significantly and materially worse than
stable" reads: with the error rates above, the canary's rate (or its share of slow requests) is
beyond stable's plus the margin.

Stated error rates, per phase and metric, for a canary no worse than stable plus the margin:
at most ``alpha`` from the phase test (exact for a known ``p0``; ``p0`` is re-read on each look
from stable's traffic at its cautious bound, which widens the null for such a canary), plus
``fast_alpha`` per look of the fast test. A canary as good as stable sits far inside the null;
``bench/judge_sim.py`` reports the false-rollback rate this gives over whole deployments.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from health.histogram import BOUNDS, MAX_BOUND_MS, NUM_BUCKETS

ODDS_RATIOS = np.array([1.25, 1.5, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
"""The alternatives of the phase test, as odds ratios over the null."""

WEIGHTS = np.array([0.05, 0.05, 0.1, 0.1, 0.175, 0.175, 0.175, 0.175])
"""Their weights: most on the larger faults, which a rollback must not wait for."""

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile: the intervals every sentence quotes."""

Z99_ONE_SIDED = 2.3263478740408408
"""One-sided 99% normal quantile: how sure stable's own rise must be to widen the null."""

STABLE_CONFIDENCE = 0.95
"""Confidence of the upper bound read from stable's reference traffic."""

_LOWERS = np.array((0.0, *BOUNDS))
_UPPERS = np.array((*BOUNDS, MAX_BOUND_MS))
_LOWER_BOUNDS: tuple[float, ...] = (0.0, *BOUNDS)
_UPPER_BOUNDS: tuple[float, ...] = (*BOUNDS, MAX_BOUND_MS)
_LOG_WEIGHTS = np.log(WEIGHTS)
_NUMBER = (int, float, np.integer, np.floating)


def _special() -> Any:
    # scipy is slow to import and most processes never judge anything.
    import scipy.special

    return scipy.special


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=float)


def _numbers(*values: Any) -> bool:
    """Whether every value is a single number (not an array): the pure-Python path's case."""
    return all(isinstance(value, _NUMBER) for value in values)


def _histograms(*values: Any) -> bool:
    """Whether every value is one histogram as a plain list of counts (`Histogram.counts`)."""
    for value in values:
        if type(value) is not list or not value or not isinstance(value[0], _NUMBER):
            return False
    return True


# --------------------------------------------------------------------------- intervals


def wilson(k: Any, n: Any, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of the rate k / n (fractions); (0, 1) where n is 0."""
    if _numbers(k, n):
        return _wilson_number(float(k), float(n), z)
    k, n = _array(k), _array(n)
    safe = np.maximum(n, 1.0)
    p = np.clip(k / safe, 0.0, 1.0)
    zz = z * z
    denominator = 1.0 + zz / safe
    centre = (p + zz / (2.0 * safe)) / denominator
    half = z * np.sqrt(p * (1.0 - p) / safe + zz / (4.0 * safe * safe)) / denominator
    low = np.where(n > 0, np.maximum(0.0, centre - half), 0.0)
    high = np.where(n > 0, np.minimum(1.0, centre + half), 1.0)
    # The formula's rounding can leave a hair above 0 at k = 0 (or below 1 at k = n).
    low = np.where(k <= 0, 0.0, low)
    high = np.where((k >= n) & (n > 0), 1.0, high)
    return low, high


def _wilson_number(k: float, n: float, z: float) -> tuple[float, float]:
    safe = n if n > 1.0 else 1.0
    p = min(max(k / safe, 0.0), 1.0)
    zz = z * z
    denominator = 1.0 + zz / safe
    centre = (p + zz / (2.0 * safe)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / safe + zz / (4.0 * safe * safe)) / denominator
    if n > 0:
        low, high = max(0.0, centre - half), min(1.0, centre + half)
    else:
        low, high = 0.0, 1.0
    if k <= 0:
        low = 0.0
    if k >= n and n > 0:
        high = 1.0
    return low, high


def poisson_upper(k: Any, n: Any, confidence: float = STABLE_CONFIDENCE) -> np.ndarray:
    """The exact upper confidence bound of a rate from k events in n trials (Poisson), capped
    at 1; 1 where n is 0."""
    if _numbers(k, n):
        k, n = float(k), float(n)
        if not n > 0:
            return 1.0
        return min(1.0, float(_special().gammaincinv(k + 1.0, confidence)) / max(n, 1.0))
    k, n = _array(k), _array(n)
    bound = _special().gammaincinv(k + 1.0, confidence) / np.maximum(n, 1.0)
    return np.where(n > 0, np.minimum(1.0, bound), 1.0)


def exact_lower(k: Any, n: Any, z: float) -> np.ndarray:
    """The exact (Clopper-Pearson) one-sided lower confidence bound of the rate k / n at the
    level of the normal quantile ``z`` (z = 3.9: one in 20,000); 0 where k or n is 0.

    Unlike the Wilson bound, it never reads a thin sample as sure: one error in one request
    has a lower bound of 0.005%, where Wilson's at the same z is 6.2%."""
    k, n = _array(k), _array(n)
    alpha = _special().ndtr(-z)
    bound = _special().betaincinv(np.maximum(k, 1.0), np.maximum(n - k + 1.0, 1.0), alpha)
    return np.where((k > 0) & (n > 0), bound, 0.0)


def binomial_tail(k: Any, n: Any, p: Any) -> np.ndarray:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided exact p-value of k bad in n."""
    if _numbers(k, n, p):
        k, n, p = float(k), float(n), float(p)
        if k >= 1 and n >= k:
            return float(_special().betainc(max(k, 1.0), max(n - k + 1.0, 1.0), p))
        return 1.0 if k <= 0 else 0.0
    k, n, p = _array(k), _array(n), _array(p)
    ok = (k >= 1) & (n >= k)
    tail = _special().betainc(np.maximum(k, 1.0), np.maximum(n - k + 1.0, 1.0), p)
    return np.where(ok, tail, np.where(k <= 0, 1.0, 0.0))


def log_evalue(k: Any, n: Any, p0: Any) -> np.ndarray:
    """The natural log of the mixture e-value of k bad in n against the null rate p0."""
    if _numbers(k, n, p0):
        k, n, p0 = float(k), float(n), float(p0)
        p0 = min(max(p0, 1e-12), 1.0 - 1e-9)
        odds = (p0 / (1.0 - p0)) * ODDS_RATIOS
        theta = odds / (1.0 + odds)
        terms = k * np.log(theta / p0) + (n - k) * np.log((1.0 - theta) / (1.0 - p0))
        terms = terms + _LOG_WEIGHTS
        top = terms.max()
        return float(top + np.log(np.exp(terms - top).sum()))
    k, n, p0 = _array(k), _array(n), _array(p0)
    p0 = np.clip(p0, 1e-12, 1.0 - 1e-9)
    odds = (p0 / (1.0 - p0))[..., None] * ODDS_RATIOS
    theta = odds / (1.0 + odds)
    base = p0[..., None]
    terms = k[..., None] * np.log(theta / base) + (n - k)[..., None] * np.log(
        (1.0 - theta) / (1.0 - base)
    )
    terms = terms + _LOG_WEIGHTS
    top = terms.max(axis=-1)
    return top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))


# --------------------------------------------------------------------------- latency


def _read(counts: np.ndarray, cumulative: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The latency at ``rank`` (1..n), interpolated inside its bucket as
    `Histogram.percentile` does; the overflow bucket reads as 60 s."""
    index = (cumulative >= rank[..., None]).argmax(axis=-1)
    inside = np.take_along_axis(counts, index[..., None], axis=-1)[..., 0]
    before = np.take_along_axis(cumulative, index[..., None], axis=-1)[..., 0] - inside
    low, high = _LOWERS[index], _UPPERS[index]
    return low + (high - low) * (rank - before) / np.maximum(inside, 1.0)


def _read_one(counts: list, cumulative: list, rank: float) -> float:
    """`_read` of one histogram: its counts and their running sums as lists."""
    index = bisect_left(cumulative, rank)
    if index == len(cumulative):
        index = 0  # argmax of nothing reached, as `_read` reads it
    inside = float(counts[index])
    before = float(cumulative[index]) - inside
    low, high = _LOWER_BOUNDS[index], _UPPER_BOUNDS[index]
    return low + (high - low) * (rank - before) / max(inside, 1.0)


def percentile(counts: Any, q: float) -> np.ndarray:
    """The q-th percentile (ms) of histogram counts (last axis), read as
    `Histogram.percentile` reads it; NaN where there is no sample."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=-1)
    rank = np.maximum(total * (q / 100.0), 1e-300)
    value = _read(counts, np.cumsum(counts, axis=-1), rank)
    return np.where(total > 0, value, np.nan)


def quantile_bound(counts: Any, q: float, *, upper: bool, z: float = Z95) -> np.ndarray:
    """A confidence bound (ms) of the q-th percentile from histogram counts (last axis): the
    latency at the rank ``n q/100 +- z sqrt(n q/100 (1 - q/100))`` (its order statistic),
    read as `Histogram.percentile` reads a rank. NaN where there is no sample."""
    if _histograms(counts):
        return _quantile_bound_one(counts, q, upper, z)
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=-1)
    fraction = q / 100.0
    spread = z * np.sqrt(total * fraction * (1.0 - fraction))
    rank = total * fraction + (spread if upper else -spread)
    rank = np.clip(np.ceil(rank) if upper else np.floor(rank), 1.0, np.maximum(total, 1.0))
    value = _read(counts, np.cumsum(counts, axis=-1), rank)
    return np.where(total > 0, value, np.nan)


def _quantile_bound_one(counts: list, q: float, upper: bool, z: float) -> float:
    total = float(sum(counts))
    if not total > 0:
        return math.nan
    fraction = q / 100.0
    spread = z * math.sqrt(total * fraction * (1.0 - fraction))
    if upper:
        rank = float(math.ceil(total * fraction + spread))
    else:
        rank = float(math.floor(total * fraction - spread))
    rank = min(max(rank, 1.0), max(total, 1.0))
    return _read_one(counts, list(accumulate(counts)), rank)


def quantile_intervals(
    counts: Any, qs: tuple[float, ...], z: float = Z95
) -> tuple[np.ndarray, np.ndarray]:
    """`quantile_bound` of one histogram at several percentiles at once: (lows, highs), one
    of each per q."""
    if _histograms(counts):
        return _quantile_intervals_one(counts, qs, z)
    counts = np.asarray(counts, dtype=float)
    total = float(counts.sum())
    if total <= 0:
        nan = np.full(len(qs), np.nan)
        return nan, nan
    fractions = np.asarray(qs, dtype=float) / 100.0
    spread = z * np.sqrt(total * fractions * (1.0 - fractions))
    low_rank = np.clip(np.floor(total * fractions - spread), 1.0, total)
    high_rank = np.clip(np.ceil(total * fractions + spread), 1.0, total)
    cumulative = np.cumsum(counts)
    ranks = np.concatenate([low_rank, high_rank])
    values = _read(
        np.broadcast_to(counts, (len(ranks), len(counts))),
        np.broadcast_to(cumulative, (len(ranks), len(counts))),
        ranks,
    )
    return values[: len(qs)], values[len(qs) :]


def _quantile_intervals_one(
    counts: list, qs: tuple[float, ...], z: float
) -> tuple[list[float], list[float]]:
    total = float(sum(counts))
    if total <= 0:
        return [math.nan] * len(qs), [math.nan] * len(qs)
    cumulative = list(accumulate(counts))
    lows, highs = [], []
    for q in qs:
        fraction = q / 100.0
        spread = z * math.sqrt(total * fraction * (1.0 - fraction))
        low_rank = min(max(float(math.floor(total * fraction - spread)), 1.0), total)
        high_rank = min(max(float(math.ceil(total * fraction + spread)), 1.0), total)
        lows.append(_read_one(counts, cumulative, low_rank))
        highs.append(_read_one(counts, cumulative, high_rank))
    return lows, highs


def slow_index(threshold_ms: Any) -> np.ndarray:
    """The first histogram bucket whose every latency is above ``threshold_ms``."""
    return np.minimum(np.searchsorted(_LOWERS, _array(threshold_ms), side="left"), NUM_BUCKETS)


def slower_than(counts: Any, index: Any) -> np.ndarray:
    """Samples in the buckets from ``index`` up: the requests surely slower than the bucket's
    lower bound."""
    counts = np.asarray(counts, dtype=float)
    index = np.asarray(index)
    above = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]
    padded = np.concatenate([above, np.zeros((*above.shape[:-1], 1))], axis=-1)
    return np.take_along_axis(padded, index[..., None].astype(int), axis=-1)[..., 0]


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Margin:
    """What counts as materially worse than stable, and how sure a decision must be."""

    relative: float  # 0.5 allows 50% worse than stable
    absolute: float  # error rate: a fraction; latency: ms
    alpha: float  # the phase test's false-alarm bound per phase
    fast_alpha: float  # the fast test's per look


@dataclass(frozen=True)
class Decision:
    """The outcome of a comparison, element by element.

    ``null`` is the rate the canary may have (p0); ``phase_bad``/``phase_n`` and
    ``fast_bad``/``fast_n`` the bad requests and requests behind each test; ``log_evalue``
    the phase test's statistic (its bound is ``log(1 / alpha)``) and ``fast_p`` the fast test's
    p-value; ``breach`` whether either found the canary worse. ``threshold`` is, for latency,
    the ms above which a request counts as bad (NaN for errors). Arrays, or floats and bools
    when the counts were plain numbers.
    """

    null: Any
    phase_bad: Any
    phase_n: Any
    fast_bad: Any
    fast_n: Any
    log_evalue: Any
    fast_p: Any
    phase_breach: Any
    fast_breach: Any
    threshold: Any

    @property
    def breach(self) -> Any:
        return self.phase_breach | self.fast_breach


def _decide(
    *,
    null: Any,
    phase_bad: Any,
    phase_n: Any,
    fast_bad: Any,
    fast_n: Any,
    margin: Margin,
    threshold: Any,
) -> Decision:
    # Only a canary doing worse than the null can breach: the e-value of a run of good luck
    # for it is below 1 anyway, and this keeps the rule readable.
    if _numbers(null, phase_bad, phase_n, fast_bad, fast_n, threshold):
        null, threshold = float(null), float(threshold)
        phase_bad, phase_n = float(phase_bad), float(phase_n)
        fast_bad, fast_n = float(fast_bad), float(fast_n)
        log_e = log_evalue(phase_bad, phase_n, null) if phase_n > 0 else 0.0
        fast_p = binomial_tail(fast_bad, fast_n, null)
        phase_breach = bool(log_e >= np.log(1.0 / margin.alpha)) and phase_bad > null * phase_n
        fast_breach = fast_p < margin.fast_alpha and fast_bad > null * fast_n
    else:
        phase_bad, phase_n = _array(phase_bad), _array(phase_n)
        fast_bad, fast_n = _array(fast_bad), _array(fast_n)
        log_e = np.where(phase_n > 0, log_evalue(phase_bad, phase_n, null), 0.0)
        fast_p = binomial_tail(fast_bad, fast_n, null)
        phase_breach = (log_e >= np.log(1.0 / margin.alpha)) & (phase_bad > null * phase_n)
        fast_breach = (fast_p < margin.fast_alpha) & (fast_bad > null * fast_n)
        threshold = _array(threshold)
    return Decision(
        null=null,
        phase_bad=phase_bad,
        phase_n=phase_n,
        fast_bad=fast_bad,
        fast_n=fast_n,
        log_evalue=log_e,
        fast_p=fast_p,
        phase_breach=phase_breach,
        fast_breach=fast_breach,
        threshold=threshold,
    )


def error_null(
    *,
    reference: tuple[Any, Any],
    phase: tuple[Any, Any],
    fast: tuple[Any, Any],
    margin: Margin,
) -> np.ndarray:
    """The error rate the canary may have (a fraction): stable's cautious rate plus the margin.

    Each argument is stable's (errors, requests): ``reference`` its traffic since
    ``baseline_window_seconds`` before the phase, ``phase`` and ``fast`` its traffic in those
    windows, which widen the null when stable itself is surely worse there.
    """
    if _numbers(*reference, *phase, *fast):
        rate = poisson_upper(*reference)
        for errors, requests in (phase, fast):
            rate = max(rate, _wilson_number(float(errors), float(requests), Z99_ONE_SIDED)[0])
        return min(1.0 - 1e-6, (1.0 + margin.relative) * rate + margin.absolute)
    stable = poisson_upper(*reference)
    for errors, requests in (phase, fast):
        low, _high = wilson(errors, requests, Z99_ONE_SIDED)
        stable = np.maximum(stable, low)
    return np.minimum(1.0 - 1e-6, (1.0 + margin.relative) * stable + margin.absolute)


def judge_errors(
    *,
    canary_phase: tuple[Any, Any],
    canary_fast: tuple[Any, Any],
    stable_reference: tuple[Any, Any],
    stable_phase: tuple[Any, Any],
    stable_fast: tuple[Any, Any],
    margin: Margin,
) -> Decision:
    """Is the canary's error rate significantly and materially above stable's? Each argument
    is an (errors, requests) pair of counts or arrays."""
    null = error_null(
        reference=stable_reference, phase=stable_phase, fast=stable_fast, margin=margin
    )
    return _decide(
        null=null,
        phase_bad=canary_phase[0],
        phase_n=canary_phase[1],
        fast_bad=canary_fast[0],
        fast_n=canary_fast[1],
        margin=margin,
        threshold=math.nan if type(null) is float else np.full(np.shape(null), np.nan),
    )


def latency_threshold(
    *,
    stable_reference: Any,
    stable_phase: Any,
    stable_fast: Any,
    q: float,
    margin: Margin,
) -> np.ndarray:
    """The ms above which a canary request counts as slow: stable's cautious percentile q
    (histogram counts on the last axis) times ``1 + relative``, at least ``absolute`` above
    it; NaN without a stable sample."""
    if _histograms(stable_reference, stable_phase, stable_fast):
        bound = _quantile_bound_one(stable_reference, q, True, Z95)
        for counts in (stable_phase, stable_fast):
            low = _quantile_bound_one(counts, q, False, Z95)
            if not math.isnan(low):
                bound = low if math.isnan(bound) else max(bound, low)
        return max(bound * (1.0 + margin.relative), bound + margin.absolute)
    reference = quantile_bound(stable_reference, q, upper=True)
    for counts in (stable_phase, stable_fast):
        low = quantile_bound(counts, q, upper=False)
        reference = np.where(np.isnan(low), reference, np.fmax(reference, low))
    return np.maximum(reference * (1.0 + margin.relative), reference + margin.absolute)


def judge_latency(
    *,
    canary_phase: Any,
    canary_fast: Any,
    stable_reference: Any,
    stable_phase: Any,
    stable_fast: Any,
    q: float,
    margin: Margin,
) -> Decision:
    """Is the canary's percentile q significantly and materially above stable's? Arguments
    are histogram counts (last axis `NUM_BUCKETS`)."""
    threshold = latency_threshold(
        stable_reference=stable_reference,
        stable_phase=stable_phase,
        stable_fast=stable_fast,
        q=q,
        margin=margin,
    )
    if _histograms(canary_phase, canary_fast, stable_reference, stable_phase, stable_fast):
        unknown = math.isnan(threshold)
        index = min(bisect_left(_LOWER_BOUNDS, math.inf if unknown else threshold), NUM_BUCKETS)
        return _decide(
            null=1.0 - q / 100.0,
            phase_bad=0.0 if unknown else float(sum(reversed(canary_phase[index:]))),
            phase_n=float(sum(canary_phase)),
            fast_bad=0.0 if unknown else float(sum(reversed(canary_fast[index:]))),
            fast_n=float(sum(canary_fast)),
            margin=margin,
            threshold=threshold,
        )
    index = slow_index(np.where(np.isnan(threshold), np.inf, threshold))
    phase = np.asarray(canary_phase, dtype=float)
    fast = np.asarray(canary_fast, dtype=float)
    null = np.full(np.shape(threshold), 1.0 - q / 100.0)
    return _decide(
        null=null,
        phase_bad=np.where(np.isnan(threshold), 0.0, slower_than(phase, index)),
        phase_n=phase.sum(axis=-1),
        fast_bad=np.where(np.isnan(threshold), 0.0, slower_than(fast, index)),
        fast_n=fast.sum(axis=-1),
        margin=margin,
        threshold=threshold,
    )
