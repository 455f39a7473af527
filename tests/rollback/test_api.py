"""The approvals API: requests with their filters and verbs, and the policies (admins only)."""

from __future__ import annotations

import pytest

from canary_site import gates
from rollback.models import ApprovalPolicy, ApprovalRequest
from tests.rollback.gated import policy_note

pytestmark = pytest.mark.django_db


def client_for(api_client, user):
    api_client.force_authenticate(user)
    return api_client


@pytest.fixture
def pending(people, health_policy, make_policy):
    make_policy(quorum=2)
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(policy=health_policy, description="x", actor=people["erin"], source="api")
    return ApprovalRequest.objects.get(pk=raised.value.request_id)


def test_list__every_role_reads__filters_by_state_action_requester_mine_and_awaiting_me(
    api_client, people, pending
):
    ann = client_for(api_client, people["ann"])

    body = ann.get("/api/v1/approvals/").json()
    assert [item["id"] for item in body["results"]] == [pending.pk]
    item = body["results"][0]
    assert item["state"] == "pending"
    assert item["requester"] == "erin"
    assert item["change"] == {"before": {"description": ""}, "after": {"description": "x"}}
    assert item["object"]["type"] == "health.healthpolicy"
    assert item["approvals"] == 0 and item["quorum"] == 2

    def ids(query, user="ann"):
        client = client_for(api_client, people[user])
        return [i["id"] for i in client.get(f"/api/v1/approvals/?{query}").json()["results"]]

    assert ids("state=pending") == [pending.pk]
    assert ids("state=applied") == []
    assert ids("action=flag.update") == [pending.pk]
    assert ids("requester=erin") == [pending.pk]
    assert ids("requester=ann") == []
    assert ids("mine=true", "erin") == [pending.pk]
    assert ids("mine=true") == []
    assert ids("awaiting_me=true") == [pending.pk]
    assert ids("awaiting_me=true", "erin") == []
    assert ids("state=pending", "vic") == [pending.pk]


def test_list__a_filter_value_it_does_not_know__is_400_naming_it(api_client, people, pending):
    response = client_for(api_client, people["ann"]).get("/api/v1/approvals/?state=nope")

    assert response.status_code == 400
    assert "state" in response.json()["error"]["fields"]


def test_approve__by_two_approvers__applies_and_shows_the_decisions(api_client, people, pending):
    first = client_for(api_client, people["ann"]).post(
        f"/api/v1/approvals/{pending.pk}/approve/", {"comment": "fine"}, format="json"
    )
    assert first.status_code == 200
    assert first.json()["state"] == "pending"

    second = client_for(api_client, people["bob"]).post(
        f"/api/v1/approvals/{pending.pk}/approve/", {}, format="json"
    )

    assert second.status_code == 200
    body = second.json()
    assert body["state"] == "applied"
    assert [(d["approver"], d["verdict"], d["comment"]) for d in body["decisions"]] == [
        ("ann", "approve", "fine"),
        ("bob", "approve", ""),
    ]


def test_approve__ones_own_request__is_403_saying_so(api_client, people, make_user, pending):
    ApprovalRequest.objects.filter(pk=pending.pk).update(requester=people["ann"])

    response = client_for(api_client, people["ann"]).post(
        f"/api/v1/approvals/{pending.pk}/approve/", {}, format="json"
    )

    assert response.status_code == 403
    assert "someone else must approve" in response.json()["error"]["message"]


def test_approve__by_an_engineer__is_403(api_client, people, pending):
    response = client_for(api_client, people["erin"]).post(
        f"/api/v1/approvals/{pending.pk}/approve/", {}, format="json"
    )

    assert response.status_code == 403


@pytest.mark.parametrize(
    ("state", "word"),
    [("applied", "applied"), ("expired", "expired"), ("superseded", "superseded")],
)
def test_approve__a_closed_request__is_409_saying_which(api_client, people, pending, state, word):
    ApprovalRequest.objects.filter(pk=pending.pk).update(state=state)

    response = client_for(api_client, people["ann"]).post(
        f"/api/v1/approvals/{pending.pk}/approve/", {}, format="json"
    )

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == state
    assert word in error["message"]


def test_reject_and_cancel(api_client, people, pending):
    reject = client_for(api_client, people["bob"]).post(
        f"/api/v1/approvals/{pending.pk}/reject/", {"comment": "no"}, format="json"
    )
    assert reject.status_code == 200
    assert reject.json()["state"] == "rejected"

    cancel = client_for(api_client, people["erin"]).post(
        f"/api/v1/approvals/{pending.pk}/cancel/", {}, format="json"
    )
    assert cancel.status_code == 409


