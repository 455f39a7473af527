"""Fixtures and data builders of the health tests: policies, series of outcomes, a clock."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

import pytest

from health import services
from health.histogram import Histogram
from health.ingest import OutcomeBatchItem

BUCKET = 10
"""How far apart `traffic` spaces its outcomes: every fifth bucket of the store's 2 seconds."""
SETTLE = 3
"""How far into a ten-second span `aligned_now` lands: a window judged then ends on the span's
start (2 s of settling, on the store's 2-second grid)."""


def lognormal(count: int, median_ms: float, sigma: float = 0.4) -> list[float]:
    """`count` evenly spread quantiles of a log-normal: deterministic, realistic latencies."""
    normal = NormalDist()
    return [median_ms * math.exp(sigma * normal.inv_cdf((i + 0.5) / count)) for i in range(count)]


def aligned_now(offset: float = SETTLE) -> datetime:
    """A moment just past, ``offset`` seconds into a 10-second span: windows end predictably
    and rows stamped with it are already due."""
    seconds = int((datetime.now(tz=UTC).timestamp() - offset) // BUCKET) * BUCKET
    return datetime.fromtimestamp(seconds + offset, tz=UTC)


def traffic(
    service: str,
    version: str,
    *,
    end: datetime,
    seconds: int,
    requests: int = 100,
    errors: int = 0,
    median_ms: float = 80.0,
) -> list[OutcomeBatchItem]:
    """One outcome per bucket over ``[end - seconds, end)``: ``requests`` requests a bucket."""
    histogram = Histogram.from_values(lognormal(requests, median_ms)) if requests else Histogram()
    first = int(end.timestamp()) - seconds
    return [
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


@pytest.fixture
def now() -> datetime:
    return aligned_now()


@pytest.fixture
def window_end(now: datetime) -> datetime:
    """Where the windows of an evaluation at ``now`` end."""
    return now - timedelta(seconds=SETTLE)


@pytest.fixture
def make_policy() -> Callable[..., Any]:
    def make(name: str = "default", **fields: Any) -> Any:
        fields.setdefault(
            "policy",
            {
                "window_seconds": 60,
                "min_requests": 100,
                "comparison": {"tolerance_percent": 10.0},
                "trend": {"enabled": False},
                "sample_ratio": {"enabled": False},
                "thresholds": [
                    {"metric": "error_rate", "operator": "gt", "warning": 1.0, "critical": 3.0}
                ],
            },
        )
        return services.health_policy_create(name=name, **fields)

    return make


@pytest.fixture(autouse=True)
def _no_broker_for_notifications(settings: Any) -> None:
    # The outbox sweep delivers every notification; handing each to a worker at once is an
    # optimisation that would only fill the test broker with messages nobody reads.
    settings.CANARY_NOTIFY_ENQUEUE = False
