"""The health app's services against the real database: ingestion, judgement, alerts, retention."""

from __future__ import annotations

import gc
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from canary_site.exceptions import TransitionNotAllowed, ValidationFailed
from health import services, store
from health.choices import AlertStatus, NotificationEvent
from health.histogram import Histogram
from health.ingest import OutcomeBatchItem, parse_samples
from health.models import Alert, HealthCheck, MetricBucket, NotificationOutbox, PushBatch
from health.services.ingestion import _digest_of_reprs
from health.signals import health_evaluated
from health.windows import EvaluationRequest
from tests.health.conftest import lognormal, traffic

pytestmark = pytest.mark.django_db


def bucket(service: str = "checkout", version: str = "2.0", metric: str = "requests") -> Any:
    return MetricBucket.objects.get(service=service, version=version, metric=metric)


# --------------------------------------------------------------------------- the proxy's batches


def test_record_outcomes__twice_into_one_bucket__adds_counts_and_merges_histograms(now):
    start = datetime.fromtimestamp(int(now.timestamp()) // 2 * 2, tz=UTC)
    first = Histogram.from_values([5.0, 80.0, 81.0])
    second = Histogram.from_values([80.0, 2_000.0])
    item = OutcomeBatchItem(
        service="checkout", version="2.0", bucket_start=start, requests=3, errors=1, latency=first
    )
    later = OutcomeBatchItem(
        service="checkout",
        version="2.0",
        bucket_start=start + timedelta(seconds=1.5),
        requests=2,
        errors=0,
        latency=second,
    )

    services.metrics_record_outcomes(outcomes=[item])
    services.metrics_record_outcomes(outcomes=[later])

    stored = bucket()
    assert (stored.requests, stored.errors, stored.start, stored.resolution) == (5, 1, start, 2)
    assert Histogram.from_list(stored.latency) == first.merge(second)


def test_record_outcomes__a_large_batch__costs_the_same_few_queries_as_a_small_one(
    now, django_assert_max_num_queries
):
    small = traffic("checkout", "2.0", end=now, seconds=20)
    large = [
        item
        for number in range(300)
        for item in traffic(f"svc-{number}", "2.0", end=now, seconds=20)
    ]

    with django_assert_max_num_queries(3):
        services.metrics_record_outcomes(outcomes=small)
    with django_assert_max_num_queries(3):
        assert services.metrics_record_outcomes(outcomes=large) == 600


def test_record_outcomes__with_more_errors_than_requests__is_refused_naming_outcomes(now):
    item = OutcomeBatchItem(
        service="checkout", version="2.0", bucket_start=now, requests=1, errors=2
    )

    with pytest.raises(ValidationFailed) as refused:
        services.metrics_record_outcomes(outcomes=[item])

    assert "outcomes" in refused.value.fields
    assert not MetricBucket.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_record_outcomes__two_threads_flushing_the_same_bucket_at_once__add_up(now):
    start = datetime.fromtimestamp(int(now.timestamp()) // 10 * 10, tz=UTC)
    histogram = Histogram.from_values([50.0, 120.0])
    flushes = 15
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def flush() -> None:
        try:
            barrier.wait()
            for _ in range(flushes):
                services.metrics_record_outcomes(
                    outcomes=[
                        OutcomeBatchItem(
                            service="checkout",
                            version="2.0",
                            bucket_start=start,
                            requests=2,
                            errors=1,
                            latency=histogram,
                        ),
                        OutcomeBatchItem(
                            service="checkout",
                            version="1.0",
                            bucket_start=start,
                            requests=1,
                            latency=Histogram.from_values([10.0]),
                        ),
                    ]
                )
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=flush) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not failures, failures
    canary = bucket(version="2.0")
    assert (canary.requests, canary.errors) == (2 * 2 * flushes, 2 * flushes)
    assert Histogram.from_list(canary.latency).total == 2 * 2 * flushes
    assert bucket(version="1.0").requests == 2 * flushes


# --------------------------------------------------------------------------- pushes


def push_samples(now: datetime, **overrides: Any) -> list[dict[str, Any]]:
    stamp = now.timestamp() - 30
    base = {"service": "checkout", "version": "2.0", "timestamp": stamp}
    samples = [
        {**base, "metric": "requests", "value": 10},
        {**base, "metric": "errors", "value": 1},
        {**base, "metric": "latency_ms", "value": 80.0, "count": 10},
        {**base, "metric": "custom:queue_depth", "value": 4.0},
        {**base, "metric": "custom:queue_depth", "value": 8.0},
    ]
    samples[0].update(overrides)
    return samples


def test_push__stores_counts_latency_and_custom_metrics(now):
    result = services.metrics_push(samples=push_samples(now), now=now)

    assert (result.accepted, result.buckets, result.duplicate) == (5, 2, False)
    traffic_bucket = bucket()
    assert (traffic_bucket.requests, traffic_bucket.errors) == (10, 1)
    assert Histogram.from_list(traffic_bucket.latency).total == 10
    custom = bucket(metric="custom:queue_depth")
    assert (custom.value_sum, custom.value_count) == (12.0, 2)
    assert (custom.value_min, custom.value_max) == (4.0, 8.0)


def test_push__retried_with_the_same_idempotency_key__counts_once(now):
    first = services.metrics_push(samples=push_samples(now), idempotency_key="batch-1", now=now)
    retry = services.metrics_push(samples=push_samples(now), idempotency_key="batch-1", now=now)

    assert not first.duplicate
    assert retry.duplicate and retry.accepted == 0
    assert bucket().requests == 10
    assert PushBatch.objects.get().samples == 5


def test_push__reusing_a_key_for_a_different_batch__is_a_conflict(now):
    services.metrics_push(samples=push_samples(now), idempotency_key="batch-1", now=now)

    with pytest.raises(TransitionNotAllowed) as refused:
        services.metrics_push(
            samples=push_samples(now, value=99), idempotency_key="batch-1", now=now
        )

    assert "idempotency_key" in refused.value.fields
    assert bucket().requests == 10


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"value": -1}, "samples[0].value"),
        ({"value": 1.5}, "samples[0].value"),
        ({"metric": "cpu"}, "samples[0].metric"),
        ({"timestamp": "2999-01-01T00:00:00Z"}, "samples[0].timestamp"),
        ({"timestamp": "2020-01-01T00:00:00"}, "samples[0].timestamp"),
        ({"service": "no spaces"}, "samples[0].service"),
        ({"colour": "red"}, "samples[0].colour"),
    ],
    ids=["negative", "fraction", "unknown-metric", "future", "naive-time", "bad-name", "unknown"],
)
def test_push__bad_sample__is_refused_naming_its_field_and_stores_nothing(now, overrides, field):
    with pytest.raises(ValidationFailed) as refused:
        services.metrics_push(samples=push_samples(now, **overrides), idempotency_key="k", now=now)

    assert field in refused.value.fields
    assert not MetricBucket.objects.exists()
    assert not PushBatch.objects.exists()


