"""Draining a target: the engine gives its share to the other targets, the services start and
end a drain once, the proxy counts its requests in flight exactly and reports them, and
``drain_status`` tells when the drain is over; the routing page and the API show it."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from canary_site.choices import Source
from canary_site.exceptions import NotFound
from canary_site.models import AuditEntry
from routing import selectors, services
from routing import snapshot as routing_snapshot
from routing.engine import (
    InvalidRoutingDefinition,
    Reason,
    RequestContext,
    RuntimeState,
    TargetSnapshot,
    build_service_snapshot,
    decide,
)
from routing.models import Service, Target
from routing.proxy import RoutingProxy, publish_in_flight_report
from routing.upstream import FastUpstreamClient
from tests.conftest import ManagedProcess, wait_for
from tests.routing.conftest import (
    CANARY,
    STABLE,
    Backend,
    fetch_many,
    free_port,
    http_get,
)

# ---------------------------------------------------------------------------------------------
# The engine


def definition(
    *,
    draining: tuple[str, ...] = (),
    unhealthy: tuple[str, ...] = (),
    fail_open: bool = True,
    affinity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Service "shop": a canary with 20% and two stable targets with 40% each."""
    targets = [
        {"id": "canary", "endpoint": "http://canary:8080", "version": "2.0.0"},
        {"id": "stable-a", "endpoint": "http://stable-a:8080", "version": "1.0.0"},
        {"id": "stable-b", "endpoint": "http://stable-b:8080", "version": "1.0.0"},
    ]
    for target in targets:
        target["draining"] = target["id"] in draining
        target["healthy"] = target["id"] not in unhealthy
    return {
        "name": "shop",
        "stable_version": "1.0.0",
        "targets": targets,
        "rules": [
            {
                "id": 1,
                "targets": [
                    {"id": "canary", "weight": 2000},
                    {"id": "stable-a", "weight": 4000},
                    {"id": "stable-b", "weight": 4000},
                ],
                "failover": {"fail_open": fail_open},
                "affinity": affinity,
            }
        ],
    }


def picks(data: dict[str, Any], count: int = 4000, **request: Any) -> list[str | None]:
    snapshot = build_service_snapshot(data)
    state = RuntimeState(rng=random.Random(7))
    context = RequestContext.from_http("GET", "/", request.get("headers", {}))
    return [
        None
        if (decision := decide(snapshot, context, state=state)).target is None
        else decision.target.id
        for _ in range(count)
    ]


def test_engine__a_draining_target_gets_no_new_request__its_share_goes_to_the_others():
    undrained = picks(definition())
    chosen = picks(definition(draining=("canary",)))

    assert abs(undrained.count("canary") / len(undrained) - 0.2) <= 0.03
    assert "canary" not in chosen
    # The same random points: a request bound for another target still goes there, one bound
    # for the canary fails over to the others, and nothing is refused.
    assert all(
        drained == natural
        for natural, drained in zip(undrained, chosen, strict=True)
        if natural != "canary"
    )
    assert set(chosen) == {"stable-a", "stable-b"}
    # Exactly as an unhealthy target is handled: the same points land on the same targets.
    assert chosen == picks(definition(unhealthy=("canary",)))


def test_engine__draining__says_why_it_failed_over():
    snapshot = build_service_snapshot(definition(draining=("canary",)))
    state = RuntimeState(rng=random.Random(1))
    decisions = [decide(snapshot, RequestContext("GET", "/"), state=state) for _ in range(200)]

    moved = [decision for decision in decisions if decision.reason is Reason.FAILOVER]
    assert moved  # some points fell in the canary's range
    assert "canary is draining, so it failed over to stable-" in moved[0].explain()


