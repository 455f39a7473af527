"""Celery tasks of the rollback app: thin wrappers around its services.

Beat runs `approval_requests_expire` every tick; it expires only what is still pending and past
its time, so running twice is harmless. It runs `plan_triggers_check` every tick too: a second
run in the same window finds the rollbacks already begun.
"""

from __future__ import annotations

from celery import shared_task

from rollback import services, triggers


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


@shared_task(ignore_result=True)
def plan_triggers_check() -> dict[str, int]:
    """Roll back the canaries whose rollback plan's own automatic triggers hold."""
    report = triggers.plan_triggers_check()
    return {
        "watched": report.watched,
        "evaluated": report.evaluated,
        "triggered": report.triggered,
        "bad_plans": report.bad_plans,
        "errors": len(report.errors),
    }


@shared_task(ignore_result=True)
def kill_switches_watch() -> dict[str, int]:
    """Step 4 of the control loop: arm, fire and recover kill switches on their conditions."""
    report = services.kill_switches_watch()
    return {"fired": report.fired, "recovered": report.recovered, "errors": len(report.errors)}
