"""Celery tasks of the rollback app: thin wrappers around its services.

Beat runs `approval_requests_expire` every tick; it expires only what is still pending and past
its time, so running twice is harmless.
"""

from __future__ import annotations

from celery import shared_task

from rollback import services


@shared_task(ignore_result=True)
def approval_requests_expire() -> int:
    """Expire the pending approval requests whose time is up; returns how many."""
    return services.approval_requests_expire()


@shared_task(ignore_result=True)
def rollback_executions_advance() -> dict[str, int]:
    """Step 4 of the control loop: run the next steps of every due rollback execution."""
    report = services.rollback_executions_advance()
    return {"claimed": report.claimed, "steps": report.steps, "errors": len(report.errors)}


@shared_task(ignore_result=True)
def rollback_execution_advance(execution_id: int) -> dict[str, int]:
    """One execution at once, when it begins or a step asks to be looked at again soon."""
    report = services.rollback_executions_advance(ids=[execution_id])
    return {"claimed": report.claimed, "steps": report.steps, "errors": len(report.errors)}