def test_push__more_samples_than_allowed__is_refused_as_too_large(now, settings):
    settings.CANARY_METRICS_PUSH_MAX_SAMPLES = 4

    with pytest.raises(services.PayloadTooLarge) as refused:
        services.metrics_push(samples=push_samples(now), now=now)

    assert refused.value.status_code == 413
    assert "samples" in refused.value.fields


def test_push__two_batches_into_one_bucket__add_counts_and_merge_histograms(now):
    stamp = now.timestamp() - 30
    base = {"service": "checkout", "version": "2.0", "timestamp": stamp}

    def batch(*latencies: float) -> list[dict[str, Any]]:
        return [
            {**base, "metric": "requests", "value": len(latencies)},
            *({**base, "metric": "latency_ms", "value": value} for value in latencies),
            {**base, "metric": "custom:queue_depth", "value": latencies[0]},
        ]

    services.metrics_push(samples=batch(5.0, 80.0, 81.0), idempotency_key="one", now=now)
    services.metrics_push(samples=batch(80.0, 2_000.0), idempotency_key="two", now=now)

    stored = bucket()
    assert stored.requests == 5
    assert Histogram.from_list(stored.latency) == Histogram.from_values(
        [5.0, 80.0, 81.0, 80.0, 2_000.0]
    )
    custom = bucket(metric="custom:queue_depth")
    assert (custom.value_sum, custom.value_count, custom.value_min, custom.value_max) == (
        85.0,
        2,
        5.0,
        80.0,
    )


