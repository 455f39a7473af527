"""Models of the rollback app: approval policies, the requests they open and their decisions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from canary_site import audit
from canary_site.choices import Source
from rollback.choices import ApproverKind, RequestState, ScopeKind, Verdict


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
