"""The approver's inbox, the requester's own requests, the decision buttons and the live badge."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from canary_site import gates
from rollback.models import ApprovalRequest
from tests.rollback.gated import policy_note

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def pending(people, health_policy, make_policy):
    make_policy(quorum=1, name="payments changes")
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(
            policy=health_policy,
            description="stricter error budget",
            actor=people["erin"],
            source="ui",
            reason="after the outage",
        )
    return ApprovalRequest.objects.get(pk=raised.value.request_id)


def test_inbox__shows_the_pending_request_with_its_diff_requester_reason_and_time_left(
    people, pending
):
    page = signed_in(people["ann"]).get("/rollback/").content.decode()

    assert f'data-testid="approval-{pending.pk}"' in page
    assert "Awaiting your decision (1)" in page
    assert "stricter error budget" in page
    assert "<strong>erin</strong>" in page
    assert "after the outage" in page
    assert "left</span>" in page
    assert 'value="approve"' in page and 'value="reject"' in page
    assert "policy payments changes" in page


def test_inbox__the_requester_sees_it_without_the_buttons(people, pending):
    page = signed_in(people["erin"]).get("/rollback/").content.decode()

    assert "Awaiting your decision (0)" in page
    assert f'data-testid="approval-{pending.pk}"' in page
    assert 'value="approve"' not in page
    assert "someone else must approve it" in page


def test_inbox__newest_first(people, health_policy, pending):
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(policy=health_policy, description="later", actor=people["erin"])

    page = signed_in(people["ann"]).get("/rollback/").content.decode()

    newer, older = raised.value.request_id, pending.pk
    assert page.index(f'data-testid="approval-{newer}"') < page.index(
        f'data-testid="approval-{older}"'
    )


def test_badge__counts_what_awaits_the_viewer__and_polls(people, pending):
    badge = signed_in(people["ann"]).get("/rollback/approvals/badge/").content.decode()

    assert re.search(r'<span class="count">1</span>', badge)
    assert 'hx-trigger="every 5s"' in badge
    assert "hidden" not in badge
    empty = signed_in(people["erin"]).get("/rollback/approvals/badge/").content.decode()
    assert '<span class="count">0</span>' in empty and "hidden" in empty


def test_every_page__loads_the_badge_into_the_navigation_hook(people):
    page = signed_in(people["vic"]).get("/").content.decode()

    hook = re.search(r'<div id="badges"[^>]*>(.*?)</div>', page, re.S).group(1)
    assert 'hx-get="/rollback/approvals/badge/"' in hook


def test_approve_over_htmx__applies__answers_with_the_card_and_the_badge_out_of_band(
    people, pending, health_policy
):
    response = signed_in(people["ann"]).post(
        f"/rollback/approvals/{pending.pk}/decide/",
        {"verdict": "approve", "comment": "fine"},
        **HTMX,
    )

    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="approval-state">Applied<' in body
    assert 'hx-swap-oob="true"' in body and '<span class="count">0</span>' in body
    health_policy.refresh_from_db()
    assert health_policy.description == "stricter error budget"


def test_approve__by_the_requester_who_is_also_an_approver__is_refused_on_the_card(
    people, pending, health_policy
):
    people["erin"].groups.add(*people["ann"].groups.all())

    response = signed_in(people["erin"]).post(
        f"/rollback/approvals/{pending.pk}/decide/", {"verdict": "approve"}, **HTMX
    )

    assert response.status_code == 403
    assert "someone else must approve" in response.content.decode()
    assert ApprovalRequest.objects.get(pk=pending.pk).state == "pending"


def test_decide_without_htmx__redirects_to_the_request_with_a_message(people, pending):
    client = signed_in(people["ann"])

    response = client.post(f"/rollback/approvals/{pending.pk}/decide/", {"verdict": "reject"})

    assert response.status_code == 302
    assert response["Location"] == f"/rollback/approvals/{pending.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "It is rejected." in page


def test_mine__lists_the_requesters_requests_with_cancel(people, pending):
    client = signed_in(people["erin"])

    page = client.get("/rollback/approvals/mine/").content.decode()
    assert f'data-testid="approval-{pending.pk}"' in page
    assert "Cancel request" in page
    assert (
        "Cancel request"
        not in signed_in(people["ann"]).get("/rollback/approvals/mine/").content.decode()
    )

    response = client.post(f"/rollback/approvals/{pending.pk}/cancel/", {}, **HTMX)

    assert response.status_code == 200
    assert 'data-testid="approval-state">Cancelled<' in response.content.decode()


def test_detail__a_missing_request__is_404(people):
    assert signed_in(people["ann"]).get("/rollback/approvals/999/").status_code == 404


def test_pages__carry_no_inline_script_or_style(people, pending):
    for path in ("/rollback/", "/rollback/approvals/mine/", f"/rollback/approvals/{pending.pk}/"):
        page = signed_in(people["ann"]).get(path).content.decode()
        assert " style=" not in page
        assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)", page)
        assert not re.search(r"\son[a-z]+=", page)
