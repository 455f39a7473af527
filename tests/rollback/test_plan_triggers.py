"""A rollback plan's own automatic triggers: thresholds judged by the health app's judge over the
canary's own traffic, written into the metric store through the health app's ingestion, on a
simulated clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deployments.choices import DeploymentStatus, EventKind
from deployments.models import Deployment
from health.models import HealthCheck, HealthPolicy
from rollback.models import RollbackExecution, RollbackPlan
from rollback.triggers import plan_triggers_check, policy_name
from tests.deployments.conftest import lognormal

pytestmark = pytest.mark.django_db

STABLE, CANARY = "1.0.0", "2.0.0"
BUCKET = 2  # the metric store's default resolution
SETTLE = 2  # the health app's settle time: a window ends this long before the look
WINDOW = 10


class Clock:
    """Starts an hour ago on a ten-second boundary, where the deployment starts; ``look(k)``
    is the moment whose latest window ends ``k`` windows after the start."""

    def __init__(self) -> None:
        base = int((datetime.now(tz=UTC) - timedelta(hours=1)).timestamp()) // 60 * 60
        self.start = datetime.fromtimestamp(base, tz=UTC)

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def look(self, windows: int, window: int = WINDOW) -> datetime:
        return self.at(windows * window + SETTLE)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def feed(
    *,
    start: datetime,
    seconds: int,
    version: str = CANARY,
    service: str = "shop",
    requests: int = 50,
    errors: int = 0,
    median_ms: float = 50.0,
    every: int = BUCKET,
) -> None:
    """``requests`` with ``errors`` in one bucket every ``every`` seconds of
    ``[start, start + seconds)``, through the health app's ingestion of proxy outcomes."""
    from health.histogram import Histogram
    from health.ingest import OutcomeBatchItem
    from health.services import metrics_record_outcomes

    latency = Histogram.from_values(lognormal(requests, median_ms))
    metrics_record_outcomes(
        outcomes=[
            OutcomeBatchItem(
                service=service,
                version=version,
                bucket_start=start + timedelta(seconds=offset),
                requests=requests,
                errors=errors,
                latency=latency,
            )
            for offset in range(0, seconds, every)
        ]
    )


def make_running(clock: Clock, *, service: str = "shop", **top: Any) -> Deployment:
    """A routed service and its deployment, started at the clock's start (phase 1, 10%)."""
    from deployments import services as deployment_services
    from deployments.transitions import deployment_transition
    from routing import services as routing_services

    routed = routing_services.service_create(name=service, stable_version=STABLE)
    for name, version, port in (("stable", STABLE, 9), ("canary", CANARY, 10)):
        routing_services.target_create(
            service=routed, name=name, endpoint=f"http://127.0.0.1:{port}", version=version
        )
    phases = [
        {"trafficPercentage": share, "durationMs": 600_000, "successCriteria": []}
        for share in (10, 50, 100)
    ]
    deployment = deployment_services.deployment_create(
        config={
            "name": f"{service} 2.0",
            "serviceName": service,
            "stableVersion": STABLE,
            "canaryVersion": CANARY,
            "phases": phases,
            "maxDeploymentTimeMs": 3_600_000,
            **top,
        }
    )
    deployment_transition(deployment_id=deployment.pk, action="start", now=clock.start)
    deployment.refresh_from_db()
    return deployment


def make_plan(*thresholds: dict[str, Any], **definition: Any) -> RollbackPlan:
    from rollback import services

    values = {
        "name": "careful",
        "service": "shop",
        "isDefault": True,
        "triggers": ["automatic", "manual"],
        "autoTriggerEnabled": True,
        "triggerThresholds": list(thresholds),
        **definition,
    }
    # None leaves a key out: a plan for no service in particular, named by deployments.
    return services.rollback_plan_create(
        definition={key: value for key, value in values.items() if value is not None}
    )


ERROR_RATE_OVER_10 = {
    "metric": "error_rate",
    "operator": "greater_than",
    "threshold": 10,
    "duration": WINDOW,
    "consecutiveFailures": 2,
}


def status(deployment: Deployment) -> str:
    deployment.refresh_from_db()
    return deployment.status


