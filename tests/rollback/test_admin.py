"""The rollback admin calls the services: a policy's quorum is checked there, and the request
actions approve, reject and cancel by the same rules as the inbox."""

from __future__ import annotations

import pytest
from django.test import Client

from canary_site import gates
from rollback.models import ApprovalPolicy, ApprovalRequest
from tests.rollback.gated import policy_note

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


POLICY = {
    "name": "from the admin",
    "description": "",
    "enabled": "on",
    "scope_kind": "all",
    "scope_value": "",
    "actions": '["deployment.promote_full"]',
    "approver_kind": "role",
    "approver_group": "",
    "quorum": "2",
    "ttl_seconds": "3600",
    "one_rejection_rejects": "on",
    "notify_via": "",
}


def test_admin_policy_add__saves_through_the_service(people):
    response = signed_in(people["ada"]).post("/admin/rollback/approvalpolicy/add/", POLICY)

    assert response.status_code == 302
    policy = ApprovalPolicy.objects.get()
    assert (policy.quorum, policy.actions) == (2, ["deployment.promote_full"])


def test_admin_policy_add__a_quorum_no_one_can_meet__is_shown_on_the_field(people):
    response = signed_in(people["ada"]).post(
        "/admin/rollback/approvalpolicy/add/", {**POLICY, "quorum": "9"}
    )

    assert response.status_code == 200
    assert "cannot be met" in str(response.context["adminform"].form.errors["quorum"])
    assert not ApprovalPolicy.objects.exists()


def test_admin_policy_add__an_emergency__is_refused_on_actions(people):
    response = signed_in(people["ada"]).post(
        "/admin/rollback/approvalpolicy/add/", {**POLICY, "actions": '["flag.kill"]'}
    )

    assert "never waits" in str(response.context["adminform"].form.errors["actions"])


@pytest.fixture
def pending(people, health_policy, make_policy):
    make_policy()
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(policy=health_policy, description="via admin", actor=people["erin"])
    return ApprovalRequest.objects.get(pk=raised.value.request_id)


def test_admin_approve_action__applies_through_the_service(people, pending, health_policy):
    response = signed_in(people["ann"]).post(
        "/admin/rollback/approvalrequest/",
        {"action": "approve_requests", "_selected_action": [str(pending.pk)]},
        follow=True,
    )

    assert "Approve: 1 request(s)." in response.content.decode()
    assert ApprovalRequest.objects.get(pk=pending.pk).state == "applied"
    health_policy.refresh_from_db()
    assert health_policy.description == "via admin"


def test_admin_approve_action__by_the_requester__is_refused_with_the_reason(
    people, pending, make_user
):
    ApprovalRequest.objects.filter(pk=pending.pk).update(requester=people["ann"])

    response = signed_in(people["ann"]).post(
        "/admin/rollback/approvalrequest/",
        {"action": "approve_requests", "_selected_action": [str(pending.pk)]},
        follow=True,
    )

    assert "someone else must approve" in response.content.decode()
    assert ApprovalRequest.objects.get(pk=pending.pk).state == "pending"


def test_admin_request__cannot_be_edited_or_deleted(people, pending):
    client = signed_in(people["ada"])

    assert client.post(f"/admin/rollback/approvalrequest/{pending.pk}/delete/").status_code == 403
    assert client.get("/admin/rollback/approvalrequest/add/").status_code == 403
