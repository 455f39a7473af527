"""Models of the rollback app: approval policies, the requests they open and their decisions;
rollback plans, their executions and each execution's steps."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from canary_site import audit
from canary_site.choices import Source
from canary_site.models import person_field
from rollback import killswitches, plans
from rollback.choices import (
    ENDED_EXECUTION_STATES,
    ActivationState,
    ActivationTrigger,
    ApproverKind,
    ExecutionState,
    KillSwitchPriority,
    KillSwitchScope,
    RequestState,
    RollbackStrategy,
    RollbackTrigger,
    ScopeKind,
    StepState,
    StepType,
    SwitchState,
    Verdict,
)


class ApprovalPolicy(models.Model):
    """Which actions on which scope need a sign-off, by whom, how many and for how long."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    scope_kind = models.CharField(max_length=16, choices=ScopeKind.choices, default=ScopeKind.ALL)
    scope_value = models.CharField(
        max_length=100, blank=True, default="", help_text="The service, tag or label; none for all."
    )
    actions = models.JSONField(default=list, help_text="Action words, e.g. deployment.promote.")
    approver_kind = models.CharField(
        max_length=16, choices=ApproverKind.choices, default=ApproverKind.ROLE
    )
    approver_group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approver_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="approval_policies"
    )
    quorum = models.PositiveSmallIntegerField(default=1)
    ttl_seconds = models.PositiveIntegerField(default=86400)
    one_rejection_rejects = models.BooleanField(default=True)
    # The alerting (channels, recipients) that carries this policy's news: a new request to the
    # approvers, a decision to the requester.
    notify_via = models.ForeignKey(
        "health.HealthPolicy", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "approval policy"
        verbose_name_plural = "approval policies"

    def __str__(self) -> str:
        return self.name


class ApprovalRequest(models.Model):
    """A pending sign-off of one exact change: the action, the object at a version, the diff.

    ``service`` and ``arguments`` are the gated service and what it was called with, so the
    change applied once approved is the one asked for; ``approvers`` are the ids of the people
    who may decide, fixed when the request opens.
    """

    policy = models.ForeignKey(
        ApprovalPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="requests"
    )
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=200)
    object_repr = models.CharField(max_length=300)
    object_version = models.CharField(max_length=100)
    change = models.JSONField(default=dict, help_text="{before, after} as the approvers saw it.")
    evidence = models.JSONField(default=dict, blank=True)
    service = models.CharField(max_length=200)
    arguments = models.JSONField(default=dict)
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="approval_requests",
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SYSTEM)
    reason = models.TextField(blank=True, default="")
    state = models.CharField(
        max_length=16, choices=RequestState.choices, default=RequestState.PENDING, db_index=True
    )
    quorum = models.PositiveSmallIntegerField(default=1)
    one_rejection_rejects = models.BooleanField(default=True)
    approvers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="approvals_awaited"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    # Why it closed as it did: who cancelled, what changed, why applying failed.
    outcome = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("approve_approvalrequest", "Can approve or reject approval requests")]
        indexes = [
            models.Index(fields=["state", "expires_at"], name="approval_state_expiry"),
            models.Index(fields=["object_type", "object_id"], name="approval_object"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.object_repr}"

    @property
    def is_open(self) -> bool:
        return self.state == RequestState.PENDING


class ApprovalDecision(models.Model):
    """One person's approval or rejection of a request; nobody decides a request twice."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_decisions"
    )
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    comment = models.TextField(blank=True, default="")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "approver"], name="one_decision_per_approver"
            )
        ]

    def __str__(self) -> str:
        return f"{self.verdict} by {self.approver} on #{self.request_id}"


audit.register(ApprovalPolicy, m2m_fields={"approver_users"})
audit.register(ApprovalRequest, exclude_fields=["arguments"], m2m_fields={"approvers"})
audit.register(ApprovalDecision)


class RollbackPlan(models.Model):
    """How a deployment is rolled back: a strategy, ordered actions, validation and safety,
    in the guide's vocabulary (``definition``, read by `rollback.plans.read_plan`).

    A plan covers one deployment, or a service (its default plan when ``is_default``); a
    deployment may name its own in its configuration (``rollbackPlan``).
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    service = models.ForeignKey(
        "routing.Service",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rollback_plans",
        help_text="The service the plan covers; none with a deployment.",
    )
    deployment = models.ForeignKey(
        "deployments.Deployment",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rollback_plans",
    )
    is_default = models.BooleanField(
        default=False, help_text="The service's plan for deployments that name none."
    )
    strategy = models.CharField(
        max_length=16, choices=RollbackStrategy.choices, default=RollbackStrategy.IMMEDIATE
    )
    definition = models.JSONField(default=dict, help_text="The plan in the guide's vocabulary.")
    created_by = person_field()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["service"],
                condition=models.Q(is_default=True),
                name="one_default_rollback_plan_per_service",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> plans.Plan:
        return plans.read_plan(self.definition)


class RollbackExecution(models.Model):
    """One rollback of one deployment: the plan it ran (as it was when it began), why, and
    how it went, step by step (``steps``). A rehearsal runs a plan without moving traffic."""

    plan = models.ForeignKey(
        RollbackPlan, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    plan_name = models.CharField(max_length=100)
    definition = models.JSONField(default=dict, help_text="The plan as it was when this began.")
    strategy = models.CharField(max_length=16, choices=RollbackStrategy.choices)
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="rollback_executions"
    )
    service = models.CharField(max_length=100, db_index=True)
    trigger = models.CharField(max_length=16, choices=RollbackTrigger.choices)
    rehearsal = models.BooleanField(default=False)
    state = models.CharField(
        max_length=20, choices=ExecutionState.choices, default=ExecutionState.RUNNING, db_index=True
    )
    requested_by = person_field()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SYSTEM)
    reason = models.TextField(blank=True, default="")
    evidence = models.JSONField(default=dict, blank=True, help_text="The breach behind it.")
    impact = models.JSONField(default=dict, blank=True, help_text="What it was to change.")
    validation = models.JSONField(default=dict, blank=True, help_text="The last validation.")
    approval = models.ForeignKey(
        ApprovalRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # When the fault began (the first bad window), when the rollback began, when the canary
    # left traffic and when it ended: the statistics' times come from these.
    breach_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    out_of_traffic_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    # A worker advancing the execution holds it until then; a worker that dies lets it go.
    lease_until = models.DateTimeField(null=True, blank=True)
    next_at = models.DateTimeField(null=True, blank=True, help_text="When the next step is due.")
    outcome = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "next_at"], name="rollback_execution_due"),
            models.Index(fields=["service", "created_at"], name="rollback_execution_service"),
        ]

    def __str__(self) -> str:
        kind = "rehearsal" if self.rehearsal else "rollback"
        return f"{kind} #{self.pk} of {self.service}"

    @property
    def ended(self) -> bool:
        return self.state in ENDED_EXECUTION_STATES


