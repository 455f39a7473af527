"""The flags dashboard in real Chromium against a live server."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from canary_site.bucketing import bucket
from flags.models import Flag, Segment
from tests.conftest import login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def user_inside(salt: str, percentage: float) -> str:
    """A targetingKey whose bucket falls inside a rollout of ``percentage`` under ``salt``."""
    return next(f"user-{n}" for n in range(10_000) if bucket(salt, f"user-{n}") < percentage * 100)


def test_browser__segment_rule_with_a_10_percent_rollout__try_a_context__then_kill(page, make_user):
    make_user("bea", roles=["engineer"])
    login(page, "bea")

    # A segment, on the segment pages.
    page.goto("/flags/-/segments/new/")
    page.get_by_label("Key").fill("beta")
    page.get_by_label("Attribute").fill("country")
    page.get_by_label("Operator").select_option("in")
    page.get_by_label("Values").fill("NL, BE")
    page.get_by_role("button", name="Save segment").click()
    expect(page.get_by_role("heading", name="Segment beta")).to_be_visible()

    # A flag, from the list.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Flags").click()
    page.get_by_role("link", name="New flag").click()
    page.get_by_label("Key").fill("new-checkout")
    page.get_by_role("button", name="Create flag").click()
    expect(page.get_by_role("heading", name="new-checkout")).to_be_visible()

    # Its rule: the beta segment, 10% of it gets "on".
    page.get_by_role("link", name="Add a rule").click()
    page.get_by_label("Name").fill("beta testers")
    page.get_by_label("beta").check()
    page.get_by_label("A percentage rollout").check()
    page.get_by_label("Rollout %").fill("10")
    page.get_by_label("Rolled-out variant").select_option("on")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#rules-panel")).to_contain_text("10% get 'on'")
    page.get_by_label("Rollout percentage").fill("0")
    page.get_by_role("button", name="Set rollout").click()
    expect(page.locator("#default-panel")).to_contain_text("0% get 'on'")

    # Enable it, confirming the toggle.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("switch", name="new-checkout enabled").click()
    expect(page.get_by_test_id("flag-status")).to_have_text("Enabled")

    # Try a context inside the segment and inside the 10%.
    page.get_by_label("targetingKey").fill(user_inside("new-checkout", 10))
    page.get_by_label("Other attributes (JSON object)").fill('{"country": "NL"}')
    page.get_by_role("button", name="Evaluate").click()
    result = page.get_by_test_id("try-result")
    expect(result).to_contain_text("TARGETING_MATCH")
    expect(page.get_by_test_id("try-explanation")).to_contain_text("rule 1 'beta testers' matched")

    # Kill it.
    page.get_by_label("Reason").fill("checkout errors")
    page.get_by_role("button", name="Emergency disable").click()
    expect(page.get_by_test_id("flag-status")).to_have_text("Killed")
    expect(page.get_by_role("alert")).to_contain_text("checkout errors")

    flag = Flag.objects.get()
    assert (flag.status, flag.killed_reason) == ("killed", "checkout errors")
    assert flag.rules[0]["segments"] == ["beta"]
    assert Segment.objects.get().key == "beta"


def test_browser__flag_page_at_narrow_width__fits_and_keeps_the_kill_button(
    page, make_user, make_flag
):
    make_user("bea", roles=["engineer"])
    make_flag()
    page.set_viewport_size({"width": 360, "height": 740})
    login(page, "bea")

    page.goto("/flags/new-checkout/")

    expect(page.get_by_role("button", name="Emergency disable")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.get_by_label("Reason").focus()
    page.keyboard.type("keyboard only")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Emergency disable")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("flag-status")).to_have_text("Killed")


def test_browser__flag_list_at_narrow_width__fits(page, make_user, make_flag):
    make_user("bea", roles=["engineer"])
    make_flag(tags=["checkout"])
    page.set_viewport_size({"width": 360, "height": 740})
    login(page, "bea")

    page.goto("/flags/")

    expect(page.get_by_role("link", name="new-checkout")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
