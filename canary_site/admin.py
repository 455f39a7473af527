"""Admin for the site's own records. The audit trail is read-only: history is not edited."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from canary_site.models import ApiToken, AuditEntry, Heartbeat

# django-auditlog registers its own admin for the entry model; ours adds source, reason and verb.
if admin.site.is_registered(AuditEntry):
    admin.site.unregister(AuditEntry)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["timestamp", "actor", "source", "action_name", "object_repr", "reason"]
    list_filter = ["source", "action", "verb", "content_type"]
    search_fields = ["object_repr", "reason", "actor__username"]
    date_hierarchy = "timestamp"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "user",
        "prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    # Tokens are created by their owners on the profile page, where the secret is shown once.
    readonly_fields = ["user", "name", "prefix", "digest", "created_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "beat_at", "count"]
    readonly_fields = ["name", "beat_at", "count"]
