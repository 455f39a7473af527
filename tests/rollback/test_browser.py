"""Approvals in real Chromium against a live server: an engineer asks to promote a production
deployment fully, an approver sees it in the inbox with its diff and the badge count, approves,
and the deployment moves; the requester cannot approve their own request."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from deployments import services as deployment_services
from deployments.models import Deployment
from rollback import services
from rollback.models import ApprovalRequest
from tests.conftest import login
from tests.deployments.conftest import make_deployment, policy, routed_service  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def production(settings, people, make_deployment):  # noqa: F811
    """A running deployment on the production install, where promoting fully needs one sign-off
    from the approver role."""
    settings.CANARY_ENVIRONMENT = "production"
    services.approval_policy_create(
        name="production promotions",
        scope_kind="environment",
        scope_value="production",
        actions=["deployment.promote_full"],
        quorum=1,
    )
    deployment = make_deployment()
    deployment_services.deployment_transition(deployment_id=deployment.pk, action="start")
    return Deployment.objects.get(pk=deployment.pk)


def ask_to_promote_fully(page, deployment) -> ApprovalRequest:
    login(page, "erin")
    page.goto(f"/deployments/{deployment.pk}/")
    page.get_by_label("Reason").fill("error rate flat for an hour")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Promote fully").click()
    banner = page.get_by_test_id("approval-banner")
    expect(banner).to_contain_text("Approval required")
    request = ApprovalRequest.objects.get()
    expect(banner.get_by_role("link")).to_have_attribute(
        "href", f"/rollback/approvals/{request.pk}/"
    )
    expect(page.get_by_test_id("deployment-status")).to_have_text("Running")
    assert Deployment.objects.get(pk=deployment.pk).status == "running"
    return request


def test_browser__engineer_asks__approver_sees_the_diff_and_badge__approves__deployment_moves(
    page, browser, live_server, production
):
    request = ask_to_promote_fully(page, production)
    page.context.clear_cookies()

    login(page, "ann")
    badge = page.get_by_test_id("approval-badge")
    expect(badge).to_be_visible()
    expect(badge).to_contain_text("1")
    badge.click()
    expect(page).to_have_url(re.compile(r"/rollback/$"))
    card = page.get_by_test_id(f"approval-{request.pk}")
    expect(card).to_contain_text("deployment.promote_full")
    expect(card).to_contain_text("erin")
    expect(card).to_contain_text("error rate flat for an hour")
    diff = card.get_by_test_id("approval-diff")
    expect(diff.get_by_role("row", name=re.compile("status"))).to_contain_text("running")
    expect(diff.get_by_role("row", name=re.compile("status"))).to_contain_text("succeeded")
    expect(diff.get_by_role("row", name=re.compile("canary_share"))).to_contain_text("100")
    expect(card.get_by_test_id("time-left")).to_contain_text("left")

    card.get_by_label("Comment").fill("numbers look right")
    card.get_by_role("button", name="Approve").click()

    expect(
        page.get_by_test_id(f"approval-{request.pk}").get_by_test_id("approval-state")
    ).to_have_text("Applied")
    expect(page.get_by_test_id("approval-badge")).to_be_hidden()
    assert Deployment.objects.get(pk=production.pk).status == "succeeded"
    page.goto(f"/deployments/{production.pk}/")
    expect(page.get_by_test_id("deployment-status")).to_have_text("Succeeded")


def test_browser__the_requester_cannot_approve_their_own_request(page, production, people):
    # erin may approve in general, yet never her own request.
    people["erin"].groups.add(*people["ann"].groups.all())
    request = ask_to_promote_fully(page, production)

    page.goto(f"/rollback/approvals/{request.pk}/")
    card = page.get_by_test_id(f"approval-{request.pk}")
    expect(card.get_by_test_id("own-request")).to_contain_text("someone else must approve")
    expect(card.get_by_role("button", name="Approve")).to_have_count(0)
    page.goto("/rollback/")
    expect(page.get_by_role("heading", name="Awaiting your decision (0)")).to_be_visible()

    # Sending the decision anyway, with the page's own CSRF token, is refused with the reason.
    token = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']")
    answer = page.request.post(
        f"/rollback/approvals/{request.pk}/decide/",
        form={"verdict": "approve"},
        headers={"X-CSRFToken": token, "HX-Request": "true", "Referer": page.url},
    )
    assert answer.status == 403
    assert "someone else must approve" in answer.text()
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"
    assert Deployment.objects.get(pk=production.pk).status == "running"
