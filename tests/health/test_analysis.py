"""Tests of the health analysis engine on data sets whose answers are known."""

from __future__ import annotations

import json
import math
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from health.analysis import (
    Check,
    InvalidPolicy,
    NoDataRule,
    Operator,
    Policy,
    Verdict,
    WindowStats,
    breaches,
    build_policy,
    evaluate,
    mann_kendall,
    rank_test,
    sample_ratio_test,
)
from health.histogram import Histogram, bucket_bounds

# --------------------------------------------------------------------------- data sets


def lognormal_latencies(count: int, median_ms: float, sigma: float = 0.5) -> list[float]:
    """`count` evenly spread quantiles of a log-normal: a deterministic, realistic sample."""
    normal = NormalDist()
    return [median_ms * math.exp(sigma * normal.inv_cdf((i + 0.5) / count)) for i in range(count)]


def window(
    requests: int = 10_000,
    errors: int = 10,
    *,
    median_ms: float = 80.0,
    latency: Histogram | None = None,
    seconds: float | None = 60.0,
    custom: dict[str, tuple[float, float, float, float]] | None = None,
) -> WindowStats:
    if latency is None:
        latency = Histogram.from_values(lognormal_latencies(requests, median_ms))
    return WindowStats(
        requests=requests, errors=errors, latency=latency, seconds=seconds, custom=custom or {}
    )


def policy(**overrides: Any) -> Policy:
    """A policy with only what a test looks at switched on, unless it says otherwise."""
    data: dict[str, Any] = {
        "comparison": {"enabled": False},
        "trend": {"enabled": False},
        "sample_ratio": {"enabled": False},
    }
    data.update(overrides)
    return build_policy(data)


def result_of(evaluation: Any, check: Check, metric: str | None = None) -> Any:
    matches = [
        result
        for result in evaluation.results
        if result.check == check and (metric is None or result.metric == metric)
    ]
    assert len(matches) == 1, evaluation.results
    return matches[0]


def as_json(data: Any) -> Any:
    return json.loads(json.dumps(data, allow_nan=False))


ERROR_RATE_ABOVE = {"metric": "error_rate", "operator": "gt", "warning": 1.0, "critical": 5.0}


# --------------------------------------------------------------------------- window stats


def test_window_stats__derives_availability_error_rate_percentiles_and_throughput() -> None:
    stats_ = WindowStats(
        requests=1_000,
        errors=25,
        latency=Histogram.from_values(float(v) for v in range(1, 1001)),
        seconds=50.0,
    )

    assert stats_.availability == pytest.approx(97.5)
    assert stats_.error_rate == pytest.approx(2.5)
    assert stats_.throughput == pytest.approx(20.0)
    assert stats_.p50 == pytest.approx(500, rel=0.1)
    assert stats_.p95 == pytest.approx(950, rel=0.1)
    assert stats_.p99 == pytest.approx(990, rel=0.1)


def test_window_stats__without_requests__has_no_derived_values() -> None:
    stats_ = WindowStats(requests=0)

    assert stats_.availability is None
    assert stats_.error_rate is None
    assert stats_.p95 is None
    assert stats_.throughput is None
    assert stats_.value("custom:queue_depth") is None


def test_window_stats__custom_metric_value__is_its_mean() -> None:
    stats_ = WindowStats(requests=10, custom={"queue_depth": (30.0, 4, 2.0, 12.0)})

    assert stats_.value("custom:queue_depth") == pytest.approx(7.5)
    assert stats_.sample_size("custom:queue_depth") == 4


def test_window_stats__merge__pools_counts_histograms_and_custom_metrics() -> None:
    a = window(1_000, 10, seconds=60.0, custom={"q": (10.0, 2, 1.0, 9.0)})
    b = window(3_000, 50, seconds=120.0, custom={"q": (6.0, 2, 0.5, 4.0)})

    merged = a.merge(b)

    assert (merged.requests, merged.errors, merged.seconds) == (4_000, 60, 180.0)
    assert merged.latency.total == 4_000
    assert merged.custom["q"] == (16.0, 4.0, 0.5, 9.0)


@pytest.mark.parametrize(
    "kwargs", [{"requests": -1}, {"requests": 5, "errors": 6}, {"requests": 5, "seconds": 0.0}]
)
def test_window_stats__when_counts_are_impossible__raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WindowStats(**kwargs)


