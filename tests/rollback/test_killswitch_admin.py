"""The kill switches in the admin: a switch is its definition, checked by `kill_switch_validate`
and saved through the services; Trigger and Recover are actions that ask for the reason and call
the services (a held recovery, a refusal a message); a delete of an active switch is refused;
activations are read-only records."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from rollback import services
from rollback.models import ApprovalRequest, KillSwitch, KillSwitchActivation
from tests.rollback import test_killswitches as world

shop, running, flags = world.shop, world.running, world.flags

pytestmark = pytest.mark.django_db

SWITCH = {"name": "from the admin", "scope": "service", "targetComponent": "shop"}
ADMIN = "/admin/rollback/killswitch/"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_switch(**definition: Any) -> KillSwitch:
    return services.kill_switch_create(definition={**SWITCH, **definition})


def act(client: Client, action: str, switches: list[KillSwitch], **data: Any) -> Any:
    return client.post(
        ADMIN,
        {"action": action, ACTION_CHECKBOX_NAME: [s.pk for s in switches], **data},
        follow=True,
    )


def test_add__saves_through_the_service(people, shop):
    response = signed_in(people["erin"]).post(
        f"{ADMIN}add/", {"definition": json.dumps({**SWITCH, "priority": "critical"})}
    )

    assert response.status_code == 302
    switch = KillSwitch.objects.get()
    assert (switch.name, switch.scope, switch.service.name) == ("from the admin", "service", "shop")
    assert switch.priority == "critical" and switch.created_by == people["erin"]
    assert switch.definition["deploymentAction"] == "pause", "stored with its defaults"


@pytest.mark.parametrize(
    ("definition", "said"),
    [
        ({**SWITCH, "priority": "urgent"}, "priority: must be one of"),
        ({**SWITCH, "targetComponent": "nowhere"}, "there is no service named"),
        ({"name": "f", "scope": "flag", "flags": ["nope"]}, "there is no flag 'nope'"),
        ({**SWITCH, "name": "taken"}, "exists already"),
    ],
)
def test_add__what_the_services_refuse_is_shown_on_the_definition(
    people,
    shop,
    definition,
    said,
):
    make_switch(name="taken")

    response = signed_in(people["ada"]).post(f"{ADMIN}add/", {"definition": json.dumps(definition)})

    assert response.status_code == 200
    assert said in " ".join(response.context["adminform"].form.errors["definition"])
    assert KillSwitch.objects.count() == 1


def test_change__updates_through_the_service(people, shop):
    switch = make_switch()

    response = signed_in(people["ada"]).post(
        f"{ADMIN}{switch.pk}/change/",
        {"definition": json.dumps({**SWITCH, "priority": "low", "deploymentAction": "rollback"})},
    )

    assert response.status_code == 302
    switch.refresh_from_db()
    assert switch.priority == "low" and switch.definition["deploymentAction"] == "rollback"


def test_trigger__asks_for_the_reason__then_fires_through_the_service(people, running, flags):
    switch = make_switch()
    client = signed_in(people["erin"])

    asked = act(client, "trigger_switches", [switch])
    assert "Reason (required)" in asked.content.decode()
    again = act(client, "trigger_switches", [switch], apply="1", reason=" ")
    assert "Say why." in again.content.decode()
    assert not KillSwitchActivation.objects.exists()

    done = act(client, "trigger_switches", [switch], apply="1", reason="from the admin")

    assert "Triggered: 1 switch(s)." in done.content.decode()
    activation = KillSwitchActivation.objects.get()
    assert (activation.reason, activation.activated_by, activation.source) == (
        "from the admin",
        people["erin"],
        "ui",
    )
    running.refresh_from_db()
    assert running.status == "paused"


def test_recover__through_the_service__a_switch_not_active_is_a_message(people, running):
    active, idle = make_switch(), make_switch(name="idle", scope="system")
    services.kill_switch_trigger(switch=active, reason="fire", actor=people["erin"])

    done = act(
        signed_in(people["ada"]), "recover_switches", [active, idle], apply="1", reason="fixed"
    )

    html = done.content.decode()
    assert "Recovered: 1 switch(s)." in html
    assert "Idle: Kill switch &#x27;idle&#x27; is not active." in html
    activation = KillSwitchActivation.objects.get()
    assert activation.state == "recovered" and activation.recovered_by == people["ada"]


def test_recover__held_for_approval__says_which_request(people, running, make_policy):
    make_policy(scope_kind="all", scope_value="", actions=["killswitch.recover"])
    switch = make_switch()
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])

    done = act(signed_in(people["erin"]), "recover_switches", [switch], apply="1", reason="ok")

    request = ApprovalRequest.objects.get()
    assert f"Approval request #{request.pk} is open" in done.content.decode()
    switch.refresh_from_db()
    assert switch.state == "active"


def test_delete__of_an_active_switch__is_refused_with_a_message(people, running):
    switch = make_switch()
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    client = signed_in(people["ada"])

    refused = client.post(f"{ADMIN}{switch.pk}/delete/", {"post": "yes"}, follow=True)
    assert "recover it before deleting it" in refused.content.decode()
    assert KillSwitch.objects.filter(pk=switch.pk).exists()

    services.kill_switch_recover(switch_id=switch.pk, reason="ok", actor=people["ada"])
    client.post(f"{ADMIN}{switch.pk}/delete/", {"post": "yes"})
    assert not KillSwitch.objects.exists()


def test_viewers_and_approvers_read__but_add_and_press_nothing(people, running):
    switch = make_switch()
    for who in ("vic", "ann"):
        client = signed_in(people[who])
        assert client.get(f"{ADMIN}{switch.pk}/change/").status_code == 200
        assert client.get(f"{ADMIN}add/").status_code == 403
        listing = client.get(ADMIN).content.decode()
        assert "trigger_switches" not in listing and "recover_switches" not in listing
        act(client, "trigger_switches", [switch], apply="1", reason="fire")
    assert not KillSwitchActivation.objects.exists()
    assert "trigger_switches" in signed_in(people["erin"]).get(ADMIN).content.decode()


def test_activations__are_read_only_records(people, running):
    switch = make_switch()
    activation = services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    client = signed_in(people["ada"])
    url = f"/admin/rollback/killswitchactivation/{activation.pk}/"

    shown = client.get(f"{url}change/")
    assert shown.status_code == 200 and "fire" in shown.content.decode()
    assert client.get("/admin/rollback/killswitchactivation/add/").status_code == 403
    assert client.post(f"{url}change/", {"reason": "rewritten"}).status_code == 403
    assert client.post(f"{url}delete/", {"post": "yes"}).status_code == 403
    activation.refresh_from_db()
    assert activation.reason == "fire"
