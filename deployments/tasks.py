"""Celery tasks of the deployments app: thin wrappers around its services.

Beat runs `deployments_tick` every ``CANARY_TICK_SECONDS``; a transition that leaves a
deployment running enqueues `deployment_tick` for it after commit (a batch of transitions,
one `deployments_tick` for their deployments), so a new phase is judged at once. Both
re-read every row and act only on what is still under way, so running twice (or after a worker
died half-way) is harmless.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from deployments import services


@shared_task(ignore_result=True)
def deployments_tick(deployment_ids: list[int] | None = None) -> dict[str, Any]:
    """The control loop's step 3 for every deployment under way (or those of these ids)."""
    return services.deployments_tick(deployment_ids=deployment_ids).to_dict()


@shared_task(ignore_result=True)
def deployment_tick(deployment_id: int) -> dict[str, Any]:
    """The same step for one deployment; nothing happens if it is no longer under way."""
    return services.deployment_tick(deployment_id=deployment_id).to_dict()
