"""Per-key rate limiting for OFREP, shared by every process through the cache.

Each key may evaluate ``limit`` times per one-second window (its own ``rate_limit`` or
``CANARY_OFREP_RATE_LIMIT``). The window's count lives in the shared cache (Redis in
production) under ``flags:ofrep-rate:<key>:<second>``, counted with Redis's atomic
``INCRBY``. So that a busy key does not cost a cache round trip per request, a process claims
tokens in blocks of 1% of the limit with one increment and spends them locally. A claim that
lands at counter positions ``(total - block, total]`` owns exactly the positions up to
``limit``, so the processes together never grant more than the limit; tokens a process claimed
but did not use before the window ended are lost, so under contention a key may get up to
(block - 1) fewer per process.

When the cache cannot be reached the limiter fails open, to a limit of its own: each process
grants every key its whole limit per window by itself (so N processes allow up to N times the
limit), and tries the cache again once a second. Evaluations keep being served from the
snapshot; the outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import threading
import time

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from canary_site.versions import Outage

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 1
BLOCK_SHARE = 100  # a block is 1/100 of the limit
RETRY_SECONDS = 1.0  # while the cache is down, how often a claim tries it again


class RateLimiter:
    def __init__(self) -> None:
        # key -> (window, tokens this process still holds in it)
        self._held: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._retry_at = 0.0
        # key -> the window this process last granted on its own, while the cache was down
        self._local: dict[str, int] = {}
        self.outage = Outage("The cache (for OFREP rate limits)", logger)

    def allow(self, key: str, limit: int) -> bool:
        """Spend one token of ``key`` in the current window; False when none are left.

        ``key`` names the evaluation key in the shared cache: a part of its digest, which
        unlike a row id is never reused.
        """
        window = int(time.time()) // WINDOW_SECONDS
        with self._lock:
            held_window, tokens = self._held.get(key, (window, 0))
            if held_window == window and tokens > 0:
                self._held[key] = (window, tokens - 1)
                return True
        granted = self._claim(key, window, limit)
        if granted <= 0:
            return False
        with self._lock:
            self._held[key] = (window, granted - 1)
        return True

    def retry_after(self) -> int:
        """Whole seconds until the next window opens (at least one, as Retry-After wants)."""
        return max(1, WINDOW_SECONDS - int(time.time()) % WINDOW_SECONDS)

    def reset(self) -> None:
        with self._lock:
            self._held.clear()
            self._local.clear()
            self._retry_at = 0.0
            self.outage = Outage(self.outage.what, logger)

    def _claim(self, key: str, window: int, limit: int) -> int:
        if limit <= 0:
            return 0
        if time.monotonic() < self._retry_at:
            return self._claim_locally(key, window, limit)
        block = max(1, limit // BLOCK_SHARE)
        try:
            total = _add_to_window(key, window, block)
        except Exception as error:
            # Fail open: refusing every evaluation because the counter is out of reach would
            # turn a cache outage into a flags outage.
            self._retry_at = time.monotonic() + RETRY_SECONDS
            self.outage.failed(error, "each process enforces the limits on its own meanwhile")
            return self._claim_locally(key, window, limit)
        self.outage.recovered()
        first = total - block + 1  # the counter positions this claim owns: first..total
        return max(0, min(total, limit) - first + 1)

    def _claim_locally(self, key: str, window: int, limit: int) -> int:
        """The whole limit once per window, counted by this process alone."""
        with self._lock:
            if self._local.get(key) == window:
                return 0
            self._local[key] = window
        return limit


def _add_to_window(key: str, window: int, amount: int) -> int:
    """Add ``amount`` to the shared count of ``key`` in ``window``; the new count."""
    timeout = WINDOW_SECONDS * 2 + 1
    if isinstance(caches["default"], RedisCache):
        cache_key = f"flags:ofrep-rate:{key}:{window}"
        # add() first: it sets a missing key with its expiry in one step, where incr() on a
        # missing key fails (and, racing an expiry, would create it without one).
        if cache.add(cache_key, amount, timeout=timeout):
            return amount
        try:
            return cache.incr(cache_key, amount)
        except ValueError:  # expired between add and incr
            cache.add(cache_key, amount, timeout=timeout)
            return amount
    # A cache without atomic increments (the embedded file cache): one entry per key holding
    # its window and count, so past windows leave no files behind. Two processes may race here,
    # which on one machine costs at most a few evaluations over the limit.
    cache_key = f"flags:ofrep-rate:{key}"
    stored = cache.get(cache_key)
    total = stored[1] + amount if isinstance(stored, tuple) and stored[0] == window else amount
    cache.set(cache_key, (window, total), timeout=timeout)
    return total


limiter = RateLimiter()
