"""Reads of the health app: chart series, the services overview, open alerts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from health import selectors, services
from health.models import Alert
from tests.health.conftest import traffic

pytestmark = pytest.mark.django_db


def test_series__gives_every_metric_per_step_with_none_where_nothing_was_measured(now, window_end):
    services.metrics_record_outcomes(
        outcomes=traffic("checkout", "2.0", end=window_end, seconds=30, requests=50, errors=5)
    )

    found = selectors.series_many(
        service="checkout",
        versions=["2.0"],
        metrics=["requests", "errors", "error_rate", "availability", "throughput", "latency_p95"],
        window_seconds=60,
        now=now,
    )

    def values(metric: str) -> list[float | None]:
        return found[("2.0", metric)].values

    assert values("requests") == [0, 0, 0, 50, 50, 50]
    assert values("errors") == [0, 0, 0, 5, 5, 5]
    assert values("error_rate") == [None, None, None, 10.0, 10.0, 10.0]
    assert values("availability")[3:] == [90.0, 90.0, 90.0]
    assert values("throughput") == [0, 0, 0, 5.0, 5.0, 5.0]
    p95 = values("latency_p95")
    assert p95[:3] == [None, None, None] and 100 < p95[3] < 200
    series = found[("2.0", "requests")]
    assert series.timestamps[-1] == window_end - timedelta(seconds=10)
    assert series.step_seconds == 10


def test_series__of_a_custom_metric__is_its_mean_per_step(now, window_end):
    stamp = (window_end - timedelta(seconds=5)).timestamp()
    services.metrics_push(
        samples=[
            {
                "service": "checkout",
                "version": "2.0",
                "metric": "custom:queue_depth",
                "value": value,
                "timestamp": stamp,
            }
            for value in (2.0, 6.0)
        ],
        now=now,
    )

    found = selectors.series(
        service="checkout", version="2.0", metric="custom:queue_depth", window_seconds=30, now=now
    )

    assert found.values == [None, None, 4.0]


def test_series__over_a_long_window__keeps_the_points_few_with_a_wider_step():
    assert selectors.series_step(900) == 10
    assert selectors.series_step(24 * 3600) == 480
    assert 24 * 3600 / selectors.series_step(24 * 3600) <= selectors.MAX_POINTS


def test_services_overview__lists_the_latest_check_per_canary_worst_first(
    now, window_end, make_policy
):
    policy = make_policy()
    for service, errors in (("search", 0), ("checkout", 10)):
        services.metrics_record_outcomes(
            outcomes=traffic(
                service, "2.0", end=window_end, seconds=60, requests=200, errors=errors
            )
        )
        services.health_evaluate(
            service=service, canary_version="2.0", stable_version=None, policy=policy, now=now
        )
    services.health_evaluate(
        service="search",
        canary_version="2.0",
        stable_version=None,
        policy=policy,
        now=now + timedelta(seconds=60),
    )

    overview = selectors.services_overview()

    assert [item.service for item in overview] == ["checkout", "search"]
    assert [item.worst for item in overview] == ["critical", "inconclusive"]
    assert overview[0].open_alerts == 1
    assert len(overview[1].latest) == 1  # only the newest check of search 2.0


def test_alerts_open__leaves_out_resolved_ones(now, window_end, make_policy):
    policy = make_policy()
    services.metrics_record_outcomes(
        outcomes=traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=10)
    )
    services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version=None, policy=policy, now=now
    )
    alert = Alert.objects.get()

    assert list(selectors.alerts_open(service="checkout")) == [alert]
    services.alert_resolve(alert=alert, actor=None)
    assert list(selectors.alerts_open()) == []
