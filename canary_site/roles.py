"""Roles: Django groups with the permissions DESIGN.md gives them, and the checks that use them.

- viewer: reads everything.
- engineer: changes flags, routing, health policies and deployments; requests rollbacks and
  triggers kill switches (the ``request_*`` and ``trigger_*`` permissions of the rollback app).
- approver: reads everything and approves or rejects (``approve_*`` permissions).
- admin: everything, except what no person does (below).

Evidence (the audit trail, deployment timelines, metric buckets, health checks, alerts, flag
exposures, and the records of pushes and notifications) is deleted only by retention tasks and
never written by hand, so no role holds its ``delete_`` permission, nor any other write but the
few in ``EVIDENCE_PERSON_PERMISSIONS``. The admins of those models refuse deletes to superusers
too.

The groups are created by a migration; their permissions are recomputed after every migrate,
so a model added by a later migration is covered by the same rules without a data migration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.mixins import AccessMixin
from django.db.models.signals import post_migrate
from rest_framework import permissions

from canary_site.choices import Role

ENGINEER_APPS = frozenset({"flags", "routing", "health", "deployments"})
ENGINEER_ACTION_PREFIXES = (
    "request_",
    "trigger_",
    "add_rollbackrequest",
    # Rollback plans are the engineers' to write; a rollback is theirs to ask for and cancel.
    "add_rollbackplan",
    "change_rollbackplan",
    "delete_rollbackplan",
    "add_rollbackexecution",
    "change_rollbackexecution",
    "add_killswitch",
    "change_killswitch",
    "delete_killswitch",
)
APPROVER_ACTION_PREFIXES = ("approve_",)
DOMAIN_APPS = frozenset({"canary_site", "flags", "routing", "health", "deployments", "rollback"})
EVIDENCE_MODELS = frozenset(
    {
        ("canary_site", "auditentry"),
        ("deployments", "deploymentevent"),
        ("flags", "flagexposure"),
        ("health", "alert"),
        ("health", "healthcheck"),
        ("health", "metricbucket"),
        ("health", "notificationoutbox"),
        ("health", "pushbatch"),
    }
)
# All that people do to evidence, and only through the services: push metrics, ask for a check
# now, acknowledge and resolve alerts, retry a failed notification.
EVIDENCE_PERSON_PERMISSIONS = frozenset(
    {
        "health.add_metricbucket",
        "health.add_healthcheck",
        "health.change_alert",
        "health.change_notificationoutbox",
    }
)


def is_evidence(app_label: str, model_name: str) -> bool:
    """Rows only the control loop writes and only retention deletes."""
    return (app_label, model_name) in EVIDENCE_MODELS


def _person_may(app_label: str, codename: str) -> bool:
    """False for the permissions no role holds: deleting evidence, or writing it by hand."""
    verb, _, model_name = codename.partition("_")
    if verb == "view" or not is_evidence(app_label, model_name):
        return True
    return f"{app_label}.{codename}" in EVIDENCE_PERSON_PERMISSIONS


def role_grants(role: str, app_label: str, codename: str) -> bool:
    """Whether ``role`` holds the permission ``app_label.codename``."""
    if app_label not in DOMAIN_APPS and role != Role.ADMIN:
        return False
    if not _person_may(app_label, codename):
        return False
    if role == Role.ADMIN:
        return True
    if codename.startswith("view_"):
        return True
    if role == Role.ENGINEER:
        if app_label in ENGINEER_APPS:
            return not codename.startswith(APPROVER_ACTION_PREFIXES)
        return app_label == "rollback" and codename.startswith(ENGINEER_ACTION_PREFIXES)
    if role == Role.APPROVER:
        return codename.startswith(APPROVER_ACTION_PREFIXES)
    return False


def sync_role_permissions(**_: Any) -> None:
    """Create the role groups if missing and give each exactly the permissions its rules grant."""
    from django.contrib.auth.models import Group, Permission

    permissions_by_role: dict[str, list[int]] = {role: [] for role in Role.values}
    for pk, app_label, codename in Permission.objects.values_list(
        "pk", "content_type__app_label", "codename"
    ):
        for role in Role.values:
            if role_grants(role, app_label, codename):
                permissions_by_role[role].append(pk)
    for role, pks in permissions_by_role.items():
        group, _created = Group.objects.get_or_create(name=role)
        group.permissions.set(pks)


def connect_signals() -> None:
    post_migrate.connect(sync_role_permissions, dispatch_uid="canary_sync_role_permissions")


def user_roles(user: Any) -> list[str]:
    """The roles a user holds, strongest first; superusers are admins."""
    if not getattr(user, "is_authenticated", False):
        return []
    cached = getattr(user, "_canary_roles", None)
    if cached is None:
        names = set(user.groups.values_list("name", flat=True))
        if user.is_superuser:
            names.add(Role.ADMIN)
        order = [Role.ADMIN, Role.APPROVER, Role.ENGINEER, Role.VIEWER]
        cached = [str(role) for role in order if role in names]
        user._canary_roles = cached
    return cached


def has_any_role(user: Any, roles: Iterable[str] | None = None) -> bool:
    """True when the user holds one of ``roles`` (any role at all when ``roles`` is None)."""
    held = user_roles(user)
    if roles is None:
        return bool(held)
    return Role.ADMIN in held or any(role in held for role in roles)


class RoleRequiredMixin(AccessMixin):
    """For dashboard views: sign-in first, then a role (any role, or one of ``required_roles``).

    ``required_permission`` adds a Django permission check, which is what roles grant.
    """

    required_roles: Iterable[str] | None = None
    required_permission: str | None = None

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        if not has_any_role(request.user, self.required_roles):
            return self.handle_no_permission()
        if self.required_permission and not request.user.has_perm(self.required_permission):
            return self.handle_no_permission()
        return super().dispatch(request, *args, **kwargs)


class HasRolePermissions(permissions.BasePermission):
    """The default API permission: signed in, holds a role, and, for model views, holds the
    model permission the method needs (view for reads; add, change, delete for writes).

    Views with their own verbs set ``required_permission`` on the action.
    """

    message = "Your role does not allow this."
    perms_map = {
        "GET": "view",
        "HEAD": "view",
        "OPTIONS": "view",
        "POST": "add",
        "PUT": "change",
        "PATCH": "change",
        "DELETE": "delete",
    }

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and has_any_role(user)):
            return False
        if not hasattr(view, request.method.lower()):
            # The view answers 405 to a method it does not route, whatever the role; a 403
            # would say the verb exists and the role lacks it.
            return True
        action = getattr(view, "action", None)
        action_handler = getattr(view, action, None) if action else None
        required = getattr(action_handler, "required_permission", None) or getattr(
            view, "required_permission", None
        )
        if required:
            return user.has_perm(required)
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return request.method in permissions.SAFE_METHODS or has_any_role(
                user, getattr(view, "write_roles", [Role.ENGINEER])
            )
        meta = queryset.model._meta
        verb = self.perms_map.get(request.method, "change")
        return user.has_perm(f"{meta.app_label}.{verb}_{meta.model_name}")
