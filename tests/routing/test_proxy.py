"""The proxy end to end: ``manage.py runproxy`` in front of two real backend processes."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from typing import Any

import pytest
from rest_framework.test import APIClient

from canary_site.bucketing import bucket
from health.choices import TRAFFIC_METRIC
from health.models import MetricBucket
from routing import selectors, services
from routing.models import RoutingRule
from tests.conftest import wait_for
from tests.routing.conftest import CANARY, STABLE, Backend, fetch_many, http_get

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def make_service(
    backends: tuple[Backend, Backend], *, canary_share: float = 25, **rule: Any
) -> RoutingRule:
    """Service "shop": a stable and a canary target and one rule splitting between them."""
    stable, canary = backends
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="canary", endpoint=canary.url, version=CANARY)
    return services.rule_create(
        service=service,
        name="split",
        targets={"stable": 100 - canary_share, "canary": canary_share},
        **rule,
    )


def canary_share(answers: list[Any]) -> float:
    return sum(answer.version == CANARY for answer in answers) / len(answers)


def test_proxy__splits_sticky_users_by_weight__and_follows_a_weight_change_without_restart(
    backends, start_proxy, engineer
):
    rule = make_service(backends, canary_share=25, affinity={"type": "header", "name": "x-user-id"})
    proxy = start_proxy("shop")
    users = [f"user-{index}" for index in range(5000)]
    requests = [{"headers": {"X-User-Id": user}} for user in users]

    answers = fetch_many(proxy.url, requests)

    assert all(answer.status == 200 for answer in answers)
    # X-Canary-Version names the version that really answered.
    assert all(answer.body.decode() == answer.version for answer in answers)
    assert abs(canary_share(answers) - 0.25) <= 0.02
    before = {user: answer.version for user, answer in zip(users, answers, strict=True)}

    client = APIClient()
    client.force_authenticate(engineer)
    response = client.post(
        f"/api/v1/routing/rules/{rule.pk}/weights/",
        {"weights": {"stable": 50, "canary": 50}, "reason": "next phase"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    mover = next(
        user for user in users if before[user] == STABLE and bucket(f"shop:{rule.pk}", user) < 5000
    )

    def moved() -> bool:
        answer = http_get(f"{proxy.url}/", headers={"X-User-Id": mover})
        return answer is not None and answer[1]["X-Canary-Version"] == CANARY

    assert wait_for(moved, timeout=15), proxy.process.output()
    answers = fetch_many(proxy.url, requests)
    assert abs(canary_share(answers) - 0.50) <= 0.02
    # Raising the canary's share moves users from stable to canary, never back.
    assert all(
        answer.version == CANARY
        for user, answer in zip(users, answers, strict=True)
        if before[user] == CANARY
    )
    assert proxy.process.proc.poll() is None  # the same process throughout: no restart

    def stored() -> dict[str, int]:
        rows = MetricBucket.objects.filter(service="shop", metric=TRAFFIC_METRIC)
        totals = {STABLE: 0, CANARY: 0}
        for row in rows:
            totals[row.version] = totals.get(row.version, 0) + row.requests
        return totals if sum(totals.values()) >= 10_000 else {}

    totals = wait_for(stored, timeout=20)
    assert totals, proxy.process.output()
    assert totals[STABLE] > 0 and totals[CANARY] > 0
    assert not MetricBucket.objects.filter(service="shop", errors__gt=0).exists()


def test_proxy__header_rule_sends_beta_users_to_canary__others_to_stable(backends, start_proxy):
    make_service(backends, canary_share=0, priority=10)
    rule = services.rule_create(
        service=RoutingRule.objects.get().service,
        name="beta users",
        priority=1,
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )
    proxy = start_proxy("shop")

    beta = fetch_many(proxy.url, [{"headers": {"X-Beta": "1"}}] * 200)
    others = fetch_many(proxy.url, [{"headers": {"X-Beta": "0"}}] * 200)

    assert {answer.version for answer in beta} == {CANARY}
    assert {answer.version for answer in others} == {STABLE}
    decision = selectors.decision_for(service="shop", headers={"X-Beta": "1"})
    assert decision.rule is not None and decision.rule.id == rule.pk


def test_proxy__cookie_affinity__issues_a_cookie_and_keeps_the_user_on_one_version(
    backends, start_proxy
):
    make_service(
        backends,
        canary_share=50,
        affinity={"type": "cookie", "name": "canary_session", "ttl_s": 600},
    )
    proxy = start_proxy("shop")

    first = fetch_many(proxy.url, [{}] * 20)
    cookies = [answer.headers.get("set-cookie", "") for answer in first]

    assert all(cookie.startswith("canary_session=") for cookie in cookies)
    assert all("Max-Age=600" in cookie and "HttpOnly" in cookie for cookie in cookies)
    for answer, cookie in zip(first, cookies, strict=True):
        value = cookie.split(";", 1)[0]
        again = fetch_many(proxy.url, [{"headers": {"Cookie": value}}] * 10, concurrency=2)
        assert {later.version for later in again} == {answer.version}
        assert all("set-cookie" not in later.headers for later in again)


def _circuit(target: str) -> str | None:
    for state in selectors.circuit_states(service="shop"):
        if state.target == target:
            return state.state
    return None


def test_proxy__failing_backend__opens_its_circuit__fails_over__then_half_opens_and_recovers(
    backends, start_proxy, clean_breaker_reports
):
    make_service(
        backends,
        canary_share=50,
        circuit_breaker={"failure_threshold": 3, "recovery_timeout_s": 2, "half_open_requests": 1},
        failover={"retries": 1, "retry_delay_ms": 5},
    )
    proxy = start_proxy("shop")
    _stable, canary = backends
    canary.fail()

    answers = fetch_many(proxy.url, [{}] * 100, concurrency=4)

    # Every request failed over to stable: retried after a 500, or sent there while open.
    assert all(answer.status == 200 for answer in answers)
    assert {answer.version for answer in answers} == {STABLE}
    assert wait_for(lambda: _circuit("canary") == "open", timeout=10), proxy.process.output()
    assert wait_for(lambda: _circuit("canary") == "half_open", timeout=15), proxy.process.output()

    canary.recover()

    def back_on_canary() -> bool:
        return any(answer.version == CANARY for answer in fetch_many(proxy.url, [{}] * 20))

    assert wait_for(back_on_canary, timeout=20), proxy.process.output()
    assert wait_for(lambda: _circuit("canary") == "closed", timeout=10)
    assert _circuit("stable") == "closed"


def test_proxy__rate_limited_rule__answers_429_with_retry_after(backends, start_proxy):
    make_service(backends, canary_share=0, rate_limit={"rps": 1, "burst": 3})
    proxy = start_proxy("shop")

    answers = fetch_many(proxy.url, [{}] * 30, concurrency=1)

    limited = [answer for answer in answers if answer.status == 429]
    assert len(limited) >= 20
    assert answers[0].status == 200  # the burst lets the first requests through
    for answer in limited:
        assert int(answer.headers["retry-after"]) >= 1
        assert json.loads(answer.body)["error"]["code"] == "rate_limited"


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_proxy__passes_method_path_query_headers_status_and_streams_bodies(
    backends, start_proxy, client
):
    make_service(backends, canary_share=0)
    proxy = start_proxy("shop", "--upstream-client", client)
    payload = os.urandom(3 * 1024 * 1024)

    echo = fetch_many(
        proxy.url,
        [
            {
                "method": "POST",
                "path": "/echo?b=2&a=%201",
                "headers": {"X-Custom": "kept", "X-Forwarded-For": "10.9.8.7"},
                "data": payload,
            }
        ],
    )[0]

    seen = json.loads(echo.body)
    assert echo.status == 200
    assert (seen["method"], seen["target"]) == ("POST", "/echo?b=2&a=%201")
    assert seen["length"] == len(payload)
    assert seen["sha256"] == hashlib.sha256(payload).hexdigest()
    assert seen["headers"]["x-custom"] == "kept"
    assert seen["headers"]["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert seen["headers"]["x-canary-version"] == STABLE
    assert seen["headers"]["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"

    teapot, big, head = fetch_many(
        proxy.url,
        [{"path": "/status/418"}, {"path": "/bytes/5000000"}, {"method": "HEAD", "path": "/"}],
    )
    assert (teapot.status, teapot.body) == (418, STABLE.encode())
    assert big.status == 200 and len(big.body) == 5_000_000
    assert head.status == 200 and head.body == b"" and head.version == STABLE

    # Hop-by-hop headers, and those the Connection header names, stay on their connection.
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request(
        "GET", "/echo", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "TE": "trailers"}
    )
    hop = json.loads(connection.getresponse().read())
    connection.close()
    assert "x-hop" not in hop["headers"] and "te" not in hop["headers"]

    # Answers without a body still reach a client that closes the connection after them.
    for method, path in [("HEAD", "/"), ("GET", "/status/204")]:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        connection.request(method, path, headers={"Connection": "close"})
        answer = connection.getresponse()
        assert (answer.status, answer.read()) == (200 if method == "HEAD" else 204, b"")
        assert answer.getheader("X-Canary-Version") == STABLE
        connection.close()


def test_proxy__names_the_service_by_header_else_host_else_default(backends, start_proxy):
    make_service(backends, canary_share=0)
    proxy = start_proxy("shop")

    unknown, by_host, by_default = fetch_many(
        proxy.url,
        [
            {"headers": {"X-Canary-Service": "nope"}},
            {"headers": {"Host": "shop.example.test"}},
            {"headers": {"Host": "elsewhere.example.test"}},
        ],
    )

    assert unknown.status == 404
    assert json.loads(unknown.body)["error"]["code"] == "not_found"
    assert by_host.version == STABLE
    assert by_default.version == STABLE


def test_proxy__target_slower_than_the_read_timeout__answers_504__and_keeps_serving(
    backends, start_proxy
):
    make_service(backends, canary_share=0)
    proxy = start_proxy("shop", "--read-timeout", "0.5")

    slow, quick_enough, after = fetch_many(
        proxy.url, [{"path": "/slow/3000"}, {"path": "/slow/50"}, {"path": "/"}]
    )

    assert slow.status == 504
    assert json.loads(slow.body)["error"]["code"] == "upstream_timeout"
    assert (quick_enough.status, quick_enough.body) == (200, STABLE.encode())
    assert (after.status, after.version) == (200, STABLE)