def test_engine__sticky_users__leave_a_draining_target_and_come_back_after_it():
    sticky = {"type": "header", "name": "x-user"}
    users = [f"user-{index}" for index in range(400)]

    def route(data: dict[str, Any]) -> dict[str, str | None]:
        snapshot = build_service_snapshot(data)
        return {
            user: decide(snapshot, RequestContext.from_http("GET", "/", {"x-user": user})).target.id
            for user in users
        }

    before = route(definition(affinity=sticky))
    during = route(definition(affinity=sticky, draining=("canary",)))
    after = route(definition(affinity=sticky))

    assert "canary" in before.values() and "canary" not in during.values()
    # Users of the other targets do not move; the canary's users come back once it is undrained.
    assert all(during[user] == target for user, target in before.items() if target != "canary")
    assert after == before


def test_engine__every_target_draining__falls_back_as_with_no_healthy_target():
    everyone = ("canary", "stable-a", "stable-b")

    open_picks = picks(definition(draining=everyone), count=300)
    closed = build_service_snapshot(definition(draining=everyone, fail_open=False))
    decision = decide(closed, RequestContext("GET", "/"))

    # Failing open picks by weight among them all, as when none is healthy; failing closed
    # refuses; the default route (no rule) has no target either.
    assert open_picks == picks(definition(unhealthy=everyone), count=300)
    assert set(open_picks) == set(everyone)
    assert (decision.target, decision.reason) == (None, Reason.NO_HEALTHY_TARGET)
    no_rules = build_service_snapshot({**definition(draining=everyone), "rules": []})
    assert decide(no_rules, RequestContext("GET", "/")).target is None


def test_engine__default_route__skips_a_draining_stable_target():
    data = {**definition(draining=("stable-a",)), "rules": []}

    assert set(picks(data, count=500)) == {"stable-b"}


def test_engine__draining__must_be_true_or_false():
    data = definition()
    data["targets"][0]["draining"] = "yes"

    with pytest.raises(InvalidRoutingDefinition) as raised:
        build_service_snapshot(data)

    assert raised.value.field == "targets[0].draining"
    with pytest.raises(InvalidRoutingDefinition):
        TargetSnapshot(id="t", name="t", endpoint="http://t:1", version="1", draining=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Services and snapshot


@pytest.fixture
def shop() -> Service:
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint="http://s:1", version=STABLE)
    services.target_create(service=service, name="canary", endpoint="http://c:1", version=CANARY)
    services.rule_create(service=service, name="split", targets={"stable": 50, "canary": 50})
    return service


def canary_of(service: Service) -> Target:
    return Target.objects.select_related("service").get(service=service, name="canary")


@pytest.mark.django_db
def test_drain_start__is_in_the_snapshot__and_no_decision_picks_the_target(shop):
    services.target_drain_start(target=canary_of(shop))

    snapshot = routing_snapshot.service_snapshot(name="shop")
    assert snapshot is not None and snapshot.targets_by_id["canary"].draining
    decisions = [selectors.decision_for(service="shop") for _ in range(200)]
    assert {decision.target.name for decision in decisions} == {"stable"}


@pytest.mark.django_db
def test_drain_start__twice__keeps_its_start__bumps_and_audits_once(shop, engineer):
    version = Service.objects.get(pk=shop.pk).routing_version

    first = services.target_drain_start(
        target=canary_of(shop), actor=engineer, source=Source.API, reason="rollback 7"
    )
    again = services.target_drain_start(target=canary_of(shop), actor=engineer, reason="again")

    assert first.draining_since is not None
    assert again.draining_since == first.draining_since
    assert canary_of(shop).draining_since == first.draining_since
    assert Service.objects.get(pk=shop.pk).routing_version == version + 1
    entries = AuditEntry.objects.filter(verb="drain")
    assert entries.count() == 1
    entry = entries.get()
    assert (entry.actor, entry.source, entry.reason) == (engineer, Source.API, "rollback 7")
    assert entry.changes["draining_since"][0] in (None, "None")


