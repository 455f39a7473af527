"""A deployment's news (its ``notifications`` switches) through the health app's outbox: email
in Django's outbox, a signed webhook to a local receiver standing in for the real one."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail

from canary_site.exceptions import TransitionNotAllowed
from deployments import services
from deployments.choices import DeploymentStatus
from deployments.lifecycle import Action
from deployments.notifications import news_switch
from health import notifications as senders
from health import services as health_services
from health.choices import NotificationEvent
from health.models import NotificationOutbox
from tests.deployments.conftest import CANARY, Clock, feed, make_config
from tests.health.receiver import Receiver

SECRET = "deployment-webhook-secret"


@pytest.fixture
def alerting_policy(policy: Any, receiver: Receiver, settings: Any) -> Any:
    """The deployments' test policy, telling an engineer by email and a webhook receiver."""
    settings.CANARY_WEBHOOK_SECRET = SECRET
    policy.alerting_enabled = True
    policy.alert_channels = ["email", "webhook"]
    policy.alert_recipients = ["oncall@example.com"]
    policy.webhook_url = receiver.url
    policy.save()
    return policy


def act(deployment: Any, action: str, clock: Clock | None = None, **kwargs: Any) -> Any:
    if clock is not None:
        kwargs["now"] = clock.now
    return services.deployment_transition(
        deployment_id=deployment.pk, action=action, source="api", **kwargs
    )


def deliver() -> None:
    health_services.notifications_deliver_due()


@pytest.mark.parametrize(
    ("action", "to_status", "switch"),
    [
        (Action.START, DeploymentStatus.RUNNING, "onStart"),
        (Action.PROMOTE, DeploymentStatus.RUNNING, "onPhaseComplete"),
        (Action.PROMOTE, DeploymentStatus.SUCCEEDED, "onComplete"),
        (Action.PROMOTE_FULL, DeploymentStatus.SUCCEEDED, "onComplete"),
        (Action.SUCCEED, DeploymentStatus.SUCCEEDED, "onComplete"),
        (Action.ROLLBACK, DeploymentStatus.ROLLING_BACK, "onRollback"),
        (Action.ABORT, DeploymentStatus.ABORTED, "onRollback"),
        (Action.FAIL, DeploymentStatus.FAILED, "onFailure"),
        (Action.FINISH_ROLLBACK, DeploymentStatus.ROLLED_BACK, None),
        (Action.PAUSE, DeploymentStatus.PAUSED, None),
        (Action.RESUME, DeploymentStatus.RUNNING, None),
        (Action.RETRY, DeploymentStatus.PENDING, None),
    ],
)
def test_news_switch__maps_each_transition_to_the_guides_switch(action, to_status, switch):
    assert news_switch(action, to_status) == switch


