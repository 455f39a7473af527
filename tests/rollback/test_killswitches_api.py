"""The kill switches' REST API: switches in the guide's vocabulary (JSON and YAML) with their
field errors, every role for every verb, trigger, recover and kill-all with what they stop and
put back, recovery held by an approval policy, the activations and their filters, and client
input that is never a 500."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db

STABLE, CANARY = "1.0.0", "2.0.0"
SWITCHES = "/api/v1/kill-switches/"
ACTIVATIONS = "/api/v1/kill-switches/activations/"
KILL_ALL = "/api/v1/kill-switches/kill-all/"


def _config(name: str = "shop 2.0") -> dict[str, Any]:
    return {
        "name": name,
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "phases": [
            {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
            for share in (20, 100)
        ],
        "maxDeploymentTimeMs": 600_000,
    }


@pytest.fixture
def shop(db: Any) -> Any:
    from routing import services

    service = services.service_create(name="shop", stable_version=STABLE)
    for name, port, version in (("stable", 9, STABLE), ("canary", 10, CANARY)):
        services.target_create(
            service=service, name=name, endpoint=f"http://127.0.0.1:{port}", version=version
        )
    return service


@pytest.fixture
def running(shop: Any) -> Any:
    from deployments import services
    from deployments.transitions import deployment_transition

    deployment = services.deployment_create(config=_config())
    deployment_transition(deployment_id=deployment.pk, action="start")
    deployment.refresh_from_db()
    return deployment


@pytest.fixture
def guarded(running: Any) -> Any:
    """An enabled flag linked to the running canary that a kill switch may kill."""
    from flags import services

    flag = services.flag_create(key="new-checkout", name="New checkout", kill_switch_enabled=True)
    flag = services.flag_enable(flag=flag)
    running.flags.add(flag)
    return flag


def as_user(api_client: Any, user: Any) -> Any:
    api_client.force_authenticate(user)
    return api_client


def _post(client: Any, path: str, body: Any) -> Any:
    return client.post(path, body, format="json")


def _make(**definition: Any) -> Any:
    from rollback import services

    return services.kill_switch_create(definition={"name": "stop-shop", **definition})


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def _status(model: Any) -> Any:
    model.refresh_from_db()
    return model.status


# --- create, read, change, delete ----------------------------------------------------------------


def test_create__a_service_switch__answers_it_with_its_state_and_its_normalised_definition(
    api_client, people, shop
):
    response = _post(
        as_user(api_client, people["erin"]),
        SWITCHES,
        {
            "name": "stop-shop",
            "description": "Stop the shop canary",
            "scope": "component",
            "targetComponent": "shop",
            "triggerConditions": [
                {"type": "error_rate", "threshold": 20},
                {"type": "manual"},
            ],
            "priority": "critical",
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "stop-shop"
    assert body["scope"] == "service" and body["service"] == "shop"
    assert body["flags"] == [] and body["priority"] == "critical" and body["enabled"] is True
    assert body["state"] == "ready" and body["armedSince"] is None and body["armingReason"] == ""
    assert body["activeActivation"] is None and body["recoveryAttempts"] == 0
    assert body["definition"]["triggerConditions"] == [
        {
            "type": "error_rate_threshold",
            "component": "shop",
            "threshold": 20.0,
            "windowMs": 60_000,
            "minRequests": 20,
        },
        {"type": "manual"},
    ]
    assert body["definition"]["deploymentAction"] == "pause"
    assert body["created_at"] and body["updated_at"]
    detail = api_client.get(f"{SWITCHES}{body['id']}/")
    assert detail.status_code == 200 and detail.json() == body


def test_create__as_yaml__or_as_the_wrapper_with_a_reason__is_the_same_switch(
    api_client, people, shop
):
    from canary_site.models import AuditEntry
    from rollback.models import KillSwitch

    client = as_user(api_client, people["erin"])
    text = "name: stop-shop\nscope: service\nservice: shop\ngracePeriodMs: 30000\n"
    response = client.post(SWITCHES, text, content_type="application/yaml")
    assert response.status_code == 201, response.content
    assert response.json()["definition"]["gracePeriodMs"] == 30_000
    assert response.json()["definition"]["targetComponent"] == "shop"

    wrapped = _post(
        client,
        SWITCHES,
        {"definition": {"name": "stop-all", "priority": "low"}, "reason": "for the drill"},
    )
    assert wrapped.status_code == 201, wrapped.content
    switch = KillSwitch.objects.get(name="stop-all")
    entry = AuditEntry.objects.filter(object_pk=str(switch.pk), verb="create").get()
    assert entry.reason == "for the drill" and entry.actor == people["erin"]
    assert entry.source == "api"


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (
            {"name": "s", "triggerConditions": [{"type": "error_rate", "component": "shop"}]},
            "triggerConditions[0].threshold",
        ),
        (
            {
                "name": "s",
                "triggerConditions": [
                    {"type": "manual"},
                    {"type": "latency", "component": "shop", "threshold": 5, "windowMs": 10},
                ],
            },
            "triggerConditions[1].windowMs",
        ),
        ({"name": "s", "triggerConditions": [{"type": "boom"}]}, "triggerConditions[0].type"),
        ({"name": "s", "scope": "service"}, "targetComponent"),
        ({"name": "s", "scope": "service", "targetComponent": "nowhere"}, "targetComponent"),
        ({"name": "s", "scope": "flag", "flags": ["no-such-flag"]}, "flags"),
        ({"name": "s", "flags": ["ok", 3]}, "flags[1]"),
        ({"name": "s", "priority": "urgent"}, "priority"),
        ({"name": "s", "autoRecovery": {"maxAttempts": 0}}, "autoRecovery.maxAttempts"),
        ({"name": "s", "autoRecovery": {"recoveryActions": ["pray"]}}, "autoRecovery"),
        ({"name": "s", "gracePeriodMs": "soon"}, "gracePeriodMs"),
        ({"name": "s", "enabled": "yes"}, "enabled"),
        ({"name": "s", "colour": "red"}, "colour"),
        ({"name": ""}, "name"),
        ({"description": "no name"}, "name"),
        ({"name": "s\x00"}, "name"),
        ({"name": "s", "triggerConditions": [{"type": "manual", "component": "a\x00"}]}, ""),
    ],
)
def test_create__a_switch_that_does_not_read__is_400_naming_the_field_at_fault(
    api_client, people, shop, definition, field
):
    from rollback.models import KillSwitch

    response = _post(as_user(api_client, people["erin"]), SWITCHES, definition)

    assert response.status_code == 400, response.content
    fields = _error(response)["fields"]
    assert any(name.startswith(field) for name in fields), fields
    assert not KillSwitch.objects.exists()


def test_create__a_name_taken__is_400_naming_it(api_client, people, shop):
    _make()

    response = _post(as_user(api_client, people["erin"]), SWITCHES, {"name": "stop-shop"})

    assert response.status_code == 400
    assert list(_error(response)["fields"]) == ["name"]


def test_update__put_replaces_the_switch__patch_changes_the_keys_it_names(api_client, people, shop):
    from flags import services as flag_services
    from routing import services as routing_services

    routing_services.service_create(name="cart", stable_version=STABLE)
    flag_services.flag_create(key="beta")
    switch = _make(scope="service", targetComponent="shop", priority="low", gracePeriodMs=5000)
    client = as_user(api_client, people["ada"])
    path = f"{SWITCHES}{switch.pk}/"

    patched = client.patch(path, {"priority": "critical", "service": "cart"}, format="json")
    assert patched.status_code == 200, patched.content
    body = patched.json()
    assert body["priority"] == "critical" and body["service"] == "cart"
    assert body["definition"]["gracePeriodMs"] == 5000, "the keys not named stay as they were"

    replaced = client.put(
        path, {"name": "stop-beta", "scope": "flag", "flags": ["beta"]}, format="json"
    )
    assert replaced.status_code == 200, replaced.content
    body = replaced.json()
    assert body["name"] == "stop-beta" and body["scope"] == "flag"
    assert body["service"] is None and body["flags"] == ["beta"]
    assert body["priority"] == "high" and body["definition"]["gracePeriodMs"] == 0

    refused = client.put(
        path,
        {"name": "stop-beta", "triggerConditions": [{"type": "latency", "threshold": 1}]},
        format="json",
    )
    assert refused.status_code == 400
    assert "triggerConditions[0].component" in _error(refused)["fields"]


def test_delete__while_active__is_409__and_once_recovered__deletes_it(api_client, people, shop):
    from rollback import services
    from rollback.models import KillSwitch

    switch = _make(scope="service", targetComponent="shop")
    services.kill_switch_trigger(switch=switch, reason="fire")
    client = as_user(api_client, people["erin"])

    refused = client.delete(f"{SWITCHES}{switch.pk}/")
    assert refused.status_code == 409
    assert _error(refused)["code"] == "active"

    services.kill_switch_recover(switch_id=switch.pk, reason="fixed")
    assert client.delete(f"{SWITCHES}{switch.pk}/").status_code == 204
    assert not KillSwitch.objects.filter(pk=switch.pk).exists()


def test_list__critical_first_then_by_name__filtered_by_scope_state_priority_enabled_service(
    api_client, people, shop
):
    from flags import services as flag_services
    from rollback import services

    flag_services.flag_create(key="beta")
    _make(name="b-low", priority="low")
    _make(name="a-low", priority="low", enabled=False)
    _make(name="z-critical", priority="critical", scope="service", targetComponent="shop")
    _make(name="m-medium", priority="medium", scope="flag", flags=["beta"])
    high = _make(name="c-high")
    services.kill_switch_trigger(switch=high, reason="drill")
    client = as_user(api_client, people["vic"])

    def names(query: str = "") -> list[str]:
        response = client.get(f"{SWITCHES}?{query}")
        assert response.status_code == 200, response.content
        return [item["name"] for item in response.json()["results"]]

    assert names() == ["z-critical", "c-high", "m-medium", "a-low", "b-low"]
    assert names("scope=flag") == ["m-medium"]
    assert names("scope=service") == ["z-critical"]
    assert names("state=active") == ["c-high"]
    assert names("state=ready&priority=low") == ["a-low", "b-low"]
    assert names("priority=critical&priority=medium") == ["z-critical", "m-medium"]
    assert names("enabled=false") == ["a-low"]
    assert names("service=shop") == ["z-critical"]
    assert names("name=LOW") == ["a-low", "b-low"]
    assert names("ordering=name")[0] == "a-low"
    listed = client.get(f"{SWITCHES}?state=active").json()["results"][0]
    assert listed["activeActivation"] == high.activations.get().pk
    assert listed["state"] == "active"


# --- roles --------------------------------------------------------------------------------------

VERBS = ["list", "read", "create", "put", "patch", "delete", "trigger", "recover", "kill-all"]
WRITERS = {"erin", "ada"}


def _call(client: Any, verb: str, switch: Any, active: Any) -> Any:
    path = f"{SWITCHES}{switch.pk}/"
    return {
        "list": lambda: client.get(SWITCHES),
        "read": lambda: client.get(path),
        "create": lambda: _post(client, SWITCHES, {"name": "another"}),
        "put": lambda: client.put(path, {"name": "stop-shop", "priority": "low"}, format="json"),
        "patch": lambda: client.patch(path, {"priority": "low"}, format="json"),
        "delete": lambda: client.delete(path),
        "trigger": lambda: _post(client, f"{path}trigger/", {"reason": "drill"}),
        "recover": lambda: _post(client, f"{SWITCHES}{active.pk}/recover/", {"reason": "ok"}),
        "kill-all": lambda: _post(client, KILL_ALL, {"reason": "drill"}),
    }[verb]()


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("person", ["vic", "ann", "erin", "ada"])
def test_roles__viewers_and_approvers_read__engineers_and_admins_write_and_press(
    api_client, people, shop, person, verb
):
    from flags import services as flag_services
    from rollback import services
    from rollback.models import KillSwitch, KillSwitchActivation

    switch = _make()
    flag_services.flag_create(key="beta")
    active = _make(name="already-active", scope="flag", flags=["beta"])
    services.kill_switch_trigger(switch=active, reason="fire")
    before = (KillSwitch.objects.count(), KillSwitchActivation.objects.count())

    response = _call(as_user(api_client, people[person]), verb, switch, active)

    if verb in ("list", "read"):
        assert response.status_code == 200
    elif person in WRITERS:
        assert response.status_code in (200, 201, 204), response.content
    else:
        assert response.status_code == 403, response.content
        assert _error(response)["code"] == "forbidden"
        assert (KillSwitch.objects.count(), KillSwitchActivation.objects.count()) == before
        shop.refresh_from_db()
        assert shop.halted_since is None


def test_roles__anonymous__is_401_everywhere(api_client, shop):
    switch = _make()

    assert api_client.get(SWITCHES).status_code == 401
    assert api_client.get(ACTIVATIONS).status_code == 401
    assert _post(api_client, f"{SWITCHES}{switch.pk}/trigger/", {"reason": "x"}).status_code == 401
    assert _post(api_client, KILL_ALL, {"reason": "x"}).status_code == 401


# --- trigger and recover ------------------------------------------------------------------------


def test_trigger__pauses_the_services_canary_and_kills_its_flags__then_recover_restores_them(
    api_client, people, running, guarded
):
    switch = _make(scope="service", targetComponent="shop")
    client = as_user(api_client, people["erin"])

    fired = _post(client, f"{SWITCHES}{switch.pk}/trigger/", {"reason": "checkout is on fire"})

    assert fired.status_code == 201, fired.content
    activation = fired.json()
    assert activation["alreadyActive"] is False
    assert activation["switch"] == {"id": switch.pk, "name": "stop-shop"}
    assert activation["trigger"] == "manual" and activation["state"] == "active"
    assert activation["reason"] == "checkout is on fire"
    assert activation["activated_by"] == "erin" and activation["source"] == "api"
    assert activation["recovered_at"] is None and activation["recovered_by"] is None
    assert activation["changes"]["paused"] == [{"id": running.pk, "phase": 1}]
    assert activation["changes"]["flags"] == [
        {"id": guarded.pk, "key": "new-checkout", "previous": "enabled"}
    ]
    assert _status(running) == "paused"
    assert _status(guarded) == "killed"
    running.service.refresh_from_db()
    assert running.service.halted_since is not None
    shown = client.get(f"{SWITCHES}{switch.pk}/").json()
    assert shown["state"] == "active" and shown["activeActivation"] == activation["id"]

    again = _post(client, f"{SWITCHES}{switch.pk}/trigger/", {"reason": "still burning"})
    assert again.status_code == 200
    assert again.json()["id"] == activation["id"] and again.json()["alreadyActive"] is True
    assert again.json()["reason"] == "checkout is on fire"

    recovered = _post(
        as_user(api_client, people["ada"]), f"{SWITCHES}{switch.pk}/recover/", {"reason": "fixed"}
    )

    assert recovered.status_code == 200, recovered.content
    body = recovered.json()
    assert body["id"] == activation["id"] and body["state"] == "recovered"
    assert body["recovered_by"] == "ada" and body["recovered_at"]
    assert body["recovery"] == "Recovered by hand: fixed"
    assert body["changes"]["restored"]["flags"] == ["new-checkout"]
    assert body["changes"]["restored"]["resumed"] == [running.pk]
    assert _status(running) == "running"
    assert _status(guarded) == "enabled"
    running.service.refresh_from_db()
    assert running.service.halted_since is None
    shown = client.get(f"{SWITCHES}{switch.pk}/").json()
    assert shown["state"] == "ready" and shown["activeActivation"] is None

    not_active = _post(client, f"{SWITCHES}{switch.pk}/recover/", {"reason": "again"})
    assert not_active.status_code == 409
    assert _error(not_active)["code"] == "not_active"


def test_trigger_and_recover__without_a_reason__are_400_naming_reason(api_client, people, shop):
    from rollback.models import KillSwitchActivation

    switch = _make()
    client = as_user(api_client, people["erin"])

    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": None}, {"reason": "x" * 2001}):
        for verb in ("trigger", "recover"):
            response = _post(client, f"{SWITCHES}{switch.pk}/{verb}/", body)
            assert response.status_code == 400, (verb, body)
            assert list(_error(response)["fields"]) == ["reason"]
    assert not KillSwitchActivation.objects.exists()


def test_recover__under_an_approval_policy__is_202_with_the_request__and_its_approval_recovers(
    api_client, people, running, make_policy
):
    from canary_site.gates import EMERGENCY_ACTIONS
    from rollback.models import ApprovalRequest

    assert "killswitch.trigger" in EMERGENCY_ACTIONS
    make_policy(scope_kind="service", scope_value="shop", actions=["killswitch.recover"])
    switch = _make(scope="service", targetComponent="shop")
    client = as_user(api_client, people["erin"])
    fired = _post(client, f"{SWITCHES}{switch.pk}/trigger/", {"reason": "fire"})
    assert fired.status_code == 201, "a trigger is never gated"

    held = _post(client, f"{SWITCHES}{switch.pk}/recover/", {"reason": "looks fixed"})

    assert held.status_code == 202, held.content
    summary = held.json()["approval_request"]
    assert summary["action"] == "killswitch.recover" and summary["state"] == "pending"
    assert _status(running) == "paused"
    assert client.get(f"{SWITCHES}{switch.pk}/").json()["state"] == "active"
    request = ApprovalRequest.objects.get(pk=summary["id"])
    assert request.reason == "looks fixed" and request.requester == people["erin"]

    approved = _post(
        as_user(api_client, people["ann"]), f"/api/v1/approvals/{request.pk}/approve/", {}
    )

    assert approved.status_code == 200 and approved.json()["state"] == "applied"
    assert _status(running) == "running"
    activation = client.get(f"{ACTIVATIONS}{fired.json()['id']}/").json()
    assert activation["state"] == "recovered" and activation["recovered_by"] == "erin"


# --- kill-all -----------------------------------------------------------------------------------


def test_kill_all__halts_every_service__pauses_the_canaries__kills_the_flags_that_allow_it(
    api_client, people, running, guarded, make_policy
):
    from flags import services as flag_services
    from routing import services as routing_services

    plain = flag_services.flag_enable(flag=flag_services.flag_create(key="plain"))
    routing_services.service_create(name="cart", stable_version=STABLE)
    # No policy gates kill-all, whatever it covers.
    make_policy(scope_kind="all", scope_value="", actions=["killswitch.recover"])
    client = as_user(api_client, people["erin"])

    response = _post(client, KILL_ALL, {"reason": "everything is on fire"})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["alreadyActive"] is False
    assert body["stopped"] == {
        "services": ["cart", "shop"],
        "flags": ["new-checkout"],
        "paused": [running.pk],
        "rolledBack": [],
    }
    activation = body["activation"]
    assert activation["trigger"] == "kill_all" and activation["switch"]["name"] == "kill-all"
    assert activation["reason"] == "everything is on fire" and activation["activated_by"] == "erin"
    assert _status(running) == "paused"
    assert _status(guarded) == "killed"
    assert _status(plain) == "enabled", "a flag without kill_switch_enabled keeps serving"

    again = _post(client, KILL_ALL, {"reason": "again"})
    assert again.status_code == 200
    assert again.json()["alreadyActive"] is True
    assert again.json()["activation"]["id"] == activation["id"]
    assert again.json()["stopped"] == body["stopped"]


def test_kill_all__without_a_reason__is_400_naming_reason__and_stops_nothing(
    api_client, people, running
):
    from rollback.models import KillSwitch

    client = as_user(api_client, people["ada"])

    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 5000}):
        response = _post(client, KILL_ALL, body)
        assert response.status_code == 400, body
        assert list(_error(response)["fields"]) == ["reason"]
    assert "why" in _error(_post(client, KILL_ALL, {"why": "x"}))["fields"]
    assert _post(client, KILL_ALL, ["reason"]).status_code == 400
    assert _status(running) == "running"
    assert not KillSwitch.objects.exists()


def test_trigger__a_switch_that_rolls_back__reports_the_canary_rolled_back(
    api_client, people, running
):
    switch = _make(scope="service", targetComponent="shop", deploymentAction="rollback")

    fired = _post(
        as_user(api_client, people["erin"]), f"{SWITCHES}{switch.pk}/trigger/", {"reason": "x"}
    )

    assert fired.status_code == 201
    assert fired.json()["changes"]["rolledBack"] == [running.pk]
    assert _status(running) == "rolled_back"


# --- activations --------------------------------------------------------------------------------


def test_activations__newest_first__filtered_by_switch_trigger_state_and_time(
    api_client, people, shop
):
    from rollback import services
    from rollback.models import KillSwitchActivation

    first = _make(name="first")
    second = _make(name="second")
    earlier = timezone.now() - timedelta(hours=2)
    old = services.kill_switch_trigger(switch=first, reason="old", actor=people["erin"])
    KillSwitchActivation.objects.filter(pk=old.pk).update(activated_at=earlier)
    services.kill_switch_recover(switch_id=first.pk, reason="done", actor=people["erin"])
    new = services.kill_switch_trigger(switch=second, reason="new", actor=people["ada"])
    everything = services.kill_switch_kill_all(reason="all", actor=people["ada"])
    client = as_user(api_client, people["ann"])

    def ids(query: str = "") -> list[int]:
        response = client.get(f"{ACTIVATIONS}?{query}")
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    assert ids() == [everything.pk, new.pk, old.pk]
    assert ids(f"switch={first.pk}") == [old.pk]
    assert ids("trigger=kill_all") == [everything.pk]
    assert ids("trigger=manual") == [new.pk, old.pk]
    assert ids("state=recovered") == [old.pk]
    assert ids("state=active") == [everything.pk, new.pk]
    hour_ago = (timezone.now() - timedelta(hours=1)).isoformat()
    assert ids(f"since={hour_ago}".replace("+", "%2B")) == [everything.pk, new.pk]
    assert ids(f"until={hour_ago}".replace("+", "%2B")) == [old.pk]

    detail = client.get(f"{ACTIVATIONS}{old.pk}/").json()
    assert detail["switch"] == {"id": first.pk, "name": "first"}
    assert detail["state"] == "recovered" and detail["recovered_by"] == "erin"
    assert detail["recovery"] == "Recovered by hand: done"
    assert detail["recovery_attempt"] is None
    assert detail["activated_by"] == "erin" and detail["evidence"] == {}
    assert set(detail) == {
        "id",
        "switch",
        "trigger",
        "state",
        "reason",
        "evidence",
        "changes",
        "activated_by",
        "source",
        "activated_at",
        "recovered_at",
        "recovered_by",
        "recovery",
        "recovery_attempt",
    }
    assert client.get(f"{ACTIVATIONS}999999/").status_code == 404


# --- input that is never a 500 ------------------------------------------------------------------


def test_bad_input__anywhere__is_a_4xx_in_the_error_body__never_a_500(api_client, people, shop):
    from rollback.models import KillSwitch

    switch = _make()
    client = as_user(api_client, people["ada"])
    path = f"{SWITCHES}{switch.pk}/"
    sent = [
        client.post(SWITCHES, "{not json", content_type="application/json"),
        client.post(SWITCHES, "[1, 2]", content_type="application/json"),
        client.post(SWITCHES, '"a switch"', content_type="application/json"),
        client.post(SWITCHES, "null", content_type="application/json"),
        client.post(SWITCHES, '{"name": "\\ud800"}', content_type="application/json"),
        client.post(SWITCHES, "[" * 100_000, content_type="application/json"),
        client.post(SWITCHES, 'name: "\\ud800"\n', content_type="application/yaml"),
        client.post(SWITCHES, "name: [unclosed\n", content_type="application/yaml"),
        client.post(SWITCHES, "name: a\nname: b\n", content_type="application/yaml"),
        client.post(SWITCHES, "- a list\n", content_type="application/yaml"),
        client.post(SWITCHES, b"\xff\xfe", content_type="application/yaml"),
        client.post(SWITCHES, "name=x", content_type="text/plain"),
        _post(client, SWITCHES, {"definition": "not an object", "reason": "x"}),
        _post(client, SWITCHES, {"definition": {"name": "x"}, "reason": ["x"]}),
        _post(client, SWITCHES, {"name": 5}),
        _post(client, SWITCHES, {"name": "x" * 10_000}),
        _post(client, SWITCHES, {"name": "x", "triggerConditions": "all of them"}),
        _post(client, SWITCHES, {"name": "x", "triggerConditions": [5]}),
        _post(client, SWITCHES, {"name": "x", "gracePeriodMs": 10**30}),
        _post(client, SWITCHES, {"name": "x", "notifications": []}),
        _post(client, SWITCHES, {"name": "x", "scope": ["system"]}),
        client.patch(path, [1], format="json"),
        client.patch(path, {"name": None}, format="json"),
        client.put(path, {"name": "x", "flags": {"a": 1}}, format="json"),
        _post(client, f"{path}trigger/", {"reason": ["why"]}),
        _post(client, f"{path}trigger/", {"reason": "x" * 100_000}),
        _post(client, f"{path}trigger/", {"reason": "ok", "extra": True}),
        _post(client, f"{path}trigger/", {"reason": "nul\x00"}),
        client.post(f"{path}trigger/", "reason", content_type="application/json"),
        _post(client, f"{path}recover/", ["reason"]),
        _post(client, KILL_ALL, {"reason": {"why": "x"}}),
        client.post(KILL_ALL, "reason: [\n", content_type="application/yaml"),
        client.get(f"{SWITCHES}?state=nope"),
        client.get(f"{SWITCHES}?priority=urgent"),
        client.get(f"{ACTIVATIONS}?switch=abc"),
        client.get(f"{ACTIVATIONS}?since=yesterday"),
        client.get(f"{ACTIVATIONS}?until=99999-01-01T00:00:00"),
        client.get(f"{ACTIVATIONS}?trigger=nope"),
    ]
    missing = [
        client.get(f"{SWITCHES}999999/"),
        client.get(f"{SWITCHES}abc/"),
        client.get(f"{SWITCHES}{'9' * 30}/"),
        client.get(f"{SWITCHES}?page=2"),
        client.put(f"{SWITCHES}999999/", {"name": "x"}, format="json"),
        client.delete(f"{SWITCHES}999999/"),
        _post(client, f"{SWITCHES}999999/trigger/", {"reason": "x"}),
        _post(client, f"{SWITCHES}999999/recover/", {"reason": "x"}),
        _post(client, f"{SWITCHES}abc/trigger/", {"reason": "x"}),
        client.get(f"{ACTIVATIONS}abc/"),
    ]

    for response in sent:
        assert 400 <= response.status_code < 500, (response.status_code, response.content)
        assert response.status_code != 404
        _error(response)
    for response in missing:
        assert response.status_code == 404, (response.status_code, response.content)
        assert json.loads(response.content)["error"]["code"] == "not_found"
    switch.refresh_from_db()
    assert switch.state == "ready" and not switch.activations.exists()
    assert list(KillSwitch.objects.values_list("name", flat=True)) == ["stop-shop"]


def test_bad_input__a_body_over_the_limit__is_413(api_client, people, shop, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = _post(
        as_user(api_client, people["erin"]), SWITCHES, {"name": "x", "description": "y" * 5000}
    )

    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"
