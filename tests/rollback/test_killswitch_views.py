"""The kill switch pages: the list (critical first, each switch's state live), the editor (a form
with its conditions as rows, or YAML; errors next to the field they name; checked as you type),
a switch's page with Trigger and Recover (an approval-held recovery a banner), its activations
and a chart of each watched metric against its threshold, delete, the red button's confirmation
naming exactly what will stop, and the flag page's list of the switches that cover a flag.
Viewers and approvers read; engineers and admins write and press."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from rollback import services
from rollback.models import KillSwitch, KillSwitchActivation
from tests.rollback import test_killswitches as world
from tests.rollback.test_killswitches import CANARY, STABLE, _push

# The world of the kill switch tests: shop with a canary running at 20%, and three flags.
shop, running, flags = world.shop, world.running, world.flags

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
SWITCHES = "/rollback/kill-switches/"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(response: Any) -> str:
    return response.content.decode()


def make_switch(**definition: Any) -> KillSwitch:
    return services.kill_switch_create(
        definition={
            "name": "stop-shop",
            "scope": "service",
            "targetComponent": "shop",
            **definition,
        }
    )


def shown_ids(html: str, prefix: str) -> set[str]:
    return set(re.findall(rf'data-testid="{re.escape(prefix)}([^"]+)"', html))


# Every field of the form, as an engineer fills it.
FORM = {
    "mode": "form",
    "op": "save",
    "name": "checkout-stop",
    "description": "Stop the checkout canary and its flags",
    "scope": "service",
    "service": "shop",
    "deployment_action": "rollback",
    "grace_period_s": "30",
    "priority": "critical",
    "enabled": "on",
    "notifications_enabled": "on",
    "channels": "email",
    "recipients": "oncall@example.com",
    "auto_recovery": "on",
    "recovery_delay_s": "300",
    "max_attempts": "2",
    "recovery_actions": ["re_enable_flags", "restore_traffic"],
    "condition_count": "3",
    "condition-0-type": "error_rate_threshold",
    "condition-0-service": "",
    "condition-0-threshold": "20",
    "condition-0-window_s": "60",
    "condition-0-min_requests": "50",
    "condition-1-type": "latency_threshold",
    "condition-1-service": "shop",
    "condition-1-threshold": "1500",
    "condition-1-window_s": "",
    "condition-1-min_requests": "",
    "condition-2-type": "manual",
    "reason": "the checkout needs an off-switch",
}


# ------------------------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("who", "writes"), [("vic", False), ("ann", False), ("erin", True), ("ada", True)]
)
def test_every_page__readers_read__writers_write(people, shop, who, writes):
    switch = make_switch()
    client = signed_in(people[who])

    for path in (SWITCHES, f"{SWITCHES}{switch.pk}/"):
        assert client.get(path).status_code == 200
    writing = (
        f"{SWITCHES}new/",
        f"{SWITCHES}{switch.pk}/edit/",
        f"{SWITCHES}{switch.pk}/delete/",
        f"{SWITCHES}kill-all/",
    )
    for path in writing:
        assert client.get(path).status_code == (200 if writes else 403), path
    detail = page(client.get(f"{SWITCHES}{switch.pk}/"))
    listing = page(client.get(SWITCHES))
    assert ("Trigger</button>" in detail) is writes
    assert (f'href="{SWITCHES}{switch.pk}/edit/"' in detail) is writes
    assert (f'href="{SWITCHES}new/"' in listing) is writes
    assert ('data-testid="kill-all-button"' in listing) is writes


def test_readers_may_not_write_or_press(people, running, flags):
    switch = make_switch()
    for who in ("vic", "ann"):
        client = signed_in(people[who])
        answers = [
            client.post(f"{SWITCHES}new/", FORM),
            client.post(f"{SWITCHES}validate/", FORM),
            client.post(f"{SWITCHES}{switch.pk}/edit/", FORM),
            client.post(f"{SWITCHES}{switch.pk}/delete/"),
            client.post(f"{SWITCHES}{switch.pk}/trigger/", {"reason": "fire"}),
            client.post(f"{SWITCHES}{switch.pk}/recover/", {"reason": "fixed"}),
            client.post(f"{SWITCHES}kill-all/", {"reason": "fire"}),
        ]
        assert [answer.status_code for answer in answers] == [403] * 7
    assert list(KillSwitch.objects.values_list("name", flat=True)) == ["stop-shop"]
    assert not KillSwitchActivation.objects.exists()
    running.service.refresh_from_db()
    assert not running.service.halted


def test_pages_need_a_sign_in_and_a_role(make_user, shop):
    switch = make_switch()
    assert Client().get(SWITCHES).status_code == 302
    nobody = signed_in(make_user("norole"))
    assert nobody.get(SWITCHES).status_code == 403
    assert nobody.get(f"{SWITCHES}{switch.pk}/").status_code == 403
    assert signed_in(make_user("x", roles=["viewer"])).get(f"{SWITCHES}999999/").status_code == 404


# -------------------------------------------------------------------------------- list


def test_list__critical_first_then_by_name__with_scope_target_and_priority(people, flags):
    make_switch(name="a-low", priority="low")
    make_switch(name="z-crit", priority="critical")
    services.kill_switch_create(
        definition={"name": "b-high", "scope": "flag", "flags": ["guarded", "plain"]}
    )
    services.kill_switch_create(
        definition={"name": "c-crit", "scope": "system", "priority": "critical"}
    )

    html = page(signed_in(people["vic"]).get(SWITCHES))

    order = re.findall(r'data-testid="switch-row-([^"]+)"', html)
    assert order == ["c-crit", "z-crit", "b-high", "a-low"]
    row = re.search(r'data-testid="switch-row-b-high">(.*?)</tr>', html, re.S).group(1)
    assert "Flag" in row and "guarded, plain" in row and "High" in row and "Ready" in row
    row = re.search(r'data-testid="switch-row-c-crit">(.*?)</tr>', html, re.S).group(1)
    assert "every service, every flag that allows it" in row and "Critical" in row


def test_list__arming_says_since_and_why__active_since_why_and_by_whom(people, running, flags):
    arming = make_switch(
        name="watched",
        gracePeriodMs=60_000,
        triggerConditions=[{"type": "error_rate_threshold", "threshold": 10}],
    )
    pressed = services.kill_switch_create(
        definition={"name": "pressed", "scope": "flag", "flags": ["plain"]}
    )
    now = timezone.now()
    _push("shop", STABLE, 200, 80, now - timedelta(seconds=2))
    services.kill_switches_watch(now=now)
    services.kill_switch_trigger(switch=pressed, reason="plain misbehaves", actor=people["erin"])

    html = page(signed_in(people["vic"]).get(SWITCHES))

    row = re.search(r'data-testid="switch-row-watched">(.*?)</tr>', html, re.S).group(1)
    arming.refresh_from_db()
    assert "Arming" in row and "80 errors in 200 requests" in row
    assert f'datetime="{arming.armed_since.isoformat()}"' in row
    row = re.search(r'data-testid="switch-row-pressed">(.*?)</tr>', html, re.S).group(1)
    assert "Active" in row and "plain misbehaves" in row and "by erin" in row


def test_list__polls_every_2s__quiet_until_a_state_changes(people, running, flags):
    switch = make_switch()
    client = signed_in(people["vic"])
    html = page(client.get(SWITCHES))
    poll = re.search(r'hx-get="([^"]+)" hx-trigger="every 2s"', html)
    assert poll and poll.group(1).startswith(f"{SWITCHES}?seen=")
    url = poll.group(1).replace("&amp;", "&")
    partial = {**HTMX, "HTTP_HX_TARGET": "killswitch-list"}

    assert client.get(url, **partial).status_code == 204
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    answer = client.get(url, **partial)

    assert answer.status_code == 200
    assert "<html" not in page(answer) and 'id="killswitch-list"' in page(answer)
    assert "Active" in page(answer) and "by erin" in page(answer)


# -------------------------------------------------------------------------------- editor


def test_form__saves_the_guides_switch_in_milliseconds__and_goes_to_its_page(people, shop):
    response = signed_in(people["erin"]).post(f"{SWITCHES}new/", FORM)

    switch = KillSwitch.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{SWITCHES}{switch.pk}/"
    assert switch.service.name == "shop" and switch.priority == "critical"
    assert switch.created_by == people["erin"]
    definition = switch.definition
    assert definition["deploymentAction"] == "rollback"
    assert definition["gracePeriodMs"] == 30_000
    assert definition["triggerConditions"] == [
        {
            "type": "error_rate_threshold",
            "component": "shop",
            "threshold": 20.0,
            "windowMs": 60_000,
            "minRequests": 50,
        },
        {
            "type": "latency_threshold",
            "component": "shop",
            "threshold": 1500.0,
            "windowMs": 60_000,
            "minRequests": 20,
        },
        {"type": "manual"},
    ]
    assert definition["notifications"] == {
        "enabled": True,
        "channels": ["email"],
        "recipients": ["oncall@example.com"],
    }
    assert definition["autoRecovery"] == {
        "enabled": True,
        "delayMs": 300_000,
        "maxAttempts": 2,
        "recoveryActions": ["re_enable_flags", "restore_traffic"],
    }


def test_form__a_flag_switch_takes_its_flags_from_the_multi_select(people, flags):
    data = {
        **FORM,
        "name": "flags-off",
        "scope": "flag",
        "service": "",
        "flags": ["guarded", "off"],
        "condition_count": "1",
        "condition-0-type": "manual",
    }
    response = signed_in(people["erin"]).post(f"{SWITCHES}new/", data)

    assert response.status_code == 302
    switch = KillSwitch.objects.get()
    assert sorted(flag.key for flag in switch.flags.all()) == ["guarded", "off"]
    assert switch.definition["flags"] == ["guarded", "off"]


def test_form__over_htmx__success_is_a_client_redirect(people, shop):
    response = signed_in(people["erin"]).post(f"{SWITCHES}new/", FORM, **HTMX)

    assert response.status_code == 200
    assert response["HX-Redirect"] == f"{SWITCHES}{KillSwitch.objects.get().pk}/"


def test_form__errors_stand_next_to_the_field_they_name__conditions_on_their_row(people, shop):
    # Row 1 is left blank: the switch's condition 1 is row 2, and its error is on row 2.
    data = {
        **FORM,
        "grace_period_s": "-1",
        "condition-1-type": "",
        "condition-2-type": "availability_threshold",
        "condition-2-threshold": "150",
    }
    response = signed_in(people["erin"]).post(f"{SWITCHES}new/", data)

    html = page(response)
    assert response.status_code == 400
    # The reader stops at the first fault it meets: the grace period comes after the
    # conditions, so fix the row first.
    row = re.search(r'data-testid="condition-row-2">(.*?)</li>', html, re.S).group(1)
    assert re.search(r'id="id_condition-2-threshold-error">[^<]*between 0 and 100', row)
    assert "condition-1-threshold-error" not in html
    assert not KillSwitch.objects.exists()

    data["condition-2-threshold"] = "90"
    html = page(signed_in(people["erin"]).post(f"{SWITCHES}new/", data))
    # In the form's units: seconds, not the switch's milliseconds.
    assert re.search(r'id="id_grace_period_s-error">must be between 0 and 86400 s', html)


def test_form__an_unknown_service_a_taken_name_and_a_missing_flag_are_on_their_fields(
    people, shop, flags
):
    make_switch(name="taken")
    client = signed_in(people["erin"])

    html = page(client.post(f"{SWITCHES}new/", {**FORM, "service": "nowhere"}))
    assert re.search(r'id="id_service-error">Select a valid choice', html)
    html = page(client.post(f"{SWITCHES}new/", {**FORM, "name": "taken"}))
    assert re.search(r'id="id_name-error">Kill switch with this Name already exists', html)
    html = page(client.post(f"{SWITCHES}new/", {**FORM, "scope": "flag", "service": ""}))
    assert re.search(r'id="id_flags-error">lists the flags a flag switch kills', html)
    assert list(KillSwitch.objects.values_list("name", flat=True)) == ["taken"]


def test_form__add_a_condition__and_remove_one__re_render_the_rows_without_saving(people, shop):
    client = signed_in(people["erin"])

    added = page(client.post(f"{SWITCHES}new/", {**FORM, "op": "add-condition"}))
    assert 'data-testid="condition-row-3"' in added
    removed = page(client.post(f"{SWITCHES}new/", {**FORM, "op": "remove-condition-0"}))
    assert 'data-testid="condition-row-2"' not in removed
    row = re.search(r'data-testid="condition-row-0">(.*?)</li>', removed, re.S).group(1)
    assert 'value="latency_threshold" selected' in row and 'value="1500"' in row
    assert not KillSwitch.objects.exists()


def test_edit__shows_the_switch_in_seconds__and_saves_the_change(people, shop):
    switch = make_switch(
        gracePeriodMs=45_000,
        triggerConditions=[{"type": "error_rate_threshold", "threshold": 15, "windowMs": 120_000}],
    )
    client = signed_in(people["erin"])

    html = page(client.get(f"{SWITCHES}{switch.pk}/edit/"))
    assert 'name="grace_period_s" value="45"' in html
    assert 'name="condition-0-window_s" value="120"' in html
    assert 'name="condition-0-threshold" value="15"' in html

    response = client.post(f"{SWITCHES}{switch.pk}/edit/", {**FORM, "name": "stop-shop"})
    assert response.status_code == 302
    switch.refresh_from_db()
    assert switch.priority == "critical" and len(switch.definition["triggerConditions"]) == 3


def test_yaml_tab__saves_the_switch_as_written__and_starts_from_the_stored_one(people, shop):
    client = signed_in(people["erin"])
    text = (
        "name: yaml-stop\nscope: component\ntargetComponent: shop\npriority: medium\n"
        "triggerConditions:\n  - {type: critical_alert}\n"
    )

    response = client.post(f"{SWITCHES}new/", {"mode": "yaml", "definition_text": text})

    switch = KillSwitch.objects.get()
    assert response.status_code == 302
    assert (switch.name, switch.scope, switch.priority) == ("yaml-stop", "service", "medium")
    html = page(client.get(f"{SWITCHES}{switch.pk}/edit/?mode=yaml"))
    assert "name: yaml-stop" in html and "critical_alert" in html


def test_yaml_tab__syntax_and_switch_errors_are_on_the_text_with_their_path(people, shop):
    client = signed_in(people["erin"])

    broken = client.post(f"{SWITCHES}new/", {"mode": "yaml", "definition_text": "name: [x"})
    assert broken.status_code == 400
    assert 'id="id_definition_text-error"' in page(broken)
    text = (
        "name: s\nscope: service\ntargetComponent: shop\ntriggerConditions:\n  - {type: latency}\n"
    )
    bad = client.post(f"{SWITCHES}new/", {"mode": "yaml", "definition_text": text})
    assert bad.status_code == 400
    assert re.search(
        r'id="id_definition_text-error">triggerConditions\[0\]\.threshold: ', page(bad)
    )
    nul = 'name: "nul \\0 here"\nscope: system\nnotifications: {channels: ["a\\0"]}'
    stored = client.post(f"{SWITCHES}new/", {"mode": "yaml", "definition_text": nul})
    assert stored.status_code == 400 and "NUL" in page(stored)
    assert not KillSwitch.objects.exists()


def test_editor__asks_for_the_findings_as_you_type(people, shop):
    html = page(signed_in(people["erin"]).get(f"{SWITCHES}new/"))

    assert 'hx-post="/rollback/kill-switches/validate/"' in html
    assert 'hx-trigger="load, input changed delay:400ms from:closest form' in html


def test_validate__a_good_switch_is_valid__a_bad_row_is_named_in_the_forms_words(people, shop):
    client = signed_in(people["erin"])

    good = client.post(f"{SWITCHES}validate/", FORM, **HTMX)
    assert good.status_code == 200 and "<html" not in page(good)
    assert "<strong>Valid</strong>" in page(good) and "service switch, watched" in page(good)

    bad = client.post(
        f"{SWITCHES}validate/",
        {**FORM, "condition-1-type": "", "condition-2-type": "latency_threshold"},
        **HTMX,
    )
    html = page(bad)
    assert "1 error" in html
    assert re.search(
        r'data-field="triggerConditions\[1\]\.threshold"><strong>Condition 3: threshold', html
    )
    nowhere = page(client.post(f"{SWITCHES}validate/", {**FORM, "service": "nowhere"}, **HTMX))
    assert "1 error" in nowhere and "<strong>Service</strong>: Select a valid choice" in nowhere
    yaml = page(
        client.post(
            f"{SWITCHES}validate/",
            {"mode": "yaml", "definition_text": "name: x\nscope: service\ntargetComponent: gone"},
            **HTMX,
        )
    )
    assert "there is no service named &#x27;gone&#x27;" in yaml
    assert not KillSwitch.objects.exists()


# ------------------------------------------------------------------- a switch's page


def test_trigger__needs_a_reason_beside_the_field__then_marks_what_it_stopped(
    people, running, flags
):
    switch = make_switch()
    client = signed_in(people["erin"])

    refused = client.post(f"{SWITCHES}{switch.pk}/trigger/", {"reason": " "}, **HTMX)
    assert refused.status_code == 400
    assert re.search(r'id="trigger-reason-error">say why', page(refused))
    assert not KillSwitchActivation.objects.exists()

    fired = client.post(f"{SWITCHES}{switch.pk}/trigger/", {"reason": "checkout on fire"}, **HTMX)
    assert fired["HX-Redirect"] == f"{SWITCHES}{switch.pk}/"

    html = page(client.get(f"{SWITCHES}{switch.pk}/"))
    reach = re.search(r'id="reach-title">What it has stopped</h2>(.*?)</section>', html, re.S)
    stopped = reach.group(1)
    guarded = re.search(r'data-testid="affected-flag-guarded">(.*?)</li>', stopped, re.S).group(1)
    assert "status-killed" in guarded and "was enabled" in guarded
    off = re.search(r'data-testid="affected-flag-off">(.*?)</li>', stopped, re.S).group(1)
    assert "status-killed" in off and "was disabled" in off
    assert "affected-flag-plain" not in stopped
    service = re.search(r'data-testid="affected-service-shop">(.*?)</li>', stopped, re.S)
    assert "status-halted" in service.group(1)
    deployment = re.search(
        rf'data-testid="affected-deployment-{running.pk}">(.*?)</li>', stopped, re.S
    )
    assert "Paused" in deployment.group(1) and "paused on phase 1" in deployment.group(1)
    assert "Recover</button>" in html and "Trigger</button>" not in html
    activation = KillSwitchActivation.objects.get()
    row = re.search(rf'data-testid="activation-{activation.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "checkout on fire" in row and "erin" in row and "Manual" in row and "active" in row


def test_recover__needs_a_reason__then_puts_back_and_records_who_and_how(people, running, flags):
    switch = make_switch()
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    client = signed_in(people["ada"])

    refused = client.post(f"{SWITCHES}{switch.pk}/recover/", {"reason": ""}, **HTMX)
    assert refused.status_code == 400
    assert re.search(r'id="recover-reason-error">say why', page(refused))

    done = client.post(f"{SWITCHES}{switch.pk}/recover/", {"reason": "fixed"})
    assert done.status_code == 302
    html = page(client.get(f"{SWITCHES}{switch.pk}/"))
    activation = KillSwitchActivation.objects.get()
    row = re.search(rf'data-testid="activation-{activation.pk}">(.*?)</tr>', html, re.S).group(1)
    recovery = re.search(r'data-testid="activation-recovery">(.*?)</td>', row, re.S).group(1)
    assert "by ada" in recovery and "Recovered by hand: fixed" in recovery
    # Back as they were, marked so in the record.
    assert "status-enabled" in re.search(r'affected-flag-guarded">(.*?)</li>', row, re.S).group(1)
    assert "serving" in re.search(r'affected-service-shop">(.*?)</li>', row, re.S).group(1)
    assert "Trigger</button>" in html
    running.refresh_from_db()
    assert running.status == "running"


def test_recover__a_second_time__is_a_409_said_beside_the_button(people, running):
    switch = make_switch()
    response = signed_in(people["erin"]).post(
        f"{SWITCHES}{switch.pk}/recover/", {"reason": "nothing to do"}, **HTMX
    )
    assert response.status_code == 409
    assert "is not active" in page(response)


def test_recover__held_for_approval__is_a_banner_linking_the_request(
    people, running, flags, make_policy
):
    from rollback.models import ApprovalRequest

    make_policy(scope_kind="all", scope_value="", actions=["killswitch.recover"])
    switch = make_switch()
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    client = signed_in(people["erin"])

    for extra in (HTMX, {}):
        response = client.post(f"{SWITCHES}{switch.pk}/recover/", {"reason": "fixed"}, **extra)
        request = ApprovalRequest.objects.get()
        assert response.status_code == 202
        banner = re.search(r'data-testid="approval-banner">(.*?)</div>', page(response), re.S)
        assert banner and "Approval required" in banner.group(1)
        assert f'href="/rollback/approvals/{request.pk}/"' in banner.group(1)
    switch.refresh_from_db()
    assert switch.state == "active"


def test_detail__state_polls_every_2s__quiet_until_it_changes(people, running, flags):
    switch = make_switch()
    client = signed_in(people["vic"])
    html = page(client.get(f"{SWITCHES}{switch.pk}/"))
    url = re.search(r'hx-get="([^"]+)" hx-trigger="every 2s"', html).group(1)
    partial = {**HTMX, "HTTP_HX_TARGET": "killswitch-live"}

    assert client.get(url, **partial).status_code == 204
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    answer = client.get(url, **partial)
    assert answer.status_code == 200 and "<html" not in page(answer)
    assert "Active" in page(answer) and "What it has stopped" in page(answer)
    # A flag revived by hand changes what the page marks: sent again.
    url = re.search(r'hx-get="([^"]+)" hx-trigger="every 2s"', page(answer)).group(1)
    assert client.get(url, **partial).status_code == 204
    from flags import services as flag_services

    flag_services.flag_enable(flag=flags["guarded"], reason="needed")
    assert client.get(url, **partial).status_code == 200


def test_detail__before_firing__says_what_it_would_stop(people, running, flags):
    switch = make_switch()
    html = page(signed_in(people["vic"]).get(f"{SWITCHES}{switch.pk}/"))

    assert "What it would stop now" in html
    assert shown_ids(html, "will-halt-") == {"shop"}
    assert shown_ids(html, "will-stop-deployment-") == {str(running.pk)}
    assert shown_ids(html, "will-kill-") == {"guarded", "off"}
    assert shown_ids(html, "keeps-serving-") == {"plain"}


def _figure(html: str, element_id: str) -> dict[str, Any]:
    found = re.search(
        rf'<script type="application/json" data-plot-for="{element_id}">(.*?)</script>', html, re.S
    )
    assert found, f"no chart {element_id}"
    return json.loads(found.group(1))


def test_detail__charts_the_watched_error_rate_of_all_versions_against_its_threshold(
    people, running
):
    switch = make_switch(
        triggerConditions=[
            {"type": "manual"},
            {"type": "error_rate_threshold", "threshold": 20},
            {"type": "latency_threshold", "threshold": 800},
        ]
    )
    now = timezone.now()
    # Two versions in one step: 40 errors of 200 requests together, 20%.
    busy = now - timedelta(minutes=10)
    _push("shop", STABLE, 100, 30, busy)
    _push("shop", CANARY, 100, 10, busy)
    activation = services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])

    html = page(signed_in(people["vic"]).get(f"{SWITCHES}{switch.pk}/"))

    assert 'data-plot-for="killswitch-condition-0"' not in html, "a manual condition is no chart"
    figure = _figure(html, "killswitch-condition-1")
    rate, threshold = figure["data"]
    assert rate["name"] == "error rate"
    moments = [datetime.fromisoformat(x).replace(tzinfo=UTC) for x in rate["x"]]
    step = moments[1] - moments[0]
    assert moments[-1] <= now and now - moments[0] <= timedelta(hours=1) + step
    values = dict(zip(moments, rate["y"], strict=True))
    at = next(moment for moment in moments if moment <= busy < moment + step)
    assert values.pop(at) == pytest.approx(20.0)
    assert set(values.values()) == {None}, "no traffic elsewhere in the hour"
    assert threshold["y"] == [20.0, 20.0] and threshold["name"] == "threshold 20 %"
    assert threshold["x"][0] == rate["x"][0]
    fired = [shape for shape in figure["layout"]["shapes"] if shape["x0"] == shape["x1"]]
    assert [shape["x0"] for shape in fired] == [
        activation.activated_at.replace(tzinfo=None).isoformat()
    ]
    latency = _figure(html, "killswitch-condition-2")
    assert [trace["name"] for trace in latency["data"]] == [
        f"p95 {STABLE}",
        f"p95 {CANARY}",
        "threshold 800 ms",
    ]


def test_charts__latency_is_drawn_per_version__availability_of_all_together(running):
    from health import services as health_services
    from rollback import killswitch_charts

    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    at = now - timedelta(minutes=30)
    health_services.metrics_push(
        samples=[
            {"service": "shop", "version": STABLE, "metric": "requests", "value": 10,
             "timestamp": at.timestamp()},
            {"service": "shop", "version": CANARY, "metric": "requests", "value": 10,
             "timestamp": at.timestamp()},
            {"service": "shop", "version": CANARY, "metric": "errors", "value": 5,
             "timestamp": at.timestamp()},
            {"service": "shop", "version": STABLE, "metric": "latency_ms", "value": 100,
             "count": 10, "timestamp": at.timestamp()},
            {"service": "shop", "version": CANARY, "metric": "latency_ms", "value": 900,
             "count": 10, "timestamp": at.timestamp()},
        ],
        now=now,
    )  # fmt: skip
    switch = make_switch(
        triggerConditions=[
            {"type": "availability_threshold", "threshold": 99},
            {"type": "latency_threshold", "threshold": 500},
        ]
    )

    availability, latency = killswitch_charts.condition_series(switch.spec, now=now)

    def at_moment(series: Any, line: int) -> float | None:
        step = timedelta(seconds=series.step_seconds)
        index = next(i for i, m in enumerate(series.moments) if m <= at < m + step)
        return series.lines[line].values[index]

    assert [line.name for line in availability.lines] == ["availability"]
    assert at_moment(availability, 0) == pytest.approx(75.0)  # 15 of 20 requests served
    assert [line.name for line in latency.lines] == [f"p95 {STABLE}", f"p95 {CANARY}"]
    assert at_moment(latency, 0) == pytest.approx(100, rel=0.1)
    assert at_moment(latency, 1) == pytest.approx(900, rel=0.1)


# ---------------------------------------------------------------------------------- delete


def test_delete__asks_first__refused_while_active__then_deletes(people, running):
    switch = make_switch()
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    client = signed_in(people["erin"])

    assert "recover it first" in page(client.get(f"{SWITCHES}{switch.pk}/delete/"))
    refused = client.post(f"{SWITCHES}{switch.pk}/delete/", {"reason": "tidy"})
    assert refused.status_code == 409
    assert re.search(r'data-testid="delete-error">[^<]*recover it before deleting', page(refused))

    services.kill_switch_recover(switch_id=switch.pk, reason="ok", actor=people["erin"])
    done = client.post(f"{SWITCHES}{switch.pk}/delete/", {"reason": "tidy"})
    assert done.status_code == 302 and done["Location"] == SWITCHES
    assert not KillSwitch.objects.exists()


# -------------------------------------------------------------------------------- kill all


@pytest.fixture
def idle(db: Any) -> Any:
    from routing import services as routing

    return routing.service_create(name="idle", stable_version="3.0.0")


def test_kill_all__the_confirmation_lists_exactly_what_will_stop(people, running, flags, idle):
    from deployments.models import Deployment
    from flags.models import Flag

    client = signed_in(people["erin"])

    html = page(client.get(f"{SWITCHES}kill-all/"))

    shown_halt = shown_ids(html, "will-halt-")
    shown_pause = shown_ids(html, "will-stop-deployment-")
    shown_kill = shown_ids(html, "will-kill-")
    assert shown_halt == {"shop", "idle"}
    assert shown_pause == {str(running.pk)}
    assert shown_kill == {"guarded", "off"}
    assert shown_ids(html, "keeps-serving-") == {"plain"}
    shop_line = re.search(r'data-testid="will-halt-shop">(.*?)</li>', html, re.S).group(1)
    assert f"{CANARY} at 20%" in shop_line and "leaves traffic" in shop_line
    assert "no canary running" in re.search(r'will-halt-idle">(.*?)</li>', html, re.S).group(1)

    response = client.post(f"{SWITCHES}kill-all/", {"reason": "all hands"})

    activation = KillSwitchActivation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{SWITCHES}{activation.switch_id}/"
    assert activation.trigger == "kill_all" and activation.activated_by == people["erin"]
    changes = activation.changes
    assert {service.name for service in _services(changes["services"])} == shown_halt
    assert {str(item["id"]) for item in changes["paused"]} == shown_pause
    assert {item["key"] for item in changes["flags"]} == shown_kill
    assert Deployment.objects.get(pk=running.pk).status == "paused"
    assert Flag.objects.get(key="plain").status == "enabled"

    # The switch's page shows the activation, each affected row marked, and Recover.
    html = page(client.get(response["Location"]))
    assert "all hands" in html
    assert shown_ids(html, "affected-service-") >= {"shop", "idle"}
    assert "Recover</button>" in html
    again = page(client.get(f"{SWITCHES}kill-all/"))
    assert 'data-testid="kill-all-active"' in again
    assert f'href="{SWITCHES}{activation.switch_id}/"' in again


def _services(ids: list[int]) -> list[Any]:
    from routing.models import Service

    return list(Service.objects.filter(pk__in=ids))


def test_kill_all__without_a_reason__is_refused_beside_the_field(people, running):
    response = signed_in(people["erin"]).post(f"{SWITCHES}kill-all/", {"reason": "  "})

    assert response.status_code == 400
    assert re.search(r'id="id_reason-error">say why', page(response))
    assert not KillSwitchActivation.objects.exists()


def test_the_red_button__only_for_those_who_may_press_it__and_says_when_kill_all_is_on(
    people, running
):
    for who, shown in (("vic", False), ("ann", False), ("erin", True), ("ada", True)):
        html = page(signed_in(people[who]).get("/"))
        assert ('data-testid="kill-all-button"' in html) is shown, who
    html = page(signed_in(people["erin"]).get("/flags/"))
    assert re.search(r'<a class="kill-all-button" href="/rollback/kill-switches/kill-all/"', html)

    activation = services.kill_switch_kill_all(reason="fire", actor=people["erin"])

    html = page(signed_in(people["ada"]).get("/"))
    button = re.search(r'<a class="kill-all-button active" href="([^"]+)"[^>]*>([^<]+)<', html)
    assert button.groups() == (f"{SWITCHES}{activation.switch_id}/", "Kill-all active")


# ------------------------------------------------------------------------------ flag page


def test_flag_page__lists_the_switches_that_cover_the_flag__and_whether_one_killed_it(
    people, running, flags
):
    make_switch(name="stop-shop")
    services.kill_switch_create(definition={"name": "everything", "scope": "system"})
    only_plain = services.kill_switch_create(
        definition={"name": "only-plain", "scope": "flag", "flags": ["plain"]}
    )
    client = signed_in(people["vic"])

    guarded = page(client.get("/flags/guarded/"))
    cover = re.search(r'data-testid="flag-kill-switches">(.*?)</div>', guarded, re.S).group(1)
    assert "it has opted in" in cover
    assert shown_ids(cover, "covered-by-") == {"stop-shop", "everything"}

    plain = page(client.get("/flags/plain/"))
    cover = re.search(r'data-testid="flag-kill-switches">(.*?)</div>', plain, re.S).group(1)
    assert "leave this flag serving" in cover
    assert shown_ids(cover, "covered-by-") == {"only-plain"}

    services.kill_switch_trigger(switch=only_plain, reason="plain misbehaves", actor=people["ada"])
    plain = page(client.get("/flags/plain/"))
    line = re.search(r'data-testid="covered-by-only-plain">(.*?)</li>', plain, re.S).group(1)
    assert "Active" in line and "killed this flag" in line and "plain misbehaves" in line


def test_nul_characters__anywhere__are_a_400_never_a_server_error(people, running, flags):
    switch = make_switch()
    client = signed_in(people["erin"])
    flagged = 'name: f\nscope: flag\nflags: ["guarded\\0"]'

    answers = [
        client.post(f"{SWITCHES}new/", {**FORM, "name": "a\x00b"}),
        client.post(f"{SWITCHES}new/", {"mode": "yaml", "definition_text": flagged}),
        client.post(f"{SWITCHES}validate/", {"mode": "yaml", "definition_text": flagged}),
        client.post(f"{SWITCHES}{switch.pk}/trigger/", {"reason": "a\x00b"}, **HTMX),
        client.post(f"{SWITCHES}kill-all/", {"reason": "\x00"}),
    ]

    assert [answer.status_code for answer in answers] == [400, 400, 200, 400, 400]
    assert "Null characters are not allowed" in page(answers[0])
    assert re.search(
        r'id="id_definition_text-error">flags\[0\]: must not contain NUL', page(answers[1])
    )
    assert "must not contain NUL" in page(answers[2])
    assert re.search(r'id="trigger-reason-error">Null characters', page(answers[3]))
    assert not KillSwitch.objects.exclude(pk=switch.pk).exists()
    assert not KillSwitchActivation.objects.exists()
