"""The proxy's own /metrics: counters per service, version and target, the latency histogram,
refusals, breakers, requests in flight and the upstream pool; in process against real backends,
and ``runproxy --metrics-port`` as a real process."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import generate_latest

from routing import services
from routing.engine import build_service_snapshot
from routing.metrics import LATENCY_BUCKETS, ProxyMetrics
from routing.proxy import RoutingProxy
from routing.upstream import FastUpstreamClient
from tests.canary_site.exposition import page_samples, samples_of, value
from tests.conftest import wait_for
from tests.routing.conftest import CANARY, STABLE, fetch_many, free_port, http_get

ITEM = {"service": "shop", "version": STABLE, "target": "stable"}


def scrape(port: int) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return page_samples(response.read().decode())


# --- the counters --------------------------------------------------------------------------------


def test_counts__requests_errors_and_a_cumulative_histogram_per_target():
    metrics = ProxyMetrics()
    for seconds in (0.0005, 0.001, 0.02, 0.3, 30.0):
        metrics.observe("shop", STABLE, "stable", seconds, False)
    metrics.observe("shop", STABLE, "stable", 0.02, True)
    metrics.observe("shop", CANARY, "canary", 0.004, False)
    metrics.refused("", "not_found")
    metrics.refused("shop", "rate_limited")
    metrics.refused("shop", "rate_limited")

    samples = samples_of(metrics.collect())

    assert value(samples, "canary_proxy_requests_total", **ITEM) == 6
    assert value(samples, "canary_proxy_errors_total", **ITEM) == 1
    histogram = "canary_proxy_request_duration_seconds"
    # A latency on a bound counts in that bound's bucket (le is "at most").
    assert value(samples, f"{histogram}_bucket", **ITEM, le="0.001") == 2
    assert value(samples, f"{histogram}_bucket", **ITEM, le="0.025") == 4
    assert value(samples, f"{histogram}_bucket", **ITEM, le="10.0") == 5
    assert value(samples, f"{histogram}_bucket", **ITEM, le="+Inf") == 6
    assert value(samples, f"{histogram}_count", **ITEM) == 6
    assert value(samples, f"{histogram}_sum", **ITEM) == pytest.approx(30.3415)
    buckets = [
        value(samples, f"{histogram}_bucket", **ITEM, le=str(bound)) for bound in LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets)
    canary = {"service": "shop", "version": CANARY, "target": "canary"}
    assert value(samples, "canary_proxy_requests_total", **canary) == 1
    assert value(samples, "canary_proxy_refused_total", service="", reason="not_found") == 1
    assert value(samples, "canary_proxy_refused_total", service="shop", reason="rate_limited") == 2


def test_retain__drops_the_series_of_targets_the_routing_no_longer_has():
    metrics = ProxyMetrics()
    metrics.observe("shop", STABLE, "stable", 0.01, False)
    metrics.observe("shop", CANARY, "canary", 0.01, False)

    metrics.retain([("shop", STABLE, "stable")])

    samples = samples_of(metrics.collect())
    assert value(samples, "canary_proxy_requests_total", **ITEM) == 1
    canary = {"service": "shop", "version": CANARY, "target": "canary"}
    assert value(samples, "canary_proxy_requests_total", **canary) is None


def test_the_page__is_the_proxys_own__with_its_process_metrics():
    text = generate_latest(ProxyMetrics().registry()).decode()

    assert "process_resident_memory_bytes" in text
    assert "canary_proxy_routing_loaded 0.0" in text
    # Nothing of the web process's page, which reads the database.
    assert "canary_deployments" not in text and "django_http" not in text


# --- in process, against real backends -----------------------------------------------------------


def shop_snapshot(stable: str, canary: str) -> Any:
    return build_service_snapshot(
        {
            "name": "shop",
            "stable_version": STABLE,
            "targets": [
                {"id": "stable", "endpoint": stable, "version": STABLE},
                {"id": "canary", "endpoint": canary, "version": CANARY},
            ],
            "rules": [
                {
                    "id": 1,
                    "strategy": "header",
                    "strategy_key": "x-target",
                    "targets": [{"id": "stable", "weight": 5000}, {"id": "canary", "weight": 5000}],
                    "failover": {"fail_open": False},
                    "circuit_breaker": {"failure_threshold": 2, "recovery_timeout_s": 600},
                }
            ],
        }
    )


def scope(target: str, host: str = "shop") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", host.encode()), (b"x-target", target.encode())],
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
    }


@pytest.mark.processes
def test_proxy_in_process__counts_each_target__its_breaker_and_its_pool(backends):
    stable, canary = backends
    canary.fail()
    metrics = ProxyMetrics()
    # No default service: a request names its own by its Host.
    proxy = RoutingProxy(publish=lambda *_: None, metrics=metrics)
    proxy.install({"shop": shop_snapshot(stable.url, canary.url)}, "v1")

    async def request(target: str, host: str = "shop") -> int:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def record(message: dict[str, Any]) -> None:
            sent.append(message)

        await proxy.handle(scope(target, host), receive, record)
        return sent[0]["status"]

    async def main() -> list[int]:
        proxy.client = FastUpstreamClient(connect_timeout=2, read_timeout=30)
        statuses = [await request("stable") for _ in range(5)]
        statuses += [await request("canary") for _ in range(2)]
        statuses.append(await request("stable", host="nowhere"))
        # The gauges as the event loop publishes them once a second.
        metrics.publish(proxy.metrics_gauges())
        await proxy.client.close()
        return statuses

    # In a thread of its own: a browser test's Playwright may leave this thread's loop running.
    with ThreadPoolExecutor(1) as pool:
        statuses = pool.submit(asyncio.run, main()).result()

    assert statuses == [200] * 5 + [500, 500, 404]
    samples = samples_of(metrics.collect())
    assert value(samples, "canary_proxy_requests_total", **ITEM) == 5
    assert value(samples, "canary_proxy_errors_total", **ITEM) == 0
    failing = {"service": "shop", "version": CANARY, "target": "canary"}
    assert value(samples, "canary_proxy_requests_total", **failing) == 2
    assert value(samples, "canary_proxy_errors_total", **failing) == 2
    assert value(samples, "canary_proxy_request_duration_seconds_count", **ITEM) == 5
    assert value(samples, "canary_proxy_refused_total", service="", reason="not_found") == 1
    # Two failures reach the canary's threshold: its breaker is open, stable's closed.
    assert value(samples, "canary_proxy_breaker_state", service="shop", target="canary") == 2
    assert value(samples, "canary_proxy_breaker_state", service="shop", target="stable") == 0
    assert value(samples, "canary_proxy_in_flight", service="shop", target="stable") == 0
    # One keep-alive connection to each backend served its requests in turn, idle at the end.
    for backend in backends:
        upstream = backend.url
        assert value(samples, "canary_proxy_upstream_connections", upstream=upstream, state="open")
        assert value(
            samples, "canary_proxy_upstream_connections", upstream=upstream, state="open"
        ) == value(samples, "canary_proxy_upstream_connections", upstream=upstream, state="idle")
    assert value(samples, "canary_proxy_services") == 1
    assert value(samples, "canary_proxy_routing_loaded") == 1


@pytest.mark.processes
def test_metrics_server__serves_the_page_from_its_own_thread_and_port():
    metrics = ProxyMetrics()
    metrics.observe("shop", STABLE, "stable", 0.01, False)
    port = free_port()
    server = metrics.serve(host="127.0.0.1", port=port)
    try:
        samples = scrape(port)
        assert value(samples, "canary_proxy_requests_total", **ITEM) == 1
        metrics.observe("shop", STABLE, "stable", 0.01, False)
        assert value(scrape(port), "canary_proxy_requests_total", **ITEM) == 2
    finally:
        server.shutdown()
        server.server_close()


# --- runproxy ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_runproxy_with_a_metrics_port__counts_the_traffic_it_routes(backends, start_proxy):
    stable, canary = backends
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="canary", endpoint=canary.url, version=CANARY)
    services.rule_create(service=service, name="split", targets={"stable": 75, "canary": 25})
    metrics_port = free_port()
    proxy = start_proxy("shop", "--metrics-port", str(metrics_port))
    before = scrape(metrics_port)
    routed_before = {
        version: value(
            before,
            "canary_proxy_requests_total",
            service="shop",
            version=version,
            target=target,
        )
        or 0
        for version, target in ((STABLE, "stable"), (CANARY, "canary"))
    }

    answers = fetch_many(proxy.url, [{"headers": {}}] * 400)

    assert all(answer.status == 200 for answer in answers)
    samples = scrape(metrics_port)
    for version, target in ((STABLE, "stable"), (CANARY, "canary")):
        item = {"service": "shop", "version": version, "target": target}
        served = sum(answer.version == version for answer in answers)
        assert served > 0
        assert value(samples, "canary_proxy_requests_total", **item) == (
            routed_before[version] + served
        )
        assert value(samples, "canary_proxy_errors_total", **item) == 0
    # The gauges come from the proxy's event loop within a second or so.
    assert wait_for(
        lambda: value(
            scrape(metrics_port),
            "canary_proxy_upstream_connections",
            upstream=stable.url,
            state="open",
        ),
        timeout=10,
    ), proxy.process.output()
    gauges = scrape(metrics_port)
    assert value(gauges, "canary_proxy_breaker_state", service="shop", target="canary") == 0
    assert value(gauges, "canary_proxy_routing_loaded") == 1
    # The proxy's own port answers as before, and its answers carry no metrics.
    answer = http_get(f"{proxy.url}/metrics")
    assert answer is not None and answer[1]["X-Canary-Version"] in (STABLE, CANARY)


def test_runproxy__refuses_a_metrics_port_it_cannot_use(settings):
    from django.core.management import CommandError, call_command

    from routing import conf

    assert conf.proxy_metrics_port() == 0
    port = free_port()
    with pytest.raises(CommandError, match="--metrics-port must differ"):
        call_command("runproxy", port=port, metrics_port=port)
    with pytest.raises(CommandError, match="--metrics-port must be a port"):
        call_command("runproxy", port=free_port(), metrics_port=70000)
    settings.CANARY_PROXY_METRICS_PORT = "nine"
    with pytest.raises(CommandError, match="CANARY_PROXY_METRICS_PORT"):
        call_command("runproxy", port=free_port())
    settings.CANARY_PROXY_METRICS_PORT = ""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"Cannot serve the proxy's metrics on port {busy}"):
            call_command("runproxy", port=free_port(), metrics_port=busy)
