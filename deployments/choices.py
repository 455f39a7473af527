"""Choices (TextChoices) of the deployments app, mirroring the pure engines' enums.

The values are the same words as `deployments.lifecycle.Status` and `.Action` and
`deployments.config.TrafficShiftStrategy` and `.Operator`; a test keeps them in step.
"""

from django.db import models


class DeploymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    ROLLING_BACK = "rolling_back", "Rolling back"
    ROLLED_BACK = "rolled_back", "Rolled back"
    FAILED = "failed", "Failed"
    ABORTED = "aborted", "Aborted"


class DeploymentAction(models.TextChoices):
    START = "start", "Start"
    PAUSE = "pause", "Pause"
    RESUME = "resume", "Resume"
    PROMOTE = "promote", "Promote to the next phase"
    PROMOTE_FULL = "promote_full", "Promote fully"
    SUCCEED = "succeed", "Succeed"
    ROLLBACK = "rollback", "Roll back"
    FINISH_ROLLBACK = "finish_rollback", "Finish the rollback"
    FAIL = "fail", "Fail"
    ABORT = "abort", "Abort"
    RETRY = "retry", "Retry"


class TrafficShiftStrategy(models.TextChoices):
    LINEAR = "linear", "Linear: equal steps to 100%"
    EXPONENTIAL = "exponential", "Exponential: each step multiplies the share"
    PHASED = "phased", "Phased: the phases as written"
    MANUAL = "manual", "Manual: a person promotes every phase"
    CUSTOM = "custom", "Custom: a hand-made list of phases"


class CriterionOperator(models.TextChoices):
    GREATER_THAN = "greater_than", "greater than"
    LESS_THAN = "less_than", "less than"
    EQUALS = "equals", "equals"


class PhaseStatus(models.TextChoices):
    """Where one phase stands. Only one phase of a deployment runs at a time."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    SKIPPED = "skipped", "Skipped"
    ROLLED_BACK = "rolled_back", "Rolled back"
    FAILED = "failed", "Failed"
    ABORTED = "aborted", "Aborted"


class EventKind(models.TextChoices):
    """What a timeline entry records: a lifecycle action, or a decision that changed no status.

    The lifecycle actions use the words of `DeploymentAction`; the others are the tick's notes
    (a breach seen while auto-rollback is off, a phase ready for a person to promote) and the
    deployment's creation and edits.
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
    FAIL = "fail", "Failed"
    ABORT = "abort", "Aborted"
    RETRY = "retry", "Retried"
    BREACH = "breach", "Breach seen"
    READY = "ready", "Ready to promote"
