"""The rollback plans API: plans in the guide's words as JSON or YAML, read back normalised with
their worst case; field paths in every refusal; roles; rehearse and preview."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from canary_site.models import AuditEntry
from rollback import plans
from rollback.models import RollbackExecution, RollbackPlan
from tests.rollback.api_world import (
    client_for,
    make_plan,
    plan_definition,
    running_deployment,
    shop_service,
)

pytestmark = pytest.mark.django_db

PLANS = "/api/v1/rollback/plans/"


@pytest.fixture
def shop(db):
    return shop_service()


@pytest.fixture
def erin(api_client, people):
    return client_for(api_client, people["erin"])


def _fields(response) -> dict:
    assert response.status_code == 400, response.content
    return response.json()["error"]["fields"]


def test_create__a_plan_in_the_guides_words__answers_201_normalised_with_its_worst_case(
    erin, shop, people
):
    response = erin.post(PLANS, plan_definition(), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    plan = RollbackPlan.objects.get(pk=body["id"])
    assert body["name"] == "shop-careful"
    assert body["service"] == "shop" and body["deploymentId"] is None
    assert body["isDefault"] is False and body["enabled"] is True
    assert body["strategy"] == "gradual"
    assert body["created_by"] == "erin"
    # Every default filled in, and where the plan applies.
    definition = body["definition"]
    assert definition["strategyConfig"] == {"durationMs": 60_000, "steps": 3, "keepWarmMs": 60_000}
    assert definition["triggers"] == ["automatic", "manual"]
    assert definition["safety"]["maxRollbackTimeMs"] == 300_000
    assert [a["id"] for a in definition["actions"]] == ["stop", "flags"]
    assert definition["service"] == "shop" and definition["isDefault"] is False
    expected = plans.worst_case_ms(plans.expand(plan.spec, share=Decimal(100)))
    assert body["worstCaseMs"] == expected
    # The gradual steps' pace (two of 20 s before the last move) is in it.
    assert expected >= 40_000
    entry = AuditEntry.objects.filter(object_pk=str(plan.pk), verb="create").get()
    assert entry.actor == people["erin"] and entry.source == "api"


def test_create__as_yaml_text__reads_like_the_json(erin, shop):
    text = """
