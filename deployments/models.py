"""Deployments, their phases and their timelines.

A deployment keeps its configuration twice: as the guide's camelCase dictionary (``config``,
what `GET /api/v1/deployments/{id}/config.yaml` exports and what a retry runs again) and spread
over columns and `Phase` rows, which the tick, the pages and the filters read. Only
``deployments.services`` writes either, so the two never drift.

Percentages are 0 to 100 with two decimals; durations are milliseconds, as in the guide.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from canary_site import audit
from canary_site.choices import Source
from canary_site.models import person_field
from deployments.choices import (
    DeploymentStatus,
    EventKind,
    PhaseStatus,
    TrafficShiftStrategy,
    WebhookDeliveryStatus,
    WebhookType,
)
from deployments.config import DeploymentConfig, PhaseConfig, parse_config
from deployments.lifecycle import ACTIVE_STATUSES, TERMINAL_STATUSES
from routing.models import validate_version

PERCENT_VALIDATORS = [MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))]


class Deployment(models.Model):
    """One canary rollout of ``canary_version`` of a service over its ``stable_version``."""

    service = models.ForeignKey(
        "routing.Service", on_delete=models.PROTECT, related_name="deployments"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    # The metric store keys series by version, so versions use routing's alphabet.
    stable_version = models.CharField(max_length=100, validators=[validate_version])
    canary_version = models.CharField(max_length=100, validators=[validate_version])
    # The targets the deployment's routing rule splits between; found by endpoint or version
    # when the deployment is created, or at the latest when it starts.
    stable_target = models.ForeignKey(
        "routing.Target", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    canary_target = models.ForeignKey(
        "routing.Target", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The weighted rule the deployment created for its split, reused by a retry.
    routing_rule = models.ForeignKey(
        "routing.RoutingRule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployments",
    )
    status = models.CharField(
        max_length=16,
        choices=DeploymentStatus.choices,
        default=DeploymentStatus.PENDING,
        db_index=True,
    )
    # The order (1-based) of the phase that runs or ran last; null before the first start.
    current_phase = models.PositiveSmallIntegerField(null=True, blank=True)
    canary_share = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=PERCENT_VALIDATORS,
        help_text="The canary's share of traffic now, as the deployment last set it.",
    )
    initial_traffic_percentage = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal("0"), validators=PERCENT_VALIDATORS
    )
    traffic_shift_strategy = models.CharField(
        max_length=16, choices=TrafficShiftStrategy.choices, default=TrafficShiftStrategy.PHASED
    )
    auto_promote = models.BooleanField(default=True)
    auto_rollback = models.BooleanField(default=True)
    max_deployment_time_ms = models.PositiveBigIntegerField(default=3_600_000)
    health_policy = models.ForeignKey(
        "health.HealthPolicy",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployments",
    )
    flags = models.ManyToManyField(
        "flags.Flag",
        blank=True,
        related_name="deployments",
        help_text="Flags whose rollout percentage follows the canary's share.",
    )
    notifications = models.JSONField(default=dict, blank=True)
    # Who finishes the deployment's rollback once it has begun (`deployments.rollbacks`):
    # empty for the tick itself, else the runner's name for its execution.
    rollback_runner = models.CharField(max_length=100, blank=True, default="")
    config = models.JSONField(default=dict, help_text="The configuration in the guide's words.")
    # The validator's report on ``config`` when it was last written; starting re-validates.
    validation = models.JSONField(default=dict, blank=True)
    created_by = person_field("deployments")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["service", "status"], name="deployment_service_status")]

    def __str__(self) -> str:
        return f"{self.name} ({self.canary_version} over {self.stable_version})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def spec(self) -> DeploymentConfig:
        """The stored configuration, parsed (it was valid when stored)."""
        return parse_config(self.config)

    @property
    def controller(self) -> str:
        """How the deployment names itself to the flags it drives."""
        return f"deployment {self.pk}"


class Phase(models.Model):
    """One step of a deployment: a traffic share held for a minimum time until criteria hold.

    ``observations`` is what the tick has measured of the canary during the phase, the input of
    `deployments.lifecycle.phase_judgement`: ``{"t0": epoch seconds, "t": [seconds after t0],
    "m": {metric: [value or null]}}`` (see `deployments.observing`), trimmed to what the longest
    criterion needs. ``judgement`` is the tick's latest verdict (`PhaseJudgement.to_dict()`),
    which the pages show as each criterion's state and time left.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="phases")
    order = models.PositiveSmallIntegerField(help_text="1 for the first phase.")
    key = models.CharField(max_length=100, help_text="The configuration's phase id.")
    name = models.CharField(max_length=200)
    traffic_percentage = models.DecimalField(
        max_digits=5, decimal_places=2, validators=PERCENT_VALIDATORS
    )
    duration_ms = models.PositiveBigIntegerField(help_text="The phase's minimum duration.")
    success_criteria = models.JSONField(default=list, blank=True)
    rollback_thresholds = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=PhaseStatus.choices, default=PhaseStatus.PENDING
    )
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    observations = models.JSONField(default=dict, blank=True)
    judgement = models.JSONField(default=dict, blank=True)
    judged_at = models.DateTimeField(null=True, blank=True)
    # When the tick first found the phase ready while a person must promote (said once).
    ready_at = models.DateTimeField(null=True, blank=True)
    # When the tick first saw a breach it did not act on (auto-rollback off; said once).
    breach_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "order"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "order"], name="deployment_phase_order")
        ]

    def __str__(self) -> str:
        return f"{self.order}. {self.name} ({self.traffic_percentage}%)"

    @property
    def spec(self) -> PhaseConfig:
        return phase_config(self)


