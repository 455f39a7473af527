"""The site's own records: the audit trail, personal API tokens and control-loop heartbeats."""

from __future__ import annotations

from typing import Any

from auditlog.models import AbstractLogEntry
from django.conf import settings
from django.db import models
from django.utils import timezone

from canary_site import audit
from canary_site.choices import Source
from canary_site.exceptions import TransitionNotAllowed


def person_field(related_name: str = "+", **options: Any) -> models.ForeignKey:
    """The person who made, owns or settled a row. Deleting their account empties the link and
    keeps the row: what they did outlives them."""
    return models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name=related_name,
        **options,
    )


class AuditEntry(AbstractLogEntry):
    """One create, update, delete or action on a domain object, with who, where from and why.

    django-auditlog fills in the object, the diff and the actor; ``source``, ``reason`` and
    ``verb`` come from :func:`canary_site.audit.audit_context` around the write.
    """

    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SYSTEM)
    reason = models.TextField(blank=True, default="")
    # The action that caused the change ("kill", "promote"); blank for a plain edit.
    verb = models.CharField(max_length=64, blank=True, default="", db_index=True)

    class Meta(AbstractLogEntry.Meta):
        swappable = "AUDITLOG_LOGENTRY_MODEL"
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["content_type", "object_pk", "-timestamp"])]

    @property
    def action_name(self) -> str:
        return self.verb or self.get_action_display()


class ApiTokenQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        # A bulk update is a path round save() too: it may revoke, never un-revoke.
        if "revoked_at" in kwargs and self.filter(revoked_at__isnull=False).exists():
            raise TransitionNotAllowed(
                "A revoked token stays revoked.", field="revoked_at", code="revoked"
            )
        return super().update(**kwargs)


class ApiToken(models.Model):
    """A personal token for automation. Only a SHA-256 digest is stored; the token is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    # The first characters let a person recognise a token in a list without storing it.
    prefix = models.CharField(max_length=12, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=models.Q(revoked_at__isnull=True),
                name="unique_active_token_name_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Revocation is final whichever path writes the row (a service, the admin, a shell): a
        # leaked secret must never work again.
        if self.pk is not None:
            stored = (
                ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=False)
                .values_list("revoked_at", flat=True)
                .first()
            )
            if stored is not None and self.revoked_at != stored:
                raise TransitionNotAllowed(
                    "A revoked token stays revoked.", field="revoked_at", code="revoked"
                )
        super().save(*args, **kwargs)

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class Heartbeat(models.Model):
    """The last time a recurring process showed life, so the dashboard can say it is running."""

    name = models.CharField(max_length=64, unique=True)
    beat_at = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)
    # Who sent the last one (``hostname:pid`` of the beat that ticks), empty when not known.
    identity = models.CharField(max_length=300, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.name} @ {self.beat_at:%Y-%m-%d %H:%M:%S}"


audit.register(ApiToken, exclude_fields=["digest", "last_used_at"])
