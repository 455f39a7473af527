"""Alerting rules of a health policy: validation, escalation timing and the words sent out.

No model is imported here, so the rules are checked and tested without a database. The alert
decision (`decide_alert`: what a stored check does to its canary's alert) is here too, for the
same reason; `health.services.alerts` applies it to the rows.

An escalation rule ``{"severity", "delay_seconds", "recipients", "channels"}`` fires once for
an alert of that severity which nobody has acknowledged ``delay_seconds`` after its escalation
clock started (when it was raised, or when its severity went up); its recipients and channels
are told. ``channels`` defaults to the policy's channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from health.analysis import Verdict


class Channel(StrEnum):
    EMAIL = "email"
    SLACK = "slack"
    WEBHOOK = "webhook"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Status(StrEnum):
    """Where an alert stands: open until someone acknowledges it or it is resolved."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Event(StrEnum):
    """Why a notification is written: an alert raised, made worse, escalated or resolved, or
    news of a deployment (started, phase completed, succeeded, rolled back, failed)."""

    RAISED = "raised"
    SEVERITY = "severity"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    DEPLOYMENT = "deployment"


CHANNELS: tuple[str, ...] = tuple(Channel)
SEVERITIES: tuple[str, ...] = tuple(Severity)
MAX_RECIPIENTS = 50
MAX_RULES = 20


class InvalidAlerting(ValueError):
    """Alerting settings that cannot be used; ``field`` names the key, ``model_field`` the
    model field holding it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.model_field = field.split("[", 1)[0].split(".", 1)[0]
        self.message = message


@dataclass(frozen=True)
class EscalationRule:
    severity: str
    delay_seconds: int
    recipients: tuple[str, ...]
    channels: tuple[str, ...]


@dataclass(frozen=True)
class AlertingConfig:
    """Validated, canonical alerting settings (plain lists, ready for JSON fields)."""

    channels: list[str]
    recipients: list[str]
    escalation_rules: list[dict[str, Any]]


def validate_alerting(
    *, channels: Any, recipients: Any, escalation_rules: Any, prefix: str = ""
) -> AlertingConfig:
    """Check the alerting settings; raises InvalidAlerting naming the offending key."""
    channel_list = _channels(channels, f"{prefix}alert_channels")
    recipient_list = _recipients(recipients, f"{prefix}alert_recipients")
    if escalation_rules is None:
        escalation_rules = []
    field = f"{prefix}escalation_rules"
    if not isinstance(escalation_rules, list | tuple):
        raise InvalidAlerting(field, "must be a list")
    if len(escalation_rules) > MAX_RULES:
        raise InvalidAlerting(field, f"at most {MAX_RULES} rules")
    rules: list[dict[str, Any]] = []
    for index, rule in enumerate(escalation_rules):
        path = f"{field}[{index}]"
        if not isinstance(rule, dict):
            raise InvalidAlerting(path, "must be an object")
        unknown = sorted(set(rule) - {"severity", "delay_seconds", "recipients", "channels"})
        if unknown:
            raise InvalidAlerting(f"{path}.{unknown[0]}", "unknown field")
        severity = rule.get("severity")
        if severity not in SEVERITIES:
            raise InvalidAlerting(
                f"{path}.severity", f"must be one of {', '.join(SEVERITIES)}, got {severity!r}"
            )
        delay = rule.get("delay_seconds")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise InvalidAlerting(f"{path}.delay_seconds", "must be a whole number, 0 or more")
        rule_recipients = _recipients(rule.get("recipients", []), f"{path}.recipients")
        rule_channels = (
            _channels(rule["channels"], f"{path}.channels") if "channels" in rule else []
        )
        if not rule_recipients and "email" in (rule_channels or channel_list):
            # An email rule with nobody to write to would silently do nothing.
            raise InvalidAlerting(f"{path}.recipients", "name at least one email address")
        canonical: dict[str, Any] = {
            "severity": severity,
            "delay_seconds": delay,
            "recipients": rule_recipients,
        }
        if rule_channels:
            canonical["channels"] = rule_channels
        rules.append(canonical)
    rules.sort(key=lambda item: (SEVERITIES.index(item["severity"]), item["delay_seconds"]))
    return AlertingConfig(channels=channel_list, recipients=recipient_list, escalation_rules=rules)


def _channels(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidAlerting(field, "must be a list")
    for index, channel in enumerate(value):
        if channel not in CHANNELS:
            raise InvalidAlerting(
                f"{field}[{index}]", f"must be one of {', '.join(CHANNELS)}, got {channel!r}"
            )
    if len(set(value)) != len(value):
        raise InvalidAlerting(field, "lists a channel twice")
    return [channel for channel in CHANNELS if channel in value]


def _recipients(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidAlerting(field, "must be a list of email addresses")
    if len(value) > MAX_RECIPIENTS:
        raise InvalidAlerting(field, f"at most {MAX_RECIPIENTS} recipients")
    recipients: list[str] = []
    for index, address in enumerate(value):
        if not isinstance(address, str):
            raise InvalidAlerting(f"{field}[{index}]", "must be an email address")
        address = address.strip()
        try:
            validate_email(address)
        except ValidationError:
            raise InvalidAlerting(
                f"{field}[{index}]", f"{address!r} is not an email address"
            ) from None
        if address not in recipients:
            recipients.append(address)
    return recipients


def rules_for(
    escalation_rules: Sequence[dict[str, Any]], severity: str, default_channels: Sequence[str]
) -> list[EscalationRule]:
    """The rules of one severity, in the order they fire."""
    rules = [
        EscalationRule(
            severity=rule["severity"],
            delay_seconds=int(rule["delay_seconds"]),
            recipients=tuple(rule.get("recipients", ())),
            channels=tuple(rule.get("channels") or default_channels),
        )
        for rule in escalation_rules
        if rule.get("severity") == severity
    ]
    return sorted(rules, key=lambda rule: rule.delay_seconds)


def due_level(rules: Sequence[EscalationRule], since: datetime, now: datetime) -> int:
    """How many of ``rules`` (sorted by delay) are due ``now`` for a clock started at ``since``."""
    level = 0
    for rule in rules:
        if since + timedelta(seconds=rule.delay_seconds) <= now:
            level += 1
        else:
            break
    return level


def alert_title(*, service: str, canary_version: str, severity: str) -> str:
    return f"{severity.capitalize()}: {service} {canary_version} is unhealthy"


# --------------------------------------------------------------------------- the alert decision

_SEVERITY_RANK = {Severity.WARNING: 1, Severity.CRITICAL: 2}
_FAILING = frozenset({Verdict.WARNING, Verdict.CRITICAL})


class AlertAction(StrEnum):
    """What a check does to its canary's alert."""

    NOTHING = "nothing"
    RAISE = "raise"
    SEEN = "seen"
    WORSEN = "worsen"
    RESOLVE = "resolve"


