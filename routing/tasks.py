"""Celery tasks of the routing app: thin wrappers around its services."""

from __future__ import annotations

from celery import shared_task

from routing import services


@shared_task(ignore_result=True)
def targets_probe_due() -> None:
    """Step 1 of the control loop: probe the targets whose active health check is due.

    Idempotent: a second run right after the first finds nothing due.
    """
    services.targets_probe_due()
