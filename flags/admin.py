"""Admin of the flags app. Saves and actions go through ``flags.services``, so an edit here is
validated, versioned, audited and served everywhere like one from the dashboard or the API."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from canary_site.admin import (
    GatedAdminMixin,
    ReadOnlyAdminMixin,
    RefusableDeleteMixin,
    ServiceValidatedForm,
)
from canary_site.audit import writer
from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from flags import services
from flags.models import EvaluationKey, Flag, FlagExposure, Segment

# What the admin form edits: the key, then what flag_update may change, in the same order.
FLAG_FIELDS = ["key", *services.FLAG_EDITABLE_FIELDS]


class FlagAdminForm(ServiceValidatedForm):
    class Meta:
        model = Flag
        fields = FLAG_FIELDS

    def validate(self, candidate: Flag, data: dict[str, Any]) -> None:
        services.flag_validate(flag=candidate)


class KeyedAdmin(RefusableDeleteMixin, admin.ModelAdmin):
    """A flag or a segment: its key is fixed once saved, and saves and deletes go through the
    services named by ``create``, ``update`` and ``delete``, with the form's fields."""

    def create(self, data: dict[str, Any], **by: Any) -> Any:
        raise NotImplementedError

    def update(self, obj: Any, changes: dict[str, Any], **by: Any) -> Any:
        raise NotImplementedError

    def delete(self, obj: Any, **by: Any) -> None:
        raise NotImplementedError

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(self.readonly_fields)
        return [*fields, "key"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data.get(name) for name in self.form._meta.fields}
        if change:
            data.pop("key")
            saved = self.update(obj, data, **writer(request))
        else:
            saved = self.create(data, **writer(request))
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        try:
            self.delete(obj, **writer(request))
        except CanaryError as error:
            self.message_user(request, error.message, messages.ERROR)


@admin.register(Flag)
class FlagAdmin(GatedAdminMixin, KeyedAdmin):
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

    def create(self, data: dict[str, Any], **by: Any) -> Flag:
        return services.flag_create(**data, **by)

    def update(self, obj: Flag, changes: dict[str, Any], **by: Any) -> Flag:
        return services.flag_update(flag=obj, changes=changes, **by)

    def delete(self, obj: Flag, **by: Any) -> None:
        services.flag_delete(flag=obj, **by)

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


class SegmentAdminForm(ServiceValidatedForm):
    class Meta:
        model = Segment
        fields = ["key", "name", "description", "constraints"]

    def validate(self, candidate: Segment, data: dict[str, Any]) -> None:
        services.segment_validate(segment=candidate)


@admin.register(Segment)
class SegmentAdmin(KeyedAdmin):
    form = SegmentAdminForm
    list_display = ["key", "name", "version", "updated_at"]
    search_fields = ["key", "name", "description"]
    readonly_fields = ["version", "created_at", "updated_at"]

    def create(self, data: dict[str, Any], **by: Any) -> Segment:
        return services.segment_create(**data, **by)

    def update(self, obj: Segment, changes: dict[str, Any], **by: Any) -> Segment:
        return services.segment_update(segment=obj, changes=changes, **by)

    def delete(self, obj: Segment, **by: Any) -> None:
        services.segment_delete(segment=obj, **by)


@admin.register(EvaluationKey)
class EvaluationKeyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Keys are created on the evaluation keys page, where the secret is shown once; here they
    are looked at and revoked, for good. The digest is shown to no one."""

    list_display = ["name", "prefix", "rate_limit", "created_by", "created_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    fields = ["name", "prefix", "rate_limit", "created_by", "created_at", "revoked_at"]
    readonly_fields = fields
    actions = ["revoke_keys"]

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
class FlagExposureAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: counts come from serving, and only retention deletes them."""

    list_display = ["flag_key", "variant", "bucket_start", "count"]
    list_filter = ["variant"]
    search_fields = ["flag_key"]
    date_hierarchy = "bucket_start"
