"""Celery tasks of the health app: thin wrappers around its services.

Each is idempotent: a pull or an evaluation of a window already done stores nothing twice, a
delivered notification is never sent again, a compaction only ever takes rows once.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from health import selectors, services


@shared_task(ignore_result=True)
def prometheus_pull() -> dict[str, Any]:
    """Beat: pull the configured PromQL queries into the metric store."""
    report = services.prometheus_pull()
    return {"queries": report.queries, "values": report.values, "errors": report.errors}


@shared_task(ignore_result=True)
def metrics_compact() -> dict[str, int]:
    """Beat: roll old fine buckets up into coarse ones and apply retention."""
    return vars(services.metrics_compact())


@shared_task(ignore_result=True)
def health_evaluate(
    service: str,
    canary_version: str,
    stable_version: str | None,
    policy_id: int,
    window_seconds: int | None = None,
    planned_canary_share: float | None = None,
) -> int | None:
    """Evaluate one canary (for callers that queue it); returns the check's id."""
    policy = selectors.policy_by_id(policy_id=policy_id)
    if policy is None:  # deleted since it was queued
        return None
    check = services.health_evaluate(
        service=service,
        canary_version=canary_version,
        stable_version=stable_version,
        policy=policy,
        window_seconds=window_seconds,
        planned_canary_share=planned_canary_share,
    )
    return check.pk


@shared_task(ignore_result=True)
def alerts_escalate() -> int:
    """Beat: fire the escalation rules that came due."""
    return services.alerts_escalate()


@shared_task(ignore_result=True)
def notification_deliver(outbox_id: int) -> str:
    """Send one notification now (queued after the commit that wrote it)."""
    return services.notification_deliver(outbox_id=outbox_id)


@shared_task(ignore_result=True)
def notifications_deliver_due() -> dict[str, int]:
    """Beat: send every due notification, retries included (the outbox holds the backoff)."""
    return services.notifications_deliver_due()


@shared_task(ignore_result=True)
def health_evaluate_many(requests: list[dict[str, Any]]) -> list[int]:
    """Evaluate many canaries in one pass (the deployments tick queues its running canaries).

    Each request: ``service``, ``canary_version``, ``stable_version``, ``policy_id`` and
    optionally ``window_seconds`` and ``planned_canary_share``; requests whose policy is gone
    are dropped.
    """
    policies = selectors.policies_by_id(ids={int(item["policy_id"]) for item in requests})
    batch = [
        services.EvaluationRequest(
            service=item["service"],
            canary_version=item["canary_version"],
            stable_version=item.get("stable_version") or None,
            policy=policies[int(item["policy_id"])],
            window_seconds=item.get("window_seconds"),
            planned_canary_share=item.get("planned_canary_share"),
        )
        for item in requests
        if int(item["policy_id"]) in policies
    ]
    return [check.pk for check in services.health_evaluate_many(requests=batch)]
