"""The Prometheus pull against a real Prometheus server scraping a small local exporter."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from health import services
from health.models import MetricBucket, PrometheusQuery
from tests.conftest import wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# No skip when it is missing: .ci/run installs Debian's prometheus, and a run without it must
# fail rather than pass quietly.
pytestmark = [pytest.mark.processes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Exporter:
    """A process's worth of metrics: checkout 2.0 serving requests, and a queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "demo_requests", "Requests served.", ["service", "version"], registry=self.registry
        )
        self.queue = Gauge("demo_queue_depth", "Jobs waiting.", ["service"], registry=self.registry)
        self.queue.labels(service="checkout").set(7)
        self.server, _thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.port = self.server.server_port
        self.stopping = threading.Event()
        threading.Thread(target=self.serve_traffic, daemon=True).start()

    def serve_traffic(self) -> None:
        while not self.stopping.wait(0.1):
            self.requests.labels(service="checkout", version="2.0").inc(5)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on a free loopback port, scraping the exporter every second."""
    exporter = Exporter()
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: demo\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def has_series() -> bool:
            try:
                with urllib.request.urlopen(
                    f"{url}/api/v1/query?query=demo_requests_total", timeout=2
                ) as response:
                    return b'"version":"2.0"' in response.read()
            except OSError:
                return False

        ready = wait_for(has_series, timeout=60, interval=0.3)
        assert ready, (workdir / "prometheus.log").read_text(errors="replace")[-3000:]
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        exporter.stop()


@pytest.fixture
def pull_settings(settings: Any, prometheus: str) -> Any:
    settings.CANARY_PROMETHEUS_URL = prometheus
    settings.CANARY_PROMETHEUS_PULL_SECONDS = 5
    settings.CANARY_PROMETHEUS_CATCH_UP_PERIODS = 1
    return settings


@pytest.mark.django_db
def test_pull__stores_what_prometheus_answers_for_each_series(pull_settings):
    services.prometheus_query_create(
        name="checkout requests",
        metric="requests",
        query='sum(increase(demo_requests_total{service="{{service}}",version="{{version}}"}'
        "[{{window}}]))",
        service="checkout",
        versions=["2.0"],
    )
    services.prometheus_query_create(
        name="queue depth",
        metric="custom:queue_depth",
        query='max(demo_queue_depth{service="{{service}}"})',
        service="checkout",
        versions=["2.0"],
    )

    def pulled() -> Any:
        # A fresh Prometheus may not hold two samples of the counter in a period yet.
        services.prometheus_pull()
        return MetricBucket.objects.filter(
            version="2.0", metric="requests", requests__gt=0
        ).exists()

    assert wait_for(pulled, timeout=30, interval=1), PrometheusQuery.objects.values("last_error")
    requests = sum(
        MetricBucket.objects.filter(metric="requests").values_list("requests", flat=True)
    )
    depth = MetricBucket.objects.filter(metric="custom:queue_depth").first()
    assert requests > 0
    assert depth is not None and depth.value_max == 7.0
    query = PrometheusQuery.objects.get(name="checkout requests")
    assert query.last_error == "" and query.last_pulled_at is not None


@pytest.mark.django_db
def test_pull__twice_in_one_period__fetches_and_counts_once(pull_settings):
    services.prometheus_query_create(
        name="served",
        metric="custom:served_total",
        query='sum(demo_requests_total{service="{{service}}",version="{{version}}"})',
        service="checkout",
        versions=["2.0", "1.0"],
    )
    now = timezone.now()

    first = services.prometheus_pull(now=now)
    again = services.prometheus_pull(now=now + timedelta(seconds=1))

    assert first.queries == 2 and not first.errors
    assert first.values == 1  # 1.0 has no such series: no data, which is not zero
    assert again.queries == 0 and again.values == 0
    stored = MetricBucket.objects.get(metric="custom:served_total")
    assert (stored.version, stored.value_count) == ("2.0", 1)


@pytest.mark.django_db
def test_pull__a_query_prometheus_refuses__is_recorded_on_the_query(pull_settings):
    services.prometheus_query_create(
        name="broken", metric="errors", query="sum(rate(", service="checkout", versions=["2.0"]
    )

    report = services.prometheus_pull()

    assert report.errors and "broken" in report.errors[0]
    query = PrometheusQuery.objects.get()
    assert "parse error" in query.last_error
    assert query.last_pulled_at is None
    assert not MetricBucket.objects.exists()


@pytest.mark.django_db
def test_pull__with_prometheus_unreachable__records_the_error_and_stores_nothing(settings):
    settings.CANARY_PROMETHEUS_URL = f"http://127.0.0.1:{free_port()}"
    services.prometheus_query_create(
        name="requests", metric="requests", query="up", service="checkout", versions=["2.0"]
    )

    report = services.prometheus_pull()

    assert report.errors and "could not query" in report.errors[0]
    assert "could not query" in PrometheusQuery.objects.get().last_error
    assert not MetricBucket.objects.exists()