def latest_check(plan: RollbackPlan, window: int = WINDOW) -> HealthCheck:
    return HealthCheck.objects.filter(policy_name=policy_name(plan, window)).latest("window_end")


# --------------------------------------------------------------------------- the error rate


def test_error_rate__rolls_back_only_after_two_consecutive_violating_windows(clock):
    deployment = make_running(clock)
    plan = make_plan(ERROR_RATE_OVER_10)
    feed(start=clock.start, seconds=60, version=STABLE, requests=450)
    feed(start=clock.start, seconds=WINDOW)  # the first window healthy
    feed(start=clock.at(WINDOW), seconds=50, errors=15)  # then 30% errors

    report = plan_triggers_check(now=clock.look(1))
    assert (report.watched, report.evaluated, report.triggered) == (1, 1, 0)
    assert status(deployment) == DeploymentStatus.RUNNING

    # One violating window: the current one, beyond doubt, but the one before it is healthy.
    report = plan_triggers_check(now=clock.look(2))
    assert report.triggered == 0 and report.errors == []
    assert status(deployment) == DeploymentStatus.RUNNING
    (judged,) = latest_check(plan).result["rollback_checks"]
    assert (judged["violations"], judged["needed"], judged["breached"]) == (1, 2, False)
    assert "in 1 of the 2 consecutive windows needed" in judged["message"]

    # The second violating window in a row: the plan's trigger holds.
    report = plan_triggers_check(now=clock.look(3))
    assert report.triggered == 1 and report.errors == []
    assert status(deployment) == DeploymentStatus.ROLLING_BACK

    event = deployment.events.get(kind=EventKind.ROLLBACK)
    assert event.source == "system" and event.actor is None
    assert event.reason.startswith("Roll back: the triggers of rollback plan 'careful' hold: ")
    # The judge's sentence: the metric, the threshold and the sample behind it.
    assert "Canary error rate 30.00% (75 errors in 250 requests, 95% interval" in event.reason
    assert "above the 10% rollback threshold beyond doubt for 2 consecutive windows" in event.reason
    assert event.evidence["planTrigger"] == "careful"
    assert event.evidence["should_rollback"] is True
    assert event.evidence["windows"]["current"]["canary"]["errors"] == 75
    assert event.evidence["healthCheck"]["shouldRollback"] is True
    assert "carry" not in event.evidence
    # The fault's first bad bucket, not the look that judged it.
    assert datetime.fromisoformat(event.evidence["faultStart"]) == clock.at(WINDOW)

    execution = RollbackExecution.objects.get(deployment=deployment)
    assert execution.plan == plan and execution.trigger == "automatic"
    assert execution.reason == event.reason
    assert execution.evidence["planTrigger"] == "careful"
    assert execution.breach_at == clock.at(WINDOW)

    # Looked at again in the same window: the rollback has already begun, nothing more.
    report = plan_triggers_check(now=clock.look(3))
    assert (report.watched, report.triggered) == (0, 0)
    assert RollbackExecution.objects.filter(deployment=deployment).count() == 1


def test_error_rate__the_windows_are_the_phases_own_traffic(clock):
    """A bad first phase promoted away from is not held against the next one."""
    from deployments.transitions import deployment_transition

    deployment = make_running(clock)
    make_plan(ERROR_RATE_OVER_10)
    feed(start=clock.start, seconds=WINDOW * 2, errors=25)  # phase 1: 50% errors
    deployment_transition(
        deployment_id=deployment.pk, action="promote", reason="by hand", now=clock.at(2 * WINDOW)
    )
    feed(start=clock.at(2 * WINDOW), seconds=WINDOW, errors=15)  # phase 2: 30% errors

    # Phase 2 has one window of its own: one violation, however bad phase 1 was.
    report = plan_triggers_check(now=clock.look(3))
    assert (report.evaluated, report.triggered) == (1, 0)
    assert status(deployment) == DeploymentStatus.RUNNING


