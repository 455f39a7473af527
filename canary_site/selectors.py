"""Reads of the site's own records: accounts, tokens, the audit trail and heartbeats (the overview's
figures from every app are read in `canary_site.overview`)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone

from canary_site import tokens
from canary_site.models import ApiToken, AuditEntry, Heartbeat


def user_named(username: str, *, error: type[Exception]) -> Any:
    """The account ``username`` names, None for a blank name, and ``error`` (a form's or a
    serializer's ``ValidationError``) saying so when no account has that name."""
    username = username.strip()
    if not username:
        return None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise error(f"No user named '{username}'.")
    return user


def api_token_for_secret(*, secret: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=tokens.digest(secret), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.is_active:
        return None
    return token


def api_tokens_for_user(*, user: Any) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True)


def audit_entries() -> QuerySet[AuditEntry]:
    return AuditEntry.objects.select_related("actor", "content_type").order_by("-timestamp")


def audit_entries_for(*, obj: Any) -> QuerySet[AuditEntry]:
    """The history of one object, newest first (for a detail page's history panel)."""
    from django.contrib.contenttypes.models import ContentType

    return audit_entries().filter(
        content_type=ContentType.objects.get_for_model(obj), object_pk=str(obj.pk)
    )


def heartbeat_last(*, name: str) -> tuple[str, float] | None:
    """Who sent the last heartbeat of ``name`` (empty when it did not say) and how many seconds
    ago; None before the first."""
    row = Heartbeat.objects.filter(name=name).values_list("identity", "beat_at").first()
    if row is None:
        return None
    identity, beat_at = row
    return identity, (timezone.now() - beat_at).total_seconds()
