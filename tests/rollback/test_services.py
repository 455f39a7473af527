"""The approval workflow in the services: policies refused when they cannot work, a gated call
that opens a request instead of acting, four eyes, quorum, rejection, expiry, supersession,
cancellation, the audit trail and the news."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from canary_site import gates
from canary_site.exceptions import Forbidden, TransitionNotAllowed, ValidationFailed
from canary_site.models import AuditEntry
from health.models import HealthPolicy, NotificationOutbox
from rollback import services, tasks
from rollback.models import ApprovalDecision, ApprovalRequest
from tests.rollback.gated import policy_note

pytestmark = pytest.mark.django_db


def ask(health_policy, people, description="tightened", **kwargs):
    """The engineer asks for the gated change; returns the request it opened."""
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(
            policy=health_policy,
            description=description,
            actor=people["erin"],
            source="api",
            reason=kwargs.pop("reason", "payments incident follow-up"),
            **kwargs,
        )
    return ApprovalRequest.objects.get(pk=raised.value.request_id)


def description(health_policy):
    return HealthPolicy.objects.get(pk=health_policy.pk).description


# --- policies ------------------------------------------------------------------------------------


def test_policy_create__quorum_zero__is_refused_naming_the_quorum(people, make_policy):
    with pytest.raises(ValidationFailed) as refused:
        make_policy(quorum=0)

    assert list(refused.value.fields) == ["quorum"]
    assert "1 or more" in refused.value.message


def test_policy_create__more_approvals_than_approvers__is_refused_naming_the_quorum(
    people, make_policy
):
    # ann, bob and cat hold the approver role and ada is an admin: four can approve.
    with pytest.raises(ValidationFailed) as refused:
        make_policy(quorum=5)

    assert list(refused.value.fields) == ["quorum"]
    assert "only 4 people can approve" in refused.value.message
    assert make_policy(quorum=4).quorum == 4


def test_policy_create__listed_users_count_only_those_who_may_approve(people, make_policy):
    with pytest.raises(ValidationFailed) as refused:
        make_policy(approver_kind="users", approver_users=[people["ann"], people["erin"]], quorum=2)

    assert "only 1 person" in refused.value.message
    with pytest.raises(ValidationFailed) as empty:
        make_policy(approver_kind="users", approver_users=[])
    assert list(empty.value.fields) == ["approver_users"]


def test_policy_create__naming_an_emergency__is_refused_saying_why(people, make_policy):
    for emergency in ("flag.kill", "deployment.auto_rollback", "killswitch.trigger"):
        with pytest.raises(ValidationFailed) as refused:
            make_policy(actions=["flag.update", emergency])

        assert list(refused.value.fields) == ["actions"]
        assert "never waits" in refused.value.message or "emergency" in refused.value.message


def test_policy_create__a_scope_without_its_value__is_refused(people, make_policy):
    with pytest.raises(ValidationFailed) as refused:
        make_policy(scope_kind="service", scope_value="")

    assert list(refused.value.fields) == ["scope_value"]


def test_policy_update__the_quorum_is_checked_again(people, make_policy):
    policy = make_policy(quorum=1)

    with pytest.raises(ValidationFailed) as refused:
        services.approval_policy_update(policy=policy, changes={"quorum": 9})

    assert list(refused.value.fields) == ["quorum"]
    updated = services.approval_policy_update(policy=policy, changes={"quorum": 3})
    assert updated.quorum == 3


# --- the gate ------------------------------------------------------------------------------------


def test_gated_call__no_policy_covers_it__acts_at_once(people, health_policy, make_policy):
    make_policy(scope_value="search")

    policy_note(policy=health_policy, description="done", actor=people["erin"])

    assert description(health_policy) == "done"
    assert not ApprovalRequest.objects.exists()


def test_gated_call__a_policy_covers_it__opens_a_request_and_does_not_act(
    people, health_policy, make_policy
):
    policy = make_policy(quorum=2, ttl_seconds=3600)

    request = ask(health_policy, people)

    assert description(health_policy) == ""
    assert request.state == "pending"
    assert request.policy == policy
    assert request.requester == people["erin"]
    assert request.reason == "payments incident follow-up"
    assert request.change == {"before": {"description": ""}, "after": {"description": "tightened"}}
    assert request.quorum == 2
    assert request.source == "api"
    assert set(request.approvers.values_list("username", flat=True)) == {"ann", "bob", "cat", "ada"}
    assert timedelta(seconds=3590) < request.expires_at - request.created_at <= timedelta(hours=1)


def test_gated_call__asked_twice__answers_with_the_same_request(people, health_policy, make_policy):
    make_policy()

    first = ask(health_policy, people)
    second = ask(health_policy, people)

    assert first.pk == second.pk
    assert ApprovalRequest.objects.count() == 1


def test_gated_call__a_disabled_policy__gates_nothing(people, health_policy, make_policy):
    make_policy(enabled=False)

    policy_note(policy=health_policy, description="done", actor=people["erin"])

    assert description(health_policy) == "done"


# --- four eyes and quorum ------------------------------------------------------------------------


def test_approve__ones_own_request__is_forbidden(people, health_policy, make_policy, make_user):
    make_policy()
    both = make_user("dual", roles=["engineer", "approver"])
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(policy=health_policy, description="mine", actor=both)

    with pytest.raises(Forbidden) as refused:
        services.approval_request_approve(request_id=raised.value.request_id, actor=both)

    assert refused.value.status_code == 403
    assert "someone else must approve" in refused.value.message
    assert description(health_policy) == ""
    assert not ApprovalDecision.objects.exists()
    # The requester is not among those asked to decide.
    assert not ApprovalRequest.objects.get().approvers.filter(pk=both.pk).exists()


def test_approve__without_the_approve_permission__is_forbidden(people, health_policy, make_policy):
    make_policy()
    request = ask(health_policy, people)

    with pytest.raises(Forbidden):
        services.approval_request_approve(request_id=request.pk, actor=people["vic"])


def test_quorum_two_of_three__the_second_approval_applies__the_third_is_told(
    people, health_policy, make_policy
):
    make_policy(
        quorum=2, approver_kind="users", approver_users=[people[n] for n in ["ann", "bob", "cat"]]
    )
    request = ask(health_policy, people)

    after_one = services.approval_request_approve(request_id=request.pk, actor=people["ann"])
    assert after_one.state == "pending"
    assert description(health_policy) == ""

    after_two = services.approval_request_approve(
        request_id=request.pk, actor=people["bob"], comment="ok"
    )
    assert after_two.state == "applied"
    assert description(health_policy) == "tightened"

    with pytest.raises(TransitionNotAllowed) as late:
        services.approval_request_approve(request_id=request.pk, actor=people["cat"])
    assert late.value.status_code == 409
    assert "has been applied already" in late.value.message


def test_approve__twice_by_the_same_person__counts_once(people, health_policy, make_policy):
    make_policy(quorum=2)
    request = ask(health_policy, people)
    services.approval_request_approve(request_id=request.pk, actor=people["ann"])

    with pytest.raises(TransitionNotAllowed) as again:
        services.approval_request_approve(request_id=request.pk, actor=people["ann"])

    assert "nobody counts twice" in again.value.message
    assert ApprovalDecision.objects.count() == 1
    assert ApprovalRequest.objects.get().state == "pending"


def test_applied_change__is_made_as_the_requester_with_the_approvals_in_the_reason(
    people, health_policy, make_policy
):
    make_policy()
    request = ask(health_policy, people)

    services.approval_request_approve(request_id=request.pk, actor=people["ann"], source="ui")

    entry = AuditEntry.objects.filter(object_pk=str(health_policy.pk)).order_by("-pk").first()
    assert entry.actor == people["erin"]
    verbs = set(
        AuditEntry.objects.filter(content_type__app_label="rollback").values_list("verb", flat=True)
    )
    assert {"request", "approve"} <= verbs


# --- rejection -----------------------------------------------------------------------------------


def test_reject__one_rejection_rejects__closes_it_unapplied(people, health_policy, make_policy):
    make_policy(quorum=2)
    request = ask(health_policy, people)
    services.approval_request_approve(request_id=request.pk, actor=people["ann"])

    rejected = services.approval_request_reject(
        request_id=request.pk, actor=people["bob"], comment="not during the freeze"
    )

    assert rejected.state == "rejected"
    assert description(health_policy) == ""
    with pytest.raises(TransitionNotAllowed) as late:
        services.approval_request_approve(request_id=request.pk, actor=people["cat"])
    assert "rejected" in late.value.message


def test_reject__when_one_rejection_does_not_reject__waits_until_the_quorum_is_out_of_reach(
    people, health_policy, make_policy
):
    trio = [people[n] for n in ("ann", "bob", "cat")]
    make_policy(quorum=2, one_rejection_rejects=False, approver_kind="users", approver_users=trio)
    request = ask(health_policy, people)

    assert services.approval_request_reject(request_id=request.pk, actor=people["ann"]).state == (
        "pending"
    )
    assert services.approval_request_reject(request_id=request.pk, actor=people["bob"]).state == (
        "rejected"
    )


# --- expiry, supersession, cancellation ----------------------------------------------------------


def test_expiry__on_the_beat__closes_requests_past_their_time(people, health_policy, make_policy):
    make_policy(ttl_seconds=60)
    request = ask(health_policy, people)
    fresh = ask(health_policy, people, description="another")
    ApprovalRequest.objects.filter(pk=request.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert tasks.approval_requests_expire() == 1
    assert tasks.approval_requests_expire() == 0

    assert ApprovalRequest.objects.get(pk=request.pk).state == "expired"
    assert ApprovalRequest.objects.get(pk=fresh.pk).state == "pending"
    with pytest.raises(TransitionNotAllowed) as late:
        services.approval_request_approve(request_id=request.pk, actor=people["ann"])
    assert "has expired" in late.value.message


def test_approve__past_its_time_before_the_beat__is_refused_and_expires(
    people, health_policy, make_policy
):
    make_policy()
    request = ask(health_policy, people)

    with pytest.raises(TransitionNotAllowed) as late:
        services.approval_request_approve(
            request_id=request.pk, actor=people["ann"], now=request.expires_at + timedelta(1)
        )

    assert late.value.code == "expired"
    assert ApprovalRequest.objects.get(pk=request.pk).state == "expired"
    assert description(health_policy) == ""


def test_superseded__the_object_changed_since__is_not_applied(people, health_policy, make_policy):
    make_policy()
    request = ask(health_policy, people)
    HealthPolicy.objects.filter(pk=health_policy.pk).update(
        description="edited meanwhile", updated_at=timezone.now() + timedelta(seconds=1)
    )

    with pytest.raises(TransitionNotAllowed) as stale:
        services.approval_request_approve(request_id=request.pk, actor=people["ann"])

    assert stale.value.code == "superseded"
    assert "has changed since" in stale.value.message
    assert ApprovalRequest.objects.get(pk=request.pk).state == "superseded"
    assert description(health_policy) == "edited meanwhile"
    with pytest.raises(TransitionNotAllowed) as late:
        services.approval_request_approve(request_id=request.pk, actor=people["bob"])
    assert "superseded" in late.value.message


def test_superseded__at_the_moment_of_applying__by_the_gate_itself(
    people, health_policy, make_policy
):
    make_policy()
    request = ask(health_policy, people)
    grant = gates.Grant(
        request_id=request.pk,
        action=request.action,
        object_type=request.object_type,
        object_id=request.object_id,
        version="an older version",
    )

    with pytest.raises(gates.ApprovalSuperseded), gates.applying(grant):
        policy_note(policy=health_policy, description="sneaked", actor=people["erin"])

    assert description(health_policy) == ""


def test_cancel__by_the_requester__closes_it__by_another__is_forbidden(
    people, health_policy, make_policy
):
    make_policy()
    request = ask(health_policy, people)

    with pytest.raises(Forbidden):
        services.approval_request_cancel(request_id=request.pk, actor=people["ann"])
    cancelled = services.approval_request_cancel(
        request_id=request.pk, actor=people["erin"], comment="not needed"
    )

    assert cancelled.state == "cancelled"
    assert "not needed" in cancelled.outcome
    with pytest.raises(TransitionNotAllowed) as late:
        services.approval_request_approve(request_id=request.pk, actor=people["ann"])
    assert "cancelled" in late.value.message


# --- news ----------------------------------------------------------------------------------------


def test_news__approvers_hear_of_the_request__the_requester_of_its_end(
    people, health_policy, make_policy
):
    from health import services as health_services

    alerting = health_services.health_policy_create(
        name="approvals news", alert_channels=["email"], alert_recipients=["ops@example.com"]
    )
    make_policy(notify_via=alerting)
    request = ask(health_policy, people)

    opened = NotificationOutbox.objects.get(key__startswith=f"approval:{request.pk}:opened")
    assert opened.target == "ops@example.com"
    assert "Approval needed" in opened.subject
    assert set(opened.payload["to"]) == {"ann", "bob", "cat", "ada"}
    assert opened.payload["approval_request"]["change"]["after"] == {"description": "tightened"}

    services.approval_request_approve(request_id=request.pk, actor=people["ann"])

    applied = NotificationOutbox.objects.get(key__startswith=f"approval:{request.pk}:applied")
    assert applied.payload["to"] == ["erin"]
    assert applied.payload["event"] == "approval.applied"


def test_group_approvers__only_the_groups_members_who_may_approve(
    people, health_policy, make_policy
):
    from django.contrib.auth.models import Group

    payments = Group.objects.create(name="payments-owners")
    for name in ("ann", "bob", "erin"):
        people[name].groups.add(payments)
    make_policy(approver_kind="group", approver_group=payments, quorum=2)
    request = ask(health_policy, people)

    # erin asked, and holds no approve permission anyway; cat is not in the group.
    assert set(request.approvers.values_list("username", flat=True)) == {"ann", "bob"}
    with pytest.raises(Forbidden) as outsider:
        services.approval_request_approve(request_id=request.pk, actor=people["cat"])
    assert "not one of the approvers" in outsider.value.message
