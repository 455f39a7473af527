"""The proxy end to end: ``manage.py runproxy`` in front of two real backend processes."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection as db_connection
from django.db.models import Sum
from rest_framework.test import APIClient

from canary_site.bucketing import bucket
from health.choices import TRAFFIC_METRIC
from health.models import MetricBucket
from routing import selectors, services
from routing.models import RoutingRule
from routing.snapshot import ROUTING_VERSION
from tests.conftest import process_env, wait_for
from tests.routing.conftest import CANARY, STABLE, Backend, fetch_many, free_port, http_get

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
    # The client is no trusted proxy: its X-Forwarded-For is replaced by its own address.
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
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


# ---------------------------------------------------------------------------------------------
# What the proxy believes, and what it passes on


def raw_exchange(
    port: int, method: str, path: str, headers: list[tuple[str, str]]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with http.client: status, every response header as sent, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def named(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_proxy__x_canary_headers__only_the_proxy_sets_them__both_ways(
    backends, start_proxy, client
):
    make_service(backends, canary_share=0)
    proxy = start_proxy("shop", "--upstream-client", client)

    status, _, body = raw_exchange(
        proxy.port,
        "GET",
        "/echo",
        [
            ("X-Canary-Version", CANARY),
            ("X-Canary-Debug", "1"),
            ("X-Canary-Service", "shop"),
            ("X-Kept", "yes"),
        ],
    )
    seen = json.loads(body)["headers"]
    assert status == 200
    # The client's claim of a version never reaches the backend; the proxy's own does.
    assert seen["x-canary-version"] == STABLE
    assert "x-canary-debug" not in seen and "x-canary-service" not in seen
    assert seen["x-kept"] == "yes"

    # A backend's own X-Canary-* headers stop at the proxy: one X-Canary-Version, the proxy's.
    status, headers, _ = raw_exchange(proxy.port, "GET", "/canary-headers", [])
    assert status == 200
    assert named(headers, "x-canary-version") == [STABLE]
    assert named(headers, "x-canary-debug") == []
    assert named(headers, "x-backend-version") == [STABLE]


FORGED = [
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "shop.example.test"),
    ("Forwarded", "for=203.0.113.9;proto=https"),
    ("X-Real-IP", "203.0.113.9"),
]


def _route_the_forwarded_client_to_canary(backends: tuple[Backend, Backend]) -> None:
    """Requests from 203.0.113.0/24 go to the canary, all others to stable."""
    make_service(backends, canary_share=0, priority=10)
    services.rule_create(
        service=RoutingRule.objects.get().service,
        name="from the partner network",
        priority=1,
        conditions=[{"source": "client_ip", "operator": "cidr", "values": ["203.0.113.0/24"]}],
        targets={"canary": 100},
    )


def test_proxy__forwarded_headers_from_an_untrusted_peer__are_replaced_by_what_the_proxy_saw(
    backends, start_proxy
):
    _route_the_forwarded_client_to_canary(backends)
    proxy = start_proxy("shop")  # no trusted proxies: the default

    status, headers, body = raw_exchange(proxy.port, "GET", "/echo", FORGED)

    seen = json.loads(body)["headers"]
    assert status == 200
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert "forwarded" not in seen and "x-real-ip" not in seen
    # The routing decision used the peer's address too, not the forged one.
    assert named(headers, "x-canary-version") == [STABLE]


def test_proxy__forwarded_headers_from_a_trusted_peer__are_kept_and_extended(backends, start_proxy):
    _route_the_forwarded_client_to_canary(backends)
    # The test client connects from 127.0.0.1: here it plays the load balancer in front.
    proxy = start_proxy("shop", CANARY_PROXY_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1")

    status, headers, body = raw_exchange(proxy.port, "GET", "/echo", FORGED)

    seen = json.loads(body)["headers"]
    assert status == 200
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "shop.example.test"
    assert seen["forwarded"] == "for=203.0.113.9;proto=https"
    assert seen["x-real-ip"] == "203.0.113.9"
    # The client the load balancer saw is the one routed: its network goes to the canary.
    assert named(headers, "x-canary-version") == [CANARY]


def send_head(port: int, head: bytes) -> bytes:
    """Send ``head`` from a thread of its own (the proxy may answer before it has all of it)
    and return everything the proxy answered until it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:

        def send() -> None:
            # The proxy may close the connection once it has answered.
            with contextlib.suppress(OSError):
                sock.sendall(head)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        sender.join(15)
    return answer


