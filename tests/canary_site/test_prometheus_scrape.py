"""A real Prometheus scraping the web process's /metrics (gunicorn, two workers) and a real
proxy's metrics port, with real rows in the database and real traffic through the proxy; and
the Grafana dashboard in docs/grafana, whose every query names only metrics these pages expose
and is valid PromQL to that Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from tests.canary_site.exposition import names, page_samples
from tests.canary_site.test_metrics import get, start_gunicorn
from tests.conftest import BASE_DIR, ManagedProcess, wait_for
from tests.routing.conftest import (  # noqa: F401  (backends, start_*: fixtures, by name)
    CANARY,
    STABLE,
    backends,
    fetch_many,
    free_port,
    http_get,
    start_backend,
    start_proxy,
)

DASHBOARD = BASE_DIR / "docs" / "grafana" / "canary.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TOKEN = "scrape-me-0123456789"

# What a query's words are besides metric names: PromQL's keywords and aggregation modifiers.
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}
# The dashboard's variables, as Grafana fills them in.
VARIABLES = {"$__rate_interval": "1m", "$service": ".*"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group()
        if word in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        found.add(word)
    return found


def filled(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- the dashboard, on its own -------------------------------------------------------------------


def test_dashboard__is_a_grafana_import_with_its_datasource_as_an_input():
    dashboard = json.loads(DASHBOARD.read_text())

    assert dashboard["title"] == "Canary" and dashboard["uid"]
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    exprs = dashboard_exprs()
    assert all(names_in.startswith("canary_") for e in exprs for names_in in metric_names(e))
    # The parser itself: functions, labels, ranges and modifiers are no metric names.
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{service=~"$s"}[5m])))'
        " / on (service) b_total == 1"
    ) == {"a_bucket", "b_total"}


# --- a real Prometheus ---------------------------------------------------------------------------


def prometheus_query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def one_value(port: int, expr: str) -> float | None:
    """The value of a query that answers one series, or None while it does not."""
    result = prometheus_query(port, expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def start_prometheus(
    spawn: Callable[..., ManagedProcess], directory: Path, *, web: int, proxy_metrics: int
) -> int:
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: canary\n"
        "    authorization:\n"
        "      type: Bearer\n"
        f"      credentials: {TOKEN}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{web}']\n"
        "  - job_name: canary-proxy\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{proxy_metrics}']\n"
    )
    process = spawn(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
    )

    def ready() -> bool:
        answer = http_get(f"http://127.0.0.1:{port}/-/ready", timeout=1)
        return answer is not None and answer[0] == 200

    assert wait_for(ready, timeout=60), process.output()
    return port


def make_rows(make_user: Callable[..., Any], servers: Any) -> dict[str, Any]:
    """A running deployment of "shop" over the real backends (the proxy routes it), a rolled
    back one of "cart" with its rollback execution, an open alert and an active kill switch."""
    from deployments import services as deployment_services
    from deployments.transitions import TransitionRequest, deployments_transition
    from flags import services as flag_services
    from health import services as health_services
    from rollback import services as rollback_services
    from routing import services as routing_services

    shop = routing_services.service_create(name="shop", stable_version=STABLE)
    for backend, name in zip(servers, ("stable", "canary"), strict=True):
        routing_services.target_create(
            service=shop, name=name, endpoint=backend.url, version=backend.version
        )
    running = deployment_services.deployment_create(
        config={
            "name": "shop 2.0",
            "serviceName": "shop",
            "stableVersion": STABLE,
            "canaryVersion": CANARY,
            "phases": [
                {"trafficPercentage": share, "durationMs": 3_600_000, "successCriteria": []}
                for share in (10, 100)
            ],
            "maxDeploymentTimeMs": 7_200_000,
        }
    )
    deployment_services.deployment_transition(deployment_id=running.pk, action="start")

    cart = routing_services.service_create(name="cart", stable_version=STABLE)
    for name, port, version in (("stable", 9, STABLE), ("canary", 10, CANARY)):
        routing_services.target_create(
            service=cart, name=name, endpoint=f"http://127.0.0.1:{port}", version=version
        )
    rolled_back = deployment_services.deployment_create(
        config={
            "name": "cart 2.0",
            "serviceName": "cart",
            "stableVersion": STABLE,
            "canaryVersion": CANARY,
            "phases": [
                {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
                for share in (20, 100)
            ],
        }
    )
    deployment_services.deployment_transition(deployment_id=rolled_back.pk, action="start")
    now = timezone.now()
    deployments_transition(
        requests=[
            TransitionRequest(
                deployment_id=rolled_back.pk,
                action="rollback",
                reason="errors",
                evidence={"faultStart": (now - timedelta(seconds=4)).isoformat()},
            ),
            TransitionRequest(
                deployment_id=rolled_back.pk,
                action="finish_rollback",
                reason="out",
                expected_status="rolling_back",
            ),
        ],
        now=now,
    )

    with transaction.atomic():  # raised in its caller's transaction
        health_services.alert_raise(
            service="shop",
            canary_version=CANARY,
            policy=None,
            title="shop 2.0 errors",
            message="the canary's error rate is above the threshold",
            severity="critical",
        )
    flag_services.flag_create(key="new-checkout", status="enabled")
    flag_services.flag_create(key="payments", status="enabled", kill_switch_enabled=True)
    switch = rollback_services.kill_switch_create(
        definition={"name": "stop-payments", "scope": "flag", "flags": ["payments"]}
    )
    rollback_services.kill_switch_trigger(
        switch=switch, reason="payments are failing", actor=make_user("erin", roles=["engineer"])
    )
    _key, secret = flag_services.evaluation_key_create(name="checkout-service")
    return {"running": running, "secret": secret}


def evaluate_flag(port: int, key: str, secret: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ofrep/v1/evaluate/flags/{key}",
        data=json.dumps({"context": {"targetingKey": "u1"}}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": secret, "Connection": "close"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_prometheus__scrapes_the_domain_and_the_proxy__and_the_dashboard_reads_them(
    spawn, tmp_path, make_user, request
):
    servers = request.getfixturevalue("backends")
    rows = make_rows(make_user, servers)
    web = free_port()
    start_gunicorn(
        spawn,
        tmp_path / "var",
        web,
        CANARY_METRICS_TOKEN=TOKEN,
        CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS="1",
    )
    proxy_metrics = free_port()
    proxy = request.getfixturevalue("start_proxy")("shop", "--metrics-port", str(proxy_metrics))
    answers = fetch_many(proxy.url, [{"headers": {}}] * 300)
    assert all(answer.status == 200 for answer in answers)
    assert {answer.version for answer in answers} == {STABLE, CANARY}
    unknown = http_get(f"{proxy.url}/", headers={"X-Canary-Service": "nowhere"})
    assert unknown is not None and unknown[0] == 404
    for _ in range(3):
        assert evaluate_flag(web, "new-checkout", rows["secret"]) == 200

    prometheus = start_prometheus(spawn, tmp_path, web=web, proxy_metrics=proxy_metrics)

    def scraped(expr: str, expected: float) -> bool:
        return one_value(prometheus, expr) == expected

    for expr, expected in (
        ('up{job="canary"}', 1),
        ('up{job="canary-proxy"}', 1),
        ('canary_deployments{status="running"}', 1),
        ('canary_deployments{status="rolled_back"}', 1),
        (
            f'canary_deployment_canary_share_percent{{deployment="{rows["running"].pk}",'
            f'service="shop"}}',
            10,
        ),
        ('canary_rollbacks_total{service="cart",trigger="automatic"}', 1),
        ('canary_rollback_out_of_traffic_seconds_bucket{service="cart",le="2.0"}', 0),
        ('canary_rollback_out_of_traffic_seconds_bucket{service="cart",le="5.0"}', 1),
        ('canary_alerts_open{severity="critical"}', 1),
        ("canary_kill_switches_active", 1),
        ('canary_kill_switches{state="active"}', 1),
        ('canary_flags{status="killed"}', 1),
        ('canary_flag_evaluations_total{flag="new-checkout",variant="on"}', 3),
        ('canary_proxy_refused_total{service="",reason="not_found"}', 1),
        ('canary_proxy_breaker_state{service="shop",target="canary"}', 0),
        ("canary_proxy_routing_loaded", 1),
    ):
        assert wait_for(lambda e=expr, v=expected: scraped(e, v), timeout=60), (
            expr,
            prometheus_query(prometheus, expr),
        )

    # Every request the proxy forwarded is counted once, split by version as it was served.
    proxy_page = page_samples(get(proxy_metrics, "/metrics")[1])
    forwarded = sum(
        count
        for (name, labels), count in proxy_page.items()
        if name == "canary_proxy_requests_total" and dict(labels)["service"] == "shop"
    )
    assert forwarded >= len(answers)
    total = 'sum(canary_proxy_requests_total{service="shop"})'
    assert wait_for(lambda: scraped(total, forwarded), timeout=60), prometheus_query(
        prometheus, total
    )
    canary_share = one_value(
        prometheus,
        f'sum(canary_proxy_requests_total{{service="shop",version="{CANARY}"}}) / {total}',
    )
    assert canary_share is not None and 0.02 < canary_share < 0.25

    # The dashboard: every metric it names is on one of the two pages and in Prometheus, and
    # Prometheus accepts every query.
    web_page = page_samples(get(web, "/metrics", {"Authorization": f"Bearer {TOKEN}"})[1])
    exposed = names(web_page) | names(proxy_page)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{prometheus}/api/v1/label/__name__/values", timeout=10
    ) as response:
        stored = set(json.load(response)["data"])
    exprs = dashboard_exprs()
    named = set().union(*(metric_names(expr) for expr in exprs))
    assert named, exprs
    assert named <= exposed, sorted(named - exposed)
    assert named <= stored, sorted(named - stored)
    for expr in exprs:
        prometheus_query(prometheus, filled(expr))
    # A panel's query draws something from this install: the canary's share per deployment.
    shares = prometheus_query(prometheus, filled(next(e for e in exprs if "share" in e)))
    assert [float(item["value"][1]) for item in shares] == [10.0]
    assert proxy.process.proc.poll() is None
