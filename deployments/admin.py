"""Admin of the deployments app. Creating, changing, deleting and every lifecycle action go
through the services, so the admin refuses what the API refuses and writes the same events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from canary_site.admin import GatedAdminMixin, RefusableDeleteMixin, each_through_service
from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from deployments import services
from deployments.choices import DeploymentAction
from deployments.lifecycle import PERSON_ACTIONS, Action
from deployments.models import Deployment, DeploymentEvent, Phase


class PhaseInline(admin.TabularInline):
    model = Phase
    fields = [
        "order",
        "name",
        "traffic_percentage",
        "duration_ms",
        "status",
        "started_at",
        "ended_at",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventInline(admin.TabularInline):
    model = DeploymentEvent
    fields = ["at", "kind", "from_status", "to_status", "phase", "actor", "source", "reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-at", "-id"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeploymentCreateForm(forms.ModelForm):
    config_text = forms.CharField(
        label="Configuration (YAML or JSON)",
        widget=forms.Textarea(attrs={"rows": 20, "cols": 90}),
        help_text="The guide's camelCase configuration.",
    )

    class Meta:
        model = Deployment
        fields = ["health_policy", "flags"]


def _lifecycle_action(verb: Action) -> Callable[..., None]:
    label = DeploymentAction(verb).label

    def run(modeladmin: DeploymentAdmin, request: HttpRequest, queryset: QuerySet) -> None:
        each_through_service(
            modeladmin,
            request,
            queryset,
            lambda deployment: services.deployment_transition(
                deployment_id=deployment.pk,
                action=verb,
                actor=request.user,
                source=Source.UI,
                reason=f"admin: {label.lower()}",
            ),
            name_of=str,
            label=label,
            noun="deployment",
        )

    run.__name__ = f"{verb}_deployments"
    # A lifecycle verb needs the change permission, as its API twin does.
    return admin.action(description=f"{label} (the selected deployments)", permissions=["change"])(
        run
    )


@admin.register(Deployment)
class DeploymentAdmin(GatedAdminMixin, RefusableDeleteMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "service",
        "canary_version",
        "stable_version",
        "status",
        "current_phase",
        "canary_share",
        "created_at",
    ]
    list_filter = ["status", "traffic_shift_strategy"]
    search_fields = ["name", "service__name", "canary_version"]
    inlines = [PhaseInline, EventInline]
    # The verbs of the dashboard and the API; each reason names the admin, so a promotion
    # without held criteria says whose decision it was.
    actions = [_lifecycle_action(verb) for verb in PERSON_ACTIONS]

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = DeploymentCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        # Started deployments change only through their lifecycle; the API edits pending ones.
        return [field.name for field in Deployment._meta.fields] + ["flags"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["config_text", "health_policy", "flags"]
        return super().get_fields(request, obj)

    def save_model(self, request: HttpRequest, obj: Deployment, form: Any, change: bool) -> None:
        if change:
            return
        created = services.deployment_create(
            config=form.cleaned_data["config_text"],
            health_policy=form.cleaned_data.get("health_policy"),
            flags=form.cleaned_data.get("flags") or [],
            actor=request.user,
            source=Source.UI,
            reason="admin",
        )
        obj.pk = created.pk

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The service has written the phases and linked the flags already.
        return

    def delete_model(self, request: HttpRequest, obj: Deployment) -> None:
        try:
            services.deployment_delete(
                deployment_id=obj.pk, actor=request.user, source=Source.UI, reason="admin"
            )
        except CanaryError as error:
            self.message_user(request, f"{obj}: {error.message}", messages.ERROR)
