"""A deployment's news, told to people: the guide's ``notifications`` switches, made real.

Which news a deployment tells is its configuration's ``notifications`` (all on by default):

==================  ==========================================================================
``onStart``         it started
``onPhaseComplete`` a phase held and the next one began (by the tick or by a person)
``onComplete``      it succeeded: the canary is the service's stable version
``onRollback``      the canary is being taken out of traffic (a breach, or an abort), or a
                    breach needs a person's decision because auto-rollback is off
``onFailure``       it failed (past its maximum time, or its rollback failed)
==================  ==========================================================================

Where it goes is the alerting of the deployment's health policy: its channels (email, Slack,
signed webhook), recipients and URLs, through the health app's notification outbox, so the
same worker delivers it with retries and backoff, once. A deployment without a policy, or whose
policy has alerting off, tells nobody.

The news is queued in the transaction that makes it true (the transition, or the tick's note
of a breach), so it is sent exactly when that commits; its key is the timeline entry it
reports, so the same news is never queued twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.urls import reverse

from deployments.choices import DeploymentStatus
from deployments.lifecycle import Action
from deployments.models import Deployment, DeploymentEvent
from health import conf as health_conf
from health import services as health_services

ON_START = "onStart"
ON_PHASE_COMPLETE = "onPhaseComplete"
ON_COMPLETE = "onComplete"
ON_ROLLBACK = "onRollback"
ON_FAILURE = "onFailure"


def news_switch(action: str, to_status: str) -> str | None:
    """The ``notifications`` switch that governs a transition, or None when it is not news."""
    if to_status == DeploymentStatus.SUCCEEDED:
        return ON_COMPLETE
    if to_status == DeploymentStatus.FAILED:
        return ON_FAILURE
    if action in (Action.ROLLBACK, Action.ABORT):
        return ON_ROLLBACK
    if action == Action.START:
        return ON_START
    if action == Action.PROMOTE:
        return ON_PHASE_COMPLETE
    # Pause, resume and retry are a person's own doing; the end of a rollback follows its
    # start, which was the news.
    return None


def wants(deployment: Deployment, switch: str) -> bool:
    # A switch left out of the configuration is on, as in the guide.
    return bool((deployment.notifications or {}).get(switch, True))


def deployment_news(
    *, deployment: Deployment, event: DeploymentEvent, switch: str, headline: str
) -> health_services.News | None:
    """The news of ``event`` for the people of the deployment's health policy, or None when
    its ``switch`` is off."""
    if not wants(deployment, switch):
        return None
    policy = deployment.health_policy
    url = health_conf.site_url() + reverse("deployments:deployment-detail", args=[deployment.pk])
    service = deployment.service.name
    subject = f"[Canary] {service} {deployment.canary_version}: {headline}"
    text = "\n".join(part for part in (subject, event.reason, url) if part)
    payload: dict[str, Any] = {
        "event": f"deployment.{event.kind}",
        "sent_at": event.at.isoformat(),
        "text": text,
        "deployment": {
            "id": deployment.pk,
            "name": deployment.name,
            "service": service,
            "stable_version": deployment.stable_version,
            "canary_version": deployment.canary_version,
            "status": deployment.status,
            "phase": event.phase,
            "canary_share": float(event.canary_share) if event.canary_share is not None else None,
            "url": url,
        },
        "timeline": {
            "id": event.pk,
            "kind": event.kind,
            "from_status": event.from_status,
            "to_status": event.to_status,
            "source": event.source,
            "reason": event.reason,
            "at": event.at.isoformat(),
        },
    }
    return health_services.News(
        key=f"deployment:{deployment.pk}:event:{event.pk}",
        policy=policy,
        subject=subject,
        payload=payload,
    )


def news_queue(news: Iterable[health_services.News | None]) -> list[int]:
    """Queue every piece of news at once, in the caller's transaction (the one that makes it
    true); returns the outbox ids queued."""
    found = [item for item in news if item is not None]
    return health_services.notifications_queue_many(news=found) if found else []


def _headline(action: str, to_status: str, deployment: Deployment, event: DeploymentEvent) -> str:
    if to_status == DeploymentStatus.SUCCEEDED:
        return f"succeeded; {deployment.canary_version} is now stable"
    if to_status == DeploymentStatus.FAILED:
        return "failed"
    if action == Action.ABORT:
        return "aborted; traffic is back on stable"
    if action == Action.ROLLBACK:
        return "rolling back; traffic is back on stable"
    if action == Action.START:
        return f"started at {event.canary_share}% of traffic"
    return f"phase {event.phase} began at {event.canary_share}% of traffic"


def transition_news(
    *, deployment: Deployment, event: DeploymentEvent, action: str, to_status: str
) -> health_services.News | None:
    """The news of a transition, to be queued in the transition's own transaction."""
    switch = news_switch(action, to_status)
    if switch is None:
        return None
    return deployment_news(
        deployment=deployment,
        event=event,
        switch=switch,
        headline=_headline(action, to_status, deployment, event),
    )


def breach_news(*, deployment: Deployment, event: DeploymentEvent) -> health_services.News | None:
    """The news of a breach that auto-rollback leaves to a person (the tick notes each breach
    once), to be queued in the tick's transaction. With auto-rollback on, the rollback is the
    news."""
    return deployment_news(
        deployment=deployment,
        event=event,
        switch=ON_ROLLBACK,
        headline="breached its rollback thresholds; auto-rollback is off, a person must decide",
    )
