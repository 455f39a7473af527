"""Celery tasks of the routing app: thin wrappers around its services."""

from __future__ import annotations

from celery import shared_task

from routing import services
from routing.providers import sync


@shared_task(ignore_result=True)
def targets_probe_due() -> None:
    """Step 1 of the control loop: probe the targets whose active health check is due.

    Idempotent: a second run right after the first finds nothing due.
    """
    services.targets_probe_due()


@shared_task(ignore_result=True)
def providers_apply(service_ids: list[int]) -> None:
    """After a routing change commits: give the services' external data planes (HAProxy,
    nginx) their new weights. Idempotent: a data plane that has the routing version already
    is left alone."""
    sync.providers_apply(service_ids=service_ids)


@shared_task(ignore_result=True)
def providers_sync() -> None:
    """Every tick: apply what is not applied yet, repair drift, and read the data planes'
    counters into the metric store (``routing.providers.sync``)."""
    sync.providers_sync()
