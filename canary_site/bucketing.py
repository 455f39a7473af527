"""The one bucketing function that flags and sticky routing share.

A subject (a user, a session, an account: whatever the stickiness attribute names) is hashed
together with a salt into one of 10,000 buckets:

    bucket = murmur3_32("<salt>:<value>", seed=0, unsigned) % 10_000

A percentage of 0 to 100 with two decimals covers the buckets ``[0, round(percentage * 100))``,
so raising a rollout from 5% to 25% only adds buckets: everyone who was in stays in. The same
salt gives the same bucket in every process and on every machine, which is what lets the
proxy, the web process and a client SDK agree on who is in.

The modulo leaves a bias of at most 1 in 429,496 between buckets (2**32 is not a multiple of
10,000), far below anything a rollout could notice.
"""

from __future__ import annotations

from mmh3 import hash as _murmur3_32

BUCKET_COUNT = 10_000
"""Buckets per salt; one bucket is 0.01% of subjects, the resolution of a percentage."""


def bucket(salt: str, value: str) -> int:
    """Return the bucket in ``[0, 9999]`` of ``value`` under ``salt``."""
    # Positional arguments: mmh3 parses keywords noticeably slower, and this is the hot path.
    # Encoding here (surrogatepass) gives the same hash as mmh3's own UTF-8 for valid text, and
    # keeps a lone surrogate from a client's JSON from crashing mmh3's str path.
    return _murmur3_32(f"{salt}:{value}".encode("utf-8", "surrogatepass"), 0, False) % BUCKET_COUNT


def bucket_with_prefix(prefix: str, value: str) -> int:
    """Return ``bucket(salt, value)`` given ``prefix == f"{salt}:"``, built once by the caller.

    Engines that bucket many subjects under one salt precompute the prefix so the hot path does
    a single concatenation.
    """
    return _murmur3_32((prefix + value).encode("utf-8", "surrogatepass"), 0, False) % BUCKET_COUNT


def percentage_to_buckets(percentage: float) -> int:
    """Return how many buckets (from bucket 0 up) a percentage of 0 to 100 covers."""
    if not 0 <= percentage <= 100:
        raise ValueError(f"percentage must be between 0 and 100, got {percentage!r}")
    return round(percentage * 100)


def in_rollout(salt: str, value: str, percentage: float) -> bool:
    """Whether ``value`` falls inside a rollout of ``percentage`` (0 to 100) under ``salt``.

    Monotonic in ``percentage``: a value in at p is in at every q >= p.
    """
    return bucket(salt, value) < percentage_to_buckets(percentage)