def test_a_healthy_canary_is_never_rolled_back(clock):
    deployment = make_running(clock)
    plan = make_plan(ERROR_RATE_OVER_10)
    feed(start=clock.start, seconds=120, requests=200, errors=1)  # 0.5% errors

    for windows in range(1, 13):
        report = plan_triggers_check(now=clock.look(windows))
        assert report.evaluated == 1 and report.triggered == 0 and report.errors == []
    assert status(deployment) == DeploymentStatus.RUNNING
    check = latest_check(plan)
    assert check.verdict == "pass" and check.should_rollback is False
    assert "within the 10% rollback threshold" in check.result["rollback_checks"][0]["message"]


def test_a_thin_sample_never_triggers(clock):
    """2 errors in 5 requests is 40%, and even its 95% interval (11.8-76.9%) is above 10%;
    but 5 requests are sparse data, which never rolls back."""
    deployment = make_running(clock)
    plan = make_plan({**ERROR_RATE_OVER_10, "consecutiveFailures": 1})
    feed(start=clock.start, seconds=120, requests=5, errors=2, every=WINDOW)

    for windows in range(1, 13):
        assert plan_triggers_check(now=clock.look(windows)).triggered == 0
    assert status(deployment) == DeploymentStatus.RUNNING
    check = latest_check(plan)
    assert check.should_rollback is False
    current = check.result["windows"]["current"]["canary"]
    assert (current["requests"], current["errors"]) == (5, 2)
    message = check.result["rollback_checks"][0]["message"]
    assert "no data (5 requests from the canary in the window, at least 20 needed)" in message


# --------------------------------------------------------------------------- latency


def test_latency_p95__a_slow_canary_triggers(clock):
    deployment = make_running(clock)
    plan = make_plan(
        {
            "metric": "latency_p95",
            "operator": "greater_than",
            "threshold": 500,
            "duration": WINDOW,
            "consecutiveFailures": 1,
        }
    )
    feed(start=clock.start, seconds=60, version=STABLE, requests=450)
    feed(start=clock.start, seconds=60, median_ms=900.0)

    report = plan_triggers_check(now=clock.look(1))
    assert report.triggered == 1, report.errors
    assert status(deployment) == DeploymentStatus.ROLLING_BACK
    event = deployment.events.get(kind=EventKind.ROLLBACK)
    assert "Canary p95 latency" in event.reason
    assert "(250 samples, 95% interval" in event.reason
    assert "above the 500 ms rollback threshold beyond doubt." in event.reason
    execution = RollbackExecution.objects.get(deployment=deployment)
    assert (execution.plan, execution.trigger) == (plan, "automatic")


def test_latency_p95__a_fast_canary_does_not(clock):
    deployment = make_running(clock)
    make_plan({"metric": "latency_p95", "threshold": 500, "duration": WINDOW})
    feed(start=clock.start, seconds=60, median_ms=120.0)

    for windows in range(1, 6):
        assert plan_triggers_check(now=clock.look(windows)).triggered == 0
    assert status(deployment) == DeploymentStatus.RUNNING


# --------------------------------------------------------------------------- windows


def test_a_duration_shorter_than_a_bucket_is_judged_over_one_bucket(clock):
    from rollback import plans
    from rollback.triggers import policy_documents

    spec = plans.read_plan(
        {
            "name": "quick",
            "triggerThresholds": [
                {"metric": "error_rate", "threshold": 5, "duration": 0},
                {"metric": "error_rate", "threshold": 5, "duration": 5},
                {"metric": "latency_p95", "threshold": 900, "durationMs": 10_000},
            ],
        }
    )
    documents = policy_documents(spec)
    # Whole buckets of 2 s: 0 s is one bucket, 5 s three; 10 s stays 10 s.
    assert sorted(documents) == [BUCKET, 6, 10]
    assert documents[10]["auto_rollback"]["thresholds"] == [
        {
            "metric": "latency_p95",
            "operator": "gt",
            "threshold": 900.0,
            "consecutive_violations": 1,
        }
    ]


