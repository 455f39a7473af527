"""Choices (TextChoices) of the deployments app.

Status, action, strategy and criterion operator are derived from the pure engines' enums
(`deployments.lifecycle.Status` and `.Action`, `deployments.config.TrafficShiftStrategy` and
`.Operator`), so a stored value feeds the engine without translation.
"""

from django.db import models

from canary_site.choices import mirror, phrase, worded, words
from deployments import config, lifecycle

DeploymentStatus = mirror(lifecycle.Status, name="DeploymentStatus", label=words)

DeploymentAction = mirror(
    lifecycle.Action,
    name="DeploymentAction",
    label=words,
    PROMOTE="Promote to the next phase",
    PROMOTE_FULL="Promote fully",
    ROLLBACK="Roll back",
    FINISH_ROLLBACK="Finish the rollback",
    STEP_ROLLBACK="Step the rollback",
)

TrafficShiftStrategy = mirror(
    config.TrafficShiftStrategy,
    LINEAR="Linear: equal steps to 100%",
    EXPONENTIAL="Exponential: each step multiplies the share",
    PHASED="Phased: the phases as written",
    MANUAL="Manual: a person promotes every phase",
    CUSTOM="Custom: a hand-made list of phases",
)

CriterionOperator = mirror(config.Operator, name="CriterionOperator", label=phrase)


PhaseStatus = worded(
    "PhaseStatus",
    "pending running passed skipped rolled_back failed aborted",
    doc="Where one phase stands. Only one phase of a deployment runs at a time.",
)


class EventKind(models.TextChoices):
    """What a timeline entry records: a lifecycle action, or a decision that changed no status.

    The lifecycle actions use the words of `DeploymentAction`; the others are the tick's notes
    (a breach seen while auto-rollback is off, a phase ready for a person to promote), the
    deployment's creation and edits, and its webhooks' answers and gates opened by hand.
    """

    CREATED = "created", "Created"
    UPDATED = "updated", "Updated"
    START = "start", "Started"
    PAUSE = "pause", "Paused"
    RESUME = "resume", "Resumed"
    PROMOTE = "promote", "Promoted to the next phase"
    PROMOTE_FULL = "promote_full", "Promoted fully"
    SUCCEED = "succeed", "Succeeded"
    ROLLBACK = "rollback", "Rolling back"
    FINISH_ROLLBACK = "finish_rollback", "Rolled back"
    STEP_ROLLBACK = "step_rollback", "Rollback stepped down"
    FAIL = "fail", "Failed"
    ABORT = "abort", "Aborted"
    RETRY = "retry", "Retried"
    BREACH = "breach", "Breach seen"
    READY = "ready", "Ready to promote"
    WEBHOOK = "webhook", "Webhook"


WebhookType = mirror(
    config.WebhookType,
    name="WebhookType",
    PRE_ROLLOUT="Pre-rollout",
    ROLLOUT="Rollout",
    CONFIRM_ROLLOUT="Confirm rollout",
    CONFIRM_PROMOTION="Confirm promotion",
    POST_ROLLOUT="Post-rollout",
    ROLLBACK="Rollback",
    EVENT="Event",
)

WebhookDeliveryStatus = worded(
    "WebhookDeliveryStatus",
    "pending delivered failed",
    doc="Where one call of a news webhook (rollback, post-rollout, event) stands.",
)
