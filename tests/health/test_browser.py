"""A service's health page in real Chromium against a live server."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from health import services
from health.models import Alert
from tests.conftest import login
from tests.health.conftest import traffic

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_health_page__draws_both_series_and_explains_the_critical_check(
    page, make_user, make_policy, now, window_end
):
    make_user("bea", roles=["engineer"])
    policy = make_policy()
    for batch in (
        traffic("checkout", "2.0", end=window_end, seconds=300, requests=200, errors=10),
        traffic("checkout", "1.0", end=window_end, seconds=300, requests=1000, errors=1),
    ):
        services.metrics_record_outcomes(outcomes=batch)
    check = services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )
    comparison = next(r for r in check.results if r["check"] == "comparison")

    login(page, "bea")
    page.goto("/health/")
    page.get_by_role("link", name="checkout").first.click()

    expect(page.get_by_role("heading", name="checkout")).to_be_visible()
    for chart in ("#chart-error-rate", "#chart-latency-p95", "#chart-throughput"):
        legend = page.locator(f"{chart} .legendtext")
        expect(legend).to_have_text(["stable 1.0", "canary 2.0"])
    expect(page.locator("#chart-error-rate .scatterlayer .trace")).to_have_count(2)

    row = page.locator(f"#check-{check.pk}")
    expect(row.locator(".verdict").first).to_have_text("Critical")
    expect(row).to_contain_text(check.message)
    row.get_by_text("Every check").click()
    expect(row.get_by_text(comparison["message"])).to_be_visible()

    alerts = page.locator("#health-alerts")
    alerts.get_by_role("button", name="Acknowledge").click()
    expect(alerts).to_contain_text("Acknowledged by bea")
    assert Alert.objects.get().acknowledged_by.username == "bea"
