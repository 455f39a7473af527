"""Benchmark: flag evaluations per second, ours against UnleashClient and Flagsmith's engine.

Run with ``.venv/bin/python bench/flags_eval.py [--users N] [--repeat R]``. It needs no Django,
no database and no network: Unleash evaluates locally from a bootstrapped feature set and
Flagsmith's engine is a pure function of its evaluation context.

The workload is the same for all three: one flag that is on for 10% of users (bucketed on the
user id) within a segment of launch countries, and off for everyone else, evaluated once for
each of N distinct users per pass; the best of R passes counts. Building each user's context
is part of the timed loop, as it is in a request handler. The three engines hash differently,
so they put different users in, but the share of users in must come out roughly the same; the
script prints it and fails if one is off.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flag_engine.engine import get_evaluation_result
from UnleashClient import UnleashClient
from UnleashClient.cache import FileCache

from flags.evaluation import build_flag_snapshot, build_segment_snapshot, evaluate

FLAG_KEY = "new-checkout"
ROLLOUT_PERCENTAGE = 10
COUNTRIES = ["US", "CA", "GB", "DE", "FR", "JP", "BR", "IN"]
LAUNCH_COUNTRIES = ["US", "CA", "GB", "DE"]

Users = list[tuple[str, str]]
Workload = Callable[[Users], int]


def make_users(count: int) -> Users:
    rng = random.Random(20240501)
    return [(f"user-{index}", rng.choice(COUNTRIES)) for index in range(count)]


def ours() -> Workload:
    segments = {
        "launch-markets": build_segment_snapshot(
            {
                "key": "launch-markets",
                "constraints": [
                    {"attribute": "country", "operator": "in", "values": LAUNCH_COUNTRIES}
                ],
            }
        )
    }
    flag = build_flag_snapshot(
        {
            "key": FLAG_KEY,
            "value_type": "boolean",
            "variants": [{"name": "on", "value": True}, {"name": "off", "value": False}],
            "off_variant": "off",
            "rules": [
                {
                    "name": "launch markets",
                    "segments": ["launch-markets"],
                    "serve": {"rollout": {"percentage": ROLLOUT_PERCENTAGE, "variant": "on"}},
                }
            ],
            "default_rule": {"variant": "off"},
        }
    )

    def run(users: Users) -> int:
        enabled = 0
        for user_id, country in users:
            enabled += evaluate(flag, {"targetingKey": user_id, "country": country}, segments).value
        return enabled

    return run


def unleash(cache_directory: str) -> Workload:
    features = {
        "version": 1,
        "features": [
            {
                "name": FLAG_KEY,
                "enabled": True,
                "strategies": [
                    {
                        "name": "flexibleRollout",
                        "parameters": {
                            "rollout": str(ROLLOUT_PERCENTAGE),
                            "stickiness": "userId",
                            "groupId": FLAG_KEY,
                        },
                        "constraints": [
                            {
                                "contextName": "country",
                                "operator": "IN",
                                "values": LAUNCH_COUNTRIES,
                                "caseInsensitive": False,
                                "inverted": False,
                            }
                        ],
                    }
                ],
            }
        ],
    }
    cache = FileCache("canary-bench", directory=cache_directory)
    cache.bootstrap_from_dict(features)
    # A bootstrapped client loads its features in the constructor; without initialize_client()
    # it starts no scheduler and makes no request, so the URL is never contacted.
    client = UnleashClient(
        url="http://127.0.0.1:9/api",
        app_name="canary-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )

    def run(users: Users) -> int:
        enabled = 0
        is_enabled = client.is_enabled
        for user_id, country in users:
            enabled += is_enabled(FLAG_KEY, {"userId": user_id, "properties": {"country": country}})
        return enabled

    return run


def flagsmith() -> Workload:
    environment = {"key": "bench-environment", "name": "bench"}
    features = {FLAG_KEY: {"key": "1", "name": FLAG_KEY, "enabled": False, "value": None}}
    segments = {
        "1": {
            "key": "1",
            "name": "launch markets",
            "rules": [
                {
                    "type": "ALL",
                    "conditions": [
                        {"property": "country", "operator": "IN", "value": LAUNCH_COUNTRIES},
                        # A blank property splits on the identity key.
                        {
                            "property": "",
                            "operator": "PERCENTAGE_SPLIT",
                            "value": str(ROLLOUT_PERCENTAGE),
                        },
                    ],
                }
            ],
            "overrides": [{"key": "1", "name": FLAG_KEY, "enabled": True, "value": None}],
        }
    }

    def run(users: Users) -> int:
        enabled = 0
        for user_id, country in users:
            result = get_evaluation_result(
                {
                    "environment": environment,
                    "features": features,
                    "segments": segments,
                    "identity": {"identifier": user_id, "traits": {"country": country}},
                }
            )
            enabled += result["flags"][FLAG_KEY]["enabled"]
        return enabled

    return run


def measure(workload: Workload, users: Users, repeat: int) -> tuple[float, float]:
    """Evaluations per second (best of ``repeat`` passes) and the share of users in.

    The best pass rather than the mean, so that a busy machine slows down the report less than
    it slows down the engines.
    """
    workload(users[:2_000])  # warm-up: first-call caches, lazy imports
    best = math.inf
    enabled = 0
    for _ in range(repeat):
        started = time.perf_counter()
        enabled = workload(users)
        best = min(best, time.perf_counter() - started)
    return len(users) / best, enabled / len(users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000, help="distinct users to evaluate")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best one counts")
    arguments = parser.parse_args()
    users = make_users(arguments.users)
    repeat = max(arguments.repeat, 1)

    ours_rate, ours_share = measure(ours(), users, repeat)
    with tempfile.TemporaryDirectory() as cache_directory:
        # No destroy(): the client never started a scheduler, and stopping one that is not
        # running only logs a warning.
        unleash_rate, unleash_share = measure(unleash(cache_directory), users, repeat)
    flagsmith_rate, flagsmith_share = measure(flagsmith(), users, repeat)

    expected = ROLLOUT_PERCENTAGE / 100 * len(LAUNCH_COUNTRIES) / len(COUNTRIES)
    shares = {"ours": ours_share, "unleash": unleash_share, "flagsmith": flagsmith_share}
    print(
        f"share in (expected {expected:.1%}): "
        + " | ".join(f"{name} {share:.2%}" for name, share in shares.items())
    )
    print(
        f"ours {ours_rate:,.0f} eval/s | "
        f"unleash {unleash_rate:,.0f} eval/s ({ours_rate / unleash_rate:.1f}x) | "
        f"flagsmith {flagsmith_rate:,.0f} eval/s ({ours_rate / flagsmith_rate:.1f}x)"
    )
    # Different hashes admit different users, but never a different share: if one does, the
    # three are not running the same workload and the rates mean nothing.
    disagreeing = [name for name, share in shares.items() if abs(share - expected) > 0.005]
    if disagreeing:
        sys.exit(f"workloads disagree on the share of users in: {', '.join(disagreeing)}")


if __name__ == "__main__":
    main()