class RollbackStep(models.Model):
    """One step of an execution: an action of its plan, or a move its strategy makes."""

    execution = models.ForeignKey(RollbackExecution, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    key = models.CharField(max_length=100)
    type = models.CharField(max_length=24, choices=StepType.choices)
    name = models.CharField(max_length=200)
    config = models.JSONField(default=dict, blank=True)
    timeout_ms = models.PositiveIntegerField()
    after_ms = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=StepState.choices, default=StepState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    timed_out = models.BooleanField(default=False)
    output = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["execution_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "position"], name="one_step_per_position")
        ]

    def __str__(self) -> str:
        return f"{self.position + 1}. {self.name}"


audit.register(RollbackPlan)
audit.register(RollbackExecution, exclude_fields=["lease_until", "next_at"])


class KillSwitch(models.Model):
    """An emergency off-switch over the whole system, a service or some flags, in the guide's
    vocabulary (``definition``, read by `rollback.killswitches.read_kill_switch`), with its
    live state: ready, arming (a condition holds, the grace period runs), active, recovering."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    scope = models.CharField(max_length=16, choices=KillSwitchScope.choices)
    service = models.ForeignKey(
        "routing.Service",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="kill_switches",
    )
    flags = models.ManyToManyField("flags.Flag", blank=True, related_name="kill_switches")
    priority = models.CharField(
        max_length=16, choices=KillSwitchPriority.choices, default=KillSwitchPriority.HIGH
    )
    enabled = models.BooleanField(default=True)
    definition = models.JSONField(default=dict, help_text="The switch in the guide's vocabulary.")
    state = models.CharField(
        max_length=16, choices=SwitchState.choices, default=SwitchState.READY, db_index=True
    )
    armed_since = models.DateTimeField(null=True, blank=True)
    # Why it is arming: the condition that holds, with its numbers.
    arming_reason = models.TextField(blank=True, default="")
    # When the condition that fired it last held; auto-recovery counts its delay from then.
    condition_cleared_at = models.DateTimeField(null=True, blank=True)
    recovery_attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Automatic recoveries since a person last recovered it."
    )
    created_by = person_field()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        permissions = [("trigger_killswitch", "Can trigger and recover kill switches")]

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> killswitches.KillSwitchSpec:
        return killswitches.read_kill_switch(self.definition)


class KillSwitchActivation(models.Model):
    """One firing of a switch: why (a condition with its numbers, or who pressed it and why),
    exactly what it changed (so recovery puts back that and nothing more), and its recovery."""

    switch = models.ForeignKey(KillSwitch, on_delete=models.CASCADE, related_name="activations")
    trigger = models.CharField(max_length=16, choices=ActivationTrigger.choices)
    state = models.CharField(
        max_length=16, choices=ActivationState.choices, default=ActivationState.ACTIVE
    )
    reason = models.TextField()
    evidence = models.JSONField(default=dict, blank=True)
    changes = models.JSONField(
        default=dict, blank=True, help_text="What it changed: flags, services, deployments."
    )
    activated_by = person_field()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SYSTEM)
    activated_at = models.DateTimeField(default=timezone.now, db_index=True)
    recovered_at = models.DateTimeField(null=True, blank=True)
    recovered_by = person_field()
    recovery = models.TextField(blank=True, default="", help_text="How it was recovered.")
    recovery_attempt = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Which automatic attempt recovered it."
    )

    class Meta:
        ordering = ["-activated_at", "-id"]
        constraints = [
            # A switch that fires twice at once leaves one activation.
            models.UniqueConstraint(
                fields=["switch"],
                condition=models.Q(state="active"),
                name="one_active_activation_per_switch",
            )
        ]

    def __str__(self) -> str:
        return f"{self.switch} at {self.activated_at:%Y-%m-%d %H:%M:%S}"


audit.register(KillSwitch, exclude_fields=["armed_since", "arming_reason", "condition_cleared_at"])
audit.register(KillSwitchActivation)