def test_thresholds_of_two_durations_are_judged_in_the_same_pass(clock):
    deployment = make_running(clock)
    plan = make_plan(
        ERROR_RATE_OVER_10,
        {"metric": "latency_p95", "threshold": 500, "duration": 20, "consecutiveFailures": 1},
    )
    feed(start=clock.start, seconds=60, median_ms=900.0)

    # Twenty seconds in: one error-rate window (not enough), one latency window (enough).
    report = plan_triggers_check(now=clock.look(2))
    assert report.triggered == 1, report.errors
    assert status(deployment) == DeploymentStatus.ROLLING_BACK
    assert set(HealthPolicy.objects.values_list("name", flat=True)) >= {
        policy_name(plan, 10),
        policy_name(plan, 20),
    }
    event = deployment.events.get(kind=EventKind.ROLLBACK)
    assert "p95 latency" in event.reason and "error rate" not in event.reason


# --------------------------------------------------------------------------- left alone


@pytest.mark.parametrize(
    "definition",
    [
        {"autoTriggerEnabled": False},
        {"triggers": ["manual"]},
        {"triggers": ["manual", "kill_switch"]},
    ],
    ids=["auto-trigger-off", "manual-only", "manual-and-kill-switch"],
)
def test_a_plan_without_automatic_triggers_never_triggers(clock, definition):
    deployment = make_running(clock)
    make_plan({**ERROR_RATE_OVER_10, "consecutiveFailures": 1}, **definition)
    feed(start=clock.start, seconds=60, errors=40)  # 80% errors

    for windows in range(1, 6):
        report = plan_triggers_check(now=clock.look(windows))
        assert (report.examined, report.watched, report.triggered) == (1, 0, 0)
    assert status(deployment) == DeploymentStatus.RUNNING
    assert not HealthCheck.objects.exists()


def test_a_deployment_with_auto_rollback_off_is_left_to_a_person(clock):
    deployment = make_running(clock, autoRollback=False)
    make_plan({**ERROR_RATE_OVER_10, "consecutiveFailures": 1})
    feed(start=clock.start, seconds=60, errors=40)

    assert plan_triggers_check(now=clock.look(2)).triggered == 0
    assert status(deployment) == DeploymentStatus.RUNNING


def test_a_paused_deployment_is_watched_too(clock):
    from deployments.transitions import deployment_transition

    deployment = make_running(clock)
    make_plan({**ERROR_RATE_OVER_10, "consecutiveFailures": 1})
    deployment_transition(deployment_id=deployment.pk, action="pause", now=clock.at(1))
    feed(start=clock.start, seconds=60, errors=40)

    assert plan_triggers_check(now=clock.look(1)).triggered == 1
    assert status(deployment) == DeploymentStatus.ROLLING_BACK


def test_a_deployment_without_a_plan_is_left_to_the_deployments_tick(clock):
    deployment = make_running(clock)
    feed(start=clock.start, seconds=60, errors=40)

    report = plan_triggers_check(now=clock.look(2))
    assert (report.examined, report.watched, report.triggered) == (1, 0, 0)
    assert status(deployment) == DeploymentStatus.RUNNING


# --------------------------------------------------------------------------- bad plans


def test_a_plan_whose_thresholds_make_no_health_policy_is_counted_and_the_others_still_checked(
    clock,
):
    good = make_running(clock, rollbackPlan="careful")
    bad = make_running(clock, service="cart", rollbackPlan="impossible")
    make_plan({**ERROR_RATE_OVER_10, "consecutiveFailures": 1}, isDefault=False)
    # An error rate above 150% is no threshold the health judge takes.
    make_plan(
        {"metric": "error_rate", "threshold": 150, "duration": WINDOW},
        name="impossible",
        service="cart",
        isDefault=False,
    )
    feed(start=clock.start, seconds=60, errors=40)
    feed(start=clock.start, seconds=60, errors=40, service="cart")

    report = plan_triggers_check(now=clock.look(1))
    assert report.bad_plans == 1
    assert "rollback plan 'impossible' its thresholds make no health policy" in report.errors[0]
    assert report.triggered == 1
    assert status(good) == DeploymentStatus.ROLLING_BACK
    assert status(bad) == DeploymentStatus.RUNNING


