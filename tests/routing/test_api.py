"""The routing REST API: CRUD, the split in one call, decide, the nginx export, roles, and
bad input answered with 400 naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from routing import services
from routing.models import RoutingRule, Service, Target

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def client(engineer) -> APIClient:
    return client_for(engineer)


@pytest.fixture
def viewer(make_user) -> APIClient:
    return client_for(make_user("vic", roles=["viewer"]))


@pytest.fixture
def shop() -> Service:
    service = services.service_create(name="shop", stable_version="1.0.0")
    services.target_create(service=service, name="stable", endpoint="http://s:1", version="1.0.0")
    services.target_create(service=service, name="canary", endpoint="http://c:1", version="2.0.0")
    return service


@pytest.fixture
def rule(shop) -> RoutingRule:
    return services.rule_create(service=shop, name="split", targets={"stable": 90, "canary": 10})


def assert_error(response: Any, status: int, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()["error"]
    assert body["message"]
    assert field in body["fields"], body
    return body


def test_crud__service_target_rule__round_trip(client):
    created = client.post(
        "/api/v1/routing/services/",
        {"name": "shop", "stable_version": "1.0.0", "reason": "new service"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    for name, version in [("stable", "1.0.0"), ("canary", "2.0.0")]:
        response = client.post(
            "/api/v1/routing/targets/",
            {
                "service": "shop",
                "name": name,
                "endpoint": f"http://{name}-svc:8080",
                "version": version,
                "health_check": {"path": "/healthz", "interval_s": 5},
            },
            format="json",
        )
        assert response.status_code == 201, response.json()
    response = client.post(
        "/api/v1/routing/rules/",
        {
            "service": "shop",
            "name": "split",
            "targets": [{"target": "stable", "weight": 95}, {"target": "canary", "weight": 5}],
            "affinity": {"type": "cookie", "name": "shop_session", "ttl_s": 3600},
            "conditions": [{"source": "path", "operator": "prefix", "values": ["/api"]}],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    rule = response.json()
    assert rule["targets"] == [
        {"target": "stable", "version": "1.0.0", "weight": 95.0},
        {"target": "canary", "version": "2.0.0", "weight": 5.0},
    ]

    detail = client.get("/api/v1/routing/services/shop/").json()
    assert [target["name"] for target in detail["targets"]] == ["stable", "canary"]
    assert detail["routing_version"] >= 4
    listed = client.get("/api/v1/routing/rules/", {"service": "shop"}).json()
    assert listed["count"] == 1
    patched = client.patch(
        f"/api/v1/routing/rules/{rule['id']}/", {"priority": 5, "enabled": False}, format="json"
    )
    assert (patched.json()["priority"], patched.json()["enabled"]) == (5, False)
    target = Target.objects.get(name="canary")
    moved = client.patch(f"/api/v1/routing/targets/{target.pk}/", {"healthy": False}, format="json")
    assert moved.json()["healthy"] is False
    assert client.delete(f"/api/v1/routing/rules/{rule['id']}/").status_code == 204
    assert client.delete(f"/api/v1/routing/targets/{target.pk}/").status_code == 204
    assert client.delete("/api/v1/routing/services/shop/").status_code == 204
    assert not Service.objects.exists()


def test_weights__sets_the_split_in_one_call(client, rule):
    response = client.post(
        f"/api/v1/routing/rules/{rule.pk}/weights/",
        {"weights": {"stable": 60, "canary": 40}, "reason": "phase 3"},
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert [t["weight"] for t in response.json()["targets"]] == [60.0, 40.0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"weights": {"stable": 60, "canary": 30}}, "weights"),
        ({"weights": {"stable": 60, "ghost": 40}}, "weights.ghost"),
        ({"weights": {"stable": 101}}, "weights.stable"),
        ({"weights": {"stable": "lots"}}, "weights.stable"),
        ({"weights": {}}, "weights"),
        ({"weights": {"stable": 50, "canary": 50}, "extra": 1}, "extra"),
    ],
    ids=["sum", "ghost", "over-100", "not-a-number", "empty", "unknown-field"],
)
def test_weights__bad_input__is_400_naming_the_field(client, rule, body, field):
    assert_error(
        client.post(f"/api/v1/routing/rules/{rule.pk}/weights/", body, format="json"), 400, field
    )


RULE = {
    "service": "shop",
    "targets": [{"target": "stable", "weight": 90}, {"target": "canary", "weight": 10}],
}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"targets": [{"target": "stable", "weight": 90}, {"target": "canary", "weight": 5}]},
            "targets",
        ),
        (
            {"targets": [{"target": "stable", "weight": 90}, {"target": "stable", "weight": 10}]},
            "targets[1].target",
        ),
        ({"targets": [{"target": "stable", "weight": 33.333}]}, "targets[0].weight"),
        (
            {
                "conditions": [
                    {"source": "header", "name": "x", "operator": "regex", "values": ["(x+)+"]}
                ]
            },
            "conditions[0].values[0]",
        ),
        (
            {
                "conditions": [
                    {"source": "header", "name": "x", "operator": "regex", "values": ["("]}
                ]
            },
            "conditions[0].values[0]",
        ),
        (
            {
                "conditions": [
                    {"source": "client_ip", "operator": "cidr", "values": ["10.0.0.300/8"]}
                ]
            },
            "conditions[0].values",
        ),
        ({"affinity": {"type": "cookie", "name": "s", "ttl_s": -1}}, "affinity.ttl_s"),
        ({"affinity": {"type": "cookie", "name": "s", "path": "nope"}}, "affinity.path"),
        ({"circuit_breaker": {"failure_threshold": 0}}, "circuit_breaker.failure_threshold"),
        ({"rate_limit": {"rps": 10}}, "rate_limit.burst"),
        ({"strategy": "sideways"}, "strategy"),
        ({"service": "ghost"}, "service"),
        ({"colour": "blue"}, "colour"),
    ],
    ids=[
        "sum",
        "duplicate-target",
        "three-decimals",
        "nested-quantifier",
        "unbalanced-regex",
        "bad-cidr",
        "negative-ttl",
        "relative-cookie-path",
        "zero-threshold",
        "missing-burst",
        "unknown-strategy",
        "unknown-service",
        "unknown-field",
    ],
)
def test_rule_create__bad_input__is_400_naming_the_field(client, shop, changes, field):
    response = client.post("/api/v1/routing/rules/", RULE | changes, format="json")

    assert_error(response, 400, field)
    assert not RoutingRule.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"endpoint": "gopher://old:70"}, "endpoint"),
        ({"endpoint": "http://"}, "endpoint"),
        ({"endpoint": "http://host:notaport"}, "endpoint"),
        ({"name": "has space"}, "name"),
        ({"name": "stable"}, "name"),
        ({"weight": -1}, "weight"),
        ({"health_check": {"path": "health"}}, "health_check.path"),
        ({"health_check": {"timeout_s": 5, "interval_s": 2}}, "health_check.timeout_s"),
        ({"health_check": {"expected_statuses": [700]}}, "health_check.expected_statuses"),
    ],
)
def test_target_create__bad_input__is_400_naming_the_field(client, shop, changes, field):
    body = {"service": "shop", "name": "new", "endpoint": "http://n:1", "version": "3.0.0"}

    response = client.post("/api/v1/routing/targets/", body | changes, format="json")

    assert_error(response, 400, field)


def test_target_delete__used_by_a_rule__is_409(client, rule):
    target = Target.objects.get(name="canary")

    response = client.delete(f"/api/v1/routing/targets/{target.pk}/")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_roles__viewer_reads_and_decides__but_cannot_write(viewer, rule):
    assert viewer.get("/api/v1/routing/rules/").status_code == 200
    assert (
        viewer.post("/api/v1/routing/decide", {"service": "shop"}, format="json").status_code == 200
    )
    assert viewer.get("/api/v1/routing/services/shop/nginx.conf").status_code == 200

    for response in [
        viewer.post(
            f"/api/v1/routing/rules/{rule.pk}/weights/",
            {"weights": {"stable": 100, "canary": 0}},
            format="json",
        ),
        viewer.post(
            "/api/v1/routing/services/", {"name": "x", "stable_version": "1"}, format="json"
        ),
        viewer.patch(f"/api/v1/routing/rules/{rule.pk}/", {"priority": 1}, format="json"),
        viewer.delete(f"/api/v1/routing/rules/{rule.pk}/"),
    ]:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


def test_anonymous__is_401():
    assert APIClient().get("/api/v1/routing/services/").status_code == 401


def test_decide__returns_the_target_and_why(client, shop):
    services.rule_create(
        service=shop,
        name="beta",
        priority=1,
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )

    response = client.post(
        "/api/v1/routing/decide",
        {"service": "shop", "method": "GET", "path": "/cart", "headers": {"X-Beta": "1"}},
        format="json",
    )

    body = response.json()
    assert response.status_code == 200
    assert body["target"]["name"] == "canary"
    assert body["reason"] == "rule_match"
    assert body["rule_name"] == "beta"
    assert 'header x-beta equals "1"' in body["explanation"]
    other = client.post("/api/v1/routing/decide/", {"service": "shop"}, format="json").json()
    assert (other["target"]["name"], other["reason"]) == ("stable", "no_rule")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service": "ghost"}, "service"),
        ({"service": "shop", "path": "no-slash"}, "path"),
        ({"service": "shop", "client_ip": "300.1.1.1"}, "client_ip"),
        ({"service": "shop", "headers": ["x"]}, "headers"),
    ],
)
def test_decide__bad_input__names_the_field(client, shop, body, field):
    response = client.post("/api/v1/routing/decide", body, format="json")

    assert response.status_code in (400, 404)
    assert field in response.json()["error"]["fields"]


def test_nginx_export__is_plain_text__and_404_for_an_unknown_service(client, rule):
    response = client.get("/api/v1/routing/services/shop/nginx.conf", {"listen": "9090"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "listen 9090;" in text and "split_clients" in text
    assert client.get("/api/v1/routing/services/nope/nginx.conf").status_code == 404
    bad = client.get("/api/v1/routing/services/shop/nginx.conf", {"listen": "80; evil"})
    assert_error(bad, 400, "listen")


def test_schema__documents_the_routing_paths(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    for path in [
        "/api/v1/routing/services/",
        "/api/v1/routing/rules/{id}/weights/",
        "/api/v1/routing/decide",
        "/api/v1/routing/services/{name}/nginx.conf",
    ]:
        assert path in schema["paths"], path


# A line break would end the comment the nginx export quotes a value in, and what follows would
# be configuration: refused in every name and value, as are the other control characters.
HOSTILE = "/a\nserver { listen 9998; location / { return 200; } }\n#"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"conditions": [{"source": "path", "operator": "prefix", "values": ["/", HOSTILE]}]},
            "conditions[0].values[1]",
        ),
        (
            {
                "conditions": [
                    {
                        "source": "header",
                        "name": "x\r\nx-evil",
                        "operator": "equals",
                        "values": ["1"],
                    }
                ]
            },
            "conditions[0].name",
        ),
        (
            {"conditions": [{"source": "path", "operator": "regex", "values": ["^/a\x00"]}]},
            "conditions[0].values[0]",
        ),
        ({"name": "split }\nserver {"}, "name"),
        ({"strategy": "header", "strategy_key": "x-pin\x1b"}, "strategy_key"),
        ({"name": "tab\tname"}, "name"),
        ({"name": "next\x85line"}, "name"),
        ({"name": "delete\x7f"}, "name"),
    ],
    ids=[
        "line-break-in-value",
        "crlf-in-header-name",
        "nul-in-regex",
        "line-break-in-rule-name",
        "escape-in-strategy-key",
        "tab-in-rule-name",
        "c1-in-rule-name",
        "del-in-rule-name",
    ],
)
def test_rule_create__with_a_control_character__is_400_naming_the_field(
    client, shop, changes, field
):
    response = client.post("/api/v1/routing/rules/", RULE | changes, format="json")

    body = assert_error(response, 400, field)
    assert "control characters" in body["message"]
    assert not RoutingRule.objects.exists()
    export = client.get("/api/v1/routing/services/shop/nginx.conf").content.decode()
    assert "9998" not in export and export.count("server {") == 1


def test_rule_update__with_a_line_break__is_400_and_the_rule_is_unchanged(client, rule):
    response = client.patch(
        f"/api/v1/routing/rules/{rule.pk}/",
        {"conditions": [{"source": "path", "operator": "prefix", "values": [HOSTILE]}]},
        format="json",
    )

    assert_error(response, 400, "conditions[0].values[0]")
    rule.refresh_from_db()
    assert rule.conditions == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"endpoint": "http://n:1/\nserver {"}, "endpoint"),
        ({"endpoint": "http://a;}server{listen:1"}, "endpoint"),
        ({"endpoint": "http://a b:1"}, "endpoint"),
        ({"version": "3.0\n.0"}, "version"),
        ({"metadata": {"team": "payments\n}"}}, "metadata"),
        ({"metadata": {"owners": [{"name\r": "x"}]}}, "metadata"),
    ],
    ids=[
        "line-break-url",
        "config-in-host",
        "space-in-host",
        "line-break-in-version",
        "metadata-value",
        "metadata-key",
    ],
)
def test_target_create__with_a_control_character_or_a_bad_host__is_400_naming_the_field(
    client, shop, changes, field
):
    body = {"service": "shop", "name": "new", "endpoint": "http://n:1", "version": "3.0.0"}

    response = client.post("/api/v1/routing/targets/", body | changes, format="json")

    assert_error(response, 400, field)
    assert not Target.objects.filter(name="new").exists()
