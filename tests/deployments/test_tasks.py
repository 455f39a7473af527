"""The tick: health evaluation, phase judgement and the decisions it takes, on a simulated clock
with traffic written straight into the metric store (the closed loop with real processes is in
test_closed_loop.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deployments import services, tasks
from deployments.choices import DeploymentStatus, EventKind, PhaseStatus
from deployments.models import Deployment
from deployments.signals import deployment_breached
from flags import services as flag_services
from health.models import HealthCheck, HealthPolicy
from routing import services as routing_services
from routing.models import RuleTarget, Service
from tests.deployments.conftest import BUCKET, CANARY, STABLE, Clock, feed, make_config, phase

pytestmark = pytest.mark.django_db


def start(deployment: Deployment, clock: Clock) -> None:
    services.deployment_transition(
        deployment_id=deployment.pk, action="start", source="api", now=clock.now
    )


def tick(clock: Clock, seconds: float) -> services.TickReport:
    return services.deployments_tick(now=clock.advance(seconds))


def canary_weight(deployment: Deployment) -> float:
    deployment.refresh_from_db()
    return float(
        RuleTarget.objects.get(rule_id=deployment.routing_rule_id, target__name="canary").weight
    )


def test_tick__a_healthy_canary_walks_through_every_phase_and_becomes_stable(
    make_deployment, clock
):
    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=180)
    feed(start=clock.now, seconds=180, version=STABLE)

    seen_phases = []
    for _ in range(20):
        tick(clock, 5)
        deployment.refresh_from_db()
        seen_phases.append(deployment.current_phase)
        if deployment.status != DeploymentStatus.RUNNING:
            break

    assert deployment.status == DeploymentStatus.SUCCEEDED
    assert sorted(set(seen_phases)) == [1, 2, 3]
    assert Service.objects.get(name="shop").stable_version == CANARY
    promotes = deployment.events.filter(kind=EventKind.PROMOTE).order_by("at")
    assert [event.phase for event in promotes] == [2, 3]
    for event in promotes:
        # The why of an automatic decision, and the evidence behind it.
        assert event.source == "system" and event.actor is None
        assert event.reason.startswith("Advance: the phase has run its minimum 20s")
        assert event.evidence["judgement"]["outcome"] == "advance"
        assert event.evidence["healthCheck"]["canary"]["availability"] == 100.0
    assert deployment.events.filter(kind=EventKind.SUCCEED).count() == 1


def test_tick__without_canary_data__no_phase_advances(make_deployment, clock):
    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=120, version=STABLE)  # only the stable version answers

    for _ in range(12):
        tick(clock, 5)

    deployment.refresh_from_db()
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
    current = deployment.phases.get(order=1)
    assert current.judgement["outcome"] == "wait"
    assert [c["state"] for c in current.judgement["criteria"]] == ["no_data"]
    assert "has no data" in current.judgement["reason"]


def test_tick__a_thin_window__is_no_data__not_a_pass(make_deployment, clock):
    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=120, requests=3)  # below the policy's 10 requests

    for _ in range(12):
        tick(clock, 5)

    current = Deployment.objects.get().phases.get(order=1)
    assert current.status == PhaseStatus.RUNNING
    assert current.judgement["criteria"][0]["state"] == "no_data"


def test_tick__a_breach__rolls_back_with_its_evidence_and_the_breach_signal(
    make_deployment, clock, django_capture_on_commit_callbacks
):
    flag = flag_services.flag_create(key="new-checkout")
    deployment = make_deployment(flags=[flag])
    start(deployment, clock)
    feed(start=clock.now, seconds=10)
    feed(start=clock.now + _seconds(10), seconds=60, errors=20)  # 40% errors from then on
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    deployment_breached.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            for _ in range(12):
                tick(clock, 5)
                if Deployment.objects.get().status != DeploymentStatus.RUNNING:
                    break
    finally:
        deployment_breached.disconnect(receiver)

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert canary_weight(deployment) == 0
    flag.refresh_from_db()
    assert flag.status == "disabled"
    rollback = deployment.events.get(kind=EventKind.ROLLBACK)
    assert rollback.source == "system"
    assert rollback.reason.startswith("Roll back: error_rate 40 is above the errorRate")
    assert rollback.evidence["judgement"]["breaches"][0]["observed"] == 40.0
    assert rollback.evidence["traffic"]["rule"]["weights"]["canary"] == 0.0
    assert deployment.events.filter(kind=EventKind.FINISH_ROLLBACK).count() == 1
    assert deployment.phases.get(order=1).status == PhaseStatus.ROLLED_BACK
    assert len(received) == 1
    assert received[0]["rolled_back"] is True and received[0]["phase"] == 1
    assert received[0]["evidence"]["judgement"]["outcome"] == "breach"


def test_tick__with_auto_promote_off__waits_for_a_person_and_says_so_once(make_deployment, clock):
    deployment = make_deployment(make_config(autoPromote=False))
    start(deployment, clock)
    feed(start=clock.now, seconds=120)

    for _ in range(12):
        tick(clock, 5)

    deployment.refresh_from_db()
    assert deployment.current_phase == 1
    ready = deployment.events.filter(kind=EventKind.READY)
    assert ready.count() == 1
    assert "auto-promote is off" in ready.get().reason
    # The criteria held, so a person's promote needs no reason.
    services.deployment_transition(
        deployment_id=deployment.pk, action="promote", source="ui", now=clock.now
    )
    assert Deployment.objects.get().current_phase == 2


def test_tick__with_auto_rollback_off__notes_the_breach_once_and_leaves_it_to_a_person(
    make_deployment, clock, django_capture_on_commit_callbacks
):
    deployment = make_deployment(make_config(autoRollback=False))
    start(deployment, clock)
    feed(start=clock.now, seconds=120, errors=25)
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    deployment_breached.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            for _ in range(8):
                tick(clock, 5)
    finally:
        deployment_breached.disconnect(receiver)

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    assert canary_weight(deployment) == 10
    assert deployment.events.filter(kind=EventKind.BREACH).count() == 1
    assert [r["rolled_back"] for r in received] == [False]


def test_tick__past_the_maximum_time__fails_and_returns_traffic_to_stable(make_deployment, clock):
    deployment = make_deployment(make_config(maxDeploymentTimeMs=60_000))
    start(deployment, clock)

    tick(clock, 61)

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.FAILED
    assert canary_weight(deployment) == 0
    assert "maximum deployment time of 1m" in deployment.events.get(kind=EventKind.FAIL).reason


def test_tick__finishes_a_rollback_left_half_way(make_deployment, clock):
    deployment = make_deployment()
    start(deployment, clock)
    services.deployment_transition(
        deployment_id=deployment.pk, action="rollback", reason="by hand", now=clock.now
    )

    report = tick(clock, 5)

    assert report.rolled_back == 1
    assert Deployment.objects.get().status == DeploymentStatus.ROLLED_BACK


def test_tick__run_twice_at_the_same_moment__takes_each_decision_once(make_deployment, clock):
    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=120)
    for _ in range(5):
        tick(clock, 5)
    assert Deployment.objects.get().current_phase == 2

    for _ in range(5):
        moment = clock.advance(5)
        services.deployments_tick(now=moment)
        services.deployments_tick(now=moment)

    deployment.refresh_from_db()
    promotes = list(
        deployment.events.filter(kind=EventKind.PROMOTE).values_list("phase", flat=True)
    )
    assert sorted(promotes) == list(range(2, deployment.current_phase + 1))
    checks = HealthCheck.objects.filter(service="shop", canary_version=CANARY)
    assert checks.count() == len(set(checks.values_list("window_end", "policy_id")))


def test_tick__queries_do_not_grow_with_the_number_of_waiting_deployments(policy, clock):
    def make_many(count: int, offset: int) -> None:
        for index in range(offset, offset + count):
            name = f"svc-{index}"
            service = routing_services.service_create(name=name, stable_version=STABLE)
            routing_services.target_create(
                service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
            )
            routing_services.target_create(
                service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
            )
            long_phases = [phase(10, duration_ms=600_000), phase(100, duration_ms=600_000)]
            deployment = services.deployment_create(
                config=make_config(
                    service=name, name=name, phases=long_phases, maxDeploymentTimeMs=3_600_000
                ),
                health_policy=policy,
            )
            start(deployment, clock)
            feed(start=clock.now - _seconds(60), seconds=120, service=name)

    make_many(2, 0)
    services.deployments_tick(now=clock.advance(12))  # a first pass creates the checks' rows
    with CaptureQueriesContext(connection) as few:
        report = services.deployments_tick(now=clock.advance(10))
    assert report.waiting == 2
    make_many(8, 2)
    services.deployments_tick(now=clock.now)
    with CaptureQueriesContext(connection) as many:
        report = services.deployments_tick(now=clock.advance(10))
    assert report.waiting == 10

    assert len(many.captured_queries) == len(few.captured_queries), [
        q["sql"][:120] for q in many.captured_queries
    ]


def test_tick__a_deployment_without_a_policy__is_judged_by_the_default_one(routed_service, clock):
    deployment = services.deployment_create(config=make_config(phases=[phase(10), phase(100)]))
    start(deployment, clock)

    tick(clock, 20)

    policy = HealthPolicy.objects.get(name="deployments-default")
    # The default acts: it compares with stable, rolls back and alerts.
    assert policy.alerting_enabled is True
    assert policy.policy["auto_rollback"]["enabled"] is True
    assert policy.policy["comparison"]["enabled"] is True
    assert HealthCheck.objects.filter(policy=policy, canary_version=CANARY).exists()


def test_task__runs_the_tick_and_returns_its_report(make_deployment):
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start")

    result = tasks.deployments_tick.apply().get()

    assert result["examined"] == 1 and result["errors"] == []
    assert tasks.deployment_tick.apply(args=[deployment.pk]).get()["examined"] == 1


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


def test_transition__hands_the_new_phase_to_a_tick_after_commit(
    make_deployment, settings, django_capture_on_commit_callbacks
):
    from canary_site.celery import app

    settings.CANARY_DEPLOYMENTS_ENQUEUE = True
    deployment = make_deployment()
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True  # the task runs here, in-process, instead of a broker
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            services.deployment_transition(deployment_id=deployment.pk, action="start")
    finally:
        app.conf.task_always_eager = eager

    assert callbacks  # nothing ran before the commit
    first = Deployment.objects.get().phases.get(order=1)
    assert first.judged_at is not None  # the tick judged the new phase at once
    assert first.judgement["outcome"] == "wait"


@pytest.mark.parametrize("enabled", [True, False])
def test_tick__leaves_the_garbage_collector_as_it_found_it(make_deployment, clock, enabled):
    import gc

    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=60)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        report = tick(clock, 20)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert report.examined == 1 and report.errors == []


# ---------------------------------------------------------------------------- own traffic


def bare_phase(share: float, *, duration_ms: int = 20_000, **thresholds: float) -> dict[str, Any]:
    """A phase without success criteria (and, unless given, without thresholds)."""
    return {"trafficPercentage": share, "durationMs": duration_ms, "rollbackThresholds": thresholds}


def test_tick__a_phase_without_criteria__is_not_promoted_on_no_evidence(make_deployment, clock):
    deployment = make_deployment(make_config(phases=[bare_phase(10), bare_phase(100)]))
    start(deployment, clock)
    feed(start=clock.now, seconds=120, version=STABLE)  # the canary gets nothing

    for _ in range(12):
        tick(clock, 5)

    deployment.refresh_from_db()
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
    judgement = deployment.phases.get(order=1).judgement
    assert judgement["outcome"] == "wait"
    assert judgement["ownTraffic"]["enough"] is False
    assert "of its own" in judgement["reason"] or "traffic has stopped" in judgement["reason"]

    # Once the canary has healthy traffic of its own, the phase advances, saying on what.
    feed(start=clock.now - _seconds(5), seconds=60)
    for _ in range(6):
        tick(clock, 5)
    promote = Deployment.objects.get().events.get(kind=EventKind.PROMOTE)
    assert "on its own canary traffic (0 errors in" in promote.reason
    assert "95% interval" in promote.reason


def test_tick__each_phase_is_judged_on_its_own_traffic_only(make_deployment, clock):
    deployment = make_deployment(
        make_config(phases=[bare_phase(10), bare_phase(50), bare_phase(100)])
    )
    start(deployment, clock)
    feed(start=clock.now, seconds=20)  # phase 1's traffic, and then nothing

    for _ in range(30):
        tick(clock, 5)
        if Deployment.objects.get().current_phase != 1:
            break
    deployment.refresh_from_db()
    assert deployment.current_phase == 2
    second = deployment.phases.get(order=2)
    for _ in range(12):
        tick(clock, 5)

    # Phase 1's requests are not phase 2's: it holds, and says why.
    deployment.refresh_from_db()
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 2)
    second.refresh_from_db()
    assert second.judgement["outcome"] == "wait"
    assert second.judgement["evidence"]["phase"]["requests"] == 0
    started = second.started_at.timestamp()
    assert all(second.observations["t0"] + t >= started for t in second.observations["t"])


def test_tick__traffic_stopped_mid_phase__holds_the_phase_and_says_why(make_deployment, clock):
    deployment = make_deployment(
        make_config(phases=[bare_phase(10, duration_ms=60_000), bare_phase(100)])
    )
    start(deployment, clock)
    feed(start=clock.now, seconds=30)  # half a minute of canary traffic, then it stops

    for _ in range(24):
        tick(clock, 5)

    deployment.refresh_from_db()
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
    judgement = deployment.phases.get(order=1).judgement
    assert "the canary's traffic has stopped: its latest window" in judgement["reason"]
    assert judgement["evidence"]["phase"]["requests"] >= 100  # it had plenty of its own before


def test_tick__one_error_in_a_thin_window__is_not_a_breach(make_deployment, clock):
    config = make_config(phases=[phase(10, thresholds={"errorRate": 1}), phase(100)])
    deployment = make_deployment(config)
    start(deployment, clock)
    feed(start=clock.now, seconds=120, requests=48, errors=1)  # "error rate 2.08" a window

    for _ in range(12):
        tick(clock, 5)

    deployment.refresh_from_db()
    assert deployment.status in (DeploymentStatus.RUNNING, DeploymentStatus.SUCCEEDED)
    assert not deployment.events.filter(kind=EventKind.ROLLBACK).exists()


def test_tick__a_breach__says_its_sample_and_when_the_fault_began(make_deployment, clock):
    deployment = make_deployment()
    start(deployment, clock)
    healthy_until = clock.now + _seconds(20)
    feed(start=clock.now, seconds=20)
    feed(start=healthy_until, seconds=60, errors=20)  # 40% errors from then on

    for _ in range(16):
        tick(clock, 5)
        if Deployment.objects.get().status != DeploymentStatus.RUNNING:
            break

    rollback = Deployment.objects.get().events.get(kind=EventKind.ROLLBACK)
    assert "errors in" in rollback.reason and "95% interval" in rollback.reason
    sample = rollback.evidence["judgement"]["breaches"][0]["sample"]
    assert sample["errors"] > 0 and sample["requests"] >= sample["errors"]
    # The fault's first bad bucket, not the look that judged it.
    fault = datetime.fromisoformat(rollback.evidence["faultStart"])
    first_bad = int(healthy_until.timestamp()) // BUCKET * BUCKET
    assert fault.timestamp() == first_bad


def test_tick__many_deployments_advancing_at_once__are_written_in_a_fixed_number_of_queries(
    policy, clock
):
    def make_many(count: int, offset: int) -> list[Deployment]:
        made = []
        for index in range(offset, offset + count):
            name = f"svc-{index}"
            service = routing_services.service_create(name=name, stable_version=STABLE)
            routing_services.target_create(
                service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
            )
            routing_services.target_create(
                service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
            )
            deployment = services.deployment_create(
                config=make_config(
                    service=name,
                    name=name,
                    phases=[bare_phase(10), bare_phase(50), bare_phase(100)],
                ),
                health_policy=policy,
            )
            start(deployment, clock)
            feed(start=clock.now, seconds=120, service=name)
            made.append(deployment)
        return made

    def advancing_tick() -> tuple[services.TickReport, int]:
        # Every phase has run its minimum with traffic of its own; the next tick advances all.
        with CaptureQueriesContext(connection) as captured:
            report = services.deployments_tick(now=clock.advance(25))
        return report, len(captured.captured_queries)

    few = make_many(2, 0)
    few_report, few_queries = advancing_tick()
    for deployment in few:
        deployment.refresh_from_db()
        services.deployment_transition(deployment_id=deployment.pk, action="abort", now=clock.now)
    many = make_many(7, 2)
    many_report, many_queries = advancing_tick()

    assert (few_report.advanced, many_report.advanced) == (2, 7)
    assert many_queries == few_queries
    for deployment in many:
        assert canary_weight(deployment) == 50  # phase 2's share, set in the advance itself
        assert Deployment.objects.get(pk=deployment.pk).current_phase == 2


# ---------------------------------------------------------------------------- decisions in bulk

# Each way a tick decides, as (phases, configuration, canary requests and errors a bucket, the
# report's counter): the decision comes with the first look 25 s after the start.
DECISIONS = {
    "advance": ([bare_phase(10), bare_phase(50), bare_phase(100)], {}, (50, 0), "advanced"),
    "succeed": ([bare_phase(100)], {}, (50, 0), "succeeded"),
    "rollback": ([bare_phase(10, errorRate=5), bare_phase(100)], {}, (50, 20), "rolled_back"),
    # Without canary traffic the phase cannot pass; past its maximum time it fails.
    "fail": (
        [bare_phase(10, duration_ms=10_000), bare_phase(100, duration_ms=10_000)],
        {"maxDeploymentTimeMs": 20_000},
        (0, 0),
        "failed",
    ),
}


@pytest.mark.parametrize("kind", list(DECISIONS))
def test_tick__many_deployments_deciding_at_once__take_as_many_queries_as_two(
    kind, clock, django_capture_on_commit_callbacks
):
    """Promote, succeed, roll back (and finish) or fail: the events, audit entries, routing
    weights, stable versions, news and signals of every decision of a tick are written in
    statements whose number does not grow with the deployments that decide."""
    from deployments.signals import deployment_transitioned
    from health import services as health_services
    from health.models import NotificationOutbox

    phases, top, (requests, errors), counter = DECISIONS[kind]
    alerting = health_services.health_policy_create(
        name="bulk-news",
        alerting_enabled=True,
        alert_channels=["email"],
        alert_recipients=["oncall@example.com"],
        policy={
            "window_seconds": BUCKET,
            "min_requests": 10,
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": False},
            "comparison": {"enabled": False},
            "auto_rollback": {"enabled": False},
        },
    )

    def make_many(count: int, offset: int) -> list[Deployment]:
        made = []
        for index in range(offset, offset + count):
            name = f"svc-{index}"
            service = routing_services.service_create(name=name, stable_version=STABLE)
            routing_services.target_create(
                service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
            )
            routing_services.target_create(
                service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
            )
            deployment = services.deployment_create(
                config=make_config(service=name, name=name, phases=phases, **top),
                health_policy=alerting,
            )
            start(deployment, clock)
            if requests:
                feed(start=clock.now, seconds=120, service=name, requests=requests, errors=errors)
            feed(start=clock.now, seconds=120, service=name, version=STABLE, requests=450)
            made.append(deployment)
        return made

    def deciding_tick(deployments: list[Deployment]) -> tuple[services.TickReport, int, int]:
        signals: list[dict[str, Any]] = []

        def receiver(**kwargs: Any) -> None:
            signals.append(kwargs)

        deployment_transitioned.connect(receiver)
        try:
            with (
                django_capture_on_commit_callbacks(execute=True),
                CaptureQueriesContext(connection) as captured,
            ):
                report = services.deployments_tick(now=clock.advance(25))
        finally:
            deployment_transitioned.disconnect(receiver)
        assert {s["deployment"].pk for s in signals} == {d.pk for d in deployments}
        return report, len(captured.captured_queries), len(signals)

    few = make_many(2, 0)
    few_report, few_queries, few_signals = deciding_tick(few)
    for deployment in Deployment.objects.filter(status=DeploymentStatus.RUNNING):
        services.deployment_transition(deployment_id=deployment.pk, action="abort", now=clock.now)
    many = make_many(7, 2)
    news_before = NotificationOutbox.objects.count()  # the starts' news included
    many_report, many_queries, many_signals = deciding_tick(many)

    assert (getattr(few_report, counter), getattr(many_report, counter)) == (2, 7)
    assert many_report.errors == []
    assert many_queries == few_queries
    # A rollback is two transitions (rolling back, then rolled back); the rest are one.
    assert many_signals == (14 if kind == "rollback" else 7) and few_signals * 7 == many_signals * 2
    # The news of each decision, one e-mail each (the end of a rollback is not news).
    assert NotificationOutbox.objects.count() - news_before == 7
    for deployment in many:
        deployment.refresh_from_db()
        weight = canary_weight(deployment)
        if kind == "advance":
            assert (deployment.current_phase, weight) == (2, 50)
        elif kind == "succeed":
            assert deployment.status == DeploymentStatus.SUCCEEDED
            assert Service.objects.get(pk=deployment.service_id).stable_version == CANARY
        else:
            assert deployment.status == (
                DeploymentStatus.ROLLED_BACK if kind == "rollback" else DeploymentStatus.FAILED
            )
            assert weight == 0
    if kind == "rollback":
        rollback = many[0].events.get(kind=EventKind.ROLLBACK)
        assert "faultStart" in rollback.evidence
