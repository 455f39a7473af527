"""Choices (TextChoices) of the rollback app."""

from __future__ import annotations

from django.db import models

from canary_site.choices import mirror, worded, words
from rollback import killswitches, plans


class ScopeKind(models.TextChoices):
    """What part of the system an approval policy covers."""

    ALL = "all", "Everything"
    SERVICE = "service", "A service"
    FLAG_TAG = "flag_tag", "Flags with a tag"
    ENVIRONMENT = "environment", "An environment label"


class ApproverKind(models.TextChoices):
    """Who may approve under a policy."""

    ROLE = "role", "The approver role"
    GROUP = "group", "A group"
    USERS = "users", "Listed users"


RequestState = worded(
    "RequestState", "pending approved rejected expired cancelled applied superseded"
)


# A request in these states takes no more decisions.
CLOSED_STATES = frozenset(
    {
        RequestState.APPROVED,
        RequestState.REJECTED,
        RequestState.EXPIRED,
        RequestState.CANCELLED,
        RequestState.APPLIED,
        RequestState.SUPERSEDED,
    }
)


Verdict = worded("Verdict", "approve reject")


# --- rollback plans and executions ---------------------------------------------------------------

RollbackStrategy = mirror(
    plans.Strategy, name="RollbackStrategy", label=words, BLUE_GREEN="Blue-green"
)
RollbackTrigger = mirror(plans.Trigger, name="RollbackTrigger", label=words)
StepType = mirror(plans.StepType, name="StepType", label=words)

ExecutionState = worded(
    "ExecutionState", "awaiting_approval running validating succeeded failed cancelled"
)
# An execution in these states has ended: nothing more runs.
ENDED_EXECUTION_STATES = frozenset(
    {ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.CANCELLED}
)
ACTIVE_EXECUTION_STATES = frozenset({ExecutionState.RUNNING, ExecutionState.VALIDATING})

StepState = worded("StepState", "pending running succeeded failed skipped")


# --- kill switches -------------------------------------------------------------------------------

KillSwitchScope = mirror(killswitches.Scope, name="KillSwitchScope", label=words)
KillSwitchPriority = mirror(killswitches.Priority, name="KillSwitchPriority", label=words)
SwitchState = worded("SwitchState", "ready arming active recovering")
ActivationTrigger = worded("ActivationTrigger", "condition manual kill_all")
ActivationState = worded("ActivationState", "active recovered")