@pytest.mark.django_db
def test_drain_end__puts_the_target_back__once(shop, engineer):
    services.target_drain_start(target=canary_of(shop))
    version = Service.objects.get(pk=shop.pk).routing_version

    ended = services.target_drain_end(target=canary_of(shop), actor=engineer, reason="done")
    services.target_drain_end(target=canary_of(shop), actor=engineer, reason="done again")

    assert ended.draining_since is None
    assert Service.objects.get(pk=shop.pk).routing_version == version + 1
    assert AuditEntry.objects.filter(verb="undrain").count() == 1
    snapshot = routing_snapshot.service_snapshot(name="shop")
    assert snapshot is not None and not snapshot.targets_by_id["canary"].draining


@pytest.mark.django_db
def test_drain_start__tells_the_proxies_after_commit(shop, django_capture_on_commit_callbacks):
    before = cache.get(routing_snapshot.VERSION_CACHE_KEY)

    with django_capture_on_commit_callbacks(execute=True):
        services.target_drain_start(target=canary_of(shop))

    assert cache.get(routing_snapshot.VERSION_CACHE_KEY) != before


@pytest.mark.django_db
def test_drain_start__of_a_deleted_target__is_not_found(shop):
    gone = Target(pk=canary_of(shop).pk + 1000, service=shop, name="ghost")

    with pytest.raises(NotFound):
        services.target_drain_start(target=gone)
    with pytest.raises(NotFound):
        services.target_drain_end(target=gone)


# ---------------------------------------------------------------------------------------------
# drain_status from the proxies' reports


@pytest.fixture
def clean_in_flight_reports() -> Iterator[None]:
    """The proxies' in-flight reports live in the shared cache: no test may see another's."""
    cache.delete(selectors.IN_FLIGHT_KEY)
    yield
    cache.delete(selectors.IN_FLIGHT_KEY)


def report(*, draining: list[str], in_flight: dict[str, int], service: str = "shop") -> Any:
    return {"version": "v", "services": {service: {"draining": draining, "in_flight": in_flight}}}


@pytest.mark.django_db
def test_drain_status__no_proxy_running__is_drained_at_once(shop, clean_in_flight_reports):
    assert not selectors.drain_status(target=canary_of(shop)).drained

    target = services.target_drain_start(target=canary_of(shop))
    status = selectors.drain_status(target=canary_of(shop))

    assert (status.draining, status.since) == (True, target.draining_since)
    assert (status.proxies, status.in_flight, status.drained) == (0, 0, True)


@pytest.mark.django_db
def test_drain_status__waits_for_every_live_proxy_to_load_the_drain_and_finish(
    shop, clean_in_flight_reports
):
    services.target_drain_start(target=canary_of(shop))

    publish_in_flight_report("p1", report(draining=["canary"], in_flight={"canary": 2}))
    publish_in_flight_report("p2", report(draining=[], in_flight={}))  # not reloaded yet
    status = selectors.drain_status(target=canary_of(shop))
    assert (status.proxies, status.loaded, status.in_flight, status.drained) == (2, 1, 2, False)

    publish_in_flight_report("p2", report(draining=["canary"], in_flight={"stable": 5}))
    publish_in_flight_report("p1", report(draining=["canary"], in_flight={"canary": 1}))
    status = selectors.drain_status(target=canary_of(shop))
    assert (status.loaded, status.in_flight, status.drained) == (2, 1, False)

    publish_in_flight_report("p1", report(draining=["canary"], in_flight={}))
    # A proxy that does not serve the service sends the target nothing.
    publish_in_flight_report("p3", report(draining=[], in_flight={"x": 1}, service="other"))
    status = selectors.drain_status(target=canary_of(shop))
    assert (status.proxies, status.loaded, status.in_flight, status.drained) == (3, 3, 0, True)