def test_proxy__an_oversized_request_head__is_answered_431__and_the_proxy_keeps_serving(
    backends, start_proxy
):
    make_service(backends, canary_share=0)
    proxy = start_proxy("shop")

    huge = send_head(
        proxy.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8_000_000 + b"\r\n\r\n"
    )
    over = send_head(
        proxy.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    )

    for answer in (huge, over):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    # Below the limit (16 KiB by default) a large header still goes through, and the proxy
    # serves on after the refusals.
    # (Two headers: the backend itself takes no single field over 8 KiB.)
    big = [("X-Big-1", "b" * 6_000), ("X-Big-2", "c" * 6_000)]
    status, _, body = raw_exchange(proxy.port, "GET", "/echo", big)
    assert status == 200
    seen = json.loads(body)["headers"]
    assert (len(seen["x-big-1"]), len(seen["x-big-2"])) == (6_000, 6_000)
    assert http_get(f"{proxy.url}/")[0] == 200
    assert proxy.process.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# Restarts and locks: the proxy under load from a client loop


class ClientLoop:
    """Client threads sending GETs one after another, each on a fresh connection (as clients
    of a restarting proxy reconnect), recording when each answer came and its status (0 for a
    refused or broken connection)."""

    def __init__(self, url: str, *, threads: int = 4, headers: dict[str, str] | None = None):
        self.url = url
        self.headers = headers or {}
        self.records: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> ClientLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            answer = http_get(self.url, headers=self.headers, timeout=5)
            now = time.monotonic()
            self.records.append((now, answer[0] if answer else 0, now - started))
            if answer is None:
                time.sleep(0.005)  # refused: try again soon, without spinning

    def answered(self, status: int = 200) -> int:
        return sum(1 for _, code, _ in self.records if code == status)

    def first_answer_after(self, moment: float) -> float | None:
        return next((at for at, code, _ in list(self.records) if code == 200 and at > moment), None)

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [record for record in self.records if start <= record[0] <= end]


def stored_requests(service: str) -> int:
    rows = MetricBucket.objects.filter(service=service, metric=TRAFFIC_METRIC)
    return int(rows.aggregate(total=Sum("requests"))["total"] or 0)


