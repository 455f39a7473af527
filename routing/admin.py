"""Admin of the routing app. Saves and deletes go through the services, so the admin refuses
what the API refuses, bumps the routing version and writes the same audit entries."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from canary_site.admin import (
    GatedAdminMixin,
    ReadOnlyAdminMixin,
    RefusableDeleteMixin,
    drop_needed_permission,
    each_through_service,
)
from canary_site.audit import writer
from canary_site.exceptions import CanaryError
from canary_site.forms import add_error_fields
from routing import services
from routing.forms import RULE_FIELDS, RuleAdminForm, TargetAdminForm
from routing.models import ProviderSync, RoutingRule, RuleTarget, Service, Target


def _admin_writer(request: HttpRequest) -> dict[str, Any]:
    return {**writer(request), "reason": "admin"}


class ServiceActionsMixin(RefusableDeleteMixin):
    """Deletes one by one through the services; a refused delete is reported, not raised."""

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(  # type: ignore[misc]
            objs, request
        )
        # A rule's weights are removed with it by the services; they are never deleted alone.
        drop_needed_permission(perms_needed, RuleTarget)
        return deleted, counts, perms_needed, protected


class TargetInline(admin.TabularInline):
    model = Target
    fields = ["name", "endpoint", "version", "weight", "healthy"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ServiceAdminForm(forms.ModelForm):
    """The provider's settings are checked as the API checks them, each error on its field."""

    class Meta:
        model = Service
        fields = ["name", "stable_version", "description", "provider", "provider_config"]

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        if self.instance.provider_config is None:
            self.instance.provider_config = {}
        try:
            services.provider_config_check(service=self.instance)
        except CanaryError as error:
            add_error_fields(self, error)


_SERVICE_WRITES = ("name", "stable_version", "description", "provider", "provider_config")


@admin.register(Service)
class ServiceAdmin(ServiceActionsMixin, admin.ModelAdmin):
    form = ServiceAdminForm
    list_display = [
        "name",
        "stable_version",
        "provider",
        "routing_version",
        "halted_since",
        "updated_at",
    ]
    list_filter = ["provider"]
    search_fields = ["name", "description"]
    fields = [
        "name",
        "stable_version",
        "description",
        "provider",
        "provider_config",
        "routing_version",
        "halted_since",
        "halted_reason",
        "halted_by",
    ]
    # A halt is a kill switch's (``services.services_halt``), never an edit here.
    readonly_fields = ["routing_version", "halted_since", "halted_reason", "halted_by"]
    inlines = [TargetInline]

    def save_model(self, request: HttpRequest, obj: Service, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in _SERVICE_WRITES}
        data["provider_config"] = data["provider_config"] or {}
        if change:
            saved = services.service_update(service=obj, **data, **_admin_writer(request))
        else:
            saved = services.service_create(**data, **_admin_writer(request))
        obj.pk = saved.pk
        obj.routing_version = saved.routing_version

    def delete_model(self, request: HttpRequest, obj: Service) -> None:
        try:
            services.service_delete(service=obj, **_admin_writer(request))
        except CanaryError as error:
            messages.error(request, error.message)


@admin.register(Target)
class TargetAdmin(GatedAdminMixin, ServiceActionsMixin, admin.ModelAdmin):
    form = TargetAdminForm
    list_display = [
        "name",
        "service",
        "version",
        "endpoint",
        "weight",
        "healthy",
        "draining_since",
        "consecutive_failures",
        "last_checked_at",
    ]
    list_filter = ["healthy", "service"]
    search_fields = ["name", "endpoint", "version", "service__name"]
    actions = ["drain_targets", "undrain_targets"]
    # A drain starts and ends through its actions (and the API), never by editing the moment.
    readonly_fields = [
        "draining_since",
        "consecutive_successes",
        "consecutive_failures",
        "last_checked_at",
        "last_check_result",
    ]

    def save_model(self, request: HttpRequest, obj: Target, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in TargetAdminForm.Meta.fields}
        if change:
            data.pop("service")
            services.target_update(target=obj, **data, **_admin_writer(request))
        else:
            obj.pk = services.target_create(**data, **_admin_writer(request)).pk

    def delete_model(self, request: HttpRequest, obj: Target) -> None:
        try:
            services.target_delete(target=obj, **_admin_writer(request))
        except CanaryError as error:
            messages.error(request, error.message)

    @admin.action(description="Drain (the selected targets)", permissions=["change"])
    def drain_targets(self, request: HttpRequest, queryset: QuerySet[Target]) -> None:
        each_through_service(
            self,
            request,
            queryset,
            lambda target: services.target_drain_start(target=target, **_admin_writer(request)),
            name_of=str,
            label="Draining",
            noun="target",
        )

    @admin.action(description="Put back in rotation (the selected targets)", permissions=["change"])
    def undrain_targets(self, request: HttpRequest, queryset: QuerySet[Target]) -> None:
        each_through_service(
            self,
            request,
            queryset,
            lambda target: services.target_drain_end(target=target, **_admin_writer(request)),
            name_of=str,
            label="Back in rotation",
            noun="target",
        )


class RuleTargetInline(admin.TabularInline):
    """Shown for reference; weights are edited in the Targets field, validated as a whole."""

    model = RuleTarget
    fields = ["target", "weight", "position"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RoutingRule)
class RoutingRuleAdmin(GatedAdminMixin, ServiceActionsMixin, admin.ModelAdmin):
    form = RuleAdminForm
    list_display = ["__str__", "service", "priority", "enabled", "strategy", "updated_at"]
    list_filter = ["enabled", "strategy", "service"]
    search_fields = ["name", "service__name"]
    inlines = [RuleTargetInline]
    fieldsets = [
        (None, {"fields": ["service", "name", "priority", "enabled", "strategy", "strategy_key"]}),
        ("Targets", {"fields": ["targets_text"]}),
        ("Matching", {"fields": ["conditions"]}),
        (
            "Behaviour",
            {"fields": ["affinity", "failover", "circuit_breaker", "rate_limit", "health_check"]},
        ),
    ]

    def save_model(self, request: HttpRequest, obj: RoutingRule, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in RULE_FIELDS}
        targets = form.cleaned_data["targets_text"]
        if change:
            services.rule_update(rule=obj, targets=targets, **data, **_admin_writer(request))
        else:
            rule = services.rule_create(
                service=form.cleaned_data["service"],
                targets=targets,
                **data,
                **_admin_writer(request),
            )
            obj.pk = rule.pk

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The rule's targets were written by the service with the rule itself.
        return None

    def delete_model(self, request: HttpRequest, obj: RoutingRule) -> None:
        services.rule_delete(rule=obj, **_admin_writer(request))


@admin.register(RuleTarget)
class RuleTargetAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: a rule's weights change only as a whole (the rule's Targets field, the weights
    endpoint or the slider), so that they always add up."""

    list_display = ["rule", "target", "weight", "position"]
    list_filter = ["rule__service"]


@admin.register(ProviderSync)
class ProviderSyncAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: written by the control loop each time it applies weights to a service's data
    plane, repairs its drift or fails to reach it."""

    list_display = ["at", "service", "provider", "action", "ok", "drift", "routing_version"]
    list_filter = ["ok", "drift", "provider", "action", "service"]
    search_fields = ["service__name", "detail"]
    date_hierarchy = "at"
