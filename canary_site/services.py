"""Writes of the site's own records: API tokens, heartbeats and role assignment."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from canary_site import tokens
from canary_site.audit import audit_context
from canary_site.choices import Role, Source
from canary_site.exceptions import NotFound, ValidationFailed
from canary_site.models import ApiToken, Heartbeat

TOKEN_PREFIX = "cnry"
# Touching last_used_at on every request would be a write per request; once a minute is plenty.
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


def api_token_create(
    *,
    user: Any,
    name: str,
    expires_at: datetime | None = None,
    source: str = Source.UI,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret, which is never stored."""
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("A token needs a name.", field="name")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("The expiry must be in the future.", field="expires_at")
    if ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).exists():
        raise ValidationFailed(f"You already have an active token named '{name}'.", field="name")
    secret = tokens.new_secret(TOKEN_PREFIX)
    token = ApiToken(
        user=user,
        name=name,
        prefix=secret[: len(TOKEN_PREFIX) + 5],
        digest=tokens.digest(secret),
        expires_at=expires_at,
    )
    token.full_clean()
    with audit_context(actor=user, source=source, verb="create"):
        token.save()
    return token, secret


def api_token_revoke(
    *, user: Any, token_id: int, actor: Any = None, source: str = Source.UI
) -> ApiToken:
    """Revoke ``user``'s active token ``token_id``, for good: nothing brings a revoked token
    back. ``actor`` is who did it when that is not the owner (a superuser in the admin)."""
    with transaction.atomic():
        token = (
            ApiToken.objects.select_for_update()
            .filter(user=user, pk=token_id, revoked_at__isnull=True)
            .first()
        )
        if token is None:
            raise NotFound("No active token with that id.")
        token.revoked_at = timezone.now()
        with audit_context(actor=actor or user, source=source, verb="revoke"):
            token.save(update_fields=["revoked_at"])
    return token


def api_token_touch(*, token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > TOKEN_TOUCH_INTERVAL:
        # A queryset update skips the audit trail on purpose: use is not a change.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


def heartbeat_record(*, name: str, identity: str = "") -> Heartbeat:
    """Note that ``name`` (beat, a worker) is alive, and which process of it (``identity``, as
    ``hostname:pid``) sent the news; idempotent apart from the counter."""
    now = timezone.now()
    with transaction.atomic():
        updated = Heartbeat.objects.filter(name=name).update(
            beat_at=now, count=F("count") + 1, identity=identity
        )
        if not updated:
            Heartbeat.objects.get_or_create(
                name=name, defaults={"beat_at": now, "count": 1, "identity": identity}
            )
    return Heartbeat.objects.get(name=name)


def user_set_roles(*, user: Any, roles: list[str]) -> None:
    """Give ``user`` exactly ``roles``. Any role may open the admin, which shows only what the
    role's permissions allow."""
    unknown = sorted(set(roles) - set(Role.values))
    if unknown:
        raise ValidationFailed(f"Unknown role(s): {', '.join(unknown)}.", field="roles")
    user.groups.set(Group.objects.filter(name__in=roles))
    user.is_staff = bool(roles) or user.is_superuser
    user.save(update_fields=["is_staff"])
    if hasattr(user, "_canary_roles"):
        del user._canary_roles