def test_push__more_buckets_than_one_statement_holds__count_once_under_their_key(now, monkeypatch):
    monkeypatch.setattr(store, "CHUNK", 2)  # five buckets: three statements
    samples = [
        {
            "service": f"svc-{number}",
            "version": "2.0",
            "metric": "requests",
            "value": 10,
            "timestamp": now.timestamp() - 30,
        }
        for number in range(5)
    ]

    first = services.metrics_push(samples=samples, idempotency_key="big", now=now)
    retry = services.metrics_push(samples=samples, idempotency_key="big", now=now)
    with pytest.raises(TransitionNotAllowed):
        services.metrics_push(samples=samples[:4], idempotency_key="big", now=now)

    assert (first.buckets, first.duplicate, retry.duplicate) == (5, False, True)
    assert sorted(MetricBucket.objects.values_list("requests", flat=True)) == [10] * 5
    assert PushBatch.objects.get().samples == 5


def test_push__a_key_stored_with_the_digest_used_before__is_still_a_retry(now):
    samples = push_samples(now)
    deltas = parse_samples(
        samples, resolution=2, now=now, max_future_seconds=300, max_age_seconds=86_400
    )
    PushBatch.objects.create(key="before", digest=_digest_of_reprs(deltas), samples=len(samples))

    retry = services.metrics_push(samples=samples, idempotency_key="before", now=now)

    assert retry.duplicate
    assert not MetricBucket.objects.exists()


def test_push__a_custom_sum_past_the_float_range__is_stored_as_infinity(now):
    samples = push_samples(now)
    samples[3].update(value=1e308, count=10)

    services.metrics_push(samples=samples, idempotency_key="huge", now=now)

    custom = bucket(metric="custom:queue_depth")
    assert (custom.value_sum, custom.value_count, custom.value_max) == (math.inf, 11, 1e308)


def test_push__with_a_key__writes_key_and_buckets_in_one_statement(
    now, django_assert_max_num_queries
):
    # SQLite takes a savepoint around its two inserts.
    postgres = connection.vendor == "postgresql"
    with django_assert_max_num_queries(1 if postgres else 4):
        services.metrics_push(samples=push_samples(now), idempotency_key="one", now=now)
    with django_assert_max_num_queries(2 if postgres else 4):
        retry = services.metrics_push(samples=push_samples(now), idempotency_key="one", now=now)

    assert retry.duplicate


# --------------------------------------------------------------------------- evaluation


def record(*batches: list[OutcomeBatchItem]) -> None:
    for batch in batches:
        services.metrics_record_outcomes(outcomes=batch)


def test_evaluate__canary_with_5_percent_errors_against_stable_with_0_1__is_critical(
    now, window_end, make_policy
):
    policy = make_policy()
    record(
        traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=10),
        traffic("checkout", "1.0", end=window_end, seconds=60, requests=1000, errors=1),
    )

    check = services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )

    assert check.verdict == "critical"
    assert check.window_end == window_end and check.window_seconds == 60
    comparison = next(r for r in check.results if r["check"] == "comparison")
    assert comparison["verdict"] == "critical"
    assert comparison["inputs"]["log_e_value"] > math.log(1e6)
    assert check.message.startswith("Critical")
    assert comparison["message"].startswith(
        "Canary error rate against stable since the phase began: 60 errors in 1,200 requests "
        "(5.00%, 95% interval 3.90-6.38%) against stable's 0.10% (6 errors in 6,000 requests)"
    )
    assert check.should_rollback
    assert check.result["inputs"]["canary"]["requests"] == 1200
    assert check.result["windows"]["current"]["canary"]["errors"] == 60


def test_evaluate__canary_like_stable__passes(now, window_end, make_policy):
    policy = make_policy()
    record(
        traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=0),
        traffic("checkout", "1.0", end=window_end, seconds=60, requests=200, errors=0),
    )

    check = services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )

    assert check.verdict == "pass", check.message


