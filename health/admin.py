"""Admin of the health app. Writes go through the services, so the audit trail and the
alert lifecycle are the same as from the dashboard and the API."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from canary_site.admin import ReadOnlyAdminMixin
from canary_site.choices import Source
from canary_site.exceptions import CanaryError
from health import services
from health.choices import AlertStatus, NotificationStatus
from health.models import (
    Alert,
    HealthCheck,
    HealthPolicy,
    MetricBucket,
    NotificationOutbox,
    PrometheusQuery,
    PushBatch,
)


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Records written by the loop: looked at, never edited by hand, deleted only by retention
    (``metrics_compact``). Actions that move an alert or a notification on call the services."""


@admin.register(MetricBucket)
class MetricBucketAdmin(ReadOnlyAdmin):
    list_display = ["service", "version", "metric", "start", "resolution", "requests", "errors"]
    list_filter = ["resolution", "metric"]
    search_fields = ["service", "version", "metric"]
    date_hierarchy = "start"


@admin.register(HealthPolicy)
class HealthPolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "alerting_enabled", "alert_cooldown_seconds", "updated_at"]
    search_fields = ["name", "description"]
    list_filter = ["alerting_enabled"]

    def save_model(self, request: HttpRequest, obj: HealthPolicy, form: Any, change: bool) -> None:
        fields = {name: getattr(obj, name) for name in services.POLICY_FIELDS}
        if change:
            document = fields.pop("policy")
            services.health_policy_update(
                policy=obj, actor=request.user, source=Source.UI, document=document, **fields
            )
        else:
            created = services.health_policy_create(actor=request.user, source=Source.UI, **fields)
            obj.pk = created.pk

    def delete_model(self, request: HttpRequest, obj: HealthPolicy) -> None:
        services.health_policy_delete(policy=obj, actor=request.user, source=Source.UI)


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    list_display = ["service", "canary_version", "stable_version", "verdict", "window_end"]
    list_filter = ["verdict", "should_rollback"]
    search_fields = ["service", "canary_version", "message"]
    date_hierarchy = "window_end"
    readonly_fields = [field.name for field in HealthCheck._meta.fields]


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["title", "severity", "status", "raised_at", "escalation_level"]
    list_filter = ["status", "severity"]
    search_fields = ["service", "canary_version", "title"]
    readonly_fields = [field.name for field in Alert._meta.fields]
    actions = ["acknowledge", "resolve"]

    @admin.action(description="Acknowledge the selected open alerts", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        self._each(request, queryset.filter(status=AlertStatus.OPEN), services.alert_acknowledge)

    @admin.action(description="Resolve the selected alerts", permissions=["change"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        self._each(request, queryset.exclude(status=AlertStatus.RESOLVED), services.alert_resolve)

    def _each(self, request: HttpRequest, queryset: QuerySet[Alert], service: Any) -> None:
        done = 0
        for alert in queryset:
            try:
                service(alert=alert, actor=request.user, source=Source.UI)
                done += 1
            except CanaryError as error:
                self.message_user(request, f"{alert}: {error.message}", messages.ERROR)
        self.message_user(request, f"{done} alert(s) updated.")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The actions (asked without an object) need the change permission; the form of one
        # alert stays read-only, since its lifecycle moves only through the services.
        return obj is None and request.user.has_perm("health.change_alert")


@admin.register(NotificationOutbox)
class NotificationOutboxAdmin(ReadOnlyAdmin):
    list_display = ["subject", "channel", "target", "status", "attempts", "next_attempt_at"]
    list_filter = ["status", "channel", "event"]
    search_fields = ["subject", "target", "key"]
    readonly_fields = [field.name for field in NotificationOutbox._meta.fields]
    actions = ["retry"]

    @admin.action(description="Retry the selected failed notifications", permissions=["change"])
    def retry(self, request: HttpRequest, queryset: QuerySet[NotificationOutbox]) -> None:
        rows = list(queryset.filter(status=NotificationStatus.FAILED))
        for row in rows:
            services.notification_retry(outbox_id=row.pk)
        self.message_user(request, f"{len(rows)} notification(s) queued again.")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and request.user.has_perm("health.change_notificationoutbox")


@admin.register(PushBatch)
class PushBatchAdmin(ReadOnlyAdmin):
    list_display = ["key", "samples", "source", "created_by", "received_at"]
    search_fields = ["key"]
    list_filter = ["source"]


@admin.register(PrometheusQuery)
class PrometheusQueryAdmin(admin.ModelAdmin):
    list_display = ["name", "metric", "service", "enabled", "last_pulled_at", "last_error"]
    list_filter = ["enabled"]
    search_fields = ["name", "query", "service"]
    readonly_fields = ["last_pulled_at", "last_error"]