@pytest.mark.parametrize(
    ("value", "operator", "bound", "expected"),
    [
        (5.0, "gt", 5.0, False),
        (5.0, "gte", 5.0, True),
        (4.0, "lt", 5.0, True),
        (5.0, "lte", 5.0, True),
        (6.0, "lt", 5.0, False),
    ],
)
def test_breaches__reads_the_operator_as_the_bad_side(
    value: float, operator: str, bound: float, expected: bool
) -> None:
    assert breaches(value, operator, bound) is expected


# --------------------------------------------------------------------------- policy


def test_build_policy__from_an_empty_dict__uses_the_documented_defaults() -> None:
    built = build_policy({})

    assert built.min_requests == 100
    assert built.no_data == NoDataRule.INCONCLUSIVE
    assert built.comparison.enabled
    assert built.comparison.alpha == 0.01
    assert built.comparison.rollback
    assert built.auto_rollback.enabled
    assert built.comparison.baseline_window_seconds == built.window_seconds == 300
    assert built.fast_window_seconds == 10
    assert built.sample_ratio.alpha == 0.001
    assert built.thresholds == ()


def test_build_policy__round_trips_through_to_dict() -> None:
    data = {
        "window_seconds": 120,
        "min_requests": 50,
        "no_data": "fail",
        "thresholds": [
            ERROR_RATE_ABOVE,
            {"metric": "availability", "operator": "lt", "critical": 99.0},
            {"metric": "custom:queue_depth", "operator": "gte", "warning": 10},
        ],
        "comparison": {"tolerance_percent": 20, "latency_percentile": 99},
        "trend": {"metrics": ["latency_p99"], "windows": 6, "min_windows": 4},
        "auto_rollback": {
            "thresholds": [{"metric": "error_rate", "operator": "gt", "threshold": 15}]
        },
    }

    built = build_policy(data)

    assert build_policy(as_json(built.to_dict())) == built
    assert built.thresholds[0].operator == Operator.GT
    assert built.auto_rollback.thresholds[0].threshold == 15.0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"min_requests": 0}, "min_requests"),
        ({"min_requests": "many"}, "min_requests"),
        ({"no_data": "pass"}, "no_data"),
        ({"colour": "blue"}, "colour"),
        ({"thresholds": {"metric": "error_rate"}}, "thresholds"),
        ({"thresholds": [{"operator": "gt", "critical": 5}]}, "thresholds[0].metric"),
        (
            {"thresholds": [{"metric": "cpu", "operator": "gt", "critical": 5}]},
            "thresholds[0].metric",
        ),
        (
            {"thresholds": [ERROR_RATE_ABOVE, {"metric": "error_rate", "operator": "above"}]},
            "thresholds[1].operator",
        ),
        ({"thresholds": [{"metric": "error_rate", "operator": "gt"}]}, "thresholds[0].critical"),
        (
            {
                "thresholds": [
                    {"metric": "error_rate", "operator": "gt", "warning": 5, "critical": 1}
                ]
            },
            "thresholds[0].critical",
        ),
        (
            {
                "thresholds": [
                    {"metric": "availability", "operator": "lt", "warning": 99, "critical": 99.5}
                ]
            },
            "thresholds[0].critical",
        ),
        (
            {"thresholds": [{"metric": "error_rate", "operator": "gt", "critical": 120}]},
            "thresholds[0].critical",
        ),
        (
            {"thresholds": [{**ERROR_RATE_ABOVE, "consecutive_failures": 0}]},
            "thresholds[0].consecutive_failures",
        ),
        ({"comparison": {"alpha": 1.5}}, "comparison.alpha"),
        ({"comparison": {"fast_alpha": 0}}, "comparison.fast_alpha"),
        ({"comparison": {"margin_points": -0.1}}, "comparison.margin_points"),
        ({"comparison": {"rollback": 1}}, "comparison.rollback"),
        ({"fast_window_seconds": 0}, "fast_window_seconds"),
        ({"comparison": {"enabled": "yes"}}, "comparison.enabled"),
        ({"comparison": {"metrics": ["error_rate", "cpu"]}}, "comparison.metrics[1]"),
        ({"comparison": {"tolerance_percent": -1}}, "comparison.tolerance_percent"),
        ({"comparison": {"severity": "pass"}}, "comparison.severity"),
        ({"trend": {"windows": 6, "min_windows": 8}}, "trend.min_windows"),
        ({"sample_ratio": {"alpha": 0}}, "sample_ratio.alpha"),
        (
            {"auto_rollback": {"thresholds": [{"metric": "error_rate", "operator": "gt"}]}},
            "auto_rollback.thresholds[0].threshold",
        ),
    ],
)
def test_build_policy__when_a_field_is_invalid__names_the_field(
    data: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidPolicy) as raised:
        build_policy(data)

    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_invalid_policy__is_a_value_error() -> None:
    assert issubclass(InvalidPolicy, ValueError)


