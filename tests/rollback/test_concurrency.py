"""Approvals at the same moment apply the change exactly once. Threads use their own database
connections: real row locks on PostgreSQL (SQLite's IMMEDIATE transactions queue the writers)."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType

from canary_site import gates
from canary_site.exceptions import TransitionNotAllowed
from canary_site.models import AuditEntry
from health.models import HealthPolicy
from rollback import services
from rollback.models import ApprovalDecision, ApprovalRequest
from tests.deployments.test_concurrency import in_parallel
from tests.rollback.gated import policy_note

pytestmark = pytest.mark.django_db(transaction=True)


def opened(people, health_policy) -> ApprovalRequest:
    with pytest.raises(gates.ApprovalRequired) as raised:
        policy_note(policy=health_policy, description="once", actor=people["erin"])
    return ApprovalRequest.objects.get(pk=raised.value.request_id)


def description_writes(health_policy) -> int:
    return AuditEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(HealthPolicy),
        object_pk=str(health_policy.pk),
        changes__icontains="once",
    ).count()


def approve(request_id, user):
    return lambda: services.approval_request_approve(request_id=request_id, actor=user)


def test_two_approvers_at_once__quorum_one__the_change_is_applied_once(
    people, health_policy, make_policy
):
    make_policy(quorum=1)
    request = opened(people, health_policy)

    results = in_parallel(approve(request.pk, people["ann"]), approve(request.pk, people["bob"]))

    winners = [r for r in results if isinstance(r, ApprovalRequest)]
    losers = [r for r in results if isinstance(r, TransitionNotAllowed)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert winners[0].state == "applied"
    assert "has been applied already" in losers[0].message
    assert ApprovalRequest.objects.get(pk=request.pk).state == "applied"
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    assert description_writes(health_policy) == 1


def test_three_approvers_at_once__quorum_two__applied_once_by_the_second(
    people, health_policy, make_policy
):
    make_policy(quorum=2)
    request = opened(people, health_policy)

    results = in_parallel(
        approve(request.pk, people["ann"]),
        approve(request.pk, people["bob"]),
        approve(request.pk, people["cat"]),
    )

    states = sorted(r.state for r in results if isinstance(r, ApprovalRequest))
    refused = [r for r in results if isinstance(r, TransitionNotAllowed)]
    assert states == ["applied", "pending"], results
    assert len(refused) == 1 and refused[0].code == "applied"
    assert ApprovalDecision.objects.filter(request=request).count() == 2
    assert description_writes(health_policy) == 1
    assert HealthPolicy.objects.get(pk=health_policy.pk).description == "once"
