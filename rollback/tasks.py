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
