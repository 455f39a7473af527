"""Halting a service: the engine routes every request of a halted service by the default route to
its stable version, the services halt and release per holder in a fixed number of statements and
leave the rules alone, a real proxy follows a halt and its release (with the cache up and with
it out of reach), and the pages, the API, the admin and the nginx export show it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from canary_site.choices import Source
from canary_site.exceptions import ValidationFailed
from canary_site.models import AuditEntry
from routing import exporters, selectors, services
from routing import snapshot as routing_snapshot
from routing.definition import service_definition
from routing.engine import (
    InvalidRoutingDefinition,
    Reason,
    RequestContext,
    RuntimeState,
    build_service_snapshot,
    decide,
)
from routing.models import RuleTarget, Service
from tests.conftest import process_env, wait_for
from tests.routing.conftest import CANARY, STABLE, fetch_many
from tests.routing.test_nginx import export, nginx_test

# ---------------------------------------------------------------------------------------------
# The engine

BETA = {"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}


def definition(*, halted: bool = False, reason: str = "", stable_healthy: bool = True) -> Any:
    """Service "shop": two stable targets and a canary. Rule 1 sends beta users to the canary,
    rule 2 lets a header pin a target, rule 3 splits everyone else 50/50 with a sticky cookie."""
    return {
        "name": "shop",
        "stable_version": STABLE,
        "halted": halted,
        "halted_reason": reason,
        "targets": [
            {"id": "canary", "endpoint": "http://canary:8080", "version": CANARY},
            {
                "id": "stable-a",
                "endpoint": "http://stable-a:8080",
                "version": STABLE,
                "healthy": stable_healthy,
            },
            {
                "id": "stable-b",
                "endpoint": "http://stable-b:8080",
                "version": STABLE,
                "draining": not stable_healthy,
            },
        ],
        "rules": [
            {
                "id": 1,
                "priority": 1,
                "conditions": [BETA],
                "targets": [{"id": "canary", "weight": 10000}],
            },
            {
                "id": 2,
                "priority": 2,
                "strategy": "header",
                "strategy_key": "x-target",
                "conditions": [
                    {
                        "source": "header",
                        "name": "x-target",
                        "operator": "in",
                        "values": ["canary", CANARY],
                    }
                ],
                "targets": [{"id": "canary", "weight": 5000}, {"id": "stable-a", "weight": 5000}],
            },
            {
                "id": 3,
                "priority": 3,
                "targets": [{"id": "canary", "weight": 5000}, {"id": "stable-b", "weight": 5000}],
                "affinity": {"type": "cookie", "name": "shop_session"},
            },
        ],
    }


REQUESTS = {
    "anyone": RequestContext("GET", "/"),
    "a beta user": RequestContext.from_http("GET", "/", {"x-beta": "1"}),
    "a request pinning the canary": RequestContext.from_http("GET", "/", {"x-target": "canary"}),
    "a request pinning the canary version": RequestContext.from_http(
        "GET", "/", {"x-target": CANARY}
    ),
    # Users whose sticky cookie holds them on the canary's half of rule 3.
    **{
        f"sticky user {key}": RequestContext.from_http(
            "GET", "/", {"cookie": f"shop_session={key}"}
        )
        for key in ("u-1", "u-2", "u-3", "u-4", "u-5", "u-6", "u-7", "u-8")
    },
}


def test_engine__halted__every_request_goes_to_stable__whatever_rule_pin_or_affinity_it_matches():
    running = build_service_snapshot(definition())
    halted = build_service_snapshot(definition(halted=True, reason="kill switch 3: errors"))
    state = RuntimeState(rng=random.Random(3))

    # Unhalted, these requests reach the canary: the header rule, both pins, sticky users.
    assert decide(running, REQUESTS["a beta user"]).target.id == "canary"
    assert decide(running, REQUESTS["a request pinning the canary"]).target.id == "canary"
    assert decide(running, REQUESTS["a request pinning the canary version"]).target.id == "canary"
    on_canary = [
        name
        for name, request in REQUESTS.items()
        if name.startswith("sticky") and decide(running, request).target.id == "canary"
    ]
    assert on_canary  # some of the sticky users are held on the canary
    for name, request in REQUESTS.items():
        decisions = [decide(halted, request, state=state) for _ in range(200)]
        assert {decision.target.version for decision in decisions} == {STABLE}, name
        assert {decision.reason for decision in decisions} == {Reason.HALTED}, name
        assert {decision.rule for decision in decisions} == {None}, name
        assert all(decision.set_cookie_header() is None for decision in decisions), name
        # The default route's spread: both stable targets, by their service-level weights.
        assert {decision.target.id for decision in decisions} == {"stable-a", "stable-b"}, name


def test_engine__halted__explains_who_halted_it():
    halted = build_service_snapshot(definition(halted=True, reason="kill switch 3 activation 12"))

    decision = decide(halted, REQUESTS["a beta user"])

    assert decision.explain() == (
        "The service is halted by kill switch 3 activation 12, so every request takes the default "
        f"route to the stable version, whatever its rules say: {decision.target.name} (v{STABLE})."
    )


def test_engine__halted_with_no_stable_target_available__answers_no_target__as_the_default_route():
    halted = build_service_snapshot(definition(halted=True, reason="switch", stable_healthy=False))
    running = build_service_snapshot({**definition(stable_healthy=False), "rules": []})

    decision = decide(halted, REQUESTS["a beta user"], state=RuntimeState())
    default = decide(running, REQUESTS["anyone"])

    # No canary as a substitute: the default route's answer when it has no target.
    assert (decision.target, decision.rule, decision.reason) == (None, None, Reason.HALTED)
    assert (default.target, default.rule) == (None, None)
    assert decision.explain() == (
        f"The service is halted by switch and no stable (v{STABLE}) target is available, so "
        "there is no target."
    )


def test_engine__a_halt_leaves_the_rules_compiled__so_lifting_it_routes_exactly_as_before():
    running = build_service_snapshot(definition())
    halted = build_service_snapshot(definition(halted=True, reason="switch"))
    lifted = build_service_snapshot(definition())

    assert [plan.rule for plan in halted.plans] == [plan.rule for plan in running.plans]
    for name, request in REQUESTS.items():
        before = decide(running, request, state=RuntimeState(rng=random.Random(name)))
        after = decide(lifted, request, state=RuntimeState(rng=random.Random(name)))
        assert (after.target.id, after.reason) == (before.target.id, before.reason), name


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"halted": "yes"}, "halted"), ({"halted_reason": "two\nlines"}, "halted_reason")],
)
def test_engine__a_bad_halt__names_its_field(changes, field):
    with pytest.raises(InvalidRoutingDefinition) as raised:
        build_service_snapshot({**definition(halted=True), **changes})

    assert raised.value.field == field


# ---------------------------------------------------------------------------------------------
# Services, snapshot and selectors


def make_shop(
    name: str = "shop", endpoints: tuple[str, str] = ("http://s:1", "http://c:1")
) -> Service:
    """A stable and a canary target; beta users go to the canary, the rest split 50/50 with
    sticky users."""
    service = services.service_create(name=name, stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=endpoints[0], version=STABLE)
    services.target_create(service=service, name="canary", endpoint=endpoints[1], version=CANARY)
    services.rule_create(
        service=service,
        name="beta",
        priority=1,
        conditions=[BETA],
        targets={"canary": 100},
    )
    services.rule_create(
        service=service,
        name="split",
        priority=2,
        targets={"stable": 50, "canary": 50},
        affinity={"type": "header", "name": "x-user"},
    )
    return service


@pytest.fixture
def shop() -> Service:
    return make_shop()


def fresh(service: Service) -> Service:
    return Service.objects.get(pk=service.pk)


def rule_rows() -> list[tuple[int, int, Any]]:
    return list(RuleTarget.objects.order_by("pk").values_list("rule_id", "target_id", "weight"))


def routed_versions(service: str, **request: Any) -> set[str]:
    return {selectors.decision_for(service=service, **request).target.version for _ in range(100)}


@pytest.mark.django_db
def test_halt__routes_every_request_to_stable__without_writing_a_rule(shop, engineer):
    rows = rule_rows()
    assert routed_versions("shop", headers={"x-beta": "1"}) == {CANARY}

    halted = services.services_halt(
        services=[shop], holder="kill switch 3 activation 12", reason="error rate 12%"
    )

    assert [service.pk for service in halted] == [shop.pk]
    service = fresh(shop)
    assert service.halted and service.halted_by == ["kill switch 3 activation 12"]
    assert (service.halted_reason, service.halted_since) == (
        "error rate 12%",
        halted[0].halted_since,
    )
    snapshot = routing_snapshot.service_snapshot(name="shop")
    assert snapshot is not None and snapshot.halted
    assert routed_versions("shop", headers={"x-beta": "1"}) == {STABLE}
    assert routed_versions("shop", headers={"x-user": "someone"}) == {STABLE}
    decision = selectors.decision_for(service="shop", headers={"x-beta": "1"})
    assert decision.explain().startswith("The service is halted by error rate 12%, so every")
    assert rule_rows() == rows
    assert list(selectors.halted_services()) == [service]


@pytest.mark.django_db
def test_halt__twice_for_one_holder__writes_bumps_and_audits_once(shop, engineer):
    version = fresh(shop).routing_version
    first = timezone.now()

    services.services_halt(
        services=[shop],
        holder="switch-1",
        reason="errors",
        actor=engineer,
        source=Source.API,
        now=first,
    )
    again = services.services_halt(services=[shop], holder="switch-1", reason="still errors")

    service = fresh(shop)
    assert [item.pk for item in again] == [shop.pk] and again[0].halted_by == ["switch-1"]
    assert (service.halted_by, service.halted_since, service.halted_reason) == (
        ["switch-1"],
        first,
        "errors",
    )
    assert service.routing_version == version + 1
    entry = AuditEntry.objects.get(verb="halt")
    assert (entry.actor, entry.source, entry.reason) == (engineer, Source.API, "errors")
    assert entry.object_pk == str(shop.pk)
    assert "switch-1" in str(entry.changes["halted_by"][1])


@pytest.mark.django_db
def test_two_holders__one_release_keeps_the_halt__the_last_restores_the_routing(shop, engineer):
    before = service_definition(name="shop")
    start = timezone.now()
    services.services_halt(services=[shop], holder="switch-1", reason="errors", now=start)
    services.services_halt(services=[shop], holder="switch-2", reason="latency")
    assert fresh(shop).halted_by == ["switch-1", "switch-2"]

    released = services.services_release(services=[shop], holder="switch-1", actor=engineer)

    assert [service.pk for service in released] == [shop.pk]
    service = fresh(shop)
    # Still held by the other switch, with the halt's own moment and reason.
    assert (service.halted_by, service.halted_since, service.halted_reason) == (
        ["switch-2"],
        start,
        "errors",
    )
    assert routed_versions("shop", headers={"x-beta": "1"}) == {STABLE}
    # Releasing again, or releasing what it never held, changes nothing.
    assert services.services_release(services=[shop], holder="switch-1") == []
    assert services.services_release(services=[shop], holder="switch-9") == []

    services.services_release(services=[shop], holder="switch-2", reason="recovered")

    service = fresh(shop)
    assert (service.halted, service.halted_by, service.halted_since, service.halted_reason) == (
        False,
        [],
        None,
        "",
    )
    after = service_definition(name="shop")
    assert {**after, "version": None} == {**before, "version": None}
    assert routed_versions("shop", headers={"x-beta": "1"}) == {CANARY}
    assert list(selectors.halted_services()) == []
    releases = AuditEntry.objects.filter(verb="release").order_by("pk")
    assert [entry.reason for entry in releases] == ["", "recovered"]
    assert releases[0].actor == engineer


@pytest.mark.django_db
def test_release_of_every_service__lifts_only_the_holders_own_halts():
    one, two, three = make_shop("one"), make_shop("two"), make_shop("three")
    services.services_halt(services=[one, two], holder="switch-1", reason="errors")
    services.services_halt(services=[two, three], holder="switch-2", reason="latency")

    released = services.services_release(holder="switch-1")

    assert [service.name for service in released] == ["one", "two"]
    assert not fresh(one).halted
    assert fresh(two).halted_by == ["switch-2"]
    assert fresh(three).halted_by == ["switch-2"]
    assert [service.name for service in selectors.halted_services()] == ["two", "three"]


@pytest.mark.django_db
def test_halt__tells_the_proxies_after_commit(shop, django_capture_on_commit_callbacks):
    before = cache.get(routing_snapshot.VERSION_CACHE_KEY)
    database = Service.objects.get(pk=shop.pk).routing_version

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.services_halt(services=[shop], holder="switch-1", reason="errors")

    assert callbacks
    assert cache.get(routing_snapshot.VERSION_CACHE_KEY) != before
    assert Service.objects.get(pk=shop.pk).routing_version == database + 1
    with django_capture_on_commit_callbacks(execute=True):
        middle = cache.get(routing_snapshot.VERSION_CACHE_KEY)
        services.services_release(services=[shop], holder="switch-1")
    assert cache.get(routing_snapshot.VERSION_CACHE_KEY) != middle


@pytest.mark.django_db
def test_halt_and_release__cost_the_same_statements_for_1_service_as_for_20(
    django_assert_num_queries,
):
    fleet = [
        services.service_create(name=f"svc-{index}", stable_version=STABLE) for index in range(21)
    ]
    ContentType.objects.get_for_model(Service)  # the audit's content type, cached per process
    # A savepoint and its release (the test's own transaction), the rows locked, written,
    # audited, and their routing versions bumped.
    statements = 6

    for group in (fleet[:1], fleet[1:]):
        with django_assert_num_queries(statements):
            halted = services.services_halt(services=group, holder="switch-1", reason="errors")
        assert len(halted) == len(group)
        with django_assert_num_queries(statements):
            released = services.services_release(services=group, holder="switch-1")
        assert len(released) == len(group)
    assert AuditEntry.objects.filter(verb="halt").count() == 21
    assert AuditEntry.objects.filter(verb="release").count() == 21


@pytest.mark.django_db
def test_halt__cleans_its_reason__and_refuses_a_holder_it_could_not_match(shop):
    services.services_halt(services=[shop], holder="switch-1", reason="line one\nline\ttwo " * 60)

    service = fresh(shop)
    assert "\n" not in service.halted_reason and len(service.halted_reason) == 500
    assert routing_snapshot.all_snapshots()["shop"].halted  # it still compiles
    for holder in ("", "   ", "x" * 101, "two\nlines", None):
        with pytest.raises(ValidationFailed) as raised:
            services.services_halt(services=[shop], holder=holder, reason="r")  # type: ignore[arg-type]
        assert raised.value.fields == {"holder": [raised.value.fields["holder"][0]]}
    assert services.services_halt(services=[], holder="switch-2", reason="r") == []


@contextmanager
def transaction_holding(*statements: str) -> Iterator[None]:
    """``statements`` in an open transaction of a connection of its own, rolled back on leaving."""
    holder = psycopg.connect(process_env()["DATABASE_URL"])
    try:
        for statement in statements:
            holder.execute(statement)
        yield
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.django_db(transaction=True)
def test_halt__does_not_wait_for_a_tick_holding_the_deployments_and_a_reference_to_the_service():
    if connection.vendor != "postgresql":
        pytest.skip("row and table locks held by another transaction are PostgreSQL's")
    shop = make_shop()
    # What a tick's transaction may hold: every deployment row, and a new row's reference to
    # the service (a foreign key's check holds the service row FOR KEY SHARE).
    with transaction_holding(
        "LOCK TABLE deployments_deployment IN ACCESS EXCLUSIVE MODE",
        f"SELECT id FROM routing_service WHERE id = {shop.pk} FOR KEY SHARE",
    ):
        with connection.cursor() as cursor:
            # Were it to wait, the statement would fail after this, not hang the test.
            cursor.execute("SET lock_timeout = '10s'")
        try:
            halted = services.services_halt(services=[shop], holder="switch-1", reason="errors")
            released = services.services_release(holder="switch-1")
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    assert [service.pk for service in halted] == [service.pk for service in released] == [shop.pk]


# ---------------------------------------------------------------------------------------------
# Pages, API, admin and the nginx export


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


def services_panel(client: Client) -> str:
    response = client.get("/routing/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="services-panel")
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_pages__show_a_red_halted_badge_with_reason_and_since__in_their_refreshing_panels(
    shop, make_user
):
    client = logged_in(make_user("vic", roles=["viewer"]))
    assert "status-halted" not in targets_panel(client)
    assert "status-halted" not in services_panel(client)

    halted = services.services_halt(services=[shop], holder="switch-1", reason="error rate 12%")
    since = halted[0].halted_since.isoformat()

    for html in (targets_panel(client), services_panel(client)):
        assert '<span class="status status-halted">halted</span> error rate 12%' in html
        assert f'datetime="{since}"' in html and "held by switch-1" in html
    assert targets_panel(client).lstrip().startswith('<section id="service-targets"')
    assert "status-halted" in client.get("/routing/services/shop/").content.decode()
    css = (Path(__file__).parents[2] / "static/canary/app.css").read_text()
    assert ".status-halted { color: var(--bad); }" in css

    services.services_release(services=[shop], holder="switch-1")
    assert "status-halted" not in targets_panel(client)


@pytest.mark.django_db
def test_api__shows_the_halt_read_only(shop, engineer):
    client = APIClient()
    client.force_authenticate(engineer)
    url = "/api/v1/routing/services/shop/"
    assert client.get(url).json()["halted_by"] == []

    halted = services.services_halt(services=[shop], holder="switch-1", reason="errors")
    body = client.get(url).json()

    assert body["halted_by"] == ["switch-1"] and body["halted_reason"] == "errors"
    assert body["halted_since"] == halted[0].halted_since.isoformat().replace("+00:00", "Z")
    # Read-only: a write that names them is refused, and the halt stays as it was.
    assert client.patch(url, {"halted_by": []}, format="json").status_code == 400
    assert fresh(shop).halted_by == ["switch-1"]
    schema = client.get("/api/schema/", {"format": "json"}).json()
    fields = schema["components"]["schemas"]["Service"]["properties"]
    assert all(
        fields[name].get("readOnly") for name in ("halted_since", "halted_reason", "halted_by")
    )


@pytest.mark.django_db
def test_admin__shows_the_halt_read_only(shop, engineer):
    services.services_halt(services=[shop], holder="switch-1", reason="errors")
    client = logged_in(engineer)

    page = client.get(f"/admin/routing/service/{shop.pk}/change/").content.decode()

    assert "Halted since" in page and "switch-1" in page
    assert 'name="halted_by"' not in page and 'name="halted_reason"' not in page


@pytest.mark.django_db
def test_nginx_export__of_a_halted_service__has_only_its_stable_targets(engineer, tmp_path):
    service = make_shop(endpoints=("http://127.0.0.1:9001", "http://127.0.0.2:9002"))

    def config() -> str:
        snapshot = routing_snapshot.service_snapshot(name="shop")
        assert snapshot is not None
        return exporters.nginx_config(snapshot)

    assert "127.0.0.2:9002" in config() and "split_clients" in config()

    services.services_halt(services=[service], holder="switch-1", reason="errors")
    text = config()

    assert "127.0.0.1:9001" in text
    assert "127.0.0.2" not in text and CANARY not in text and "split_clients" not in text
    assert "# Not exported: its rules, while the service is halted by errors" in text
    client = APIClient()
    client.force_authenticate(engineer)
    checked = nginx_test(export(client, tmp_path, "shop", "18080"))
    assert checked.returncode == 0, checked.stderr

    services.services_release(services=[service], holder="switch-1")
    assert "127.0.0.2:9002" in config()


# ---------------------------------------------------------------------------------------------
# A real proxy process


def split_service(backends: Any) -> Service:
    """Service "shop": a stable and a canary backend, split 50/50, sticky by the x-user header."""
    stable, canary = backends
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="canary", endpoint=canary.url, version=CANARY)
    services.rule_create(
        service=service,
        name="split",
        targets={"stable": 50, "canary": 50},
        affinity={"type": "header", "name": "x-user"},
    )
    return service


USERS = [{"headers": {"X-User": f"user-{index}"}} for index in range(200)]


def versions_by_user(proxy_url: str) -> list[str]:
    answers = fetch_many(proxy_url, USERS)
    assert all(answer.status == 200 for answer in answers)
    assert all(answer.body.decode() == answer.version for answer in answers)
    return [answer.version for answer in answers]


def halt_and_release_through(
    proxy_url: str, service: Service, output: Any, deadline: float
) -> None:
    before = versions_by_user(proxy_url)
    assert set(before) == {STABLE, CANARY}

    services.services_halt(services=[service], holder="switch-1", reason="errors")

    def all_stable() -> bool:
        return set(versions_by_user(proxy_url)) == {STABLE}

    assert wait_for(all_stable, timeout=deadline), output()
    # Once reloaded it stays so: many more requests, every one to stable.
    answers = fetch_many(proxy_url, USERS * 5 + [{}] * 200)
    assert {answer.version for answer in answers} == {STABLE}

    services.services_release(services=[service], holder="switch-1")

    def split_again() -> bool:
        return set(versions_by_user(proxy_url)) == {STABLE, CANARY}

    assert wait_for(split_again, timeout=deadline), output()
    # Exactly the routing of before: every sticky user is back where it was.
    assert versions_by_user(proxy_url) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_proxy__halt_sends_every_request_to_stable__release_brings_the_split_back(
    backends, start_proxy
):
    service = split_service(backends)
    proxy = start_proxy("shop")

    # The cache's token announces the change; the proxy polls it every 0.25 s.
    halt_and_release_through(proxy.url, service, proxy.process.output, deadline=10)


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_proxy__with_the_cache_unreachable__notices_the_halt_and_its_release_through_the_database(
    backends, start_proxy
):
    service = split_service(backends)
    # Nothing listens on port 1: the proxy's every cache call fails, so only the database's
    # routing version (read at most every CANARY_ROUTING_DB_VERSION_SECONDS, 2 s, and polled
    # every 0.25 s) can tell it; 10 s leaves room for the reload itself on a busy machine.
    proxy = start_proxy("shop", REDIS_URL="redis://127.0.0.1:1/0")

    halt_and_release_through(proxy.url, service, proxy.process.output, deadline=10)

    assert "The cache (for the routing version) is unreachable" in proxy.process.output()
