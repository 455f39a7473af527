"""The health app's Celery tasks: thin, idempotent wrappers, and a real worker running one."""

from __future__ import annotations

from datetime import timedelta

import pytest

from health import tasks
from health.models import Alert, HealthCheck, MetricBucket, NotificationOutbox
from tests.conftest import celery_args, wait_for
from tests.health.conftest import traffic


def record_failing_canary(services_module, window_end) -> None:
    for batch in (
        traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=10),
        traffic("checkout", "1.0", end=window_end, seconds=60, requests=1000, errors=1),
    ):
        services_module.metrics_record_outcomes(outcomes=batch)


@pytest.mark.django_db
def test_health_evaluate_many__run_twice__stores_one_check_per_canary(
    make_policy, now, window_end, monkeypatch
):
    from health import services

    # Both passes look at the same moment: on the wall clock a slow machine can let the second
    # one start in the next bucket, which is a new window and rightly a new check.
    monkeypatch.setattr("django.utils.timezone.now", lambda: now)
    policy = make_policy(alert_channels=["email"], alert_recipients=["team@example.com"])
    record_failing_canary(services, window_end)
    request = {
        "service": "checkout",
        "canary_version": "2.0",
        "stable_version": "1.0",
        "policy_id": policy.pk,
    }

    first = tasks.health_evaluate_many.apply(args=[[request]]).get()
    again = tasks.health_evaluate_many.apply(args=[[request]]).get()

    assert first == again
    assert HealthCheck.objects.get().verdict == "critical"
    assert Alert.objects.count() == 1
    assert NotificationOutbox.objects.count() == 1


@pytest.mark.django_db
def test_health_evaluate__for_a_policy_deleted_since_it_was_queued__does_nothing(make_policy):
    policy = make_policy()
    policy_id = policy.pk
    policy.delete()

    assert tasks.health_evaluate.apply(args=["checkout", "2.0", "1.0", policy_id]).get() is None
    assert not HealthCheck.objects.exists()


@pytest.mark.django_db
def test_metrics_compact__applies_retention(settings, now):
    from health import services

    settings.CANARY_METRICS_RETENTION_HOURS = 1
    services.metrics_record_outcomes(
        outcomes=traffic("checkout", "2.0", end=now - timedelta(hours=2), seconds=30)
    )

    report = tasks.metrics_compact.apply().get()

    assert report["deleted_buckets"] == 3
    assert not MetricBucket.objects.exists()


@pytest.mark.django_db
def test_beat_tasks__with_nothing_to_do__return_quietly(settings):
    settings.CANARY_PROMETHEUS_URL = ""

    assert tasks.prometheus_pull.apply().get() == {"queries": 0, "values": 0, "errors": []}
    assert tasks.alerts_escalate.apply().get() == 0
    assert tasks.notifications_deliver_due.apply().get() == {}


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_real_worker__evaluates_a_queued_canary_and_raises_its_alert(
    make_policy, window_end, spawn, task_queue
):
    from health import services

    policy = make_policy()
    record_failing_canary(services, window_end)
    worker = spawn(
        "worker",
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        CANARY_TASK_QUEUE=task_queue,
        CANARY_NOTIFY_ENQUEUE="false",
    )

    tasks.health_evaluate.apply_async(
        args=["checkout", "2.0", "1.0", policy.pk], kwargs={"window_seconds": 60}, queue=task_queue
    )

    check = wait_for(lambda: HealthCheck.objects.first(), timeout=60)
    assert check is not None, worker.output()
    assert check.verdict == "critical"
    assert Alert.objects.get().last_check == check
