"""The shell in real Chromium against a live server: log in, overview, a token, log out."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from canary_site.models import ApiToken
from tests.conftest import login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_browser__login_overview_create_token_logout(page, make_user):
    user = make_user("bea", roles=["engineer"])

    login(page, "bea")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#overview-counts")).to_contain_text("Control loop")
    expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Flags")
    ).to_be_visible()

    page.get_by_role("link", name="bea").click()
    page.get_by_label("Name").fill("pipeline")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_test_id("new-token-secret")
    expect(secret).to_contain_text("cnry_")
    assert ApiToken.objects.filter(user=user, name="pipeline").exists()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/"))


def test_browser__wrong_password__shows_a_clear_message(page, make_user):
    make_user("bea", roles=["viewer"])

    login(page, "bea", password="not-the-password")

    expect(page.get_by_role("alert")).to_contain_text("did not match")


def test_browser__token_form_with_no_name__says_which_field(page, make_user):
    make_user("bea", roles=["viewer"])
    login(page, "bea")

    page.goto("/profile/")
    page.get_by_role("button", name="Create token").click()

    expect(page.locator("#id_name-error")).to_contain_text("required")


def test_browser__narrow_screen_keeps_navigation_reachable_by_keyboard(page, make_user):
    make_user("bea", roles=["viewer"])
    page.set_viewport_size({"width": 360, "height": 740})
    login(page, "bea")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.wait_for_load_state("load")

    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Audit")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360