name: shop-yaml
service: shop
isDefault: true
strategy: blue_green
strategyConfig: {keepWarmMs: 30000}
validation: {enabled: true, healthCheckPath: /ready}
"""
    response = erin.generic("POST", PLANS, text, content_type="application/yaml")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["strategy"] == "blue_green" and body["isDefault"] is True
    assert body["definition"]["validation"]["healthCheckPath"] == "/ready"
    also = erin.generic("POST", PLANS, "name: shop-text\n", content_type="text/yaml")
    assert also.status_code == 201


def test_create__the_wrapper__carries_the_reason_to_the_audit_trail(erin, shop):
    response = erin.post(
        PLANS, {"definition": plan_definition(), "reason": "after the outage"}, format="json"
    )

    assert response.status_code == 201, response.content
    entry = AuditEntry.objects.get(object_pk=str(response.json()["id"]), verb="create")
    assert entry.reason == "after the outage"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"actions": [{"type": "explode"}]}, "actions[0].type"),
        (
            {"actions": [{"type": "call_webhook", "config": {"url": "ftp://x"}}]},
            "actions[0].config.url",
        ),
        ({"actions": [{"type": "stop_new_traffic", "timeoutMs": 5}]}, "actions[0].timeoutMs"),
        ({"strategy": "sideways"}, "strategy"),
        ({"strategyConfig": {"steps": 0}}, "strategyConfig.steps"),
        ({"triggers": ["whenever"]}, "triggers[0]"),
        ({"safety": {"cooldownPeriodMs": "soon"}}, "safety.cooldownPeriodMs"),
        ({"service": "nowhere"}, "service"),
        ({"deploymentId": 999_999}, "deploymentId"),
        ({"isDefault": "yes"}, "isDefault"),
        ({"colour": "red"}, "colour"),
        ({"name": ""}, "name"),
    ],
)
def test_create__a_plan_that_does_not_read__is_400_naming_the_field(erin, shop, change, field):
    response = erin.post(PLANS, plan_definition(**change), format="json")

    fields = _fields(response)
    assert field in fields, fields
    assert response.json()["error"]["message"].startswith(field)
    assert not RollbackPlan.objects.exists()


def test_create__a_name_taken__is_400_on_name(erin, shop):
    make_plan()

    assert "name" in _fields(erin.post(PLANS, plan_definition(), format="json"))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("{not json", "application/json"),
        ("[1, 2]", "application/json"),
        ('"a plan"', "application/json"),
        ("null", "application/json"),
        (json.dumps({"name": 5}), "application/json"),
        (json.dumps({"name": "x", "actions": "all of them"}), "application/json"),
        (json.dumps({"name": "x", "actions": [None, 3]}), "application/json"),
        (json.dumps({"name": "x", "deploymentId": "abc"}), "application/json"),
        (json.dumps({"name": "x", "deploymentId": 10**30}), "application/json"),
        (json.dumps({"name": "x", "service": ["shop"]}), "application/json"),
        (json.dumps({"name": "x\u0000y"}), "application/json"),
        (json.dumps({"name": "x", "description": "a\u0000b"}), "application/json"),
        (json.dumps({"definition": "name: x", "reason": 3}), "application/json"),
        ('{"name": "x", "description": "\\ud800"}', "application/json"),
        ("[" * 100_000 + "]" * 100_000, "application/json"),
        ('name: "x"\ndescription: "a\\0b"\n', "application/yaml"),
        (
            'name: "x"\nactions: [{type: notify, config: {message: "\\ud800"}}]\n',
            "application/yaml",
        ),
        ("name: [unclosed", "application/yaml"),
        ("name: a\nname: b\n", "application/yaml"),
    ],
)
def test_create__bad_input__is_a_400_never_a_500(erin, shop, body, content_type):
    response = erin.generic("POST", PLANS, body, content_type=content_type)

    assert response.status_code == 400, response.content
    assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_create__a_media_type_it_does_not_take__is_415(erin, shop):
    response = erin.generic("POST", PLANS, "name=x", content_type="text/plain")

    assert response.status_code == 415


def test_list__filters_by_service_strategy_and_enabled(api_client, people, shop):
    from routing import services as routing

    routing.service_create(name="cart", stable_version="1.0.0")
    gradual = make_plan()
    immediate = make_plan(name="cart-fast", service="cart", strategy="immediate", enabled=False)
    vic = client_for(api_client, people["vic"])

    def names(query: str) -> list[str]:
        response = vic.get(f"{PLANS}?{query}")
        assert response.status_code == 200, response.content
        return [item["name"] for item in response.json()["results"]]

    assert names("") == [immediate.name, gradual.name]
    assert names("service=shop") == [gradual.name]
    assert names("strategy=immediate") == [immediate.name]
    assert names("enabled=false") == [immediate.name]
    assert names("enabled=true&service=cart") == []
    assert "strategy" in _fields(vic.get(f"{PLANS}?strategy=sideways"))


def test_detail__reads_the_plan__and_an_unknown_id_is_404(api_client, people, shop):
    plan = make_plan()
    ann = client_for(api_client, people["ann"])

    assert ann.get(f"{PLANS}{plan.pk}/").json()["name"] == plan.name
    for missing in ("999999", "abc", "1.5", "-1"):
        response = ann.get(f"{PLANS}{missing}/")
        assert response.status_code == 404, missing
        assert response.json()["error"]["code"] == "not_found"


def test_put__replaces_the_definition__and_patch_changes_the_keys_it_names(erin, shop):
    plan = make_plan(safety={"cooldownPeriodMs": 60_000, "allowConsecutiveRollbacks": False})

    replaced = erin.put(
        f"{PLANS}{plan.pk}/", {"name": "shop-fast", "service": "shop"}, format="json"
    )
    assert replaced.status_code == 200, replaced.content
    body = replaced.json()
    assert body["name"] == "shop-fast" and body["strategy"] == "immediate"
    assert body["definition"]["safety"]["cooldownPeriodMs"] == 0

    patched = erin.patch(
        f"{PLANS}{plan.pk}/", {"strategy": "gradual", "isDefault": True}, format="json"
    )
    assert patched.status_code == 200, patched.content
    body = patched.json()
    assert body["name"] == "shop-fast" and body["strategy"] == "gradual"
    assert body["isDefault"] is True and body["service"] == "shop"

    refused = erin.patch(f"{PLANS}{plan.pk}/", {"actions": [{"type": "nope"}]}, format="json")
    assert "actions[0].type" in _fields(refused)
    plan.refresh_from_db()
    assert plan.strategy == "gradual"


def test_put__what_a_get_answered__saves_the_same_plan(erin, shop):
    plan = make_plan(triggerThresholds=[{"metric": "error_rate", "threshold": 5, "duration": 30}])
    before = erin.get(f"{PLANS}{plan.pk}/").json()

    again = erin.put(f"{PLANS}{plan.pk}/", before["definition"], format="json")

    assert again.status_code == 200, again.content
    assert again.json()["definition"] == before["definition"]
    assert again.json()["worstCaseMs"] == before["worstCaseMs"]


def test_a_webhook_secret__is_never_shown__and_sent_back_masked_is_kept(erin, shop):
    hook = {
        "id": "hook",
        "type": "call_webhook",
        "config": {"url": "https://hooks.example.com/x", "secret": "s3cret"},
    }
    created = erin.post(PLANS, plan_definition(actions=[hook]), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert "s3cret" not in json.dumps(body)
    assert body["definition"]["actions"][0]["config"]["secret"] == "********"

    saved = erin.put(f"{PLANS}{body['id']}/", body["definition"], format="json")
    assert saved.status_code == 200, saved.content
    plan = RollbackPlan.objects.get(pk=body["id"])
    assert plan.definition["actions"][0]["config"]["secret"] == "s3cret"

    renamed = dict(
        body["definition"],
        actions=[
            {**hook, "id": "other", "config": {"url": hook["config"]["url"], "secret": "********"}}
        ],
    )
    refused = erin.put(f"{PLANS}{body['id']}/", renamed, format="json")
    assert "actions[0].config.secret" in _fields(refused)


def test_delete__removes_the_plan__but_not_while_it_runs(api_client, people, shop):
    running = running_deployment()
    busy = make_plan()
    idle = make_plan(name="shop-idle")
    from rollback import services

    services.rollback_rehearse(plan=busy, deployment=running, actor=people["erin"])
    erin = client_for(api_client, people["erin"])

    refused = erin.delete(f"{PLANS}{busy.pk}/")
    assert refused.status_code == 409
    assert "running a rollback" in refused.json()["error"]["message"]
    assert erin.delete(f"{PLANS}{idle.pk}/").status_code == 204
    assert list(RollbackPlan.objects.values_list("name", flat=True)) == [busy.name]


@pytest.mark.parametrize("who", ["vic", "ann"])
def test_viewers_and_approvers__read_plans__and_may_not_write_or_rehearse(
    api_client, people, shop, who
):
    plan = make_plan()
    running = running_deployment()
    client = client_for(api_client, people[who])

    assert client.get(PLANS).status_code == 200
    assert client.get(f"{PLANS}{plan.pk}/").status_code == 200
    refused = [
        client.post(PLANS, plan_definition(name="other"), format="json"),
        client.put(f"{PLANS}{plan.pk}/", plan_definition(), format="json"),
        client.patch(f"{PLANS}{plan.pk}/", {"enabled": False}, format="json"),
        client.delete(f"{PLANS}{plan.pk}/"),
        client.post(f"{PLANS}{plan.pk}/rehearse/", {"deployment": running.pk}, format="json"),
    ]
    assert [response.status_code for response in refused] == [403] * 5
    assert refused[0].json()["error"]["code"] == "forbidden"
    assert RollbackPlan.objects.get().enabled is True
    assert not RollbackExecution.objects.exists()


def test_admins__write_plans_as_engineers_do(api_client, people, shop):
    ada = client_for(api_client, people["ada"])

    created = ada.post(PLANS, plan_definition(), format="json")
    assert created.status_code == 201
    assert ada.delete(f"{PLANS}{created.json()['id']}/").status_code == 204


def test_anonymous__is_401(api_client, shop):
    assert api_client.get(PLANS).status_code == 401


def test_rehearse__runs_the_plan_as_a_rehearsal__and_answers_201_with_the_execution(
    erin, shop, people
):
    running = running_deployment()
    plan = make_plan()

    response = erin.post(
        f"{PLANS}{plan.pk}/rehearse/",
        {"deployment": running.pk, "reason": "game day"},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["rehearsal"] is True and body["plan"] == plan.pk
    assert body["deployment"] == running.pk and body["service"] == "shop"
    assert body["reason"] == "game day" and body["requested_by"] == "erin"
    assert body["state"] == "running" and body["ended"] is False
    assert [step["key"] for step in body["steps"]] == ["stop-1", "stop-2", "stop", "flags"]
    assert body["steps"][0] | {"started_at": None} == {
        "position": 0,
        "key": "stop-1",
        "type": "set_share",
        "name": "Canary to 33.33%",
        "state": "pending",
        "attempts": 0,
        "timeout_ms": 30_000,
        "after_ms": 0,
        "started_at": None,
        "finished_at": None,
        "timed_out": False,
        "output": {},
        "error": "",
    }
    running.refresh_from_db()
    assert running.status == "running" and running.canary_share == Decimal("50")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "deployment"),
        ({"deployment": 999_999}, "deployment"),
        ({"deployment": "abc"}, "deployment"),
        ({"deployment": True}, "deployment"),
        ({"deployment": 10**30}, "deployment"),
        ({"deployment": None}, "deployment"),
        ({"deployment": 1, "reason": ["x"]}, "reason"),
        ({"deployment": 1, "colour": "red"}, "colour"),
    ],
)
def test_rehearse__a_deployment_it_cannot_find__is_400_naming_it(erin, shop, body, field):
    plan = make_plan()

    assert field in _fields(erin.post(f"{PLANS}{plan.pk}/rehearse/", body, format="json"))


def test_rehearse__an_unknown_plan__is_404(erin, shop):
    running = running_deployment()

    response = erin.post(f"{PLANS}999999/rehearse/", {"deployment": running.pk}, format="json")

    assert response.status_code == 404


def test_preview__says_what_the_rollback_would_do__for_every_role(api_client, people, shop):
    running = running_deployment()
    plan = make_plan()

    for who in ("vic", "ann", "erin"):
        response = client_for(api_client, people[who]).post(
            f"{PLANS}{plan.pk}/preview/", {"deployment": running.pk}, format="json"
        )
        assert response.status_code == 200, response.content
        body = response.json()
        assert {"canaryShare", "requestsPerMinute", "flags", "stable", "worstCaseMs"} <= set(body)
        assert body["canaryShare"] == 50.0
        assert body["worstCaseMs"] > 0
    assert not RollbackExecution.objects.exists()
    running.refresh_from_db()
    assert running.canary_share == Decimal("50")


def test_preview__without_a_deployment__is_400__and_for_an_unknown_plan_404(erin, shop):
    plan = make_plan()

    assert "deployment" in _fields(erin.post(f"{PLANS}{plan.pk}/preview/", {}, format="json"))
    missing = erin.post(f"{PLANS}999999/preview/", {"deployment": 1}, format="json")
    assert missing.status_code == 404
