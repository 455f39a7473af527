"""The deployments pages in real Chromium against a live server: create a deployment in the
wizard, start it, see phase 1 judged live, abort it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from deployments import services
from deployments.models import Deployment
from tests.conftest import login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_browser__wizard_create__start__phase_one_live__abort(page, engineer, routed_service):
    login(page, "erin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
    page.get_by_role("link", name="New deployment").click()

    page.get_by_label("Name", exact=True).fill("shop 2.0 canary")
    page.locator("#id_service").select_option("shop")
    page.get_by_label("Canary version").fill("2.0.0")
    # An impossible criterion is named as you type, then fixed.
    page.get_by_label("Phase 1 availability above (%)").fill("101")
    report = page.get_by_test_id("validation-report")
    expect(report).to_contain_text("1 error")
    expect(page.locator("#phase-errors-0")).to_contain_text("can never pass")
    page.get_by_label("Phase 1 availability above (%)").fill("99")
    expect(report).to_contain_text("Valid")

    page.get_by_role("button", name="Create deployment").click()
    expect(page).to_have_url(re.compile(r"/deployments/\d+/$"))
    expect(page.get_by_role("heading", name="shop 2.0 canary")).to_be_visible()
    deployment = Deployment.objects.get()
    assert deployment.created_by == engineer

    page.get_by_role("button", name="Start").click()
    expect(page.get_by_test_id("deployment-status")).to_have_text("Running")
    expect(page.get_by_test_id("canary-share")).to_have_text("10.00%")
    phase_one = page.get_by_test_id("phase-1")
    expect(phase_one).to_contain_text("Running")
    expect(phase_one.get_by_test_id("phase-reason")).to_contain_text("first judgement")

    # The control loop judges the phase; the page's next poll shows why it waits.
    services.deployments_tick()
    expect(phase_one.get_by_test_id("phase-reason")).to_contain_text("has no data", timeout=20_000)
    expect(phase_one).to_contain_text("no_data")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Abort").click()
    expect(page.get_by_test_id("deployment-status")).to_have_text("Aborted")
    expect(page.get_by_test_id("canary-share")).to_have_text("0.00%")
    expect(page.locator("#deployment-timeline")).to_contain_text("Aborted")
    assert Deployment.objects.get().status == "aborted"

    page.get_by_role("link", name="Deployments", exact=True).first.click()
    expect(page.get_by_test_id(f"status-{deployment.pk}")).to_have_text("Aborted")
