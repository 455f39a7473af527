"""The nginx export: it passes ``nginx -t`` and real nginx splits real traffic with it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from routing import services
from tests.conftest import wait_for
from tests.routing.conftest import CANARY, STABLE, fetch_many, free_port, http_get

pytestmark = pytest.mark.django_db

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

MAIN_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/canary.conf;
}}
"""


@pytest.fixture
def client(engineer) -> APIClient:
    client = APIClient()
    client.force_authenticate(engineer)
    return client


def export(client: APIClient, tmp_path: Path, service: str, listen: str) -> Path:
    response = client.get(f"/api/v1/routing/services/{service}/nginx.conf", {"listen": listen})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    (tmp_path / "canary.conf").write_text(response.content.decode())
    main = tmp_path / "nginx.conf"
    main.write_text(MAIN_CONF.format(tmp=tmp_path))
    return main


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(conf.parent),
            "-c",
            str(conf),
            "-e",
            str(conf.parent / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_nginx_export__of_every_kind_of_rule__passes_nginx_t(client, tmp_path):
    service = services.service_create(name="checkout", stable_version="1.4.0")
    for name, endpoint, version, healthy in [
        ("stable-1", "http://127.0.0.1:9001", "1.4.0", True),
        ("stable-2", "http://stable-2.internal:9001", "1.4.0", False),
        ("canary-1", "https://10.0.0.9:8443", "1.5.0", True),
    ]:
        services.target_create(
            service=service, name=name, endpoint=endpoint, version=version, healthy=healthy
        )
    services.rule_create(
        service=service,
        name="internal",
        priority=1,
        conditions=[
            {"source": "client_ip", "operator": "cidr", "values": ["10.0.0.0/8", "fd00::/8"]},
            {"source": "path", "operator": "regex", "values": [r'^/api/v[12]/"\d+$']},
            {"source": "method", "operator": "in", "values": ["GET", "HEAD"]},
        ],
        targets={"canary-1": 100},
        rate_limit={"rps": 0.5, "burst": 2},
    )
    services.rule_create(
        service=service,
        name="pinned",
        priority=2,
        strategy="header",
        strategy_key="x-target",
        conditions=[{"source": "cookie", "name": "beta", "operator": "prefix", "values": ["y"]}],
        targets={"stable-1": 50, "canary-1": 50},
    )
    services.rule_create(
        service=service,
        name="pool",
        priority=3,
        strategy="least_connections",
        conditions=[
            {"source": "query", "name": "pool", "operator": "contains", "values": ["1"]},
            {
                "source": "header",
                "name": "x-no",
                "operator": "equals",
                "values": ["1"],
                "negate": True,
            },
        ],
        targets={"stable-1": 0, "stable-2": 0},
    )
    services.rule_create(
        service=service,
        name="split",
        priority=10,
        targets={"stable-1": 87.5, "canary-1": 12.5},
        affinity={"type": "cookie", "name": "canary_session", "ttl_s": 3600, "secure": True},
        failover={"retries": 2, "fallback_target_ids": ["stable-2"], "fail_open": False},
        circuit_breaker={"failure_threshold": 3, "recovery_timeout_s": 30},
        rate_limit={"rps": 200, "burst": 50},
    )

    conf = export(client, tmp_path, "checkout", f"127.0.0.1:{free_port()}")
    result = nginx_test(conf)

    assert result.returncode == 0, result.stderr + (tmp_path / "canary.conf").read_text()
    text = (tmp_path / "canary.conf").read_text()
    assert "split_clients" in text and "least_conn;" in text and "limit_req_zone" in text
    assert "12.50%" in text


def test_nginx_export__real_nginx_splits_traffic_within_3_percent__and_honours_rules(
    client, tmp_path, backends, spawn
):
    stable, canary = backends
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="canary", endpoint=canary.url, version=CANARY)
    services.rule_create(
        service=service,
        name="beta",
        priority=1,
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )
    services.rule_create(
        service=service,
        name="sticky",
        priority=2,
        conditions=[{"source": "path", "operator": "prefix", "values": ["/app"]}],
        targets={"stable": 50, "canary": 50},
        affinity={"type": "cookie", "name": "shop_session", "ttl_s": 600},
    )
    services.rule_create(
        service=service, name="split", priority=3, targets={"stable": 70, "canary": 30}
    )
    port = free_port()
    conf = export(client, tmp_path, "shop", f"127.0.0.1:{port}")
    assert nginx_test(conf).returncode == 0
    nginx = spawn(
        "nginx",
        [
            NGINX,
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            "daemon off;",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: http_get(f"{url}/", timeout=1), timeout=20), nginx.output()

    answers = fetch_many(url, [{}] * 4000)

    assert all(answer.status == 200 for answer in answers)
    assert all(answer.body.decode() == answer.version for answer in answers)
    share = sum(answer.version == CANARY for answer in answers) / len(answers)
    assert abs(share - 0.30) <= 0.03
    beta = fetch_many(url, [{"headers": {"X-Beta": "1"}}] * 50)
    assert {answer.version for answer in beta} == {CANARY}

    first = fetch_many(url, [{"path": "/app"}] * 10)
    for answer in first:
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("shop_session=") and "Max-Age=600" in cookie
        again = fetch_many(
            url, [{"path": "/app", "headers": {"Cookie": cookie.split(";", 1)[0]}}] * 10
        )
        assert {later.version for later in again} == {answer.version}
        assert all(not later.headers.get("set-cookie") for later in again)
