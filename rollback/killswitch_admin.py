"""Admin of the kill switches. A switch is edited as its definition (the guide's vocabulary),
checked by ``kill_switch_validate`` and saved by ``kill_switch_create`` / ``kill_switch_update``;
its name, scope, service, flags and state are read from it or written by the services. Trigger
and Recover are actions that ask for the reason and call the same services as the switch's
page; a delete of an active switch is refused with the service's reason. Activations are
records, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from canary_site.admin import (
    ReadOnlyAdminMixin,
    RefusableDeleteMixin,
    drop_needed_permission,
    each_through_service,
)
from canary_site.choices import Source
from canary_site.exceptions import ValidationFailed
from rollback import services
from rollback.definition_admin import DefinitionAdminForm, DefinitionEditedAdminMixin
from rollback.killswitch_selectors import missing_targets
from rollback.models import KillSwitch, KillSwitchActivation

TRIGGER = "rollback.trigger_killswitch"


class KillSwitchAdminForm(DefinitionAdminForm):
    """A switch is its definition; the rest is read from it by the services."""

    noun = "kill switch"

    class Meta:
        model = KillSwitch
        fields = ["definition"]

    def spec_of(self, definition: Any) -> Any:
        return services.kill_switch_validate(definition=definition)

    def check_spec(self, spec: Any) -> None:
        missing = missing_targets(spec)
        if missing:
            path, message = missing[0]
            raise ValidationFailed(f"{path}: {message}", field="definition")


@admin.register(KillSwitch)
class KillSwitchAdmin(DefinitionEditedAdminMixin, RefusableDeleteMixin, admin.ModelAdmin):
    form = KillSwitchAdminForm
    list_display = ["name", "scope", "service", "priority", "state", "enabled", "updated_at"]
    list_filter = ["state", "scope", "priority", "enabled"]
    search_fields = ["name", "description", "service__name"]
    readonly_fields = [
        "name",
        "description",
        "scope",
        "service",
        "flags",
        "priority",
        "enabled",
        "state",
        "armed_since",
        "arming_reason",
        "recovery_attempts",
        "created_by",
        "created_at",
        "updated_at",
    ]
    actions = ["trigger_switches", "recover_switches"]

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # A switch's activations go with it, by the service; no one deletes one by itself.
        drop_needed_permission(perms_needed, KillSwitchActivation)
        return deleted, counts, perms_needed, protected

    def create_through_service(self, *, definition: Any, **by: Any) -> KillSwitch:
        return services.kill_switch_create(definition=definition, **by)

    def update_through_service(self, *, obj: Any, definition: Any, **by: Any) -> KillSwitch:
        return services.kill_switch_update(switch=obj, definition=definition, **by)

    def delete_through_service(self, *, obj: Any, **by: Any) -> None:
        services.kill_switch_delete(switch=obj, **by)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The service has set the flags.
        pass

    def has_trigger_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(TRIGGER)

    @admin.action(description="Trigger the selected kill switches", permissions=["trigger"])
    def trigger_switches(
        self, request: HttpRequest, queryset: QuerySet[KillSwitch]
    ) -> HttpResponse | None:
        return self._with_reason(
            request,
            queryset,
            action="trigger_switches",
            title="Trigger kill switches",
            warning="Each switch stops what it covers at once, without a sign-off.",
            call=lambda switch, reason: services.kill_switch_trigger(
                switch=switch, reason=reason, actor=request.user, source=Source.UI
            ),
            label="Triggered",
        )

    @admin.action(description="Recover the selected kill switches", permissions=["trigger"])
    def recover_switches(
        self, request: HttpRequest, queryset: QuerySet[KillSwitch]
    ) -> HttpResponse | None:
        return self._with_reason(
            request,
            queryset,
            action="recover_switches",
            title="Recover kill switches",
            warning="Each switch puts back what its activation changed; an approval policy may "
            "ask for a sign-off first.",
            call=lambda switch, reason: services.kill_switch_recover(
                switch_id=switch.pk, reason=reason, actor=request.user, source=Source.UI
            ),
            label="Recovered",
        )

    def _with_reason(
        self,
        request: HttpRequest,
        queryset: QuerySet[KillSwitch],
        *,
        action: str,
        title: str,
        warning: str,
        call: Any,
        label: str,
    ) -> HttpResponse | None:
        """Ask for the reason on an intermediate page, then call the service on each switch
        (a refusal, or a recovery waiting for approval, is a message naming the switch)."""
        reason = (request.POST.get("reason") or "").strip()
        if "apply" in request.POST and reason:
            each_through_service(
                self,
                request,
                queryset,
                lambda switch: call(switch, reason),
                name_of=lambda switch: switch.name,
                label=label,
                noun="switch",
            )
            return None
        return TemplateResponse(
            request,
            "rollback/killswitches/admin_reason.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "warning": warning,
                "switches": queryset,
                "action": action,
                "missing_reason": "apply" in request.POST,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )


@admin.register(KillSwitchActivation)
class KillSwitchActivationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Activations are written by the kill switch services: nothing is edited here."""

    list_display = [
        "pk",
        "switch",
        "trigger",
        "state",
        "activated_by",
        "activated_at",
        "recovered_at",
        "recovered_by",
    ]
    list_filter = ["state", "trigger", "source"]
    search_fields = ["switch__name", "reason", "activated_by__username"]
    fields = [
        "switch",
        "trigger",
        "state",
        "reason",
        "evidence",
        "changes",
        "activated_by",
        "source",
        "activated_at",
        "recovered_at",
        "recovered_by",
        "recovery",
        "recovery_attempt",
    ]
    readonly_fields = fields
