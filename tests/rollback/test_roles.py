"""What each role may do with approvals: the approver decides, the engineer asks, the admin
manages the policies, and every role reads."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

POLICY_WRITES = (
    "rollback.add_approvalpolicy",
    "rollback.change_approvalpolicy",
    "rollback.delete_approvalpolicy",
)


@pytest.mark.parametrize(
    ("who", "approves", "manages"),
    [("vic", False, False), ("erin", False, False), ("ann", True, False), ("ada", True, True)],
)
def test_roles__hold_the_approval_permissions_they_need(people, who, approves, manages):
    user = people[who]

    assert user.has_perm("rollback.view_approvalrequest")
    assert user.has_perm("rollback.view_approvalpolicy")
    assert user.has_perm("rollback.approve_approvalrequest") is approves
    assert all(user.has_perm(name) for name in POLICY_WRITES) is manages
