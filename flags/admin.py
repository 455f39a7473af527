"""Admin of the flags app. Saves and actions go through ``flags.services``, so an edit here is
validated, versioned, audited and served everywhere like one from the dashboard or the API."""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from canary_site.admin import EvidenceAdminMixin, RefusableDeleteMixin
from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from flags import services
from flags.models import EvaluationKey, Flag, FlagExposure, Segment

# What the admin form edits: the key, then what flag_update may change, in the same order.
FLAG_FIELDS = ["key", *services.FLAG_EDITABLE_FIELDS]


def _errors_to_form(form: forms.BaseForm, error: CanaryError) -> None:
    if not error.fields:
        form.add_error(None, error.message)
    for path, problems in error.fields.items():
        head = path.split(".")[0].split("[")[0]
        for problem in problems:
            if head in form.fields:
                form.add_error(head, problem if path == head else f"{path}: {problem}")
            else:
                form.add_error(None, f"{path}: {problem}")


class FlagAdminForm(forms.ModelForm):
    """Validates through the services; ``save_model`` then saves through them too."""

    class Meta:
        model = Flag
        fields = FLAG_FIELDS

    def _post_clean(self) -> None:
        # The model's own full_clean would run before the services' checks; they run both.
        pass

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            candidate = construct_instance(self, copy.copy(self.instance), FLAG_FIELDS)
            try:
                services.flag_validate(flag=candidate)
            except CanaryError as error:
                _errors_to_form(self, error)
        return data


@admin.register(Flag)
class FlagAdmin(RefusableDeleteMixin, admin.ModelAdmin):
    form = FlagAdminForm
    list_display = ["key", "name", "status", "flag_type", "value_type", "version", "controlled_by"]
    list_filter = ["status", "flag_type", "value_type", "kill_switch_enabled"]
    search_fields = ["key", "name", "description"]
    readonly_fields = [
        "status",
        "version",
        "controlled_by",
        "killed_reason",
        "killed_at",
        "full_rollout_since",
        "created_at",
        "updated_at",
    ]
    actions = ["enable_flags", "disable_flags", "kill_flags"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(self.readonly_fields)
        return [*fields, "key"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Flag, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data.get(name) for name in FLAG_FIELDS}
        if change:
            data.pop("key")
            flag = services.flag_update(
                flag=obj, changes=data, actor=request.user, source=Source.UI
            )
        else:
            flag = services.flag_create(**data, actor=request.user, source=Source.UI)
        obj.pk = flag.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Flag) -> None:
        try:
            services.flag_delete(flag=obj, actor=request.user, source=Source.UI)
        except CanaryError as error:
            self.message_user(request, error.message, messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Flag]) -> None:
        for flag in queryset:
            try:
                services.flag_delete(flag=flag, actor=request.user, source=Source.UI)
            except CanaryError as error:
                self.message_user(request, error.message, messages.ERROR)

    @admin.action(description="Enable the selected flags", permissions=["change"])
    def enable_flags(self, request: HttpRequest, queryset: QuerySet[Flag]) -> None:
        for flag in queryset:
            services.flag_enable(flag=flag, actor=request.user, source=Source.UI)
        self.message_user(request, f"Enabled {queryset.count()} flag(s).")

    @admin.action(description="Disable the selected flags", permissions=["change"])
    def disable_flags(self, request: HttpRequest, queryset: QuerySet[Flag]) -> None:
        done = 0
        for flag in queryset:
            try:
                services.flag_disable(flag=flag, actor=request.user, source=Source.UI)
                done += 1
            except CanaryError as error:
                self.message_user(request, error.message, messages.WARNING)
        self.message_user(request, f"Disabled {done} flag(s).")

    @admin.action(description="Kill the selected flags (emergency disable)", permissions=["change"])
    def kill_flags(self, request: HttpRequest, queryset: QuerySet[Flag]) -> HttpResponse | None:
        """Asks for the reason on an intermediate page, then kills each flag."""
        reason = (request.POST.get("reason") or "").strip()
        if "apply" in request.POST and reason:
            for flag in queryset:
                services.flag_kill(flag=flag, reason=reason, actor=request.user, source=Source.UI)
            self.message_user(request, f"Killed {queryset.count()} flag(s).", messages.WARNING)
            return None
        return TemplateResponse(
            request,
            "flags/admin_kill.html",
            {
                **self.admin_site.each_context(request),
                "title": "Kill flags",
                "flags": queryset,
                "missing_reason": "apply" in request.POST,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )


class SegmentAdminForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ["key", "name", "description", "constraints"]

    def _post_clean(self) -> None:
        pass

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            candidate = construct_instance(
                self, copy.copy(self.instance), ["key", "name", "description", "constraints"]
            )
            try:
                services.segment_validate(segment=candidate)
            except CanaryError as error:
                _errors_to_form(self, error)
        return data


@admin.register(Segment)
class SegmentAdmin(RefusableDeleteMixin, admin.ModelAdmin):
    form = SegmentAdminForm
    list_display = ["key", "name", "version", "updated_at"]
    search_fields = ["key", "name", "description"]
    readonly_fields = ["version", "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(self.readonly_fields)
        return [*fields, "key"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Segment, form: Any, change: bool) -> None:
        fields = {k: form.cleaned_data.get(k) for k in ("name", "description", "constraints")}
        if change:
            segment = services.segment_update(
                segment=obj, changes=fields, actor=request.user, source=Source.UI
            )
        else:
            segment = services.segment_create(
                key=form.cleaned_data["key"], **fields, actor=request.user, source=Source.UI
            )
        obj.pk = segment.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Segment) -> None:
        try:
            services.segment_delete(segment=obj, actor=request.user, source=Source.UI)
        except CanaryError as error:
            self.message_user(request, error.message, messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Segment]) -> None:
        for segment in queryset:
            self.delete_model(request, segment)


@admin.register(EvaluationKey)
class EvaluationKeyAdmin(admin.ModelAdmin):
    """Keys are created on the evaluation keys page, where the secret is shown once; here they
    are looked at and revoked, for good. The digest is shown to no one."""

    list_display = ["name", "prefix", "rate_limit", "created_by", "created_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    fields = ["name", "prefix", "rate_limit", "created_by", "created_at", "revoked_at"]
    readonly_fields = fields
    actions = ["revoke_keys"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Revoking is the only change, through the action below.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("flags.change_evaluationkey")

    @admin.action(description="Revoke the selected keys", permissions=["revoke"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[EvaluationKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            services.evaluation_key_revoke(key_id=key.pk, actor=request.user, source=Source.UI)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).")


@admin.register(FlagExposure)
class FlagExposureAdmin(EvidenceAdminMixin, admin.ModelAdmin):
    """Read-only: counts come from serving, and only retention deletes them."""

    list_display = ["flag_key", "variant", "bucket_start", "count"]
    list_filter = ["variant"]
    search_fields = ["flag_key"]
    date_hierarchy = "bucket_start"
