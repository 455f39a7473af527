"""The proxy's own Prometheus metrics, on a port of their own (``runproxy --metrics-port``,
``CANARY_PROXY_METRICS_PORT``; off by default).

What each request costs the proxy is a dictionary lookup and a few integer additions on the
event loop: requests, errors and a latency histogram per (service, version, target) live in
plain counters (:class:`TargetCounts`) that prometheus_client's collector interface reads when
Prometheus scrapes. prometheus_client's own ``Counter`` and ``Histogram`` take a lock for every
increment, which the event loop, the only writer, does not need.

The page is served by prometheus_client's ``start_http_server`` on a daemon thread: a scrape
never queues behind the proxy's requests, nor they behind it. That thread reads only what the
event loop has finished writing: the counters (integers, read whole), and the gauges (circuit
breakers, requests in flight, upstream connections) as the loop last published them, once a
second (:meth:`ProxyMetrics.publish`), since the breakers and the pool are the loop's alone.

The page is this process's: its own registry, with the process and garbage collector metrics
and none of the web process's (which read the database).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Upper bounds of the latency histogram, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKET_LABELS = (*(str(bound) for bound in LATENCY_BUCKETS), "+Inf")
# The breaker's state as a number a graph can draw.
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
# Why the proxy answered without forwarding (the error codes of its answers).
REFUSALS = ("not_loaded", "not_found", "rate_limited", "no_healthy_target")
# How often the event loop publishes the gauges.
PUBLISH_SECONDS = 1.0

Key = tuple[str, str, str]  # (service, version, target id)


class TargetCounts:
    """Requests, errors and latencies of one (service, version, target), since the proxy began.

    Written by the event loop only; ``buckets`` are per bucket (not cumulative), the last for
    latencies above every bound."""

    __slots__ = ("buckets", "errors", "requests", "seconds")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def observe(self, seconds: float, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
        self.seconds += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1


@dataclass(frozen=True)
class Gauges:
    """What the event loop last published: each a tuple of (labels..., value)."""

    breakers: tuple[tuple[str, str, int], ...] = ()
    in_flight: tuple[tuple[str, str, int], ...] = ()
    # (upstream, open connections, idle connections)
    upstreams: tuple[tuple[str, int, int], ...] = ()
    services: int = 0
    loaded: bool = False


class ProxyMetrics:
    """This proxy's counters and gauges, and the collector that exposes them."""

    def __init__(self) -> None:
        self._series: dict[Key, TargetCounts] = {}
        self._refused: dict[tuple[str, str], int] = {}
        # Taken only to add or drop a series and to copy them for a scrape, never per request.
        self._lock = threading.Lock()
        self.gauges = Gauges()

    # -- the event loop's side ---------------------------------------------------------------

    def target(self, service: str, version: str, target: str) -> TargetCounts:
        """The counts of one (service, version, target), made the first time it is seen."""
        key = (service, version, target)
        counts = self._series.get(key)
        if counts is None:
            with self._lock:
                counts = self._series.setdefault(key, TargetCounts())
        return counts

    def observe(
        self, service: str, version: str, target: str, seconds: float, failed: bool
    ) -> None:
        """One request to a target (each try of a retried request is one): its time and
        whether it failed (a connection error, a timeout or a 5xx)."""
        counts = self._series.get((service, version, target))
        if counts is None:
            counts = self.target(service, version, target)
        counts.observe(seconds, failed)

    def refused(self, service: str, reason: str) -> None:
        """A request the proxy answered itself; ``service`` is empty when it named none the
        proxy knows (a name from the request would let clients make up labels)."""
        key = (service, reason)
        count = self._refused.get(key)
        if count is None:
            with self._lock:
                self._refused[key] = self._refused.get(key, 0) + 1
        else:
            self._refused[key] = count + 1

    def retain(self, known: Iterable[Key]) -> None:
        """Keep the series of these (service, version, target) only: after a reload, those of
        removed targets (or of versions a target no longer runs) go, so memory and the page
        stay bounded by the routing that exists."""
        keep = set(known)
        with self._lock:
            for key in [key for key in self._series if key not in keep]:
                del self._series[key]

    def publish(self, gauges: Gauges) -> None:
        self.gauges = gauges

    # -- the scrape's side -------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def _families(self) -> dict[str, Metric]:
        item = ["service", "version", "target"]
        return {
            "requests": CounterMetricFamily(
                "canary_proxy_requests",
                "Requests forwarded to a target (each try of a retried request counts).",
                labels=item,
            ),
            "errors": CounterMetricFamily(
                "canary_proxy_errors",
                "Requests to a target that failed: a connection error, a timeout or a 5xx.",
                labels=item,
            ),
            "duration": HistogramMetricFamily(
                "canary_proxy_request_duration_seconds",
                "Seconds from sending a request to a target until its answer was relayed.",
                labels=item,
            ),
            "refused": CounterMetricFamily(
                "canary_proxy_refused",
                "Requests the proxy answered itself, by service (empty when none it knows was "
                "named) and reason.",
                labels=["service", "reason"],
            ),
            "breaker": GaugeMetricFamily(
                "canary_proxy_breaker_state",
                "Each target's circuit breaker: 0 closed, 1 half-open, 2 open.",
                labels=["service", "target"],
            ),
            "in_flight": GaugeMetricFamily(
                "canary_proxy_in_flight",
                "Requests in flight to each target.",
                labels=["service", "target"],
            ),
            "connections": GaugeMetricFamily(
                "canary_proxy_upstream_connections",
                "Connections to each upstream endpoint: open (in use or idle), and idle in the "
                "keep-alive pool.",
                labels=["upstream", "state"],
            ),
            "services": GaugeMetricFamily(
                "canary_proxy_services", "Services in the routing this proxy has loaded."
            ),
            "loaded": GaugeMetricFamily(
                "canary_proxy_routing_loaded",
                "1 once the proxy has loaded its routing (until then it answers 503).",
            ),
        }

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        with self._lock:
            series = list(self._series.items())
            refused = list(self._refused.items())
        for (service, version, target), counts in sorted(series):
            labels = [service, version, target]
            families["requests"].add_metric(labels, counts.requests)
            families["errors"].add_metric(labels, counts.errors)
            cumulative, buckets = 0, []
            for name, count in zip(_BUCKET_LABELS, list(counts.buckets), strict=True):
                cumulative += count
                buckets.append((name, cumulative))
            families["duration"].add_metric(labels, buckets, sum_value=counts.seconds)
        for (service, reason), count in sorted(refused):
            families["refused"].add_metric([service, reason], count)
        gauges = self.gauges
        for service, target, value in gauges.breakers:
            families["breaker"].add_metric([service, target], value)
        for service, target, count in gauges.in_flight:
            families["in_flight"].add_metric([service, target], count)
        for upstream, open_count, idle in gauges.upstreams:
            families["connections"].add_metric([upstream, "open"], open_count)
            families["connections"].add_metric([upstream, "idle"], idle)
        families["services"].add_metric([], gauges.services)
        families["loaded"].add_metric([], 1 if gauges.loaded else 0)
        return iter(families.values())

    def registry(self) -> CollectorRegistry:
        """A registry of this proxy's page: these metrics and the process's own."""
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self)
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        return registry

    def serve(self, *, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; the server, to stop it.
        Raises OSError when the port cannot be bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry())
        return server


def breaker_value(state: str) -> int:
    return BREAKER_VALUES.get(state, 0)