def test_evaluate__with_too_little_traffic__is_inconclusive_never_a_pass(
    now, window_end, make_policy
):
    policy = make_policy()
    record(traffic("checkout", "2.0", end=window_end, seconds=60, requests=5))

    check = services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )

    assert check.verdict == "inconclusive"
    assert "no data" in check.message or "Inconclusive" in check.message


def test_evaluate__twice_for_the_same_window__stores_and_signals_once(now, window_end, make_policy):
    policy = make_policy()
    record(traffic("checkout", "2.0", end=window_end, seconds=60, requests=200))
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    health_evaluated.connect(receiver)
    try:
        first = services.health_evaluate(
            service="checkout", canary_version="2.0", stable_version=None, policy=policy, now=now
        )
        again = services.health_evaluate(
            service="checkout",
            canary_version="2.0",
            stable_version=None,
            policy=policy,
            now=now + timedelta(seconds=0.5),
        )
    finally:
        health_evaluated.disconnect(receiver)

    assert again.pk == first.pk
    assert HealthCheck.objects.count() == 1
    assert len(received) == 1
    signal = received[0]
    assert signal["check"] == first
    assert signal["verdict"] == first.verdict
    assert signal["service"] == "checkout" and signal["canary_version"] == "2.0"
    assert signal["stable_version"] == "" and signal["policy"] == policy
    assert signal["should_rollback"] is False
    assert signal["evaluation"].message == first.message


def test_evaluate__consecutive_failures__read_the_earlier_window_from_the_earlier_check(
    now, window_end, make_policy
):
    policy = make_policy(
        policy={
            "window_seconds": 60,
            "comparison": {"enabled": False},
            "trend": {"enabled": False},
            "thresholds": [
                {
                    "metric": "error_rate",
                    "operator": "gt",
                    "critical": 3.0,
                    "consecutive_failures": 2,
                }
            ],
            "auto_rollback": {
                "thresholds": [
                    {
                        "metric": "error_rate",
                        "operator": "gt",
                        "threshold": 3.0,
                        "consecutive_violations": 2,
                    }
                ]
            },
        }
    )
    record(traffic("checkout", "2.0", end=window_end, seconds=120, requests=200, errors=10))
    earlier = services.health_evaluate(
        service="checkout",
        canary_version="2.0",
        stable_version=None,
        policy=policy,
        now=now - timedelta(seconds=60),
    )

    check = services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version=None, policy=policy, now=now
    )

    assert earlier.verdict == "warning"  # critical now, but not yet for two windows
    assert check.verdict == "critical"
    assert check.should_rollback
    assert check.result["inputs"]["history_from_checks"] == 1


def test_evaluate_many__issues_as_many_queries_for_twenty_canaries_as_for_two(
    now, window_end, make_policy
):
    policy = make_policy(alert_channels=["email"], alert_recipients=["team@example.com"])
    for number in range(20):
        record(
            traffic(f"svc-{number}", "2.0", end=window_end, seconds=60, requests=200, errors=10),
            traffic(f"svc-{number}", "1.0", end=window_end, seconds=60, requests=200),
        )

    def requests(count: int, first: int = 0) -> list[EvaluationRequest]:
        return [
            EvaluationRequest(
                service=f"svc-{number}",
                canary_version="2.0",
                stable_version="1.0",
                policy=policy,
            )
            for number in range(first, first + count)
        ]

    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as two:
        services.health_evaluate_many(requests=requests(2), now=now)
    with CaptureQueriesContext(connection) as eighteen:
        checks = services.health_evaluate_many(requests=requests(18, first=2), now=now)

    assert len(checks) == 18 and {check.verdict for check in checks} == {"critical"}
    assert len(eighteen) == len(two)
    assert Alert.objects.count() == 20