@pytest.mark.django_db
def test_drain_status__ignores_stale_reports__and_a_withdrawn_one(shop, clean_in_flight_reports):
    services.target_drain_start(target=canary_of(shop))
    stale = time.time() - selectors.IN_FLIGHT_REPORT_MAX_AGE - 1
    cache.set(
        selectors.IN_FLIGHT_KEY,
        {"gone": {**report(draining=[], in_flight={"canary": 9}), "at": stale}},
    )
    publish_in_flight_report("p1", report(draining=["canary"], in_flight={"canary": 1}))

    status = selectors.drain_status(target=canary_of(shop))
    assert (status.proxies, status.in_flight, status.drained) == (1, 1, False)
    assert "gone" not in cache.get(selectors.IN_FLIGHT_KEY)  # pruned by the next publish

    publish_in_flight_report("p1", None)  # the proxy stopped
    assert selectors.drain_status(target=canary_of(shop)).drained


# ---------------------------------------------------------------------------------------------
# The routing page and the API


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def targets_panel(client: Client) -> str:
    response = client.get(
        "/routing/services/shop/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="service-targets"
    )
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_service_page__shows_a_draining_target_with_its_start_and_requests_in_flight(
    shop, make_user, clean_in_flight_reports
):
    client = logged_in(make_user("vic", roles=["viewer"]))
    assert "status-draining" not in targets_panel(client)

    target = services.target_drain_start(target=canary_of(shop))
    publish_in_flight_report("p1", report(draining=["canary"], in_flight={"canary": 3}))
    html = targets_panel(client)

    assert html.lstrip().startswith('<section id="service-targets"')
    assert '<span class="status status-draining">draining</span>' in html
    assert f'datetime="{target.draining_since.isoformat()}"' in html
    assert "3 in flight" in html and "status-drained" not in html
    assert "draining" in client.get("/routing/").content.decode()

    publish_in_flight_report("p1", report(draining=["canary"], in_flight={}))
    html = targets_panel(client)
    assert "0 in flight" in html and "status-drained" in html


@pytest.mark.django_db
def test_api__drain_and_undrain__for_engineers_and_admins_only(
    shop, engineer, make_user, clean_in_flight_reports
):
    target = canary_of(shop)
    url = f"/api/v1/routing/targets/{target.pk}"
    for role in ("viewer", "approver"):
        refused = APIClient()
        refused.force_authenticate(make_user(roles=[role]))
        assert refused.post(f"{url}/drain/").status_code == 403
    assert APIClient().post(f"{url}/drain/").status_code in (401, 403)
    client = APIClient()
    client.force_authenticate(engineer)

    drained = client.post(f"{url}/drain/", {"reason": "rollback"}, format="json")
    again = client.post(f"{url}/drain/")

    assert drained.status_code == 200, drained.content
    body = drained.json()
    assert body["target"]["draining_since"] is not None
    assert body["drain"] == {
        "draining": True,
        "since": body["target"]["draining_since"],
        "in_flight": 0,
        "proxies": 0,
        "loaded": 0,
        "drained": True,
    }
    assert again.json()["target"]["draining_since"] == body["target"]["draining_since"]
    assert client.get(f"{url}/").json()["draining_since"] == body["target"]["draining_since"]
    entry = AuditEntry.objects.get(verb="drain")
    assert (entry.actor, entry.source, entry.reason) == (engineer, Source.API, "rollback")

    admin = APIClient()
    admin.force_authenticate(make_user(roles=["admin"]))
    undrained = admin.post(f"{url}/undrain/")
    assert undrained.status_code == 200
    assert undrained.json()["target"]["draining_since"] is None
    assert undrained.json()["drain"]["draining"] is False
    assert client.post(f"{url}/drain/", {"bogus": 1}, format="json").status_code == 400
    assert client.post("/api/v1/routing/targets/999999/drain/").status_code == 404