# --------------------------------------------------------------------------- comparison


def test_evaluate__when_canary_errors_far_above_stable__is_critical_and_asks_for_rollback() -> None:
    evaluation = evaluate(
        build_policy({"comparison": {"metrics": ["error_rate"]}, "trend": {"enabled": False}}),
        canary=window(10_000, 500),
        stable=window(10_000, 10),
    )

    result = result_of(evaluation, Check.COMPARISON, "error_rate")
    assert evaluation.verdict == Verdict.CRITICAL
    assert result.verdict == Verdict.CRITICAL
    assert result.window == "phase"
    assert result.inputs["e_value"] is None  # too large to store: its log stands in
    assert result.inputs["log_e_value"] > 100
    assert result.inputs["null_rate"] == pytest.approx(0.30, abs=0.01)
    assert result.value == pytest.approx(4.9)
    assert result.message.startswith(
        "Canary error rate against stable since the phase began: 500 errors in 10,000 requests "
        "(5.00%, 95% interval 4.59-5.44%) against stable's 0.10% (10 errors in 10,000 requests)"
    )
    assert "critical, worse than stable beyond its margin" in result.message
    assert evaluation.should_rollback
    (breach,) = evaluation.rollback_breaches
    assert breach.check == "comparison"
    assert "500 errors in 10,000 requests" in breach.message


def test_evaluate__when_canary_and_stable_are_identical__passes() -> None:
    same = window(10_000, 10)

    evaluation = evaluate(
        policy(comparison={}, thresholds=[ERROR_RATE_ABOVE]), canary=same, stable=same
    )

    assert evaluation.verdict == Verdict.PASS
    assert {result.verdict for result in evaluation.results} == {Verdict.PASS}
    latency = result_of(evaluation, Check.COMPARISON, "latency")
    assert latency.inputs["rank_biserial"] == pytest.approx(0.0)
    assert latency.inputs["slow_requests"] < 0.05 * 10_000
    assert not evaluation.should_rollback


def test_evaluate__when_the_increase_is_within_the_margin__passes() -> None:
    evaluation = evaluate(
        policy(comparison={"metrics": ["error_rate"], "tolerance_percent": 50}),
        canary=window(200_000, 2_500),
        stable=window(200_000, 2_000),
    )

    result = result_of(evaluation, Check.COMPARISON, "error_rate")
    assert result.verdict == Verdict.PASS
    assert "within its margin, no evidence it is worse" in result.message


def test_evaluate__when_the_canary_is_above_its_margin_on_little_evidence__is_inconclusive() -> (
    None
):
    evaluation = evaluate(
        policy(comparison={"metrics": ["error_rate"]}),
        canary=window(200, 2),
        stable=window(10_000, 10),
    )

    result = result_of(evaluation, Check.COMPARISON, "error_rate")
    assert result.verdict == Verdict.INCONCLUSIVE
    assert result.inputs["e_value"] < 1
    assert "not yet beyond doubt" in result.message
    assert not evaluation.should_rollback


def test_evaluate__comparison_severity__follows_the_policy() -> None:
    evaluation = evaluate(
        policy(comparison={"metrics": ["error_rate"], "severity": "warning"}),
        canary=window(10_000, 500),
        stable=window(10_000, 10),
    )

    assert evaluation.verdict == Verdict.WARNING


