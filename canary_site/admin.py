"""Admin for the site's own records, accounts and roles.

The admin never shows more than a role may do. The audit trail is read-only and no person
deletes it. An API token is listed to its owner, and to superusers by name, owner and dates;
its digest is shown to no one, and revocation, which is final, is its only change. Roles are
defined in code (``canary_site.roles``), so their groups are read-only here. Only a superuser
edits a superuser or grants superuser powers.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from canary_site import services
from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from canary_site.models import ApiToken, AuditEntry, Heartbeat


class EvidenceAdminMixin:
    """For records that only the control loop writes and only retention deletes: no person adds,
    edits or deletes one here. Superusers hold every permission, so the admin has to refuse
    itself. A subclass may allow the change permission for actions that call a service."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RefusableDeleteMixin:
    """For admins whose deletes go through a service that may refuse (a segment still in use, a
    deployment that has run): ``delete_model`` reports the refusal as an error message, and
    the page then returns to the object instead of announcing a delete that did not happen."""

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> Any:
        model = self.model  # type: ignore[attr-defined]
        if model._default_manager.filter(pk=obj_id).exists():
            opts = model._meta
            return HttpResponseRedirect(
                reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_change",
                    args=[obj_id],
                    current_app=self.admin_site.name,  # type: ignore[attr-defined]
                )
            )
        return super().response_delete(request, obj_display, obj_id)  # type: ignore[misc]


def drop_needed_permission(perms_needed: set[str], model: Any) -> None:
    """Leave ``model`` out of what a delete needs permission for, when the service behind the
    delete removes its rows itself (a rule's weights, a person's tokens)."""
    perms_needed.discard(str(model._meta.verbose_name))


# django-auditlog registers its own admin for the entry model; ours adds source, reason and verb.
if admin.site.is_registered(AuditEntry):
    admin.site.unregister(AuditEntry)


@admin.register(AuditEntry)
class AuditEntryAdmin(EvidenceAdminMixin, admin.ModelAdmin):
    list_display = ["timestamp", "actor", "source", "action_name", "object_repr", "reason"]
    list_filter = ["source", "action", "verb", "content_type"]
    search_fields = ["object_repr", "reason", "actor__username"]
    date_hierarchy = "timestamp"


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their owners on the profile page, where the secret is shown once;
    here they are looked at and revoked."""

    list_display = [
        "name",
        "user",
        "prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "user__username", "prefix"]
    # The digest is left out on purpose: it is all an attacker needs to test guesses offline.
    fields = ["name", "user", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    actions = ["revoke_tokens"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        tokens = super().get_queryset(request).select_related("user")
        if request.user.is_superuser:
            return tokens
        return tokens.filter(user=request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A revoked token stays on record; revoking is how a token is ended.
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        # The queryset already holds only the tokens this person may see, hence revoke.
        return self.has_view_permission(request)

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            try:
                services.api_token_revoke(
                    user=token.user, token_id=token.pk, actor=request.user, source=Source.UI
                )
            except CanaryError as error:
                self.message_user(request, f"{token}: {error.message}", messages.ERROR)
            else:
                revoked += 1
        self.message_user(request, f"Revoked {revoked} token(s).")


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    """Written by the control loop only; a person may clear a stale one."""

    list_display = ["name", "beat_at", "count"]
    readonly_fields = ["name", "beat_at", "count"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(Group)
class RoleGroupAdmin(DjangoGroupAdmin):
    """The role groups, read-only: their permissions are recomputed from the rules in
    ``canary_site.roles`` after every migrate, so an edit here would not last."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class AccountAdmin(DjangoUserAdmin):
    """Accounts. An admin who is not a superuser may not make anyone a superuser, hand out
    single permissions past the roles, or change a superuser's account (its password
    included): that would be a way to become one."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["is_superuser", "user_permissions"]
        return fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # An account's tokens go with it; no one deletes a token by itself.
        drop_needed_permission(perms_needed, ApiToken)
        return deleted, counts, perms_needed, protected
