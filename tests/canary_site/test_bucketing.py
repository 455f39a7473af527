"""Tests for the shared bucketing function: range, uniformity, monotonicity, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary_site.bucketing import (
    BUCKET_COUNT,
    bucket,
    bucket_with_prefix,
    in_rollout,
    percentage_to_buckets,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KEY_COUNT = 100_000
KEYS = [f"user-{index}" for index in range(KEY_COUNT)]

salts = st.text(min_size=1, max_size=24)
percentages = st.integers(min_value=0, max_value=10_000).map(lambda basis: basis / 100)


def test_bucket__is_murmur3_of_salt_colon_value_modulo_10000() -> None:
    assert bucket("abc", "user-1") == mmh3.hash("abc:user-1", 0, False) % 10_000 == 888


@given(salt=st.text(), value=st.text())
def test_bucket__for_any_text__falls_in_0_to_9999(salt: str, value: str) -> None:
    assert 0 <= bucket(salt, value) < BUCKET_COUNT


@given(salt=st.text(), value=st.text())
def test_bucket_with_prefix__agrees_with_bucket(salt: str, value: str) -> None:
    assert bucket_with_prefix(f"{salt}:", value) == bucket(salt, value)


@pytest.mark.parametrize("percentage", [10, 50])
@settings(max_examples=5, deadline=None)
@given(salt=salts)
def test_rollout__over_100000_keys__admits_the_percentage_within_one_point(
    salt: str, percentage: float
) -> None:
    admitted = sum(in_rollout(salt, key, percentage) for key in KEYS)

    assert abs(admitted / KEY_COUNT * 100 - percentage) < 1


@settings(max_examples=5, deadline=None)
@given(salt=salts)
def test_bucket__over_100000_keys__fills_every_decile_evenly(salt: str) -> None:
    deciles = [0] * 10
    for key in KEYS:
        deciles[bucket(salt, key) // 1000] += 1

    assert all(abs(count / KEY_COUNT - 0.1) < 0.01 for count in deciles)


@given(salt=salts, value=st.text(), low=percentages, high=percentages)
def test_rollout__when_percentage_raised__keeps_users_in(
    salt: str, value: str, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)

    if in_rollout(salt, value, low):
        assert in_rollout(salt, value, high)


@given(salt=salts, value=st.text())
def test_rollout__at_the_extremes__admits_nobody_or_everybody(salt: str, value: str) -> None:
    assert not in_rollout(salt, value, 0)
    assert in_rollout(salt, value, 100)


@pytest.mark.parametrize(
    ("percentage", "buckets"),
    [(0, 0), (0.01, 1), (5, 500), (12.34, 1234), (33.33, 3333), (99.99, 9999), (100, 10_000)],
)
def test_percentage_to_buckets__covers_one_bucket_per_hundredth_of_a_percent(
    percentage: float, buckets: int
) -> None:
    assert percentage_to_buckets(percentage) == buckets


@pytest.mark.parametrize("percentage", [-0.01, 100.01, float("nan")])
def test_percentage_to_buckets__outside_0_to_100__is_refused(percentage: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentage_to_buckets(percentage)


def test_bucket__in_other_processes_with_other_hash_seeds__gives_the_same_buckets() -> None:
    pairs = [("new-checkout", "user-1"), ("routing:checkout", "session-9"), ("é", "ユーザー")]
    expected = [bucket(salt, value) for salt, value in pairs]
    program = (
        "import json, sys\n"
        "from canary_site.bucketing import bucket\n"
        "pairs = json.loads(sys.argv[1])\n"
        "print(json.dumps([bucket(salt, value) for salt, value in pairs]))\n"
    )

    for hash_seed in ("0", "1", "12345"):
        completed = subprocess.run(
            [sys.executable, "-c", program, json.dumps(pairs)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(completed.stdout) == expected


def test_bucket__lone_surrogate_from_client_json__is_hashed_not_crashed():
    import json

    value = json.loads('"\\ud800"')

    assert 0 <= bucket("salt", value) < 10_000
    assert bucket("salt", "héllo") == bucket("salt", "héllo")