def test_evaluate__with_comparison_rollback_off__reports_the_breach_without_acting() -> None:
    evaluation = evaluate(
        policy(comparison={"metrics": ["error_rate"], "rollback": False}),
        canary=window(10_000, 500),
        stable=window(10_000, 10),
    )

    assert evaluation.verdict == Verdict.CRITICAL
    assert not evaluation.should_rollback


def test_evaluate__a_latency_shift_within_the_margin__passes_beyond_it__is_critical() -> None:
    stable = window(10_000, 10, median_ms=100.0)
    canary = window(10_000, 10, median_ms=130.0)

    tolerant = evaluate(policy(comparison={"metrics": ["latency"]}), canary, stable)
    strict = evaluate(
        policy(comparison={"metrics": ["latency"], "tolerance_percent": 0, "margin_ms": 0}),
        canary,
        stable,
    )

    # Log-normal samples, sigma 0.5: stable's p95 is 100 ms * e^(1.645 * 0.5) = 228 ms (233 ms
    # at its upper bound). Half as much again leaves 2% of the canary's requests above; the
    # bound itself, about 9%, where 5% may be.
    assert result_of(tolerant, Check.COMPARISON, "latency").verdict == Verdict.PASS
    result = result_of(strict, Check.COMPARISON, "latency")
    assert result.verdict == Verdict.CRITICAL
    assert result.inputs["slow_requests"] / 10_000 == pytest.approx(0.09, abs=0.02)
    assert result.inputs["rank_biserial"] > 0.1


def test_evaluate__a_150x_latency_regression__is_critical_on_a_few_requests() -> None:
    stable = window(2_000, 2, latency=Histogram.from_values(lognormal_latencies(2_000, 2.0)))
    canary = window(30, 0, latency=Histogram.from_values(lognormal_latencies(30, 300.0)))

    evaluation = evaluate(build_policy({}), canary, stable)

    result = result_of(evaluation, Check.COMPARISON, "latency")
    assert result.verdict == Verdict.CRITICAL
    assert result.inputs["ratio"] == pytest.approx(150, rel=0.15)
    assert evaluation.should_rollback
    assert "30 of 30 requests" in result.message


def test_evaluate__when_canary_latency_shifts_down__passes() -> None:
    stable = window(10_000, 10, median_ms=130.0)
    canary = window(10_000, 10, median_ms=100.0)

    evaluation = evaluate(policy(comparison={"metrics": ["latency"]}), canary, stable)

    result = result_of(evaluation, Check.COMPARISON, "latency")
    assert result.verdict == Verdict.PASS
    assert result.inputs["rank_biserial"] < -0.2


def test_evaluate__without_a_stable_window__comparison_has_no_data() -> None:
    evaluation = evaluate(policy(comparison={}), canary=window())

    assert {r.verdict for r in evaluation.results} == {Verdict.NO_DATA}
    assert evaluation.verdict == Verdict.INCONCLUSIVE


# --------------------------------------------------------------------------- sparse data


@pytest.mark.parametrize(
    ("rule", "overall"),
    [
        ("fail", Verdict.CRITICAL),
        ("inconclusive", Verdict.INCONCLUSIVE),
        ("ignore", Verdict.INCONCLUSIVE),
    ],
)
def test_evaluate__when_canary_data_is_below_the_minimum__follows_the_no_data_rule(
    rule: str, overall: Verdict
) -> None:
    evaluation = evaluate(
        policy(no_data=rule, min_requests=100, comparison={}, thresholds=[ERROR_RATE_ABOVE]),
        canary=window(40, 0),
        stable=window(10_000, 10),
    )

    assert evaluation.verdict == overall
    assert {r.verdict for r in evaluation.results} == {Verdict.NO_DATA}
    threshold = result_of(evaluation, Check.THRESHOLD)
    assert "40 requests from the canary in the window, at least 100 needed" in threshold.message


def test_evaluate__when_data_is_ignored_but_another_check_has_data__judges_on_that_check() -> None:
    evaluation = evaluate(
        policy(
            no_data="ignore",
            thresholds=[
                ERROR_RATE_ABOVE,
                {"metric": "custom:queue_depth", "operator": "gt", "critical": 100},
            ],
        ),
        canary=window(40, 0, custom={"queue_depth": (50.0, 10, 1.0, 9.0)}),
    )

    assert evaluation.verdict == Verdict.PASS
    assert "1 not counted" in evaluation.message


