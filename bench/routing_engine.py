"""Benchmark of routing.engine.decide against a bare bucket-and-bisect baseline.

Routes a two-target sticky rule with three conditions (header equals, path prefix, method in)
and prints decisions per second for ``decide``, for ``decide`` with a RuntimeState, and for the
bare baseline measured in the same run, then the ratio and the microseconds per decision.

    .venv/bin/python bench/routing_engine.py [--decisions 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path

# Run as a plain script from anywhere: the project root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from canary_site.bucketing import bucket
from routing.engine import (
    RequestContext,
    RuntimeState,
    ServiceSnapshot,
    build_service_snapshot,
    decide,
)

USERS = 1024


def build_service() -> ServiceSnapshot:
    return build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": "1.4.0",
            "targets": [
                {"id": "stable-1", "endpoint": "http://10.0.0.5:8080", "version": "1.4.0"},
                {"id": "canary-1", "endpoint": "http://10.0.0.9:8080", "version": "1.5.0"},
            ],
            "rules": [
                {
                    "id": 1,
                    "name": "beta users",
                    "conditions": [
                        {
                            "source": "header",
                            "name": "x-beta",
                            "operator": "equals",
                            "values": ["1"],
                        },
                        {"source": "path", "operator": "prefix", "values": ["/api/"]},
                        {"source": "method", "operator": "in", "values": ["GET", "POST"]},
                    ],
                    "targets": [
                        {"id": "stable-1", "weight": 9000},
                        {"id": "canary-1", "weight": 1000},
                    ],
                    "affinity": {"type": "cookie", "name": "canary_session", "ttl_s": 3600},
                }
            ],
        }
    )


def build_requests() -> list[RequestContext]:
    return [
        RequestContext(
            method="GET",
            path=f"/api/orders/{index}",
            headers={"x-beta": "1", "user-agent": "bench", "accept": "application/json"},
            cookies={"canary_session": f"user-{index:08x}"},
            client_ip="10.1.2.3",
        )
        for index in range(USERS)
    ]


def best_rate(run: Callable[[int], None], decisions: int, rounds: int) -> float:
    """Decisions per second of the fastest round; the fastest is the least disturbed."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run(decisions)
        best = min(best, time.perf_counter() - started)
    return decisions / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    service = build_service()
    requests = build_requests()
    state = RuntimeState()
    loops = arguments.decisions // USERS
    decisions = loops * USERS

    expected = decide(service, requests[0])
    assert expected.reason == "sticky", expected.explain()

    def run_decide(_: int) -> None:
        for _ in range(loops):
            for request in requests:
                decide(service, request)

    def run_decide_with_state(_: int) -> None:
        for _ in range(loops):
            for request in requests:
                decide(service, request, state=state)

    salt = "checkout:1"
    bounds = (1000, 10_000)
    layout = ("canary-1", "stable-1")

    def run_baseline(_: int) -> None:
        for _ in range(loops):
            for request in requests:
                layout[bisect_right(bounds, bucket(salt, request.cookies["canary_session"]))]

    run_decide(0)  # warm caches before timing
    baseline = best_rate(run_baseline, decisions, arguments.rounds)
    plain = best_rate(run_decide, decisions, arguments.rounds)
    stateful = best_rate(run_decide_with_state, decisions, arguments.rounds)

    print(f"decide, sticky rule with 3 conditions: {plain:>12,.0f} decisions/s")
    print(f"decide with RuntimeState:              {stateful:>12,.0f} decisions/s")
    print(f"baseline, bucket() + bisect:           {baseline:>12,.0f} decisions/s")
    print(f"decide / baseline time ratio:          {baseline / plain:>12.2f} x")
    print(f"decide:                                {1e6 / plain:>12.2f} us/decision")
    print(f"decide with RuntimeState:              {1e6 / stateful:>12.2f} us/decision")
    print(f"baseline:                              {1e6 / baseline:>12.2f} us/decision")


if __name__ == "__main__":
    main()
