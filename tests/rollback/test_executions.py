"""Rollback executions: plans chosen for a deployment, strategies stepping the canary down,
the built-in plan, a person's rollback with its cooldown and approval, cancel and rehearsal."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db

STABLE, CANARY = "1.0.0", "2.0.0"


def _config(**top: Any) -> dict[str, Any]:
    phases = [
        {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
        for share in (10, 20, 40, 100)
    ]
    return {
        "name": "shop 2.0",
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "phases": phases,
        "maxDeploymentTimeMs": 600_000,
        **top,
    }


@pytest.fixture
def shop(db: Any) -> Any:
    from routing import services

    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
    )
    return service


@pytest.fixture
def running(shop: Any) -> Any:
    """A deployment running on its third phase (40%)."""
    from deployments import services
    from deployments.transitions import deployment_transition

    deployment = services.deployment_create(config=_config())
    deployment_transition(deployment_id=deployment.pk, action="start")
    deployment_transition(deployment_id=deployment.pk, action="promote", reason="test")
    deployment_transition(deployment_id=deployment.pk, action="promote", reason="test")
    deployment.refresh_from_db()
    assert deployment.canary_share == Decimal("40")
    return deployment


def _plan(**definition: Any) -> Any:
    from rollback import services

    return services.rollback_plan_create(
        definition={"name": "careful", "service": "shop", "isDefault": True, **definition}
    )


def _advance_until_ended(
    execution: Any, *, start: Any = None, step: float = 1.0, limit: int = 200
) -> Any:
    from rollback import services

    moment = start or timezone.now()
    for _ in range(limit):
        services.rollback_executions_advance(now=moment, ids=[execution.pk])
        execution.refresh_from_db()
        if execution.ended:
            return execution
        moment += timedelta(seconds=step)
    raise AssertionError(f"execution still {execution.state}")


def _auto_rollback(deployment: Any) -> Any:
    from deployments.transitions import TransitionRequest, deployments_transition

    results = deployments_transition(
        requests=[
            TransitionRequest(deployment_id=deployment.pk, action="rollback", reason="breach"),
            TransitionRequest(
                deployment_id=deployment.pk,
                action="finish_rollback",
                reason="out",
                expected_status="rolling_back",
            ),
        ]
    )
    return results


def test_without_a_plan_the_built_in_plan_is_recorded_as_done_in_the_same_transaction(running):
    from rollback.models import RollbackExecution

    _auto_rollback(running)
    running.refresh_from_db()
    assert running.status == "rolled_back"
    assert running.canary_share == 0
    execution = RollbackExecution.objects.get(deployment=running)
    assert execution.state == "succeeded"
    assert execution.plan is None and execution.trigger == "automatic"
    assert execution.out_of_traffic_at is not None
    assert [s.state for s in execution.steps.all()] == ["succeeded", "succeeded"]


def test_gradual_plan_steps_the_canary_down_then_finishes(running):
    from rollback.models import RollbackExecution

    _plan(strategy="gradual", strategyConfig={"durationMs": 8000, "steps": 4})
    _auto_rollback(running)
    running.refresh_from_db()
    assert running.status == "rolling_back"
    assert running.canary_share == Decimal("40"), "a gradual plan does not drop to 0 at once"
    execution = RollbackExecution.objects.get(deployment=running)
    assert execution.state == "running" and execution.strategy == "gradual"
    assert [s.config.get("share") for s in execution.steps.all()][:3] == ["30", "20", "10"]
    execution = _advance_until_ended(execution)
    running.refresh_from_db()
    assert execution.state == "succeeded", execution.outcome
    assert running.status == "rolled_back" and running.canary_share == 0
    shares = list(
        running.events.filter(kind="step_rollback")
        .order_by("at")
        .values_list("canary_share", flat=True)
    )
    assert shares == [Decimal("30"), Decimal("20"), Decimal("10"), Decimal("0")]


def test_immediate_plan_takes_the_canary_out_in_the_rollback_transaction_and_runs_the_rest(running):
    from rollback.models import RollbackExecution

    flag = _linked_flag(running)
    _plan(
        strategy="immediate",
        actions=[
            {"id": "stop", "type": "stop_new_traffic", "order": 1},
            {
                "id": "flags",
                "type": "update_feature_flags",
                "order": 2,
                "config": {"percentage": 0},
            },
        ],
    )
    _auto_rollback(running)
    running.refresh_from_db()
    assert running.canary_share == 0, "out of traffic in the very transaction"
    assert running.status == "rolling_back"
    execution = RollbackExecution.objects.get(deployment=running)
    assert execution.out_of_traffic_at is not None
    first, second = execution.steps.all()
    assert (first.key, first.state) == ("stop", "succeeded")
    assert second.state == "pending"
    execution = _advance_until_ended(execution)
    running.refresh_from_db()
    flag.refresh_from_db()
    assert execution.state == "succeeded"
    assert running.status == "rolled_back"
    assert execution.steps.get(key="flags").output["flags"] == {flag.key: "0%"}


def _linked_flag(deployment: Any) -> Any:
    from flags import services as flag_services

    flag = flag_services.flag_create(key="new-checkout", name="New checkout")
    deployment.flags.add(flag)
    return flag


def test_phased_plan_goes_back_down_through_the_earlier_phases_validating_at_each(
    running, monkeypatch
):
    from rollback import steps
    from rollback.models import RollbackExecution

    monkeypatch.setattr(steps, "_health_check", lambda deployment, validation: (True, "ok"))
    _plan(strategy="phased")
    _auto_rollback(running)
    execution = RollbackExecution.objects.get(deployment=running)
    assert [(s.type, s.config.get("share")) for s in execution.steps.all()] == [
        ("set_share", "20"),
        ("validate", None),
        ("set_share", "10"),
        ("validate", None),
        ("stop_new_traffic", None),
    ]
    execution = _advance_until_ended(execution)
    assert execution.state == "succeeded", execution.outcome
    assert execution.validation["passed"] is True


def test_blue_green_stops_before_switching_when_stable_is_unhealthy_and_fails_loudly(
    running, monkeypatch
):
    from health.models import Alert
    from rollback import steps
    from rollback.models import RollbackExecution

    monkeypatch.setattr(
        steps, "_health_check", lambda deployment, validation: (False, "GET /health answered 503")
    )
    _plan(
        strategy="blue_green", validation={"enabled": True, "retryAttempts": 1, "retryDelayMs": 100}
    )
    _auto_rollback(running)
    execution = RollbackExecution.objects.get(deployment=running)
    assert execution.steps.first().type == "validate"
    execution = _advance_until_ended(execution, step=0.2)
    running.refresh_from_db()
    assert execution.state == "failed"
    assert "Stable did not validate" in execution.outcome and "503" in execution.outcome
    # Failing is loud and safe: the canary out anyway, the deployment failed, a critical alert.
    assert running.canary_share == 0 and running.status == "failed"
    assert execution.steps.first().attempts == 2, "tried again once, as the plan says"
    alert = Alert.objects.get(service="shop")
    assert alert.severity == "critical" and f"#{execution.pk}" in alert.title


def test_an_execution_past_its_maximum_time_fails_with_the_canary_out(running):
    from rollback.models import RollbackExecution

    _plan(
        strategy="gradual",
        strategyConfig={"durationMs": 60_000, "steps": 2},
        safety={"maxRollbackTimeMs": 5_000},
    )
    _auto_rollback(running)
    execution = RollbackExecution.objects.get(deployment=running)
    execution = _advance_until_ended(execution, step=2.0)
    running.refresh_from_db()
    assert execution.state == "failed"
    assert "maximum rollback time of 5 s" in execution.outcome
    assert running.canary_share == 0 and running.status == "failed"


def test_a_person_rolls_back_with_a_reason_and_a_second_is_refused_in_the_cooldown(running, people):
    from canary_site.exceptions import TransitionNotAllowed, ValidationFailed
    from rollback import services

    _plan(safety={"allowConsecutiveRollbacks": False, "cooldownPeriodMs": 600_000})
    with pytest.raises(ValidationFailed) as missing:
        services.rollback_request(deployment_id=running.pk, reason=" ", actor=people["erin"])
    assert list(missing.value.fields) == ["reason"]
    execution = services.rollback_request(
        deployment_id=running.pk, reason="p99 doubled", actor=people["erin"], source="ui"
    )
    assert execution.trigger == "manual" and execution.requested_by == people["erin"]
    _advance_until_ended(execution)

    from deployments.transitions import deployment_transition

    deployment_transition(deployment_id=running.pk, action="retry")
    deployment_transition(deployment_id=running.pk, action="start")
    with pytest.raises(TransitionNotAllowed) as refused:
        services.rollback_request(deployment_id=running.pk, reason="again", actor=people["erin"])
    assert refused.value.code == "cooldown"
    assert re.search(r"allows the next rollback in (9 min \d+ s|10 min)\.", refused.value.message)


def test_an_automatic_rollback_in_the_cooldown_runs_the_built_in_plan_and_says_so(running, people):
    from deployments.transitions import deployment_transition
    from rollback import services
    from rollback.models import RollbackExecution

    _plan(
        strategy="gradual", safety={"allowConsecutiveRollbacks": False, "cooldownPeriodMs": 600_000}
    )
    first = services.rollback_request(deployment_id=running.pk, reason="slow", actor=people["erin"])
    _advance_until_ended(first)
    deployment_transition(deployment_id=running.pk, action="retry")
    deployment_transition(deployment_id=running.pk, action="start")
    _auto_rollback(running)
    running.refresh_from_db()
    assert running.status == "rolled_back" and running.canary_share == 0
    second = RollbackExecution.objects.exclude(pk=first.pk).get(deployment=running)
    assert second.plan is None and second.state == "succeeded"
    assert "cooling down" in second.outcome


def test_a_viewer_may_not_roll_back(running, people):
    from canary_site.exceptions import Forbidden
    from rollback import services

    with pytest.raises(Forbidden):
        services.rollback_request(deployment_id=running.pk, reason="x", actor=people["vic"])


def test_approval_holds_the_rollback_with_the_deployment_paused_then_runs_it_once(running, people):
    from canary_site.exceptions import TransitionNotAllowed
    from canary_site.gates import ApprovalRequired
    from rollback import services
    from rollback.models import RollbackExecution

    _plan(safety={"requireApproval": True, "approvers": ["ann"]})
    with pytest.raises(ApprovalRequired) as held:
        services.rollback_request(deployment_id=running.pk, reason="errors", actor=people["erin"])
    from rollback.models import ApprovalRequest

    request = ApprovalRequest.objects.get(pk=held.value.request_id)
    running.refresh_from_db()
    assert running.status == "paused" and running.canary_share == Decimal("40")
    execution = RollbackExecution.objects.get(deployment=running)
    assert execution.state == "awaiting_approval" and execution.approval_id == request.pk
    assert list(request.approvers.values_list("username", flat=True)) == ["ann"]

    services.approval_request_approve(request_id=request.pk, actor=people["ann"])
    execution.refresh_from_db()
    running.refresh_from_db()
    assert execution.state == "running" and execution.requested_by == people["erin"]
    assert running.status == "rolling_back" and running.canary_share == 0
    execution = _advance_until_ended(execution)
    running.refresh_from_db()
    assert execution.state == "succeeded" and running.status == "rolled_back"
    assert RollbackExecution.objects.filter(deployment=running).count() == 1
    with pytest.raises(TransitionNotAllowed):
        services.approval_request_approve(request_id=request.pk, actor=people["bob"])
    assert running.events.filter(kind="rollback").count() == 1


def test_cancelling_a_running_execution_still_takes_the_canary_out(running, people):
    from rollback import services
    from rollback.models import RollbackExecution

    _plan(strategy="gradual", strategyConfig={"durationMs": 60_000, "steps": 3})
    _auto_rollback(running)
    execution = RollbackExecution.objects.get(deployment=running)
    services.rollback_executions_advance(ids=[execution.pk])
    execution = services.rollback_execution_cancel(
        execution=execution, actor=people["erin"], reason="enough"
    )
    running.refresh_from_db()
    assert execution.state == "cancelled"
    assert running.canary_share == 0 and running.status == "rolled_back"
    assert set(execution.steps.values_list("state", flat=True)) <= {"succeeded", "skipped"}


def test_a_rehearsal_moves_nothing_and_is_recorded_as_one(running, people, monkeypatch):
    from rollback import services, steps

    monkeypatch.setattr(steps, "_health_check", lambda deployment, validation: (True, "ok"))
    plan = _plan(strategy="gradual", validation={"enabled": True})
    execution = services.rollback_rehearse(plan=plan, deployment=running, actor=people["erin"])
    execution = _advance_until_ended(execution)
    running.refresh_from_db()
    assert execution.rehearsal and execution.state == "succeeded"
    assert running.status == "running" and running.canary_share == Decimal("40")
    assert execution.steps.first().output["wouldSetCanaryShare"] == 30.0
    assert execution.validation["passed"] is True


def test_a_finished_step_is_never_run_again_when_a_worker_resumes(running, monkeypatch):
    from rollback import services, steps
    from rollback.models import RollbackExecution

    calls: list[str] = []
    real = steps.ACTIONS["notify"]

    def counting(ctx: Any) -> Any:
        calls.append(ctx.step.key)
        return real(ctx)

    monkeypatch.setitem(steps.ACTIONS, "notify", counting)
    _plan(
        actions=[
            {"id": "stop", "type": "stop_new_traffic", "order": 1},
            {"id": "tell", "type": "notify", "order": 2},
            {"id": "warm", "type": "drain_connections", "order": 3, "timeoutMs": 5_000},
        ]
    )
    _auto_rollback(running)
    execution = RollbackExecution.objects.get(deployment=running)
    now = timezone.now()
    services.rollback_executions_advance(now=now, ids=[execution.pk])
    # A worker that claimed it and died: the lease runs out, the next one takes over.
    RollbackExecution.objects.filter(pk=execution.pk).update(
        lease_until=now + timedelta(seconds=30)
    )
    assert services.rollback_executions_advance(now=now, ids=[execution.pk]).claimed == 0
    later = now + timedelta(seconds=31)
    execution = _advance_until_ended(execution, start=later)
    assert calls == ["tell"]
    assert execution.steps.get(key="tell").attempts == 1


def test_a_new_default_plan_takes_the_title_from_the_old_one(shop):
    from rollback.models import RollbackPlan

    first = _plan()
    second = _plan(name="faster")
    first.refresh_from_db()
    assert second.is_default and not first.is_default
    assert RollbackPlan.objects.filter(service=shop, is_default=True).get() == second