@settings(max_examples=60, deadline=None)
@given(
    requests=st.integers(min_value=0, max_value=99),
    error_share=st.floats(min_value=0.0, max_value=1.0),
    rule=st.sampled_from(["fail", "inconclusive", "ignore"]),
    with_stable=st.booleans(),
    planned_share=st.one_of(st.none(), st.floats(min_value=1.0, max_value=99.0)),
)
def test_evaluate__with_sparse_canary_data__is_never_a_pass(
    requests: int, error_share: float, rule: str, with_stable: bool, planned_share: float | None
) -> None:
    canary = WindowStats(
        requests=requests,
        errors=int(requests * error_share),
        latency=Histogram.from_values([50.0] * requests),
        seconds=60.0,
    )
    stable = window(50, 0) if with_stable else None

    evaluation = evaluate(
        build_policy(
            {
                "no_data": rule,
                "thresholds": [ERROR_RATE_ABOVE],
                "trend": {"min_windows": 3},
                "auto_rollback": {
                    "thresholds": [{"metric": "error_rate", "operator": "gt", "threshold": 0}]
                },
            }
        ),
        canary,
        stable,
        history=[window(10_000, 10)] * 5,
        planned_canary_share=planned_share,
    )

    assert evaluation.verdict != Verdict.PASS
    # The threshold never acts on so few requests; a comparison may, on evidence alone.
    assert not any(c.breached for c in evaluation.rollback_checks if c.check == "threshold")
    for check in evaluation.rollback_breaches:
        assert check.check == "comparison"
        assert canary.errors >= 3


# --------------------------------------------------------------------------- thresholds


def test_evaluate__when_a_threshold_is_breached__reports_the_level_and_why() -> None:
    evaluation = evaluate(policy(thresholds=[ERROR_RATE_ABOVE]), canary=window(10_000, 200))

    result = result_of(evaluation, Check.THRESHOLD)
    assert result.verdict == Verdict.WARNING
    assert result.message == (
        "Canary error rate 2.00% (200 errors in 10,000 requests, 95% interval 1.74-2.29%): "
        "warning, above the 1% warning threshold beyond doubt."
    )


def test_evaluate__availability_below_its_critical_bound__is_critical() -> None:
    evaluation = evaluate(
        policy(thresholds=[{"metric": "availability", "operator": "lt", "critical": 99.5}]),
        canary=window(10_000, 100),
    )

    result = result_of(evaluation, Check.THRESHOLD)
    assert result.verdict == Verdict.CRITICAL
    assert result.message == (
        "Canary availability 99.00% (100 errors in 10,000 requests, 95% interval 98.79-99.18%): "
        "critical, below the 99.5% critical threshold beyond doubt."
    )


def test_evaluate__latency_and_throughput_thresholds__read_in_ms_and_requests_per_second() -> None:
    evaluation = evaluate(
        policy(
            thresholds=[
                {"metric": "latency_p99", "operator": "gt", "warning": 500, "critical": 1000},
                {"metric": "throughput", "operator": "lt", "warning": 200},
            ]
        ),
        canary=window(10_000, 0, median_ms=80.0, seconds=100.0),
    )

    latency, throughput = evaluation.results
    assert latency.verdict == Verdict.PASS
    assert "within the 500 ms warning threshold" in latency.message
    assert throughput.verdict == Verdict.WARNING
    assert throughput.message == (
        "Canary throughput 100.00 req/s: warning, below the 200 req/s warning threshold."
    )


def test_evaluate__when_a_critical_breach_is_not_yet_sustained__is_a_warning() -> None:
    threshold = {**ERROR_RATE_ABOVE, "consecutive_failures": 3}

    evaluation = evaluate(
        policy(thresholds=[threshold]),
        canary=window(10_000, 800),
        history=[window(10_000, 10), window(10_000, 700)],
    )

    result = result_of(evaluation, Check.THRESHOLD)
    assert result.verdict == Verdict.WARNING
    assert result.inputs["critical_streak"] == 2
    assert "in 2 of the 3 consecutive windows needed to be critical" in result.message