def test_proxy__sigterm_under_load__flushes_every_outcome__and_a_restarted_proxy_serves(
    backends, spawn
):
    make_service(backends, canary_share=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # Outcomes flush once a minute here: whatever reaches the store, the shutdown flushed.
    args = [sys.executable, "manage.py", "runproxy", "--port", str(port), "--service", "shop"]
    args += ["--flush-interval", "60", "--log-level", "info"]
    first = spawn("proxy-first", args)
    assert wait_for(lambda: (http_get(url, timeout=1) or [0])[0] == 200, timeout=60), first.output()

    with ClientLoop(url) as load:
        assert wait_for(lambda: load.answered() >= 300, timeout=60), first.output()
        terminated = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert first.proc.wait(timeout=30) in (0, -signal.SIGTERM), first.output()
        exited = time.monotonic()
        time.sleep(0.2)  # answers that were on their way when it exited are counted too
        # Nothing serves now: every answer so far came from the first process.
        answered = load.answered()
        stored = stored_requests("shop")
        assert stored >= answered, first.output()
        assert "flushed" in first.output()

        started = time.monotonic()
        second = spawn("proxy-second", args)
        served = wait_for(lambda: load.first_answer_after(started), timeout=60)
        assert served, second.output()
        assert wait_for(lambda: load.answered() > answered + 100, timeout=30), second.output()
        failed = sum(1 for _, code, _ in load.between(terminated, served) if code != 200)
    assert second.proc.poll() is None
    print(
        f"\nproxy restart under load: SIGTERM to exit {exited - terminated:.2f} s "
        f"({answered} answers before, {stored} requests stored); new process to its first "
        f"answer {served - started:.2f} s; restart {exited - terminated + served - started:.2f} s; "
        f"{failed} requests failed between SIGTERM and the first answer"
    )


@contextlib.contextmanager
def transaction_holding(*statements: str) -> Iterator[None]:
    """Run ``statements`` in an open transaction of a connection of its own (as a tick's
    transaction holds its locks), rolled back on leaving."""
    holder = psycopg.connect(process_env()["DATABASE_URL"])
    try:
        for statement in statements:
            holder.execute(statement)
        yield
    finally:
        holder.rollback()
        holder.close()


def test_proxy__serves_and_reloads_while_a_transaction_locks_the_routing_rows__and_a_table(
    backends, start_proxy
):
    if db_connection.vendor != "postgresql":
        pytest.skip("row and table locks held by another transaction are PostgreSQL's")
    stable, _canary = backends
    make_service(backends, canary_share=0)
    proxy = start_proxy("shop")

    def routes(name: str) -> bool:
        answer = http_get(f"{proxy.url}/", headers={"X-Canary-Service": name}, timeout=2)
        return answer is not None and answer[0] == 200

    with ClientLoop(f"{proxy.url}/", threads=2) as load:
        time.sleep(0.5)
        began = time.monotonic()
        # Every routing row locked and changed by a transaction that stays open, as a tick's
        # does while it promotes.
        with transaction_holding(
            "SELECT id FROM routing_service FOR UPDATE",
            "SELECT id FROM routing_target FOR UPDATE",
            "SELECT id FROM routing_routingrule FOR UPDATE",
            "SELECT id FROM routing_ruletarget FOR UPDATE",
            "UPDATE routing_service SET stable_version = stable_version",
            "UPDATE routing_ruletarget SET weight = weight",
        ):
            # A change committed meanwhile (new rows, which no lock holds) is loaded: reloads
            # do not wait for the tick's locks.
            other = services.service_create(name="other", stable_version=STABLE)
            services.target_create(service=other, name="only", endpoint=stable.url, version=STABLE)
            assert wait_for(lambda: routes("other"), timeout=15), proxy.process.output()
            time.sleep(1)
        # A table lock (a migration's) blocks even plain reads: the reload gives up and the
        # proxy serves on from the snapshots it has.
        with transaction_holding("LOCK TABLE routing_service IN ACCESS EXCLUSIVE MODE"):
            ROUTING_VERSION.publish()
            time.sleep(3)
        ended = time.monotonic()
        # Once the lock is gone, the next change is loaded as usual.
        later = services.service_create(name="later", stable_version=STABLE)
        services.target_create(service=later, name="only", endpoint=stable.url, version=STABLE)
        assert wait_for(lambda: routes("later"), timeout=15), proxy.process.output()

    during = load.between(began, ended)
    assert during and all(code == 200 for _, code, _ in during), proxy.process.output()
    assert "Reading the routing from the database failed" in proxy.process.output()
    slowest = max(took for _, _, took in during)
    print(f"\n{len(during)} requests while the locks were held, all 200, slowest {slowest:.3f} s")


def test_proxy__cache_down__serves_and_stores_outcomes__and_logs_the_outage_once_and_its_end(
    backends, start_proxy, tmp_path
):
    from tests.flags.conftest import RedisServer

    redis = RedisServer(tmp_path).start()
    make_service(backends, canary_share=0)
    # The breaker report is tried every 0.2 s (when it changed, or 5 s after the last one).
    proxy = start_proxy("shop", "--flush-interval", "0.2", REDIS_URL=redis.url)
    assert wait_for(lambda: "Traceback" not in proxy.process.output(), timeout=2)

    try:
        with ClientLoop(f"{proxy.url}/", threads=2) as load:
            time.sleep(0.5)
            redis.stop()
            down = time.monotonic()
            before = stored_requests("shop")
            time.sleep(7)
            during = load.between(down, time.monotonic())
            redis.start()
            assert wait_for(
                lambda: (
                    "Publishing circuit breaker states to the cache works again"
                    in proxy.process.output()
                ),
                timeout=20,
            ), proxy.process.output()
    finally:
        redis.stop()

    output = proxy.process.output()
    # Every request was served while the cache was down, and their outcomes were stored.
    assert during and all(code == 200 for _, code, _ in during), output
    assert wait_for(lambda: stored_requests("shop") >= before + len(during), timeout=10), output
    # One warning when the outage began, one line when it ended; no traceback at all.
    assert output.count("Publishing circuit breaker states to the cache failed") == 1, output
    assert "Traceback" not in output, output


def test_proxy_settings__trusted_proxies_and_head_limit__are_read_and_checked(settings):
    import ipaddress

    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import CommandError, call_command

    from routing import conf

    assert conf.proxy_trusted_proxies() == ()
    assert conf.proxy_max_head_bytes() == 16 * 1024
    settings.CANARY_PROXY_TRUSTED_PROXIES = "10.0.0.0/8, 192.0.2.7 ,::1"
    settings.CANARY_PROXY_MAX_HEAD_BYTES = "4096"
    assert conf.proxy_trusted_proxies() == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert conf.proxy_max_head_bytes() == 4096

    settings.CANARY_PROXY_TRUSTED_PROXIES = "10.0.0.0/8, 10.0.0.300"
    with pytest.raises(ImproperlyConfigured, match=r"CANARY_PROXY_TRUSTED_PROXIES.*10\.0\.0\.300"):
        conf.proxy_trusted_proxies()
    # runproxy refuses to start on it, naming the setting, before it binds anything.
    with pytest.raises(CommandError, match="CANARY_PROXY_TRUSTED_PROXIES"):
        call_command("runproxy", port=free_port())
    with pytest.raises(CommandError, match="--trusted-proxies"):
        call_command("runproxy", port=free_port(), trusted_proxies="not-an-address")
    settings.CANARY_PROXY_TRUSTED_PROXIES = ""
    settings.CANARY_PROXY_MAX_HEAD_BYTES = "12"
    with pytest.raises(CommandError, match="CANARY_PROXY_MAX_HEAD_BYTES"):
        call_command("runproxy", port=free_port())