@pytest.mark.django_db
def test_start_promote_and_success__are_mailed_and_posted_signed__once_each(
    make_deployment, alerting_policy, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment()

    with django_capture_on_commit_callbacks(execute=True):
        act(deployment, "start")
        act(deployment, "promote", reason="Dashboards look fine")
        act(deployment, "promote_full", reason="Ship it")
    deliver()
    deliver()  # nothing is sent twice

    subjects = [message.subject for message in mail.outbox]
    assert subjects == [
        f"[Canary] shop {CANARY}: started at 10.00% of traffic",
        f"[Canary] shop {CANARY}: phase 2 began at 50.00% of traffic",
        f"[Canary] shop {CANARY}: succeeded; {CANARY} is now stable",
    ]
    assert all(message.to == ["oncall@example.com"] for message in mail.outbox)
    assert "Dashboards look fine" in mail.outbox[1].body
    assert f"/deployments/{deployment.pk}/" in mail.outbox[0].body

    posted = [json.loads(delivery.body) for delivery in receiver.accepted]
    assert [body["event"] for body in posted] == [
        "deployment.start",
        "deployment.promote",
        "deployment.promote_full",
    ]
    assert posted[2]["deployment"]["status"] == DeploymentStatus.SUCCEEDED
    assert posted[1]["deployment"]["phase"] == 2 and posted[1]["deployment"]["canary_share"] == 50
    for delivery in receiver.accepted:
        signature = delivery.headers[senders.SIGNATURE_HEADER]
        assert senders.verify(delivery.body, signature, SECRET)
    assert NotificationOutbox.objects.filter(event=NotificationEvent.DEPLOYMENT).count() == 6


@pytest.mark.django_db
def test_switches_turned_off__tell_nothing_of_that_kind(
    make_deployment, alerting_policy, django_capture_on_commit_callbacks
):
    deployment = make_deployment(
        make_config(notifications={"onStart": False, "onPhaseComplete": False})
    )

    with django_capture_on_commit_callbacks(execute=True):
        act(deployment, "start")
        act(deployment, "promote", reason="Looks fine")
        act(deployment, "abort", reason="Wrong build")
    deliver()

    assert [message.subject for message in mail.outbox] == [
        f"[Canary] shop {CANARY}: aborted; traffic is back on stable"
    ]
    assert "Wrong build" in mail.outbox[0].body


@pytest.mark.django_db
def test_automatic_rollback__tells_its_reason(
    make_deployment, alerting_policy, clock, django_capture_on_commit_callbacks
):
    deployment = make_deployment()
    with django_capture_on_commit_callbacks(execute=True):
        act(deployment, "start", clock)
    feed(start=clock.now, seconds=120, errors=25)  # 50% errors

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(12):
            services.deployments_tick(now=clock.advance(5))
    deliver()

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    rollback = [m for m in mail.outbox if "rolling back" in m.subject]
    assert len(rollback) == 1
    assert "Roll back: error_rate 50 is above the errorRate" in rollback[0].body


@pytest.mark.django_db
def test_breach_with_auto_rollback_off__asks_a_person__once_across_ticks(
    make_deployment, alerting_policy, clock, django_capture_on_commit_callbacks
):
    deployment = make_deployment(make_config(autoRollback=False))
    with django_capture_on_commit_callbacks(execute=True):
        act(deployment, "start", clock)
    feed(start=clock.now, seconds=120, errors=25)

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(8):
            services.deployments_tick(now=clock.advance(5))
    deliver()

    assert status_of(deployment) == DeploymentStatus.RUNNING
    asks = [m for m in mail.outbox if "a person must decide" in m.subject]
    assert len(asks) == 1
    assert "Auto-rollback is off" in asks[0].body


@pytest.mark.django_db
def test_without_a_policy__or_with_its_alerting_off__nobody_is_told(
    make_deployment, policy, django_capture_on_commit_callbacks
):
    assert policy.alerting_enabled is False
    quiet = make_deployment()
    with django_capture_on_commit_callbacks(execute=True):
        act(quiet, "start")
        act(quiet, "abort", reason="stop")
    orphan = make_deployment(health_policy=None)
    with django_capture_on_commit_callbacks(execute=True):
        act(orphan, "start")
    deliver()

    assert NotificationOutbox.objects.count() == 0
    assert mail.outbox == []


@pytest.mark.django_db
def test_failure_past_the_maximum_time__is_told(
    make_deployment, alerting_policy, clock, django_capture_on_commit_callbacks
):
    deployment = make_deployment(make_config(maxDeploymentTimeMs=60_000))
    with django_capture_on_commit_callbacks(execute=True):
        act(deployment, "start", clock)
        services.deployments_tick(now=clock.now + timedelta(minutes=2))
    deliver()

    assert status_of(deployment) == DeploymentStatus.FAILED
    assert [m.subject for m in mail.outbox][-1] == f"[Canary] shop {CANARY}: failed"


def status_of(deployment: Any) -> str:
    deployment.refresh_from_db()
    return deployment.status


@pytest.mark.django_db
def test_news__is_written_by_the_transition_itself__and_not_by_a_refused_one(
    make_deployment, alerting_policy
):
    deployment = make_deployment()

    # No commit hook runs here: the outbox row exists because the transition wrote it.
    act(deployment, "start")
    with pytest.raises(TransitionNotAllowed):
        act(deployment, "resume")

    queued = NotificationOutbox.objects.filter(event=NotificationEvent.DEPLOYMENT)
    assert {row.payload["event"] for row in queued} == {"deployment.start"}
    assert {row.channel for row in queued} == {"email", "webhook"}
