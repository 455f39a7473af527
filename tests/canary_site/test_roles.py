"""The role rules: which permissions each group holds, and what no group holds. Every route
called as every role is in test_role_matrix.py."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission

from canary_site.roles import EVIDENCE_MODELS, EVIDENCE_PERSON_PERMISSIONS, role_grants

pytestmark = pytest.mark.django_db

VIEWER, ENGINEER, APPROVER, ADMIN = "viewer", "engineer", "approver", "admin"


def _permissions() -> dict[str, set[str]]:
    return {
        group.name: {
            f"{app}.{codename}"
            for app, codename in group.permissions.values_list(
                "content_type__app_label", "codename"
            )
        }
        for group in Group.objects.all()
    }


def test_roles__exist_as_groups_with_their_permissions():
    groups = _permissions()

    assert set(groups) >= {VIEWER, ENGINEER, APPROVER, ADMIN}
    assert "canary_site.view_auditentry" in groups[VIEWER]
    assert not any(
        perm.split(".")[1].startswith(("add_", "change_", "delete_")) for perm in groups[VIEWER]
    )
    assert "auth.change_user" in groups[ADMIN]
    assert "auth.change_user" not in groups[ENGINEER]
    assert {"flags.change_flag", "routing.change_routingrule"} <= groups[ENGINEER]


def test_evidence__no_group_may_delete_it_or_write_it_by_hand():
    groups = _permissions()
    deletes = {f"{app}.delete_{model}" for app, model in EVIDENCE_MODELS}
    writes = deletes | {
        f"{app}.{verb}_{model}" for app, model in EVIDENCE_MODELS for verb in ("add", "change")
    }

    for name, held in groups.items():
        assert not held & deletes, name
        assert held & writes <= EVIDENCE_PERSON_PERMISSIONS, name
    # Every evidence model is a real one, so the rule cannot silently miss it.
    for app, model in EVIDENCE_MODELS:
        assert Permission.objects.filter(
            content_type__app_label=app, codename=f"delete_{model}"
        ).exists(), (app, model)


def test_evidence__engineers_keep_what_they_do_through_the_services():
    engineer = _permissions()[ENGINEER]

    assert engineer >= EVIDENCE_PERSON_PERMISSIONS
    assert "health.view_healthcheck" in engineer
    assert "health.change_healthcheck" not in engineer
    assert "health.delete_metricbucket" not in engineer
    assert "flags.delete_flagexposure" not in engineer


def test_role_grants__the_admin_role_holds_everything_but_evidence_deletes():
    assert role_grants(ADMIN, "auth", "delete_user")
    assert role_grants(ADMIN, "canary_site", "delete_heartbeat")
    assert not role_grants(ADMIN, "canary_site", "delete_auditentry")
    assert not role_grants(ADMIN, "deployments", "delete_deploymentevent")
    assert not role_grants(ADMIN, "health", "change_healthcheck")
    assert role_grants(ADMIN, "health", "change_alert")