@pytest.mark.django_db
def test_admin__shows_the_drain_read_only__and_drains_and_undrains_through_its_actions(
    shop, engineer, make_user
):
    target = canary_of(shop)
    client = logged_in(engineer)
    changelist = "/admin/routing/target/"

    drained = client.post(
        changelist, {"action": "drain_targets", "_selected_action": [str(target.pk)]}
    )
    assert drained.status_code == 302
    since = canary_of(shop).draining_since
    assert since is not None
    page = client.get(f"{changelist}{target.pk}/change/").content.decode()
    assert "Draining since" in page and 'name="draining_since"' not in page
    viewer = logged_in(make_user("vic", roles=["viewer"]))
    viewer.post(changelist, {"action": "undrain_targets", "_selected_action": [str(target.pk)]})
    assert canary_of(shop).draining_since == since

    client.post(changelist, {"action": "undrain_targets", "_selected_action": [str(target.pk)]})
    assert canary_of(shop).draining_since is None
    assert AuditEntry.objects.filter(verb="undrain", reason="admin").count() == 1


# ---------------------------------------------------------------------------------------------
# The proxy: exact counts in flight, in process and as a real process

# A backend that holds GET /hold until the gate file exists (a request as slow as the test
# needs, with no clock in it); GET /held says how many it holds; anything else answers at once.
GATED_BACKEND = """
import asyncio, pathlib, sys
from aiohttp import web

port, version, gate = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
headers = {"X-Backend-Version": version}
held = [0]

async def hold(request):
    held[0] += 1
    try:
        while not gate.exists():
            await asyncio.sleep(0.02)
    finally:
        held[0] -= 1
    return web.Response(text=version, headers=headers)

async def count(request):
    return web.Response(text=str(held[0]), headers=headers)

async def anything(request):
    await request.read()
    return web.Response(text=version, headers=headers)

app = web.Application()
app.router.add_get("/hold", hold)
app.router.add_get("/held", count)
app.router.add_route("*", "/{tail:.*}", anything)
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
"""


class GatedBackend(Backend):
    gate: Path

    def held(self) -> int:
        answer = http_get(f"{self.url}/held", timeout=2)
        return int(answer[2]) if answer and answer[0] == 200 else -1

    def release(self) -> None:
        self.gate.touch()


@pytest.fixture
def gated_canary(spawn: Callable[..., ManagedProcess], tmp_path: Path) -> GatedBackend:
    port = free_port()
    process = spawn(
        "gated-canary",
        [sys.executable, "-c", GATED_BACKEND, str(port), CANARY, str(tmp_path / "gate")],
    )
    backend = GatedBackend(CANARY, port, process)
    backend.gate = tmp_path / "gate"
    assert wait_for(lambda: http_get(f"{backend.url}/", timeout=1), timeout=20), process.output()
    return backend


def scope(path: str, target: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"shop"), (b"x-target", target.encode())],
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
    }


