"""Health policies: create, update and delete, the policy and alerting dicts validated by the pure
engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models, transaction

from canary_site.audit import audit_context
from canary_site.choices import Source
from canary_site.exceptions import TransitionNotAllowed, ValidationFailed, full_clean
from health import alerting, analysis
from health.models import HealthPolicy

# The fields a person writes, in the order the API shows them.
POLICY_FIELDS = (
    "name",
    "description",
    "policy",
    "alerting_enabled",
    "alert_channels",
    "alert_recipients",
    "slack_webhook_url",
    "webhook_url",
    "alert_cooldown_seconds",
    "escalation_rules",
)


def health_policy_create(
    *,
    name: str,
    policy: dict[str, Any] | None = None,
    description: str = "",
    alerting_enabled: bool = True,
    alert_channels: Sequence[str] | None = None,
    alert_recipients: Sequence[str] | None = None,
    slack_webhook_url: str = "",
    webhook_url: str = "",
    alert_cooldown_seconds: int = 300,
    escalation_rules: Sequence[dict[str, Any]] | None = None,
    actor: Any = None,
    source: str = Source.SYSTEM,
) -> HealthPolicy:
    """Create a policy; the policy dict is validated by `analysis.build_policy` and stored in
    its canonical form."""
    row = HealthPolicy(
        name=(name or "").strip(),
        description=description or "",
        alerting_enabled=alerting_enabled,
        slack_webhook_url=slack_webhook_url or "",
        webhook_url=webhook_url or "",
        alert_cooldown_seconds=alert_cooldown_seconds,
    )
    return _save_policy(
        row,
        actor,
        source,
        "create",
        policy=policy or {},
        alert_channels=alert_channels,
        alert_recipients=alert_recipients,
        escalation_rules=escalation_rules,
    )


def health_policy_update(
    *,
    policy: HealthPolicy,
    actor: Any = None,
    source: str = Source.SYSTEM,
    document: Any = None,
    **changes: Any,
) -> HealthPolicy:
    """Change some of a policy's fields (the same names as `health_policy_create`). The new
    policy document is ``document``: ``policy`` is the row itself."""
    if document is not None:
        changes["policy"] = document
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise ValidationFailed("Unknown field.", field=unknown[0])
    for name in ("name", "description", "alerting_enabled", "slack_webhook_url", "webhook_url"):
        if name in changes:
            value = changes[name]
            setattr(policy, name, value.strip() if isinstance(value, str) else value)
    if "alert_cooldown_seconds" in changes:
        policy.alert_cooldown_seconds = changes["alert_cooldown_seconds"]
    return _save_policy(
        policy,
        actor,
        source,
        "update",
        policy=changes.get("policy", policy.policy),
        alert_channels=changes.get("alert_channels", policy.alert_channels),
        alert_recipients=changes.get("alert_recipients", policy.alert_recipients),
        escalation_rules=changes.get("escalation_rules", policy.escalation_rules),
    )


def health_policy_delete(
    *, policy: HealthPolicy, actor: Any = None, source: str = Source.SYSTEM
) -> None:
    """Delete a policy; its checks and alerts stay, with the policy's name on the checks.
    Refused while something that must keep it still points at it: a protecting foreign key, or
    a higher app's receiver of ``pre_delete`` (a deployment under way that the policy judges)."""
    try:
        with transaction.atomic(), audit_context(actor=actor, source=source, verb="delete"):
            policy.delete()
    except (models.ProtectedError, models.RestrictedError) as error:
        held = getattr(error, "protected_objects", None) or getattr(error, "restricted_objects", ())
        users = sorted({str(obj) for obj in held if obj is not None})[:5]
        raise TransitionNotAllowed(
            f"The policy is still in use by {', '.join(users)}.", field="policy"
        ) from error


def _save_policy(
    row: HealthPolicy,
    actor: Any,
    source: str,
    verb: str,
    *,
    policy: Any,
    alert_channels: Any,
    alert_recipients: Any,
    escalation_rules: Any,
) -> HealthPolicy:
    """Store the policy and alerting dicts in their canonical forms, check the row and save it."""
    try:
        row.policy = analysis.build_policy(policy).to_dict()
    except analysis.InvalidPolicy as error:
        raise ValidationFailed(error.message, field=f"policy.{error.field}") from error
    try:
        config = alerting.validate_alerting(
            channels=alert_channels, recipients=alert_recipients, escalation_rules=escalation_rules
        )
    except alerting.InvalidAlerting as error:
        raise ValidationFailed(error.message, field=error.field) from error
    row.alert_channels = config.channels
    row.alert_recipients = config.recipients
    row.escalation_rules = config.escalation_rules
    full_clean(row)
    with audit_context(actor=actor, source=source, verb=verb):
        row.save()
    return row