def test_evaluate_many__each_check_returned__is_the_stored_row_of_its_canary(
    now, window_end, make_policy
):
    policy = make_policy()
    for number in range(6):
        errors = 10 if number % 2 else 0
        record(
            traffic(
                f"svc-{number}", "2.0", end=window_end, seconds=60, requests=200, errors=errors
            ),
            traffic(f"svc-{number}", "1.0", end=window_end, seconds=60, requests=200),
        )
    requests = [
        EvaluationRequest(
            service=f"svc-{number}",
            canary_version="2.0",
            stable_version="1.0",
            policy=policy,
            planned_canary_share=10.0 * number,
        )
        for number in (3, 0, 5, 1, 4, 2)
    ]

    checks = services.health_evaluate_many(requests=requests, now=now)

    assert [check.service for check in checks] == [request.service for request in requests]
    for check in checks:
        stored = HealthCheck.objects.get(pk=check.pk)
        assert (stored.service, stored.verdict, stored.message) == (
            check.service,
            check.verdict,
            check.message,
        )
        assert stored.planned_canary_share == check.planned_canary_share
        assert (stored.window_end, stored.created_at) == (check.window_end, check.created_at)
        assert stored.result == check.result
        assert stored.verdict == ("critical" if int(check.service[-1]) % 2 else "pass")


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_evaluate__leaves_the_cycle_collector_as_it_found_it(now, make_policy, enabled):
    policy = make_policy()
    if not enabled:
        gc.disable()
    try:
        services.health_evaluate(
            service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
        )
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_evaluate__a_policy_window_not_in_whole_buckets__is_rounded_up(
    now, window_end, make_policy
):
    policy = make_policy()
    record(traffic("checkout", "2.0", end=window_end, seconds=60, requests=200))

    check = services.health_evaluate(
        service="checkout",
        canary_version="2.0",
        stable_version=None,
        policy=policy,
        window_seconds=55,
        now=now,
    )

    # 55 s is 56 on the 2-second grid: the outcome at 60 s back is left out.
    assert check.window_seconds == 56
    assert check.result["inputs"]["canary"]["throughput"] == pytest.approx(1_000 / 56)


# --------------------------------------------------------------------------- alerts


def evaluate(policy: Any, now: datetime) -> HealthCheck:
    return services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )


def failing(window_end: datetime, errors: int = 10) -> None:
    record(
        traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=errors),
        traffic("checkout", "1.0", end=window_end, seconds=60, requests=1000, errors=1),
    )


def healthy(window_end: datetime) -> None:
    record(
        traffic("checkout", "2.0", end=window_end, seconds=60, requests=200),
        traffic("checkout", "1.0", end=window_end, seconds=60, requests=1000),
    )


def test_alert__raised_by_a_failing_check_and_resolved_by_a_passing_one__notifies_both(
    now, window_end, make_policy
):
    policy = make_policy(alert_channels=["email"], alert_recipients=["team@example.com"])
    failing(window_end)
    check = evaluate(policy, now)
    alert = Alert.objects.get()

    assert (alert.status, alert.severity, alert.first_check) == ("open", "critical", check)
    assert alert.message == check.message
    raised = NotificationOutbox.objects.get()
    assert (raised.event, raised.channel, raised.target) == ("raised", "email", "team@example.com")
    assert check.message in raised.payload["text"]

    later = now + timedelta(minutes=2)
    healthy(window_end + timedelta(minutes=2))
    evaluate(policy, later)

    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert alert.resolution.startswith("Recovered: Pass")
    events = list(NotificationOutbox.objects.order_by("id").values_list("event", flat=True))
    assert events == [NotificationEvent.RAISED, NotificationEvent.RESOLVED]


def test_alert__failing_again_within_the_cooldown__is_raised_without_a_new_notification(
    now, window_end, make_policy
):
    policy = make_policy(
        alert_channels=["email"], alert_recipients=["team@example.com"], alert_cooldown_seconds=600
    )
    failing(window_end)
    evaluate(policy, now)
    services.alert_resolve(alert=Alert.objects.get(), actor=None, note="deployed a fix")
    failing(window_end + timedelta(minutes=1))

    evaluate(policy, now + timedelta(minutes=1))

    assert Alert.objects.filter(status=AlertStatus.OPEN).count() == 1
    events = list(NotificationOutbox.objects.order_by("id").values_list("event", flat=True))
    assert events == [NotificationEvent.RAISED, NotificationEvent.RESOLVED]


