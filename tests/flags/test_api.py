"""The flags REST API: CRUD by key, the verbs, roles, filters, and bad input on every endpoint
answered with 4xx naming the field, never 500."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from canary_site.models import AuditEntry
from flags import services
from flags.models import Flag

pytestmark = pytest.mark.django_db

SEGMENT_RULE = {
    "name": "beta",
    "segments": ["beta"],
    "serve": {"rollout": {"percentage": 10, "variant": "on"}},
}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api(engineer: Any) -> APIClient:
    return client_for(engineer)


def assert_error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()["error"]
    assert body["message"]
    if field is not None:
        assert field in body["fields"], body
    return body


def test_create__with_a_segment_rule__returns_the_flag_by_key(api, make_segment):
    make_segment("beta")

    response = api.post(
        "/api/v1/flags/",
        {
            "key": "new-checkout",
            "name": "New checkout",
            "rules": [SEGMENT_RULE],
            "tags": ["Checkout"],
        },
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert body["key"] == "new-checkout"
    assert body["status"] == "disabled"
    assert body["rules"] == [SEGMENT_RULE]
    assert body["tags"] == ["checkout"]
    assert body["owner"] == "erin"
    assert api.get("/api/v1/flags/new-checkout/").json()["version"] == 1


def test_patch__changes_only_what_it_names_and_bumps_the_version(api, make_flag):
    make_flag(description="keep me")

    body = api.patch("/api/v1/flags/new-checkout/", {"name": "Renamed"}, format="json").json()

    assert (body["name"], body["description"], body["version"]) == ("Renamed", "keep me", 2)


def test_delete__removes_the_flag(api, make_flag):
    make_flag()

    assert api.delete("/api/v1/flags/new-checkout/").status_code == 204
    assert not Flag.objects.exists()


def test_enable_disable_kill__move_the_status_and_record_the_verb(api, make_flag):
    make_flag(status="disabled")

    assert (
        api.post("/api/v1/flags/new-checkout/enable/", {}, format="json").json()["status"]
        == "enabled"
    )
    assert api.post("/api/v1/flags/new-checkout/disable/").json()["status"] == "disabled"
    killed = api.post(
        "/api/v1/flags/new-checkout/kill/", {"reason": "errors"}, format="json"
    ).json()

    assert (killed["status"], killed["killed_reason"]) == ("killed", "errors")
    assert set(AuditEntry.objects.exclude(verb="").values_list("verb", flat=True)) == {
        "enable",
        "disable",
        "kill",
    }


def test_kill__without_a_reason__is_400_naming_reason(api, make_flag):
    make_flag()

    assert_error(api.post("/api/v1/flags/new-checkout/kill/", {}, format="json"), 400, "reason")
    assert_error(
        api.post("/api/v1/flags/new-checkout/kill/", {"reason": " "}, format="json"), 400, "reason"
    )


def test_disable__of_a_killed_flag__is_409(api, make_flag):
    services.flag_kill(flag=make_flag(), reason="boom")

    assert_error(api.post("/api/v1/flags/new-checkout/disable/"), 409)


def test_rollout__sets_the_default_rules_percentage(api, make_flag):
    make_flag(default_rule={"variant": "off"})

    body = api.post(
        "/api/v1/flags/new-checkout/rollout/", {"percentage": "12.5"}, format="json"
    ).json()

    assert body["default_rule"] == {"rollout": {"percentage": 12.5, "variant": "on"}}
    assert body["rollout_percentage"] == 12.5


def test_evaluate__returns_the_result_and_its_explanation(api, make_flag, make_segment):
    make_segment("beta")
    make_flag(default_rule={"variant": "off"}, rules=[{**SEGMENT_RULE, "serve": {"variant": "on"}}])

    body = api.post(
        "/api/v1/flags/new-checkout/evaluate/",
        {"context": {"targetingKey": "u1", "country": "NL"}},
        format="json",
    ).json()

    assert (body["value"], body["variant"], body["reason"]) == (True, "on", "TARGETING_MATCH")
    assert body["metadata"]["segment_key"] == "beta"
    assert "rule 1 'beta' matched" in body["explanation"]


def test_segments__crud_by_key__and_used_by(api, make_flag):
    created = api.post(
        "/api/v1/segments/",
        {
            "key": "beta",
            "constraints": [{"attribute": "country", "operator": "in", "values": ["NL"]}],
        },
        format="json",
    )
    make_flag(rules=[SEGMENT_RULE])

    assert created.status_code == 201
    assert api.get("/api/v1/segments/beta/").json()["used_by"] == ["new-checkout"]
    assert (
        api.patch("/api/v1/segments/beta/", {"name": "Beta"}, format="json").json()["version"] == 2
    )
    assert_error(api.delete("/api/v1/segments/beta/"), 409)


# --- filters shared with the pages --------------------------------------------------------------


def test_list__filters_by_search_status_type_tag_and_stale(api, make_flag):
    from datetime import date

    make_flag("checkout-a", tags=["checkout"], flag_type="experiment")
    make_flag("checkout-b", status="disabled", tags=["checkout", "q3"])
    make_flag("search-old", expires_on=date(2020, 1, 1))

    def keys(query: str) -> list[str]:
        return [flag["key"] for flag in api.get(f"/api/v1/flags/?{query}").json()["results"]]

    assert keys("search=checkout") == ["checkout-a", "checkout-b"]
    assert keys("status=disabled") == ["checkout-b"]
    assert keys("type=experiment") == ["checkout-a"]
    assert keys("tag=q3") == ["checkout-b"]
    assert keys("tag=check") == []
    assert keys("stale=true") == ["search-old"]
    assert keys("stale=false") == ["checkout-a", "checkout-b"]


def test_list__with_an_unknown_status__is_400_naming_it(api):
    assert_error(api.get("/api/v1/flags/?status=sideways"), 400, "status")


# --- roles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "approver"])
def test_readers__may_read_and_evaluate_but_not_write(make_user, make_flag, role):
    make_flag()
    client = client_for(make_user(f"{role}-user", roles=[role]))

    assert client.get("/api/v1/flags/new-checkout/").status_code == 200
    assert client.post("/api/v1/flags/new-checkout/evaluate/", {}, format="json").status_code == 200
    assert client.post("/api/v1/flags/", {"key": "x"}, format="json").status_code == 403
    assert (
        client.patch("/api/v1/flags/new-checkout/", {"name": "x"}, format="json").status_code == 403
    )
    assert (
        client.post("/api/v1/flags/new-checkout/kill/", {"reason": "x"}, format="json").status_code
        == 403
    )
    assert (
        client.post(
            "/api/v1/flags/new-checkout/rollout/", {"percentage": 5}, format="json"
        ).status_code
        == 403
    )
    assert client.delete("/api/v1/flags/new-checkout/").status_code == 403
    assert client.post("/api/v1/segments/", {"key": "s"}, format="json").status_code == 403


def test_anonymous__is_401():
    assert APIClient().get("/api/v1/flags/").status_code == 401


# --- bad input on every endpoint ----------------------------------------------------------------

BAD_FLAGS = [
    ({"name": "no key"}, "key"),
    ({"key": "has space"}, "key"),
    ({"key": "x", "unknown": 1}, "unknown"),
    ({"key": "x", "flag_type": "sideways"}, "flag_type"),
    ({"key": "x", "value_type": "date"}, "value_type"),
    ({"key": "x", "status": "killed"}, "status"),
    (
        {
            "key": "x",
            "rules": [
                {
                    "constraints": [{"attribute": "a", "operator": "like", "values": ["b"]}],
                    "serve": {"variant": "on"},
                }
            ],
        },
        "rules[0].constraints[0].operator",
    ),
    (
        {
            "key": "x",
            "rules": [
                {
                    "constraints": [
                        {"attribute": "a", "operator": "regex", "values": ["(x+x+)+y"]}
                    ],
                    "serve": {"variant": "on"},
                }
            ],
        },
        "rules[0].constraints[0].values[0]",
    ),
    (
        {
            "key": "x",
            "rules": [
                {
                    "constraints": [
                        {"attribute": "a", "operator": "regex", "values": ["[unclosed"]}
                    ],
                    "serve": {"variant": "on"},
                }
            ],
        },
        "rules[0].constraints[0].values[0]",
    ),
    (
        {
            "key": "x",
            "default_rule": {
                "split": [{"variant": "on", "weight": 60}, {"variant": "off", "weight": 30}]
            },
        },
        "default_rule.split",
    ),
    (
        {
            "key": "x",
            "variants": [{"name": "a", "value": True}, {"name": "a", "value": False}],
            "off_variant": "a",
        },
        "variants[1].name",
    ),
    (
        {
            "key": "x",
            "value_type": "number",
            "variants": [{"name": "a", "value": "ten"}],
            "off_variant": "a",
        },
        "variants[0].value",
    ),
    ({"key": "x", "rules": "not a list"}, "rules"),
    ({"key": "x", "rules": [{"serve": {"variant": "on", "rollout": {}}}]}, "rules[0].serve"),
    (
        {"key": "x", "default_rule": {"rollout": {"percentage": "ten", "variant": "on"}}},
        "default_rule.rollout.percentage",
    ),
    (
        {"key": "x", "rules": [{"segments": ["ghost"], "serve": {"variant": "on"}}]},
        "rules[0].segments[0]",
    ),
    (
        {
            "key": "x",
            "targets": [{"variant": "on", "values": ["a"]}, {"variant": "off", "values": ["a"]}],
        },
        "targets[1].values[0]",
    ),
    ({"key": "x", "tags": "checkout"}, "tags"),
    ({"key": "x", "expires_on": "someday"}, "expires_on"),
    ({"key": "x", "owner": "nobody"}, "owner"),
    ({"key": "x", "stickiness": ""}, "stickiness"),
    (
        {
            "key": "x",
            "value_type": "number",
            "variants": [{"name": "a", "value": 10**400}],
            "off_variant": "a",
        },
        "variants[0].value",
    ),
    (
        {"key": "x", "default_rule": {"split": [{"variant": "on", "weight": 10**400}]}},
        "default_rule.split[0].weight",
    ),
    (
        {"key": "x", "default_rule": {"split": [{"variant": ["on"], "weight": 100}]}},
        "default_rule.split[0].variant",
    ),
]


@pytest.mark.parametrize(("body", "field"), BAD_FLAGS)
def test_create__with_bad_input__is_400_naming_the_field(api, body, field):
    assert_error(api.post("/api/v1/flags/", body, format="json"), 400, field)
    assert not Flag.objects.exists()


def test_create__with_a_duplicate_key__is_400_naming_key(api, make_flag):
    make_flag("x")

    assert_error(api.post("/api/v1/flags/", {"key": "x"}, format="json"), 400, "key")


@pytest.mark.parametrize(
    ("body", "field"), [pair for pair in BAD_FLAGS if pair[1] not in ("key", "status")]
)
def test_patch__with_bad_input__is_400_naming_the_field(api, make_flag, body, field):
    make_flag("x")
    body = {name: value for name, value in body.items() if name != "key"}

    assert_error(api.patch("/api/v1/flags/x/", body, format="json"), 400, field)
    assert Flag.objects.get().version == 1


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("rollout", {"percentage": 101}, "percentage"),
        ("rollout", {"percentage": "1.234"}, "percentage"),
        ("rollout", {}, "percentage"),
        ("rollout", {"percentage": 5, "variant": "ghost"}, "variant"),
        ("evaluate", {"context": "user-1"}, "context"),
        ("evaluate", {"contxt": {}}, "contxt"),
        ("kill", {"reason": "x", "extra": 1}, "extra"),
        ("enable", {"reason": ["x"]}, "reason"),
    ],
)
def test_verbs__with_bad_input__are_400_naming_the_field(api, make_flag, path, body, field):
    make_flag()

    assert_error(api.post(f"/api/v1/flags/new-checkout/{path}/", body, format="json"), 400, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"constraints": []}, "key"),
        (
            {
                "key": "s",
                "constraints": [{"attribute": "a", "operator": "num_gt", "values": ["many"]}],
            },
            "constraints[0].values[0]",
        ),
        (
            {"key": "s", "constraints": [{"attribute": "a", "operator": "in"}]},
            "constraints[0].values",
        ),
        ({"key": "s", "constraints": [{"operator": "exists"}]}, "constraints[0].attribute"),
        ({"key": "s", "constraints": {"a": 1}}, "constraints"),
    ],
)
def test_segment_create__with_bad_input__is_400_naming_the_field(api, body, field):
    assert_error(api.post("/api/v1/segments/", body, format="json"), 400, field)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"key": NaN}',
        b"[" * 50_000,
        b'"just a string"',
        b"\xff\xfe",
        b'{"key": "x", "name": "\\ud800"}',
    ],
)
@pytest.mark.parametrize(
    "path", ["/api/v1/flags/", "/api/v1/segments/", "/api/v1/flags/new-checkout/evaluate/"]
)
def test_every_write_endpoint__with_a_malformed_body__is_4xx(api, make_flag, path, raw):
    make_flag()

    response = api.post(path, raw, content_type="application/json")

    assert 400 <= response.status_code < 500, response.content
    assert response.json()["error"]["message"]


def test_unknown_flag__is_404_with_the_error_body(api):
    assert_error(api.get("/api/v1/flags/ghost/"), 404)
    assert_error(api.post("/api/v1/flags/ghost/kill/", {"reason": "x"}, format="json"), 404)


# --- rules, one at a time -----------------------------------------------------------------------

RULE_A = {"name": "a", "serve": {"variant": "on"}}
RULE_B = {"name": "b", "serve": {"variant": "off"}}


def rule_names() -> list[str]:
    return [rule["name"] for rule in Flag.objects.get().rules]


def test_rules__add_update_move_delete__each_against_the_version_read(api, make_flag):
    make_flag(rules=[RULE_A])
    url = "/api/v1/flags/new-checkout/rules/"

    added = api.post(url, {"rule": RULE_B, "version": 1}, format="json")
    updated = api.put(f"{url}0/", {"rule": {**RULE_A, "name": "a2"}, "version": 2}, format="json")
    moved = api.post(f"{url}1/move/", {"to": 0, "version": 3}, format="json")
    deleted = api.delete(f"{url}1/?version=4&reason=unused")

    assert (added.status_code, added.json()["version"]) == (201, 2)
    assert (updated.status_code, updated.json()["version"]) == (200, 3)
    assert (moved.status_code, moved.json()["version"]) == (200, 4)
    assert (deleted.status_code, deleted.json()["version"]) == (200, 5)
    assert rule_names() == ["b"]
    verbs = list(
        AuditEntry.objects.filter(object_repr="new-checkout")
        .order_by("timestamp")
        .values_list("verb", flat=True)
    )
    assert verbs[-4:] == ["rule_add", "rule_update", "rule_move", "rule_delete"]


def test_rules__add_without_a_version__appends_to_the_rules_as_they_are(api, make_flag):
    flag = make_flag(rules=[RULE_A])
    services.flag_rule_add(flag=flag, rule=RULE_B)

    response = api.post(
        "/api/v1/flags/new-checkout/rules/", {"rule": {**RULE_B, "name": "c"}}, format="json"
    )

    assert response.status_code == 201
    assert rule_names() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "", {"rule": RULE_B, "version": 1}),
        ("put", "0/", {"rule": RULE_B, "version": 1}),
        ("post", "0/move/", {"to": 1, "version": 1}),
        ("delete", "0/?version=1", None),
    ],
)
def test_rules__against_a_stale_version__are_409_stale_and_change_nothing(
    api, make_flag, method, path, body
):
    flag = make_flag(rules=[RULE_A, RULE_B])
    services.flag_update(flag=flag, changes={"name": "renamed"})  # version 2 now

    response = getattr(api, method)(f"/api/v1/flags/new-checkout/rules/{path}", body, format="json")

    error = assert_error(response, 409, "version")
    assert error["code"] == "stale"
    assert "version 2" in error["message"]
    assert rule_names() == ["a", "b"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("put", "0/", {"rule": RULE_B}, "version"),
        ("post", "0/move/", {"version": 1}, "to"),
        ("post", "0/move/", {"to": 5, "version": 1}, "to"),
        ("delete", "0/", None, "version"),
        ("post", "", {"rule": [1], "version": 1}, "rule"),
        ("post", "", {"rule": {"serve": {"variant": "nope"}}, "version": 1}, "rule.serve.variant"),
        (
            "put",
            "0/",
            {"rule": {"segments": ["missing"], "serve": {"variant": "on"}}, "version": 1},
            "rule.segments[0]",
        ),
        ("post", "", {"rule": RULE_B, "version": 1, "index": 3}, "index"),
    ],
)
def test_rules__with_bad_input__are_400_naming_the_field(api, make_flag, method, path, body, field):
    make_flag(rules=[RULE_A, RULE_B])

    response = getattr(api, method)(f"/api/v1/flags/new-checkout/rules/{path}", body, format="json")

    assert_error(response, 400, field)
    assert rule_names() == ["a", "b"]


def test_rules__at_an_index_the_flag_does_not_have__is_404(api, make_flag):
    make_flag(rules=[RULE_A])

    response = api.put(
        "/api/v1/flags/new-checkout/rules/3/", {"rule": RULE_B, "version": 1}, format="json"
    )

    assert_error(response, 404)


def test_patch__with_a_stale_version__is_409_and_with_the_current_one_saves(api, make_flag):
    make_flag()

    saved = api.patch("/api/v1/flags/new-checkout/", {"name": "one", "version": 1}, format="json")
    stale = api.patch("/api/v1/flags/new-checkout/", {"name": "two", "version": 1}, format="json")

    assert saved.status_code == 200
    assert_error(stale, 409, "version")
    assert Flag.objects.get().name == "one"


def test_rules__readers__may_not_change_them(make_user, make_flag):
    make_flag(rules=[RULE_A])
    viewer = client_for(make_user("vera", roles=["viewer"]))

    response = viewer.post(
        "/api/v1/flags/new-checkout/rules/", {"rule": RULE_B, "version": 1}, format="json"
    )

    assert_error(response, 403)
    assert rule_names() == ["a"]