def test_evaluate__when_a_critical_breach_is_sustained__is_critical() -> None:
    threshold = {**ERROR_RATE_ABOVE, "consecutive_failures": 3}

    evaluation = evaluate(
        policy(thresholds=[threshold]),
        canary=window(10_000, 800),
        history=[window(10_000, 600), window(10_000, 700)],
    )

    result = result_of(evaluation, Check.THRESHOLD)
    assert result.verdict == Verdict.CRITICAL
    assert result.message.endswith(
        "above the 5% critical threshold beyond doubt for 3 consecutive windows."
    )


def test_evaluate__when_a_warning_breach_is_not_yet_sustained__passes_and_says_so() -> None:
    threshold = {**ERROR_RATE_ABOVE, "consecutive_failures": 2}

    evaluation = evaluate(
        policy(thresholds=[threshold]), canary=window(10_000, 200), history=[window(10_000, 10)]
    )

    result = result_of(evaluation, Check.THRESHOLD)
    assert result.verdict == Verdict.PASS
    assert "in 1 of the 2 consecutive windows needed to warn" in result.message


def test_evaluate__a_sparse_window_in_history__breaks_the_streak() -> None:
    threshold = {**ERROR_RATE_ABOVE, "consecutive_failures": 2}

    evaluation = evaluate(
        policy(thresholds=[threshold]), canary=window(10_000, 800), history=[window(50, 40)]
    )

    assert result_of(evaluation, Check.THRESHOLD).verdict == Verdict.WARNING


def test_evaluate__custom_metric_threshold__judges_the_mean() -> None:
    evaluation = evaluate(
        policy(thresholds=[{"metric": "custom:queue_depth", "operator": "gt", "critical": 5}]),
        canary=window(custom={"queue_depth": (70.0, 10, 1.0, 20.0)}),
    )

    result = result_of(evaluation, Check.THRESHOLD)
    assert result.verdict == Verdict.CRITICAL
    assert result.message == "Canary queue_depth 7: critical, above the 5 critical threshold."


# --------------------------------------------------------------------------- trends


def test_evaluate__when_canary_error_rate_rises_window_after_window__flags_a_trend() -> None:
    history = [window(10_000, errors) for errors in (50, 60, 75, 80, 95, 110, 120)]

    evaluation = evaluate(
        policy(trend={"metrics": ["error_rate"]}), canary=window(10_000, 140), history=history
    )

    result = result_of(evaluation, Check.TREND)
    assert result.verdict == Verdict.WARNING
    assert result.inputs["p_increasing"] < 0.01
    assert result.value == pytest.approx(0.125, abs=0.05)
    assert result.message.startswith("Canary error rate rising over the last 8 windows")


def test_evaluate__when_error_rate_wobbles_without_direction__finds_no_trend() -> None:
    history = [window(10_000, errors) for errors in (50, 62, 48, 55, 60, 47, 53)]

    evaluation = evaluate(
        policy(trend={"metrics": ["error_rate"]}), canary=window(10_000, 51), history=history
    )

    assert result_of(evaluation, Check.TREND).verdict == Verdict.PASS
    assert evaluation.verdict == Verdict.PASS


def test_evaluate__when_availability_falls__flags_a_trend_downwards() -> None:
    history = [window(10_000, errors) for errors in (10, 30, 50, 70, 90)]

    evaluation = evaluate(
        policy(trend={"metrics": ["availability"]}), canary=window(10_000, 110), history=history
    )

    result = result_of(evaluation, Check.TREND)
    assert result.verdict == Verdict.WARNING
    assert "availability falling" in result.message


def test_evaluate__when_history_is_too_short__does_not_count_the_trend() -> None:
    evaluation = evaluate(
        policy(no_data="fail", trend={"metrics": ["error_rate"]}, thresholds=[ERROR_RATE_ABOVE]),
        canary=window(10_000, 10),
        history=[window(10_000, 10)],
    )

    trend = result_of(evaluation, Check.TREND)
    assert trend.verdict == Verdict.NO_DATA
    assert trend.counts_as is None
    assert evaluation.verdict == Verdict.PASS


# --------------------------------------------------------------------------- sample ratio