def test_alert__getting_worse__becomes_critical_and_notifies_at_once(now, window_end, make_policy):
    policy = make_policy(alert_channels=["email"], alert_recipients=["team@example.com"])
    record(traffic("checkout", "2.0", end=window_end, seconds=60, requests=200, errors=4))
    services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version=None, policy=policy, now=now
    )
    assert Alert.objects.get().severity == "warning"
    later = window_end + timedelta(minutes=1)
    record(traffic("checkout", "2.0", end=later, seconds=60, requests=200, errors=20))

    services.health_evaluate(
        service="checkout",
        canary_version="2.0",
        stable_version=None,
        policy=policy,
        now=now + timedelta(minutes=1),
    )

    alert = Alert.objects.get()
    assert (alert.severity, alert.check_count, alert.escalation_level) == ("critical", 2, 0)
    events = list(NotificationOutbox.objects.order_by("id").values_list("event", flat=True))
    assert events == [NotificationEvent.RAISED, NotificationEvent.SEVERITY]


def test_escalation__fires_each_due_rule_once__until_acknowledged(now, window_end, make_policy):
    policy = make_policy(
        alert_channels=["email"],
        alert_recipients=["team@example.com"],
        escalation_rules=[
            {"severity": "critical", "delay_seconds": 60, "recipients": ["oncall@example.com"]},
            {"severity": "critical", "delay_seconds": 600, "recipients": ["head@example.com"]},
            {"severity": "warning", "delay_seconds": 1, "recipients": ["nobody@example.com"]},
        ],
    )
    failing(window_end)
    evaluate(policy, now)

    assert services.alerts_escalate(now=now + timedelta(seconds=30)) == 0
    assert services.alerts_escalate(now=now + timedelta(seconds=90)) == 1
    assert services.alerts_escalate(now=now + timedelta(seconds=120)) == 0
    services.alert_acknowledge(alert=Alert.objects.get(), actor=None)
    assert services.alerts_escalate(now=now + timedelta(hours=1)) == 0

    alert = Alert.objects.get()
    assert (alert.status, alert.escalation_level) == ("acknowledged", 1)
    escalated = NotificationOutbox.objects.get(event=NotificationEvent.ESCALATED)
    assert escalated.target == "oncall@example.com"


def test_acknowledge__an_alert_already_acknowledged__is_not_allowed(
    now, window_end, make_policy, engineer
):
    policy = make_policy()
    failing(window_end)
    evaluate(policy, now)
    alert = services.alert_acknowledge(alert=Alert.objects.get(), actor=engineer)

    with pytest.raises(TransitionNotAllowed) as refused:
        services.alert_acknowledge(alert=alert, actor=engineer)

    assert "acknowledged by erin" in refused.value.message
    assert alert.acknowledged_by == engineer


def test_resolve__by_a_person__records_who_and_why(now, window_end, make_policy, engineer):
    policy = make_policy()
    failing(window_end)
    evaluate(policy, now)

    alert = services.alert_resolve(alert=Alert.objects.get(), actor=engineer, note="rolled back")

    assert (alert.status, alert.resolved_by) == ("resolved", engineer)
    assert alert.resolution == "Resolved by erin: rolled back"
    with pytest.raises(TransitionNotAllowed):
        services.alert_resolve(alert=alert, actor=engineer)


# --------------------------------------------------------------------------- policies


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {"policy": {"thresholds": [{"metric": "error_rate", "operator": "gt"}]}},
            "policy.thresholds[0].critical",
        ),
        ({"policy": {"no_data": "maybe"}}, "policy.no_data"),
        ({"alert_recipients": ["not-an-address"]}, "alert_recipients[0]"),
        ({"alert_channels": ["pager"]}, "alert_channels[0]"),
        (
            {"escalation_rules": [{"severity": "fatal", "delay_seconds": 1}]},
            "escalation_rules[0].severity",
        ),
        ({"name": ""}, "name"),
    ],
    ids=["threshold", "no-data", "recipient", "channel", "escalation", "name"],
)
def test_policy_create__with_bad_input__is_refused_naming_the_field(fields, field):
    fields.setdefault("name", "strict")

    with pytest.raises(ValidationFailed) as refused:
        services.health_policy_create(**fields)

    assert field in refused.value.fields, refused.value.fields


