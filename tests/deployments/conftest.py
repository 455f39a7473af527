"""Fixtures and builders of the deployments tests: a routed service, configurations, traffic in
the metric store, and a clock that the tick and the transitions share."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

import pytest

# The routing tests' real backend and proxy processes, for the closed loop.
from tests.routing.conftest import start_backend, start_proxy  # noqa: F401

STABLE = "1.0.0"
CANARY = "2.0.0"
BUCKET = 10


@pytest.fixture(autouse=True)
def _no_follow_up_tasks(request: pytest.FixtureRequest) -> None:
    # A transition hands the next tick to a worker; tests without one would only fill the
    # broker with messages nobody reads. Tests with real workers turn it back on.
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.CANARY_DEPLOYMENTS_ENQUEUE = False
    settings.CANARY_NOTIFY_ENQUEUE = False
    # The phases here last 20 s with 50 canary requests a bucket: one bucket of their own is
    # the minimum of traffic a phase needs (the rule itself is tested with its default).
    settings.CANARY_DEPLOYMENT_PHASE_MIN_REQUESTS = 50


def lognormal(count: int, median_ms: float, sigma: float = 0.3) -> list[float]:
    """``count`` evenly spread quantiles of a log-normal: deterministic, realistic latencies."""
    normal = NormalDist()
    return [median_ms * math.exp(sigma * normal.inv_cdf((i + 0.5) / count)) for i in range(count)]


def phase(
    percentage: float,
    *,
    duration_ms: int = 20_000,
    hold_ms: int = 10_000,
    availability: float = 95,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "trafficPercentage": percentage,
        "durationMs": duration_ms,
        "successCriteria": [
            {
                "metric": "availability",
                "operator": "greater_than",
                "threshold": availability,
                "durationMs": hold_ms,
            }
        ],
        "rollbackThresholds": thresholds
        if thresholds is not None
        else {"errorRate": 10, "latencyP95": 2000},
    }


def make_config(
    *,
    service: str = "shop",
    name: str = "shop 2.0",
    phases: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A short, valid configuration: three phases of 20 s each, 10%, 50%, 100%."""
    config: dict[str, Any] = {
        "name": name,
        "serviceName": service,
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "phases": phases or [phase(10), phase(50), phase(100)],
        "maxDeploymentTimeMs": 600_000,
    }
    config.update(top)
    return config


@pytest.fixture
def routed_service(db: Any) -> Any:
    """Service "shop" with a stable and a canary target (nothing listens: no proxy here)."""
    from routing import services

    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
    )
    return service


@pytest.fixture
def policy(db: Any) -> Any:
    """A policy with a short window, a small minimum sample and no checks of its own."""
    from health import services

    return services.health_policy_create(
        name="deploy-test",
        alerting_enabled=False,
        policy={
            "window_seconds": BUCKET,
            "min_requests": 10,
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": False},
            "comparison": {"enabled": False},
            "auto_rollback": {"enabled": False},
        },
    )


@pytest.fixture
def make_deployment(routed_service: Any, policy: Any) -> Callable[..., Any]:
    from deployments import services

    def make(config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("health_policy", policy)
        return services.deployment_create(config=config or make_config(), **kwargs)

    return make


class Clock:
    """Simulated time for the tick: starts well in the past, bucket-aligned, and moves on by
    hand, so a phase's whole life takes no real time."""

    def __init__(self) -> None:
        base = int((datetime.now(tz=UTC) - timedelta(hours=1)).timestamp()) // BUCKET * BUCKET
        self.now = datetime.fromtimestamp(base + 1, tz=UTC)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def feed(
    *,
    start: datetime,
    seconds: int,
    version: str = CANARY,
    service: str = "shop",
    requests: int = 50,
    errors: int = 0,
    median_ms: float = 50.0,
) -> None:
    """Traffic in the metric store: ``requests`` a bucket over ``[start, start + seconds)``."""
    from health.histogram import Histogram
    from health.ingest import OutcomeBatchItem
    from health.services import metrics_record_outcomes

    first = int(start.timestamp()) // BUCKET * BUCKET
    histogram = Histogram.from_values(lognormal(requests, median_ms)) if requests else Histogram()
    metrics_record_outcomes(
        outcomes=[
            OutcomeBatchItem(
                service=service,
                version=version,
                bucket_start=datetime.fromtimestamp(first + offset, tz=UTC),
                requests=requests,
                errors=errors,
                latency=histogram,
            )
            for offset in range(0, seconds, BUCKET)
        ]
    )
