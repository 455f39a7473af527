"""Rollback executions: plans chosen for a deployment, strategies stepping the canary down,
the built-in plan, a person's rollback with its cooldown and approval, cancel and rehearsal."""

from __future__ import annotations

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
    services.target_create(service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE)
    services.target_create(service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY)
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


def _advance_until_ended(execution: Any, *, start: Any = None, step: float = 1.0, limit: int = 200) -> Any:
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
        running.events.filter(kind="step_rollback").order_by("at").values_list("canary_share", flat=True)
    )
    assert shares == [Decimal("30"), Decimal("20"), Decimal("10"), Decimal("0")]