def test_a_stored_plan_that_no_longer_reads_is_counted_not_raised(clock):
    deployment = make_running(clock)
    plan = make_plan({**ERROR_RATE_OVER_10, "consecutiveFailures": 1})
    RollbackPlan.objects.filter(pk=plan.pk).update(
        definition={**plan.definition, "strategy": "sideways"}
    )
    feed(start=clock.start, seconds=60, errors=40)

    report = plan_triggers_check(now=clock.look(1))
    assert (report.bad_plans, report.triggered) == (1, 0)
    assert "does not read" in report.errors[0]
    assert status(deployment) == DeploymentStatus.RUNNING


def test_a_changed_plan_rewrites_its_health_policy(clock):
    from rollback import services

    make_running(clock)
    plan = make_plan(ERROR_RATE_OVER_10)
    feed(start=clock.start, seconds=60)
    plan_triggers_check(now=clock.look(1))
    policy = HealthPolicy.objects.get(name=policy_name(plan, WINDOW))
    assert policy.alerting_enabled is False
    assert policy.policy["auto_rollback"]["thresholds"][0]["threshold"] == 10.0

    services.rollback_plan_update(
        plan=plan,
        definition={
            **plan.definition,
            "triggerThresholds": [{**ERROR_RATE_OVER_10, "threshold": 25}],
        },
    )
    plan_triggers_check(now=clock.look(2))
    policy.refresh_from_db()
    assert policy.policy["auto_rollback"]["thresholds"][0]["threshold"] == 25.0
    assert policy.policy["thresholds"][0]["critical"] == 25.0


# --------------------------------------------------------------------------- queries


# Measured at 50 for one deployment and for twenty; most of it is the transition batch.
QUERY_BUDGET = 55


@pytest.mark.parametrize("count", [1, 20])
def test_queries_do_not_grow_with_the_deployments(
    clock, count, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    deployments = []
    make_plan(ERROR_RATE_OVER_10, isDefault=False, service=None)
    for index in range(count):
        name = f"svc-{index}"
        deployments.append(make_running(clock, service=name, rollbackPlan="careful"))
        feed(start=clock.start, seconds=60, service=name, version=STABLE, requests=450)
        feed(start=clock.start, seconds=60, service=name, errors=15)

    # The first look also writes the plan's health policy; the second rolls every one back.
    for windows, triggered in ((1, 0), (2, count)):
        with (
            django_capture_on_commit_callbacks(execute=True),
            django_assert_max_num_queries(QUERY_BUDGET),
        ):
            report = plan_triggers_check(now=clock.look(windows))
        assert (report.evaluated, report.triggered, report.errors) == (count, triggered, [])
    for deployment in deployments:
        assert status(deployment) == DeploymentStatus.ROLLING_BACK
    assert (
        RollbackExecution.objects.filter(trigger="automatic", plan__name="careful").count() == count
    )


def test_queries__counted_exactly__are_the_same_for_one_and_for_twenty(clock):
    make_plan(ERROR_RATE_OVER_10, isDefault=False, service=None)

    def look(windows: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            report = plan_triggers_check(now=clock.look(windows))
        assert report.errors == []
        return len(captured.captured_queries)

    counts = []
    for offset, count in ((0, 1), (1, 20)):
        for index in range(offset, offset + count):
            make_running(clock, service=f"svc-{index}", rollbackPlan="careful")
            feed(start=clock.start, seconds=60, service=f"svc-{index}", errors=15)
        look(1)  # one window judged (the first time, the plan's health policy written too)
        counts.append(look(2))  # the rollbacks
        # Rolling back, they are the plan's executions' now: the next look leaves them be.
        assert not Deployment.objects.filter(status=DeploymentStatus.RUNNING).exists()
    assert counts[0] == counts[1]


# --------------------------------------------------------------------------- the beat


def test_the_beat_runs_the_check_every_tick(settings):
    from rollback import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["rollback-plan-triggers"]
    assert entry["task"] == tasks.plan_triggers_check.name == "rollback.tasks.plan_triggers_check"
    assert (
        entry["schedule"]
        == settings.CELERY_BEAT_SCHEDULE["rollback-executions-advance"]["schedule"]
    )
    assert tasks.plan_triggers_check.apply().get() == {
        "watched": 0,
        "evaluated": 0,
        "triggered": 0,
        "bad_plans": 0,
        "errors": 0,
    }
