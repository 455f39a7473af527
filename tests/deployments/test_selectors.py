"""Reads of the deployments app: the tick's batch."""

from __future__ import annotations

import pytest

from deployments import selectors, services
from deployments.choices import DeploymentStatus, PhaseStatus
from tests.deployments.conftest import make_config, phase

pytestmark = pytest.mark.django_db


def act(deployment, action: str, clock, **kwargs):
    return services.deployment_transition(
        deployment_id=deployment.pk, action=action, source="api", now=clock.now, **kwargs
    )


def test_deployments_for_tick__reads_each_deployment_under_way_with_its_running_phase(
    make_deployment, clock, django_assert_num_queries
):
    deployment = make_deployment()
    act(deployment, "start", clock)

    with django_assert_num_queries(1):
        (row,) = selectors.deployments_for_tick()
        assert row.service.name == "shop"
        assert row.running_phase.order == 1
        assert row.running_phase.status == PhaseStatus.RUNNING
        assert row.running_phase.started_at == clock.now
        assert row.running_phase.success_criteria[0]["metric"] == "availability"
        assert row.on_last_phase is False
        assert row.status == DeploymentStatus.RUNNING

    # What the tick does not read stays in the database until asked for.
    assert row.config["serviceName"] == "shop"


def test_deployments_for_tick__knows_the_last_phase(make_deployment, clock):
    deployment = make_deployment(make_config(phases=[phase(10), phase(100)]))
    act(deployment, "start", clock)
    act(deployment, "promote", clock, reason="by hand")

    (row,) = selectors.deployments_for_tick()

    assert row.current_phase == 2
    assert row.running_phase.order == 2
    assert row.on_last_phase is True


def test_deployments_for_tick__a_deployment_rolling_back_has_no_running_phase(
    make_deployment, clock
):
    deployment = make_deployment()
    act(deployment, "start", clock)
    act(deployment, "rollback", clock, reason="by hand")

    (row,) = selectors.deployments_for_tick()

    assert row.status == DeploymentStatus.ROLLING_BACK
    assert row.running_phase is None


def test_deployments_for_tick__leaves_out_deployments_not_under_way_and_others_asked_for(
    make_deployment, clock
):
    pending = make_deployment()
    assert selectors.deployments_for_tick() == []
    act(pending, "start", clock)
    act(pending, "pause", clock)

    assert [row.pk for row in selectors.deployments_for_tick()] == [pending.pk]
    assert selectors.deployments_for_tick(ids=[pending.pk + 1]) == []
