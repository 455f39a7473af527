"""/metrics: one set of counters across gunicorn's workers, and the optional bearer token."""

from __future__ import annotations

import http.client
import itertools
import re
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import BASE_DIR, ManagedProcess, wait_for

HEALTHZ_COUNTER = re.compile(
    r'^django_http_responses_total_by_status_view_method_total\{method="GET",status="200",'
    r'view="healthz"\} (\S+)$',
    re.MULTILINE,
)
TOKEN = "scrape-me-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    # A new connection each time, so gunicorn's workers take turns as they would behind a
    # load balancer.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def start_gunicorn(
    spawn: Callable[..., ManagedProcess], var_dir: Path, port: int, **env: str
) -> ManagedProcess:
    """The web process as the Procfile starts it, on a port and a var directory of its own."""
    process = spawn(
        f"gunicorn-{port}",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "canary_site.wsgi:application",
            "--config",
            str(BASE_DIR / "canary_site" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "2",
        ],
        CANARY_VAR_DIR=str(var_dir),
        **env,
    )
    ready = wait_for(lambda: _answers(port), timeout=60)
    assert ready, process.output()
    return process


def _answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def healthz_served(text: str) -> float:
    match = HEALTHZ_COUNTER.search(text)
    return float(match.group(1)) if match else 0.0


def healthz_counts_by_worker(metrics_dir: Path) -> dict[str, float]:
    """What each worker's own file says it served, read as the library stores it."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if '"healthz"' in key and '"200"' in key and "by_status_view_method" in key:
                counts[path.stem] = counts.get(path.stem, 0.0) + value
    return counts


# --- the view -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics__without_a_token_set__is_public(client: Client):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert "# TYPE django_http_requests_latency_seconds_by_view_method histogram" in (
        response.content.decode()
    )


@pytest.mark.django_db
def test_metrics__with_a_token_set__refuses_a_scrape_without_it(client: Client, settings: Any):
    settings.CANARY_METRICS_TOKEN = TOKEN

    response = client.get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_metrics__with_a_token_set__refuses_the_wrong_token(client: Client, settings: Any):
    settings.CANARY_METRICS_TOKEN = TOKEN

    response = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "django_http" not in response.content.decode()


@pytest.mark.django_db
def test_metrics__with_a_token_set__answers_the_right_token(client: Client, settings: Any):
    settings.CANARY_METRICS_TOKEN = TOKEN

    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200
    assert "canary_celery_tasks_total" in response.content.decode()


# --- real gunicorn ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_gunicorn_with_two_workers__counters_never_go_back_and_sum_both_workers(
    spawn: Callable[..., ManagedProcess], tmp_path: Path
):
    port = free_port()
    var_dir = tmp_path / "var"
    start_gunicorn(spawn, var_dir, port, CANARY_METRICS_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert get(port, "/metrics")[0] == 401

    probes_before_load = healthz_served(get(port, "/metrics", auth)[1])
    sent = 0
    seen: list[float] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(25):
            statuses = list(pool.map(lambda _: get(port, "/healthz")[0], range(16)))
            assert statuses == [200] * 16
            sent += 16
            status, text = get(port, "/metrics", auth)
            assert status == 200
            seen.append(healthz_served(text))

    assert all(later >= earlier for earlier, later in itertools.pairwise(seen)), seen
    # Every probe served is counted once, whichever worker served it and whichever answered.
    assert seen[-1] == probes_before_load + sent
    by_worker = healthz_counts_by_worker(var_dir / "prometheus")
    assert len([count for count in by_worker.values() if count > 0]) == 2, by_worker
    assert sum(by_worker.values()) == seen[-1]


@pytest.mark.django_db
def test_gunicorn_restart__starts_the_counters_afresh(
    spawn: Callable[..., ManagedProcess], tmp_path: Path
):
    port = free_port()
    var_dir = tmp_path / "var"
    first = start_gunicorn(spawn, var_dir, port)
    for _ in range(10):
        get(port, "/healthz")
    assert healthz_served(get(port, "/metrics")[1]) >= 10
    first.stop()

    start_gunicorn(spawn, var_dir, port)

    # Only the probe that saw the new master up: no count survives from the last run's files.
    assert healthz_served(get(port, "/metrics")[1]) == 1
