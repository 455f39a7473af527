"""Admin for the site's own records, accounts and roles.

The admin never shows more than a role may do. The audit trail is read-only and no person
deletes it. An API token is listed to its owner, and to superusers by name, owner and dates;
its digest is shown to no one, and revocation, which is final, is its only change. Roles are
defined in code (``canary_site.roles``), so their groups are read-only here. Only a superuser
edits a superuser or grants superuser powers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from canary_site import services
from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from canary_site.forms import add_error_fields
from canary_site.gates import ApprovalRequired
from canary_site.models import ApiToken, AuditEntry, Heartbeat


class ReadOnlyAdminMixin:
    """For records that no person adds, edits or deletes here: what only the control loop writes
    and only retention deletes, and what changes only through its own page or action (a token's
    revocation, a rule's weights). Superusers hold every permission, so the admin has to refuse
    itself. A subclass may allow the change permission for actions that call a service."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def each_through_service(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    call: Callable[[Any], Any],
    *,
    name_of: Callable[[Any], str],
    label: str,
    noun: str,
) -> None:
    """A bulk action: ``call`` the service on each selected row; a refusal is told with the
    row's name and does not stop the rest, and the rows done are counted in one message."""
    done = 0
    for obj in queryset:
        try:
            call(obj)
        except CanaryError as error:
            modeladmin.message_user(request, f"{name_of(obj)}: {error.message}", messages.ERROR)
        else:
            done += 1
    if done:
        modeladmin.message_user(request, f"{label}: {done} {noun}(s).", messages.SUCCESS)


class ServiceValidatedForm(forms.ModelForm):
    """An admin form that validates through the services; ``save_model`` then saves through
    them too. A subclass says in ``validate`` which service check to run on the unsaved
    candidate (the instance with ``candidate_fields`` set from the form, by default all of
    ``Meta.fields``); its errors go next to their fields."""

    candidate_fields: Sequence[str] | None = None

    def validate(self, candidate: Any, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def _post_clean(self) -> None:
        # The model's own full_clean would run before the services' checks; they run both.
        pass

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            fields = self.candidate_fields or self._meta.fields
            candidate = construct_instance(self, copy.copy(self.instance), fields)
            try:
                self.validate(candidate, data)
            except CanaryError as error:
                add_error_fields(self, error)
        return data


class RefusableDeleteMixin:
    """For admins whose deletes go through a service that may refuse (a segment still in use, a
    deployment that has run): ``delete_model`` reports the refusal as an error message, and
    the page then returns to the object instead of announcing a delete that did not happen.
    A bulk delete goes one by one through ``delete_model``, so each refusal is reported."""

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            self.delete_model(request, obj)  # type: ignore[attr-defined]

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


class GatedAdminMixin:
    """For admins whose saves, deletes and actions call gated services (`canary_site.gates`):
    a change that waits for a sign-off is not an error. The form's save and the delete are
    caught inside the admin's transaction, which then commits the approval request and nothing
    else, and an action stops at the first change that waits; each answers with a message
    naming the request and goes to its page."""

    def _changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._changeform_view(request, *args, **kwargs)  # type: ignore[misc]
        except ApprovalRequired as waiting:
            return self._waiting(request, waiting)

    def _delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._delete_view(request, *args, **kwargs)  # type: ignore[misc]
        except ApprovalRequired as waiting:
            return self._waiting(request, waiting)

    def response_action(self, request: HttpRequest, queryset: QuerySet) -> Any:
        try:
            return super().response_action(request, queryset)  # type: ignore[misc]
        except ApprovalRequired as waiting:
            return self._waiting(request, waiting)

    def _waiting(self, request: HttpRequest, waiting: ApprovalRequired) -> HttpResponseRedirect:
        self.message_user(request, waiting.message, messages.WARNING)  # type: ignore[attr-defined]
        return HttpResponseRedirect(waiting.summary.get("page") or request.get_full_path())


def drop_needed_permission(perms_needed: set[str], model: Any) -> None:
    """Leave ``model`` out of what a delete needs permission for, when the service behind the
    delete removes its rows itself (a rule's weights, a person's tokens)."""
    perms_needed.discard(str(model._meta.verbose_name))


# django-auditlog registers its own admin for the entry model; ours adds source, reason and verb.
if admin.site.is_registered(AuditEntry):
    admin.site.unregister(AuditEntry)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["timestamp", "actor", "source", "action_name", "object_repr", "reason"]
    list_filter = ["source", "action", "verb", "content_type"]
    search_fields = ["object_repr", "reason", "actor__username"]
    date_hierarchy = "timestamp"


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Tokens are created by their owners on the profile page, where the secret is shown once;
    here they are looked at and revoked. A revoked token stays on record: revoking is how a
    token is ended, so none is deleted."""

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

    list_display = ["name", "beat_at", "count", "identity"]
    readonly_fields = ["name", "beat_at", "count", "identity"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(Group)
class RoleGroupAdmin(ReadOnlyAdminMixin, DjangoGroupAdmin):
    """The role groups, read-only: their permissions are recomputed from the rules in
    ``canary_site.roles`` after every migrate, so an edit here would not last."""


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