@dataclass(frozen=True)
class OpenAlert:
    """What the decision reads of the canary's alert that is open or acknowledged."""

    severity: str
    check_count: int
    notified: bool
    """Whether it told anyone it was raised: then its resolution is news too."""


@dataclass(frozen=True)
class AlertDecision:
    """The fields to set on the alert (plain values; linking the check is the caller's) and the
    news to send, if any."""

    action: AlertAction
    changes: Mapping[str, Any] = field(default_factory=dict)
    notify: Event | None = None


def decide_alert(
    *,
    verdict: str,
    message: str,
    service: str,
    canary_version: str,
    alert: OpenAlert | None,
    cooldown_seconds: int,
    cooling_until: datetime | None,
    now: datetime,
) -> AlertDecision:
    """What a freshly stored check does to the alert of its (service, canary, policy).

    A failing check (warning, critical) raises an alert, or is counted on the open one; a
    check worse than the open alert's severity makes it critical, restarts its escalation and
    always notifies. A passing check resolves the open alert. No data and inconclusive change
    nothing. A new alert notifies unless an alert of the same canary notified within the
    policy's cooldown (``cooling_until``, the latest such cooldown's end, or None).
    """
    if verdict in _FAILING:
        title = alert_title(service=service, canary_version=canary_version, severity=verdict)
        cooldown_until = now + timedelta(seconds=cooldown_seconds)
        if alert is None:
            changes: dict[str, Any] = {
                "severity": verdict,
                "status": Status.OPEN,
                "title": title,
                "message": message,
                "check_count": 1,
                "raised_at": now,
                "last_seen_at": now,
                "escalation_since": now,
            }
            if cooling_until is not None:
                return AlertDecision(AlertAction.RAISE, changes | {"cooldown_until": cooling_until})
            changes |= {"cooldown_until": cooldown_until, "last_notified_at": now}
            return AlertDecision(AlertAction.RAISE, changes, Event.RAISED)
        changes = {"message": message, "check_count": alert.check_count + 1, "last_seen_at": now}
        if _SEVERITY_RANK[Severity(verdict)] > _SEVERITY_RANK[Severity(alert.severity)]:
            changes |= {
                "severity": verdict,
                "title": title,
                "escalation_level": 0,
                "escalation_since": now,
                "last_notified_at": now,
                "cooldown_until": cooldown_until,
            }
            return AlertDecision(AlertAction.WORSEN, changes, Event.SEVERITY)
        return AlertDecision(AlertAction.SEEN, changes)
    if verdict == Verdict.PASS and alert is not None:
        changes = {
            "status": Status.RESOLVED,
            "resolved_at": now,
            "resolution": f"Recovered: {message}",
            "last_seen_at": now,
        }
        return AlertDecision(
            AlertAction.RESOLVE, changes, Event.RESOLVED if alert.notified else None
        )
    return AlertDecision(AlertAction.NOTHING)