@pytest.mark.processes
def test_proxy_in_process__counts_stay_exact_when_requests_are_cancelled_fail_or_lose_their_client(
    gated_canary,
):
    snapshot = build_service_snapshot(
        {
            "name": "shop",
            "stable_version": STABLE,
            "targets": [
                {"id": "canary", "endpoint": gated_canary.url, "version": CANARY},
                # Nothing listens there: every request to it fails to connect.
                {"id": "stable", "endpoint": f"http://127.0.0.1:{free_port()}", "version": STABLE},
            ],
            "rules": [
                {
                    "id": 1,
                    "strategy": "header",
                    "strategy_key": "x-target",
                    "targets": [{"id": "canary", "weight": 5000}, {"id": "stable", "weight": 5000}],
                }
            ],
        }
    )
    proxy = RoutingProxy(default_service="shop", publish=lambda *_: None)
    proxy.install({"shop": snapshot}, "v1")
    state = proxy.states["shop"]

    async def request(path: str, target: str, send: Callable[..., Any] | None = None) -> list[Any]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def record(message: dict[str, Any]) -> None:
            sent.append(message)

        await proxy.handle(scope(path, target), receive, send or record)
        return sent

    async def gone(message: dict[str, Any]) -> None:
        raise OSError("the client went away")

    async def until(predicate: Callable[[], bool]) -> bool:
        for _ in range(500):
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return False

    async def main() -> None:
        proxy.client = FastUpstreamClient(connect_timeout=2, read_timeout=30)
        held = [asyncio.create_task(request("/hold", "canary")) for _ in range(20)]
        assert await until(lambda: state.in_flight("canary") == 20)
        assert proxy.in_flight_report()["services"]["shop"]["in_flight"] == {"canary": 20}
        for task in held[:5]:  # cancelled mid-request (a shutdown, a dropped connection)
            task.cancel()
        assert await until(lambda: state.in_flight("canary") == 15)
        failed = await request("/", "stable")  # the upstream refuses the connection
        assert failed[0]["status"] == 502
        assert state.in_flight("stable") == 0
        with pytest.raises(OSError):
            await request("/", "canary", send=gone)  # the client is gone when the answer comes
        assert state.in_flight("canary") == 15
        gated_canary.release()
        answers = await asyncio.gather(*held[5:])
        assert all(answer[0]["status"] == 200 for answer in answers)
        await asyncio.gather(*held[:5], return_exceptions=True)
        assert state.in_flight_counts() == {}
        await proxy.client.close()

    # In a thread of its own: a browser test's Playwright may leave this thread's loop running.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_proxy__drain_while_a_slow_request_runs__new_requests_go_to_stable__drained_after_it(
    start_backend, gated_canary, start_proxy, engineer, clean_in_flight_reports
):
    stable = start_backend(STABLE)
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    canary = services.target_create(
        service=service, name="canary", endpoint=gated_canary.url, version=CANARY
    )
    # A header names the target; without one the split is even.
    services.rule_create(
        service=service,
        name="split",
        strategy="header",
        strategy_key="x-target",
        targets={"stable": 50, "canary": 50},
    )
    proxy = start_proxy("shop")
    pinned = {"headers": {"X-Target": "canary"}}
    assert {answer.version for answer in fetch_many(proxy.url, [pinned] * 20)} == {CANARY}

    slow: list[Any] = []
    request = threading.Thread(
        target=lambda: slow.append(
            http_get(f"{proxy.url}/hold", headers=pinned["headers"], timeout=120)
        )
    )
    request.start()
    assert wait_for(lambda: gated_canary.held() == 1, timeout=20), proxy.process.output()

    services.target_drain_start(target=canary, reason="rollback")

    def status() -> selectors.DrainStatus:
        target = Target.objects.select_related("service").get(pk=canary.pk)
        return selectors.drain_status(target=target)

    def reported_loaded() -> selectors.DrainStatus | None:
        found = status()
        return found if found.proxies == 1 and found.loaded == 1 else None

    def reported_drained() -> selectors.DrainStatus | None:
        found = status()
        return found if found.drained else None

    # Once the proxy reports routing with the drain, the slow request is what holds it back.
    loaded = wait_for(reported_loaded, timeout=20)
    assert loaded, proxy.process.output()
    assert (loaded.draining, loaded.in_flight, loaded.drained) == (True, 1, False)
    answers = fetch_many(proxy.url, [{}] * 200 + [pinned] * 200)
    assert all(answer.status == 200 for answer in answers)
    assert {answer.version for answer in answers} == {STABLE}
    assert gated_canary.held() == 1 and request.is_alive()
    held = status()
    assert (held.in_flight, held.drained) == (1, False)
    html = targets_panel(logged_in(engineer))
    assert "status-draining" in html and "1 in flight" in html

    gated_canary.release()
    request.join(timeout=60)
    assert slow and slow[0][0] == 200 and slow[0][2].decode() == CANARY

    finished = wait_for(reported_drained, timeout=20)
    assert finished, proxy.process.output()
    assert (finished.in_flight, finished.proxies) == (0, 1)
    assert "status-drained" in targets_panel(logged_in(engineer))

    services.target_drain_end(target=canary)

    def back() -> bool:
        return {a.version for a in fetch_many(proxy.url, [pinned] * 10)} == {CANARY}

    assert wait_for(back, timeout=20), proxy.process.output()
