"""Active health checks: their settings, and real HTTP probes of many targets at once.

A check is ``{"enabled", "path", "interval_s", "timeout_s", "healthy_threshold",
"unhealthy_threshold", "expected_statuses"}``; a target's own check overrides the checks of the
rules that list it, and the first enabled rule (by priority) with a check decides otherwise.
Probing is pure I/O with no database, so ``services.targets_probe_due`` owns every write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp

from canary_site.reading import Fields, is_integer, is_list, is_number
from routing.engine import InvalidRoutingDefinition

_KEYS = frozenset(
    {
        "enabled",
        "path",
        "interval_s",
        "timeout_s",
        "healthy_threshold",
        "unhealthy_threshold",
        "expected_statuses",
    }
)


@dataclass(frozen=True, slots=True)
class HealthCheckSettings:
    enabled: bool = True
    path: str = "/health"
    interval_s: float = 10.0
    timeout_s: float = 2.0
    healthy_threshold: int = 2  # consecutive successes that mark an unhealthy target healthy
    unhealthy_threshold: int = 3  # consecutive failures that mark a healthy target unhealthy
    expected_statuses: tuple[int, ...] = (200,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "path": self.path,
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "healthy_threshold": self.healthy_threshold,
            "unhealthy_threshold": self.unhealthy_threshold,
            "expected_statuses": list(self.expected_statuses),
        }


def parse_health_check(data: Any, *, field: str = "health_check") -> HealthCheckSettings | None:
    """Validate a stored or submitted check; None stays None. Errors name ``field.<key>``."""
    if data is None:
        return None
    check = Fields(data, field, InvalidRoutingDefinition)
    unknown = check.unknown(_KEYS)
    if unknown is not None:
        check.fail(unknown, "is not a known field")
    defaults = HealthCheckSettings()
    enabled = check.data.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        check.fail("enabled", "must be true or false")
    path = check.data.get("path", defaults.path)
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n"):
        check.fail("path", "must be a path starting with /")
    interval = _seconds(check, "interval_s", defaults.interval_s, minimum=1.0)
    timeout = _seconds(check, "timeout_s", defaults.timeout_s, minimum=0.05)
    if timeout > interval:
        check.fail("timeout_s", "cannot exceed interval_s")
    healthy = _count(check, "healthy_threshold", defaults.healthy_threshold)
    unhealthy = _count(check, "unhealthy_threshold", defaults.unhealthy_threshold)
    statuses = check.data.get("expected_statuses", list(defaults.expected_statuses))
    if (
        not is_list(statuses)
        or not statuses
        or not all(is_integer(code) and 100 <= code <= 599 for code in statuses)
    ):
        check.fail("expected_statuses", "must be a non-empty list of HTTP status codes")
    return HealthCheckSettings(
        enabled=enabled,
        path=path,
        interval_s=interval,
        timeout_s=timeout,
        healthy_threshold=healthy,
        unhealthy_threshold=unhealthy,
        expected_statuses=tuple(sorted(set(statuses))),
    )


def _seconds(check: Fields, key: str, default: float, *, minimum: float) -> float:
    value = check.data.get(key, default)
    if not is_number(value) or value != value:
        check.fail(key, "must be a number of seconds")
    if value < minimum:
        check.fail(key, f"must be at least {minimum:g} seconds")
    return float(value)


def _count(check: Fields, key: str, default: int) -> int:
    value = check.data.get(key, default)
    if not is_integer(value) or value < 1:
        check.fail(key, "must be an integer of at least 1")
    return value


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    key: Any  # the caller's handle for the target (its primary key)
    url: str
    settings: HealthCheckSettings


@dataclass(frozen=True, slots=True)
class ProbeResult:
    key: Any
    ok: bool
    detail: str  # "HTTP 200 in 3 ms", "timeout after 2 s", "connection refused"


def probe_url(endpoint: str, path: str) -> str:
    return endpoint.rstrip("/") + path


async def _probe_one(session: aiohttp.ClientSession, request: ProbeRequest) -> ProbeResult:
    settings = request.settings
    started = time.perf_counter()
    try:
        async with session.get(
            request.url,
            timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
            allow_redirects=False,
            headers={"User-Agent": "canary-health-check"},
        ) as response:
            # Reading the body proves the backend answers completely, and frees the connection.
            await response.read()
            elapsed = (time.perf_counter() - started) * 1000
            ok = response.status in settings.expected_statuses
            return ProbeResult(request.key, ok, f"HTTP {response.status} in {elapsed:.0f} ms")
    except TimeoutError:
        return ProbeResult(request.key, False, f"timeout after {settings.timeout_s:g} s")
    except aiohttp.ClientError as error:
        return ProbeResult(request.key, False, f"{error.__class__.__name__}: {error}"[:200])
    except ValueError as error:  # a malformed URL
        return ProbeResult(request.key, False, f"invalid URL: {error}"[:200])


async def probe_all(requests: Sequence[ProbeRequest]) -> list[ProbeResult]:
    """Probe every target concurrently; one slow target does not delay the others' verdicts."""
    if not requests:
        return []
    connector = aiohttp.TCPConnector(limit=64, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(_probe_one(session, item) for item in requests)))


def run_probes(requests: Sequence[ProbeRequest]) -> list[ProbeResult]:
    """Synchronous entry point for a Celery task (or any caller without an event loop; one
    that already runs a loop in this thread gets the probes run on a thread of their own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(probe_all(requests))
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, probe_all(requests)).result()
