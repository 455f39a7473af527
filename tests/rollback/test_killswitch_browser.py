"""The red button in real Chromium against a live server: an engineer presses Kill all in the
navigation, reads the confirmation naming what will stop (the services halted with the canary
that leaves traffic, the deployment paused, the flags killed, the flag that keeps serving),
confirms with a reason, and sees every affected flag and service marked (killed, halted) on the
switch's page, the flags page and the routing page; then recovers and sees them back."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from deployments.models import Deployment
from flags.models import Flag
from rollback.models import KillSwitchActivation
from tests.conftest import login
from tests.rollback import test_killswitches as world
from tests.rollback.test_killswitches import CANARY

shop, running, flags = world.shop, world.running, world.flags

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def idle(db: Any) -> Any:
    from routing import services as routing

    return routing.service_create(name="idle", stable_version="3.0.0")


def _flag_status(page: Any, key: str) -> Any:
    return page.locator(f"#flag-row-{Flag.objects.get(key=key).pk} .status")


def _halted(page: Any, service: str) -> Any:
    article = page.locator("article").filter(has=page.get_by_role("link", name=service, exact=True))
    return article.get_by_test_id("halted")


def test_browser__kill_all_from_the_navigation__everything_marked__then_recovered(
    page,
    live_server,
    people,
    running,
    flags,
    idle,
):
    login(page, "erin")
    page.get_by_test_id("kill-all-button").click()

    expect(page).to_have_url(re.compile(r"/rollback/kill-switches/kill-all/$"))
    expect(page.get_by_role("heading", name="Kill all?")).to_be_visible()
    stops = page.get_by_test_id("kill-all-reach")
    expect(stops.get_by_test_id("will-halt-shop")).to_contain_text(f"{CANARY} at 20%")
    expect(stops.get_by_test_id("will-halt-shop")).to_contain_text("leaves traffic")
    expect(stops.get_by_test_id("will-halt-idle")).to_contain_text("no canary running")
    expect(stops.get_by_test_id(f"will-stop-deployment-{running.pk}")).to_contain_text("shop 2.0")
    expect(stops.get_by_test_id("will-kill-guarded")).to_be_visible()
    expect(stops.get_by_test_id("will-kill-off")).to_be_visible()
    expect(stops.get_by_test_id("will-kill-plain")).to_have_count(0)
    expect(stops.get_by_test_id("keeps-serving-plain")).to_be_visible()

    # Without a reason it is refused beside the field, and nothing has stopped.
    page.get_by_role("button", name="Kill all now").click()
    expect(page.locator("#id_reason-error")).to_contain_text("say why")
    assert not KillSwitchActivation.objects.exists()

    page.get_by_label("Reason").fill("payments are double charging")
    page.get_by_role("button", name="Kill all now").click()

    expect(page).to_have_url(re.compile(r"/rollback/kill-switches/\d+/$"))
    expect(page.get_by_test_id("killswitch-state")).to_contain_text("Active")
    expect(page.get_by_test_id("killswitch-state")).to_contain_text("payments are double charging")
    expect(page.get_by_test_id("killswitch-state")).to_contain_text("by erin")
    stopped = page.locator("#reach-title + ul")
    for key in ("guarded", "off"):
        expect(stopped.get_by_test_id(f"affected-flag-{key}").locator(".status")).to_have_text(
            "Killed"
        )
    for name in ("shop", "idle"):
        expect(stopped.get_by_test_id(f"affected-service-{name}").locator(".status")).to_have_text(
            "halted"
        )
    expect(stopped.get_by_test_id(f"affected-deployment-{running.pk}")).to_contain_text("Paused")
    expect(page.get_by_test_id("kill-all-button")).to_have_text("Kill-all active")

    page.goto("/flags/")
    expect(_flag_status(page, "guarded")).to_have_text("Killed")
    expect(_flag_status(page, "off")).to_have_text("Killed")
    expect(_flag_status(page, "plain")).to_have_text("Enabled")
    page.goto("/routing/")
    expect(_halted(page, "shop")).to_contain_text("halted")
    expect(_halted(page, "idle")).to_contain_text("halted")
    page.goto(f"/deployments/{running.pk}/")
    expect(page.get_by_test_id("deployment-status")).to_have_text("Paused")

    # The navigation's button now leads to the switch, to recover it.
    page.get_by_test_id("kill-all-button").click()
    expect(page).to_have_url(re.compile(r"/rollback/kill-switches/\d+/$"))
    page.get_by_label("Why recover").fill("the double charge is fixed")
    page.get_by_role("button", name="Recover").click()

    expect(page.get_by_test_id("killswitch-state")).to_contain_text("Ready")
    activation = KillSwitchActivation.objects.get()
    record = page.get_by_test_id(f"activation-{activation.pk}")
    expect(record.get_by_test_id("activation-recovery")).to_contain_text("by erin")
    expect(record.get_by_test_id("affected-flag-guarded").locator(".status")).to_have_text(
        "Enabled"
    )
    expect(record.get_by_test_id("affected-flag-off").locator(".status")).to_have_text("Disabled")
    expect(record.get_by_test_id("affected-service-shop").locator(".status")).to_have_text(
        "serving"
    )
    expect(page.get_by_test_id("kill-all-button")).to_have_text("Kill all")

    page.goto("/flags/")
    expect(_flag_status(page, "guarded")).to_have_text("Enabled")
    expect(_flag_status(page, "off")).to_have_text("Disabled")
    page.goto("/routing/")
    expect(_halted(page, "shop")).to_have_count(0)
    expect(_halted(page, "idle")).to_have_count(0)
    assert Deployment.objects.get(pk=running.pk).status == "running"
