"""The routing dashboard in real Chromium: the weight slider and the "test a request" panel."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from routing import services
from routing.models import RuleTarget
from tests.conftest import login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_browser__slider_saves_the_split__and_test_a_request_explains_the_decision(page, make_user):
    make_user("erin", roles=["engineer"])
    service = services.service_create(name="shop", stable_version="1.0.0")
    services.target_create(service=service, name="stable", endpoint="http://s:1", version="1.0.0")
    services.target_create(service=service, name="canary", endpoint="http://c:1", version="2.0.0")
    services.rule_create(
        service=service,
        name="beta users",
        priority=1,
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )
    split = services.rule_create(
        service=service, name="split", priority=10, targets={"stable": 90, "canary": 10}
    )
    login(page, "erin")

    page.goto(f"/routing/rules/{split.pk}/")
    page.get_by_label("Share of canary").fill("25")

    expect(page.get_by_test_id("weights-saved")).to_contain_text("canary 25.00%")
    expect(page.locator("#slider-share")).to_have_text("25.00")
    assert RuleTarget.objects.get(rule=split, target__name="canary").weight == Decimal("25.00")

    page.get_by_role("link", name="shop").click()
    expect(page.get_by_role("heading", name="shop", exact=True)).to_be_visible()
    expect(page.locator("#traffic-chart-plot .main-svg").first).to_be_attached()
    page.get_by_label("Headers").fill("X-Beta: 1")
    page.get_by_role("button", name="Route it").click()

    decision = page.get_by_test_id("decision")
    expect(decision).to_contain_text("→ canary")
    expect(decision).to_contain_text('header x-beta equals "1"')

    page.get_by_label("Headers").fill("")
    page.get_by_label("Cookies").fill("a=1")
    page.get_by_role("button", name="Route it").click()
    expect(page.get_by_test_id("decision")).to_contain_text("Rule")
    expect(page.get_by_test_id("decision")).to_contain_text("'split'")
