"""Alert notifications through the outbox: email, Slack and signed webhooks, retried with
backoff, none lost and none sent twice. A local HTTP server stands in for Slack and the webhook
receiver."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from canary_site.models import Heartbeat
from canary_site.tasks import heartbeat_record
from health import notifications, services, tasks
from health.choices import NotificationStatus
from health.models import NotificationOutbox
from tests.conftest import celery_args, wait_for
from tests.health.conftest import traffic

SECRET = "webhook-secret-for-tests"


@pytest.fixture
def raise_alert(make_policy: Callable[..., Any], now: datetime, window_end: datetime) -> Any:
    """Store a critical check of checkout 2.0 under a policy alerting on ``channels``."""

    def raise_it(**alerting: Any) -> Any:
        policy = make_policy(**alerting)
        for batch in (
            traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=10),
            traffic("checkout", "1.0", end=window_end, seconds=60, requests=1000, errors=1),
        ):
            services.metrics_record_outcomes(outcomes=batch)
        return services.health_evaluate(
            service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
        )

    return raise_it


@pytest.fixture
def webhook_secret(settings: Any) -> str:
    settings.CANARY_WEBHOOK_SECRET = SECRET
    return SECRET


@pytest.mark.django_db
def test_webhook__is_signed_with_hmac_sha256_of_the_body(raise_alert, receiver, webhook_secret):
    check = raise_alert(alert_channels=["webhook"], webhook_url=receiver.url)

    assert services.notifications_deliver_due() == {"delivered": 1}

    (delivery,) = receiver.accepted
    signature = delivery.headers["X-Canary-Signature"]
    assert signature.startswith("sha256=")
    assert notifications.verify(delivery.body, signature, webhook_secret)
    assert not notifications.verify(delivery.body + b" ", signature, webhook_secret)
    payload = json.loads(delivery.body)
    assert payload["event"] == "alert.raised"
    assert payload["check"]["message"] == check.message
    assert delivery.headers["X-Canary-Delivery"] == NotificationOutbox.objects.get().key


@pytest.mark.django_db
def test_slack__gets_the_alert_and_its_explanation_as_text(raise_alert, receiver):
    check = raise_alert(alert_channels=["slack"], slack_webhook_url=receiver.url)

    services.notifications_deliver_due()

    (delivery,) = receiver.accepted
    text = json.loads(delivery.body)["text"]
    assert "Critical: checkout 2.0 is unhealthy" in text
    assert check.message in text
    assert "/health/services/checkout/" in text


@pytest.mark.django_db
def test_email__lands_in_the_outbox_once_per_recipient(raise_alert, mailoutbox):
    check = raise_alert(
        alert_channels=["email"], alert_recipients=["team@example.com", "lead@example.com"]
    )

    assert services.notifications_deliver_due() == {"delivered": 2}
    services.notifications_deliver_due()

    assert sorted(message.to[0] for message in mailoutbox) == [
        "lead@example.com",
        "team@example.com",
    ]
    assert mailoutbox[0].subject == "[Canary] Critical: checkout 2.0 is unhealthy"
    assert check.message in mailoutbox[0].body


@pytest.mark.django_db
def test_a_receiver_that_fails_twice__still_gets_exactly_one_delivery(
    raise_alert, receiver, webhook_secret, now
):
    receiver.fail_first = 2
    raise_alert(alert_channels=["webhook"], webhook_url=receiver.url)
    row = NotificationOutbox.objects.get()

    results = [
        services.notifications_deliver_due(now=now + timedelta(hours=hour)) for hour in range(6)
    ]

    row.refresh_from_db()
    assert results[:3] == [{"retrying": 1}, {"retrying": 1}, {"delivered": 1}]
    assert results[3:] == [{}, {}, {}]
    assert receiver.attempts == 3
    assert len(receiver.accepted) == 1
    assert (row.status, row.attempts, row.last_error) == (NotificationStatus.DELIVERED, 3, "")


@pytest.mark.django_db
def test_a_failed_attempt__waits_twice_as_long_each_time(raise_alert, receiver, settings, now):
    settings.CANARY_NOTIFY_BACKOFF_SECONDS = 10
    receiver.fail_first = 10
    raise_alert(alert_channels=["slack"], slack_webhook_url=receiver.url)
    row = NotificationOutbox.objects.get()

    services.notifications_deliver_due(now=now)
    row.refresh_from_db()
    first_wait = row.next_attempt_at - now
    assert services.notifications_deliver_due(now=now + timedelta(seconds=9)) == {}
    services.notifications_deliver_due(now=row.next_attempt_at)
    second_from = row.next_attempt_at
    row.refresh_from_db()

    assert first_wait == timedelta(seconds=10)
    assert row.next_attempt_at - second_from == timedelta(seconds=20)
    assert "HTTP 503" in row.last_error
    assert receiver.attempts == 2


@pytest.mark.django_db
def test_a_notification_claimed_by_another_worker__is_not_sent_again(raise_alert, receiver, now):
    raise_alert(alert_channels=["slack"], slack_webhook_url=receiver.url)
    row = NotificationOutbox.objects.get()
    NotificationOutbox.objects.filter(pk=row.pk).update(claimed_until=now + timedelta(minutes=1))

    assert services.notifications_deliver_due(now=now) == {}
    assert services.notification_deliver(outbox_id=row.pk, now=now) == "skipped"
    assert receiver.attempts == 0


@pytest.mark.django_db
def test_slack_without_a_url__fails_for_good_saying_what_is_missing(raise_alert, settings):
    settings.CANARY_SLACK_WEBHOOK_URL = ""
    raise_alert(alert_channels=["slack"])

    assert services.notifications_deliver_due() == {"failed": 1}

    row = NotificationOutbox.objects.get()
    assert row.status == NotificationStatus.FAILED
    assert "no slack URL is configured" in row.last_error


@pytest.mark.django_db
def test_webhook_without_a_secret__is_not_sent_unsigned(raise_alert, receiver, settings):
    settings.CANARY_WEBHOOK_SECRET = ""
    raise_alert(alert_channels=["webhook"], webhook_url=receiver.url)

    assert services.notifications_deliver_due() == {"retrying": 1}
    assert receiver.attempts == 0
    assert "CANARY_WEBHOOK_SECRET" in NotificationOutbox.objects.get().last_error


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_real_worker__delivers_to_a_receiver_that_fails_twice__exactly_once(
    raise_alert, receiver, spawn, task_queue
):
    receiver.fail_first = 2
    raise_alert(alert_channels=["webhook"], webhook_url=receiver.url)
    worker = spawn(
        "worker",
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        CANARY_TASK_QUEUE=task_queue,
        CANARY_WEBHOOK_SECRET=SECRET,
        CANARY_NOTIFY_BACKOFF_SECONDS="0",
    )

    def delivered() -> bool:
        tasks.notifications_deliver_due.apply_async(queue=task_queue)
        return wait_for(lambda: receiver.accepted, timeout=3, interval=0.1) is not None

    assert wait_for(delivered, timeout=60, interval=0), worker.output()
    for _ in range(3):  # further sweeps find nothing left to send
        tasks.notifications_deliver_due.apply_async(queue=task_queue)
    # One worker takes the queue in order: once this marker ran, so had the sweeps before it.
    heartbeat_record.apply_async(kwargs={"name": "after-sweeps"}, queue=task_queue)
    assert wait_for(lambda: Heartbeat.objects.filter(name="after-sweeps").exists(), timeout=30), (
        worker.output()
    )
    row = NotificationOutbox.objects.get()
    assert row.status == NotificationStatus.DELIVERED, worker.output()
    assert len(receiver.accepted) == 1
    assert receiver.attempts == 3
    assert notifications.verify(
        receiver.accepted[0].body, receiver.accepted[0].headers["X-Canary-Signature"], SECRET
    )
