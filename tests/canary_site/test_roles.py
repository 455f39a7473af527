"""Each role against each page and API route of the shell, from one table."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ANON, NOROLE, VIEWER, ENGINEER, APPROVER, ADMIN = (
    "anonymous",
    "no-role",
    "viewer",
    "engineer",
    "approver",
    "admin",
)
ROLES = [ANON, NOROLE, VIEWER, ENGINEER, APPROVER, ADMIN]

# (method, path, {role: expected status}); a role not listed expects the row's default.
PAGES = [
    ("/", {ANON: 302, NOROLE: 403}, 200),
    ("/audit/", {ANON: 302, NOROLE: 403}, 200),
    ("/profile/", {ANON: 302, NOROLE: 403}, 200),
    ("/flags/", {ANON: 302, NOROLE: 403}, 200),
    ("/routing/", {ANON: 302, NOROLE: 403}, 200),
    ("/health/", {ANON: 302, NOROLE: 403}, 200),
    ("/deployments/", {ANON: 302, NOROLE: 403}, 200),
    ("/rollback/", {ANON: 302, NOROLE: 403}, 200),
    ("/admin/", {ANON: 302, NOROLE: 302}, 200),
    ("/admin/auth/user/", {ANON: 302, NOROLE: 302, VIEWER: 403, ENGINEER: 403, APPROVER: 403}, 200),
    ("/admin/canary_site/auditentry/", {ANON: 302, NOROLE: 302}, 200),
    ("/api/docs/", {}, 200),
    ("/healthz", {}, 200),
]

API = [
    ("get", "/api/v1/", {ANON: 401, NOROLE: 403}, 200),
    ("get", "/api/v1/me/", {ANON: 401, NOROLE: 403}, 200),
    ("get", "/api/v1/audit/", {ANON: 401, NOROLE: 403}, 200),
    (
        "delete",
        "/api/v1/audit/1/",
        {ANON: 401, NOROLE: 403, VIEWER: 403, ENGINEER: 403, APPROVER: 403},
        405,
    ),
    ("get", "/api/v1/tokens/", {ANON: 401, NOROLE: 403}, 200),
    ("post", "/api/v1/tokens/", {ANON: 401, NOROLE: 403}, 201),
]


@pytest.fixture
def as_role(make_user):
    def login(client, role: str):
        if role == ANON:
            return client
        user = make_user(f"u-{role}", roles=[] if role == NOROLE else [role])
        client.force_login(user)
        return client

    return login


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("path", "overrides", "default"), PAGES, ids=[p[0] for p in PAGES])
def test_page__for_each_role__answers_as_the_role_allows(as_role, role, path, overrides, default):
    client = as_role(Client(), role)

    response = client.get(path)

    assert response.status_code == overrides.get(role, default)
    if response.status_code == 302:
        assert "login" in response["Location"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "overrides", "default"), API, ids=[f"{a[0]} {a[1]}" for a in API]
)
def test_api__for_each_role__answers_as_the_role_allows(
    as_role, role, method, path, overrides, default
):
    client = as_role(APIClient(), role)
    body = {"name": f"ci-{role}"} if method == "post" else None

    response = getattr(client, method)(path, body, format="json")

    expected = overrides.get(role, default)
    assert response.status_code == expected
    if expected >= 400:
        assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_roles__exist_as_groups_with_their_permissions():
    from django.contrib.auth.models import Group

    groups = {
        g.name: set(g.permissions.values_list("codename", flat=True)) for g in Group.objects.all()
    }

    assert set(groups) >= {VIEWER, ENGINEER, APPROVER, ADMIN}
    assert "view_auditentry" in groups[VIEWER]
    assert not any(code.startswith(("add_", "change_", "delete_")) for code in groups[VIEWER])
    assert "change_user" in groups[ADMIN]
    assert "change_user" not in groups[ENGINEER]