def phase_config(phase: Phase) -> PhaseConfig:
    """The pure engine's view of a stored phase."""
    data: dict[str, Any] = {
        "id": phase.key,
        "name": phase.name,
        "trafficPercentage": float(phase.traffic_percentage),
        "durationMs": int(phase.duration_ms),
        "successCriteria": list(phase.success_criteria or []),
        "rollbackThresholds": dict(phase.rollback_thresholds or {}),
    }
    # A one-phase configuration around it, so the phase is read by the one parser.
    config = parse_config(
        {
            "name": "phase",
            "serviceName": "phase",
            "stableVersion": "a",
            "canaryVersion": "b",
            "phases": [data],
        }
    )
    return config.phases[0]


class DeploymentEvent(models.Model):
    """One entry of a deployment's timeline: what happened, who or what did it, from where and
    why, and for an automatic decision the evidence behind it (the phase judgement, the health
    check, the breach)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    from_status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, blank=True, default=""
    )
    to_status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, blank=True, default=""
    )
    phase = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The order of the phase current after the event."
    )
    canary_share = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="The canary's share of traffic after the event.",
    )
    actor = person_field()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SYSTEM)
    reason = models.TextField(blank=True, default="")
    evidence = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["deployment", "-at"], name="deployment_event_timeline")]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.kind} @ {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def automatic(self) -> bool:
        return self.source == Source.SYSTEM

    @property
    def evidence_json(self) -> str:
        """The evidence, indented, for people to read on the timeline."""
        return json.dumps(self.evidence, indent=2, sort_keys=True, default=str)


class WebhookGate(models.Model):
    """Where one gate webhook stands for one phase of one run of a deployment (a retry begins
    run 2): the hook's latest answer, and whether a person opened it by hand.

    The tick writes the answer columns (one upsert for every call of a tick); a person writes
    the ``opened_*`` columns and a start request the ``requested_*`` ones, which the tick never
    overwrites, so neither can undo the other. Entry gates (pre-rollout, confirm-rollout) are
    kept on phase 1.
    """

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="webhook_gates"
    )
    run = models.PositiveIntegerField(default=1, help_text="1, then one more after each retry.")
    phase = models.PositiveSmallIntegerField(help_text="The order of the phase it gates.")
    name = models.CharField(max_length=63)
    type = models.CharField(max_length=32, choices=WebhookType.choices)
    # The hook's latest answer: 2xx passes; for a rollout hook, failures counts them in a row.
    passed = models.BooleanField(default=False)
    failures = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    excerpt = models.CharField(max_length=200, blank=True, default="")
    key = models.CharField(max_length=300, blank=True, default="")
    tried_at = models.DateTimeField(null=True, blank=True)
    # Opened by a person who checked the canary themselves: answered 2xx for this phase.
    opened_at = models.DateTimeField(null=True, blank=True)
    opened_by = person_field()
    opened_reason = models.TextField(blank=True, default="")
    # A start asked for while entry gates were closed; the tick starts it once they open.
    requested_at = models.DateTimeField(null=True, blank=True)
    requested_by = person_field()

    class Meta:
        ordering = ["deployment", "run", "phase", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "run", "phase", "name"], name="webhook_gate_unique"
            )
        ]
        indexes = [
            models.Index(
                fields=["requested_at"],
                name="webhook_gate_requested",
                condition=models.Q(requested_at__isnull=False),
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.type} {self.name} (run {self.run}, phase {self.phase})"

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None or self.passed


class WebhookDelivery(models.Model):
    """One call of a news webhook (rollback, post-rollout, event): queued in the transaction
    of the news it tells, under its idempotency key (so it is queued once), and delivered by
    the tick with a lease and retries with backoff."""

    key = models.CharField(max_length=300, unique=True)
    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    event = models.ForeignKey(
        DeploymentEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=63)
    type = models.CharField(max_length=32, choices=WebhookType.choices)
    url = models.CharField(max_length=2000)
    timeout_ms = models.PositiveIntegerField()
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16,
        choices=WebhookDeliveryStatus.choices,
        default=WebhookDeliveryStatus.PENDING,
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_until = models.DateTimeField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    excerpt = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


# The tick rewrites observations and judgements every few seconds; the trail keeps decisions.
audit.register(Deployment, exclude_fields=["updated_at", "validation"], m2m_fields={"flags"})
audit.register(
    Phase, exclude_fields=["observations", "judgement", "judged_at", "ready_at", "breach_seen_at"]
)