def test_policy_create__stores_the_canonical_policy_and_is_audited(engineer):
    policy = services.health_policy_create(
        name="strict", policy={"min_requests": 50}, actor=engineer, source="api"
    )

    assert policy.policy["min_requests"] == 50
    assert policy.policy["comparison"]["tolerance_percent"] == 50.0
    assert policy.policy["comparison"]["rollback"] is True
    from canary_site.selectors import audit_entries_for

    entry = audit_entries_for(obj=policy).get()
    assert (entry.actor, entry.source, entry.verb) == (engineer, "api", "create")


# --------------------------------------------------------------------------- retention


def test_compact__rolls_old_fine_buckets_into_coarse_ones_keeping_every_count(now, settings):
    settings.CANARY_METRICS_ROLLUP_AFTER_HOURS = 1
    settings.CANARY_METRICS_RETENTION_HOURS = 24
    old_end = datetime.fromtimestamp(int(now.timestamp()) // 300 * 300 - 3 * 3600, tz=UTC)
    record(
        traffic("checkout", "2.0", end=old_end, seconds=600, requests=10, errors=1),
        traffic("checkout", "2.0", end=now, seconds=60, requests=10),
    )
    services.metrics_push(
        samples=[
            {
                "service": "checkout",
                "version": "2.0",
                "metric": "custom:queue_depth",
                "value": value,
                "timestamp": old_end.timestamp() - 100 + value / 10,
            }
            for value in (1.0, 9.0)
        ],
        now=now,
    )

    report = services.metrics_compact(now=now)

    assert report.rolled_up == 60 + 1  # both custom values share a 2-second bucket
    coarse = MetricBucket.objects.filter(resolution=300, metric="requests")
    assert coarse.count() == 2
    assert sum(b.requests for b in coarse) == 600 and sum(b.errors for b in coarse) == 60
    merged = Histogram.merged(Histogram.from_list(b.latency) for b in coarse)
    assert merged.total == 600
    custom = MetricBucket.objects.get(resolution=300, metric="custom:queue_depth")
    assert (custom.value_sum, custom.value_count, custom.value_min, custom.value_max) == (
        10.0,
        2,
        1.0,
        9.0,
    )
    assert MetricBucket.objects.filter(resolution=2).count() == 6  # the recent minute stays
    assert services.metrics_compact(now=now).rolled_up == 0


def test_compact__deletes_buckets_and_idempotency_keys_past_retention(now, settings):
    settings.CANARY_METRICS_RETENTION_HOURS = 2
    record(traffic("checkout", "2.0", end=now - timedelta(hours=3), seconds=30))
    services.metrics_push(samples=push_samples(now), idempotency_key="old", now=now)
    PushBatch.objects.update(received_at=now - timedelta(days=2))

    report = services.metrics_compact(now=now)

    assert report.deleted_buckets == 3
    assert report.deleted_batches == 1
    assert MetricBucket.objects.count() == 2  # the fresh push


def test_histograms_of_realistic_latencies__survive_the_store_unchanged(now):
    histogram = Histogram.from_values(lognormal(500, 120.0, sigma=0.8))
    services.metrics_record_outcomes(
        outcomes=[
            OutcomeBatchItem(
                service="checkout",
                version="2.0",
                bucket_start=now,
                requests=500,
                latency=histogram,
            )
        ]
    )

    assert Histogram.from_list(bucket().latency) == histogram


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"metric": "cpu"}, "metric"),
        ({"query": 'up{job="{{job}}"}'}, "query"),
        ({"versions": ["1.0", "not a version"]}, "versions[1]"),
    ],
    ids=["metric", "placeholder", "version"],
)
def test_prometheus_query_create__with_bad_input__is_refused_naming_the_field(fields, field):
    values = {"name": "requests", "metric": "requests", "query": "up", **fields}

    with pytest.raises(ValidationFailed) as refused:
        services.prometheus_query_create(**values)

    assert field in refused.value.fields