def test_evaluate__when_a_50_50_split_comes_out_60_40__is_a_sample_ratio_mismatch() -> None:
    evaluation = evaluate(
        policy(sample_ratio={}),
        canary=window(6_000, 6),
        stable=window(4_000, 4),
        planned_canary_share=50.0,
    )

    result = result_of(evaluation, Check.SAMPLE_RATIO)
    assert result.verdict == Verdict.WARNING
    assert result.inputs["chi_square"] == pytest.approx(400.0)
    assert result.inputs["p_value"] < 0.001
    assert result.value == pytest.approx(60.0)
    assert result.message == (
        "Canary received 60.00% of 10,000 requests against a planned 50.00% "
        "(chi-square = 400.00, p < 0.0001): warning, a sample ratio mismatch."
    )
    assert evaluation.verdict == Verdict.WARNING


def test_evaluate__when_the_split_is_as_planned__does_not_vote_pass_on_its_own() -> None:
    evaluation = evaluate(
        policy(sample_ratio={}),
        canary=window(5_030, 5),
        stable=window(4_970, 5),
        planned_canary_share=50.0,
    )

    result = result_of(evaluation, Check.SAMPLE_RATIO)
    assert result.verdict == Verdict.PASS
    assert result.counts_as is None
    assert evaluation.verdict == Verdict.INCONCLUSIVE


def test_evaluate__without_a_planned_share__skips_the_sample_ratio_check() -> None:
    evaluation = evaluate(policy(sample_ratio={}), canary=window(), stable=window())

    assert evaluation.results == ()


def test_evaluate__when_the_planned_share_is_not_a_percentage__raises() -> None:
    with pytest.raises(ValueError, match="planned_canary_share"):
        evaluate(policy(), canary=window(), stable=window(), planned_canary_share=150.0)


# --------------------------------------------------------------------------- rollback


ROLLBACK_ON_ERRORS = {
    "thresholds": [
        {"metric": "error_rate", "operator": "gt", "threshold": 10, "consecutive_violations": 2}
    ]
}


def test_evaluate__when_a_rollback_threshold_is_violated_long_enough__asks_for_rollback() -> None:
    evaluation = evaluate(
        policy(auto_rollback=ROLLBACK_ON_ERRORS),
        canary=window(10_000, 1_500),
        history=[window(10_000, 1_200)],
    )

    assert evaluation.should_rollback
    (breach,) = evaluation.rollback_breaches
    assert breach.violations == 2
    assert breach.message == (
        "Canary error rate 15.00% (1,500 errors in 10,000 requests, 95% interval 14.31-15.71%) "
        "above the 10% rollback threshold beyond doubt for 2 consecutive windows."
    )
    assert "Roll back: Canary error rate 15.00%" in evaluation.message


def test_evaluate__when_a_rollback_threshold_is_violated_once__waits() -> None:
    evaluation = evaluate(
        policy(auto_rollback=ROLLBACK_ON_ERRORS),
        canary=window(10_000, 1_500),
        history=[window(10_000, 10)],
    )

    assert not evaluation.should_rollback
    assert evaluation.rollback_checks[0].violations == 1


def test_evaluate__when_auto_rollback_is_disabled__never_asks_for_rollback() -> None:
    evaluation = evaluate(
        policy(auto_rollback={**ROLLBACK_ON_ERRORS, "enabled": False}),
        canary=window(10_000, 1_500),
        history=[window(10_000, 1_500)],
    )

    assert evaluation.rollback_checks[0].breached
    assert not evaluation.should_rollback


# --------------------------------------------------------------------------- serialisation


def test_evaluation_to_dict__is_json_serialisable_and_carries_its_inputs() -> None:
    evaluation = evaluate(
        build_policy(
            {
                "min_requests": 10,
                "thresholds": [ERROR_RATE_ABOVE],
                "trend": {"min_windows": 3},
                "auto_rollback": ROLLBACK_ON_ERRORS,
            }
        ),
        canary=window(200, 4, custom={"queue_depth": (3.0, 1, 3.0, 3.0)}),
        stable=window(200, 0),
        history=[window(200, 1), window(200, 2)],
        planned_canary_share=50.0,
    )

    data = as_json(evaluation.to_dict())

    assert data["verdict"] == evaluation.verdict
    assert data["inputs"]["canary"]["requests"] == 200
    assert data["inputs"]["stable"]["error_rate"] == 0.0
    assert data["inputs"]["policy"]["min_requests"] == 10
    by_check = {(r["check"], r["metric"]): r for r in data["results"]}
    errors = by_check[("comparison", "error_rate")]
    assert errors["window"] == "phase"
    assert errors["inputs"]["e_value_needed"] == 100
    assert data["windows"]["phase"]["canary"]["requests"] == 200
    assert data["windows"]["current"]["stable"]["errors"] == 0
    assert data["windows"]["current"]["canary"]["error_rate_interval"][0] > 0
    assert by_check[("comparison", "latency")]["inputs"]["canary_samples"] == 200
    assert by_check[("trend", "error_rate")]["inputs"]["values"] == [0.5, 1.0, 2.0]
    assert all(result["message"].endswith(".") for result in data["results"])