def test_cancel__by_someone_else__is_403__by_the_requester__cancels(api_client, people, pending):
    other = client_for(api_client, people["vic"]).post(
        f"/api/v1/approvals/{pending.pk}/cancel/", {}, format="json"
    )
    assert other.status_code == 403

    mine = client_for(api_client, people["erin"]).post(
        f"/api/v1/approvals/{pending.pk}/cancel/", {"comment": "changed my mind"}, format="json"
    )
    assert mine.status_code == 200
    assert mine.json()["state"] == "cancelled"


def test_decision__an_unknown_field__is_400(api_client, people, pending):
    response = client_for(api_client, people["ann"]).post(
        f"/api/v1/approvals/{pending.pk}/approve/", {"verdict": "yes"}, format="json"
    )

    assert response.status_code == 400
    assert "verdict" in response.json()["error"]["fields"]


# --- policies ------------------------------------------------------------------------------------


def test_policies__admins_create_update_delete__others_read_only(api_client, people):
    body = {
        "name": "production promotions",
        "scope_kind": "environment",
        "scope_value": "production",
        "actions": ["deployment.promote_full", "deployment.start"],
        "quorum": 2,
        "ttl_seconds": 3600,
    }
    for role in ("erin", "ann", "vic"):
        assert (
            client_for(api_client, people[role])
            .post("/api/v1/approval-policies/", body, format="json")
            .status_code
            == 403
        )

    created = client_for(api_client, people["ada"]).post(
        "/api/v1/approval-policies/", body, format="json"
    )
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    assert created.json()["approver_kind"] == "role"

    assert (
        client_for(api_client, people["vic"]).get(f"/api/v1/approval-policies/{pk}/").json()["name"]
        == "production promotions"
    )
    patched = client_for(api_client, people["ada"]).patch(
        f"/api/v1/approval-policies/{pk}/", {"quorum": 1}, format="json"
    )
    assert patched.status_code == 200
    assert patched.json()["quorum"] == 1
    assert (
        client_for(api_client, people["erin"])
        .delete(f"/api/v1/approval-policies/{pk}/")
        .status_code
        == 403
    )
    assert (
        client_for(api_client, people["ada"]).delete(f"/api/v1/approval-policies/{pk}/").status_code
        == 204
    )
    assert not ApprovalPolicy.objects.exists()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"quorum": 0}, "quorum", "1 or more"),
        ({"quorum": 40}, "quorum", "cannot be met"),
        ({"actions": ["flag.kill"]}, "actions", "emergency off-switch"),
        ({"actions": ["deployment.auto_rollback"]}, "actions", "never waits"),
        ({"actions": ["killswitch.trigger"]}, "actions", "emergency"),
        ({"actions": ["nope"]}, "actions", "not an action"),
        ({"scope_kind": "service", "scope_value": ""}, "scope_value", "service"),
        ({"approver_kind": "group"}, "approver_group", "group"),
        ({"ttl_seconds": 5}, "ttl_seconds", "60 seconds"),
        ({"approver_users": ["nobody-by-that-name"]}, "approver_users", "not exist"),
    ],
)
def test_policy__bad_input__is_400_naming_the_field(api_client, people, change, field, words):
    body = {"name": "p", "actions": ["flag.update"], "quorum": 1, **change}

    response = client_for(api_client, people["ada"]).post(
        "/api/v1/approval-policies/", body, format="json"
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert list(error["fields"]) == [field]
    assert words in " ".join(error["fields"][field])


def test_gated_write_over_rest__answers_202_with_the_request(
    api_client, people, make_policy, monkeypatch
):
    """The exception handler turns the gate's answer into a 202 with the request's id and URL,
    and keeps the request it opened."""
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from health import services as health_services

    make_policy()
    target = health_services.health_policy_create(name="rest-gated", alerting_enabled=False)

    class Probe(APIView):
        def post(self, request):
            policy_note(policy=target, description="over rest", actor=request.user, source="api")
            return Response({"done": True})

    from rest_framework.test import APIRequestFactory, force_authenticate

    request = APIRequestFactory().post("/api/v1/probe/", {}, format="json")
    force_authenticate(request, user=people["erin"])
    response = Probe.as_view()(request)

    assert response.status_code == 202
    summary = response.data["approval_request"]
    opened = ApprovalRequest.objects.get(pk=summary["id"])
    assert summary["url"] == f"/api/v1/approvals/{opened.pk}/"
    assert summary["state"] == "pending"
    assert "Approval required" in response.data["message"]