# --------------------------------------------------------------------------- statistics


def expand(histogram: Histogram) -> list[float]:
    """Every sample at its bucket's midpoint: the binned data as scipy would see it."""
    values: list[float] = []
    for index, count in enumerate(histogram.counts):
        lower, upper = bucket_bounds(index)
        values += [lower if math.isinf(upper) else (lower + upper) / 2] * count
    return values


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=100_000.0), min_size=2, max_size=60),
    st.lists(st.floats(min_value=0.0, max_value=100_000.0), min_size=2, max_size=60),
)
def test_rank_test__from_counts__matches_scipy_on_the_expanded_samples(
    a_values: list[float], b_values: list[float]
) -> None:
    a, b = Histogram.from_values(a_values), Histogram.from_values(b_values)
    a_expanded, b_expanded = expand(a), expand(b)
    # Every sample in one bucket: scipy divides by a zero variance; ours reports no evidence.
    if len(set(a_expanded + b_expanded)) == 1:
        return

    ours = rank_test(a, b)
    greater = stats.mannwhitneyu(a_expanded, b_expanded, alternative="greater", method="asymptotic")
    less = stats.mannwhitneyu(a_expanded, b_expanded, alternative="less", method="asymptotic")

    assert ours.u == pytest.approx(greater.statistic)
    assert ours.p_greater == pytest.approx(greater.pvalue, rel=1e-6, abs=1e-12)
    assert ours.p_less == pytest.approx(less.pvalue, rel=1e-6, abs=1e-12)
    assert -1.0 <= ours.rank_biserial <= 1.0


def test_rank_test__when_every_sample_shares_one_bucket__finds_no_shift() -> None:
    same = Histogram.from_values([10.0] * 50)

    result = rank_test(same, same)

    assert (result.rank_biserial, result.p_greater, result.p_less) == (0.0, 1.0, 1.0)


def test_mann_kendall__on_a_steady_rise__finds_an_increasing_trend_and_its_slope() -> None:
    result = mann_kendall([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])

    assert result.s == 15
    assert result.slope == pytest.approx(1.0)
    assert result.p_increasing < 0.01
    assert result.p_decreasing > 0.99


def test_mann_kendall__on_a_constant_series__finds_nothing() -> None:
    result = mann_kendall([3.0] * 6)

    assert (result.s, result.p_increasing, result.p_decreasing) == (0, 1.0, 1.0)


def test_sample_ratio_test__matches_scipys_chi_square_goodness_of_fit() -> None:
    result = sample_ratio_test(2_120, 7_880, 20.0)

    expected = stats.chisquare([2_120, 7_880], [2_000, 8_000])
    assert result.chi_square == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.observed_share == pytest.approx(21.2)


def test_stored_form__has_enums_as_text_tuples_as_lists_and_no_infinite_numbers() -> None:
    from health.analysis import Check, Verdict, _jsonable

    value = {
        Verdict.PASS: (1.5, math.inf, -math.inf, math.nan),
        "nested": [{"check": Check.THRESHOLD, "n": 3, "ok": True, "none": None}],
        7: "seven",
    }

    stored = _jsonable(value)

    assert stored == {
        "pass": [1.5, None, None, None],
        "nested": [{"check": "threshold", "n": 3, "ok": True, "none": None}],
        "7": "seven",
    }
    assert all(type(key) is str for key in stored)
    assert type(stored["nested"][0]["check"]) is str
    assert json.loads(json.dumps(stored, allow_nan=False)) == stored
