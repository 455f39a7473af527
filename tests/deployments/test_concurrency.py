"""Races end in one consistent state: two people promoting at once, a tick racing an abort, two
ticks at once. Threads use their own database connections (real row locks on PostgreSQL;
SQLite's IMMEDIATE transactions queue the writers)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from canary_site.exceptions import CanaryError
from deployments import services
from deployments.choices import DeploymentStatus, EventKind
from deployments.models import Deployment
from health.signals import health_evaluated
from routing.models import RuleTarget
from tests.deployments.conftest import Clock, feed

pytestmark = pytest.mark.django_db(transaction=True)


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together; each result, or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except Exception as error:  # the race's loser answers with an error: keep it
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def canary_weight(deployment: Deployment) -> float:
    deployment.refresh_from_db()
    return float(
        RuleTarget.objects.get(rule_id=deployment.routing_rule_id, target__name="canary").weight
    )


def started(make_deployment: Any, clock: Clock) -> Deployment:
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start", now=clock.now)
    return deployment


def ready_to_advance(deployment: Deployment, clock: Clock) -> Any:
    """Traffic and a first observation; returns the moment whose tick advances phase 1."""
    feed(start=clock.now, seconds=120)
    services.deployments_tick(now=clock.advance(15))
    assert Deployment.objects.get(pk=deployment.pk).current_phase == 1
    return clock.advance(10)


def test_two_promotes_of_the_same_phase__one_wins__the_other_is_told_it_moved_on(
    make_deployment, clock
):
    deployment = started(make_deployment, clock)

    def promote() -> Deployment:
        return services.deployment_transition(
            deployment_id=deployment.pk,
            action="promote",
            reason="looks good",
            expected_phase=1,
            source="api",
        )

    results = in_parallel(promote, promote)

    winners = [r for r in results if isinstance(r, Deployment)]
    losers = [r for r in results if isinstance(r, CanaryError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].status_code == 409 and losers[0].code == "moved_on"
    deployment.refresh_from_db()
    assert deployment.current_phase == 2
    assert deployment.events.filter(kind=EventKind.PROMOTE).count() == 1
    assert canary_weight(deployment) == 50


def test_two_promotes_without_a_phase__apply_one_after_the_other(make_deployment, clock):
    deployment = started(make_deployment, clock)

    def promote() -> Deployment:
        return services.deployment_transition(
            deployment_id=deployment.pk, action="promote", reason="go on", source="api"
        )

    results = in_parallel(promote, promote)

    assert all(isinstance(result, Deployment) for result in results), results
    deployment.refresh_from_db()
    assert deployment.current_phase == 3
    assert sorted(
        deployment.events.filter(kind=EventKind.PROMOTE).values_list("phase", flat=True)
    ) == [2, 3]
    assert canary_weight(deployment) == 100  # the weights are the last phase's, not a mix


def test_an_abort_landing_between_the_ticks_judgement_and_its_decision__wins(
    make_deployment, clock
):
    deployment = started(make_deployment, clock)
    moment = ready_to_advance(deployment, clock)

    def abort_meanwhile(**_: Any) -> None:
        # Sent by the tick's health pass, after it read the deployment as running and before
        # it judged and decided: the abort commits from another connection in between.
        outcome = in_parallel(
            lambda: services.deployment_transition(
                deployment_id=deployment.pk, action="abort", reason="stop", source="ui"
            )
        )
        assert isinstance(outcome[0], Deployment), outcome

    health_evaluated.connect(abort_meanwhile, dispatch_uid="abort-meanwhile")
    try:
        report = services.deployments_tick(now=moment)
    finally:
        health_evaluated.disconnect(dispatch_uid="abort-meanwhile")

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ABORTED
    assert canary_weight(deployment) == 0
    assert not deployment.events.filter(kind=EventKind.PROMOTE).exists()
    assert report.advanced == 0 and report.skipped == 1


def test_a_tick_and_an_abort_at_once__end_aborted_with_the_canary_out(make_deployment, clock):
    for _ in range(3):
        Deployment.objects.all().delete()
        deployment = started(make_deployment, clock)
        moment = ready_to_advance(deployment, clock)

        results = in_parallel(
            lambda moment=moment: services.deployments_tick(now=moment),
            lambda pk=deployment.pk: services.deployment_transition(
                deployment_id=pk, action="abort", reason="stop", source="ui"
            ),
        )

        assert not isinstance(results[0], Exception), results
        deployment.refresh_from_db()
        assert deployment.status == DeploymentStatus.ABORTED
        assert canary_weight(deployment) == 0
        kinds = list(deployment.events.order_by("id").values_list("kind", flat=True))
        # The tick either promoted before the abort, or found it aborted: nothing after it.
        assert kinds[-1] == EventKind.ABORT
        assert kinds in (
            ["created", "start", "abort"],
            ["created", "start", "promote", "abort"],
        )
        clock.advance(600)


def test_two_ticks_at_once__take_each_decision_once(make_deployment, clock):
    deployment = started(make_deployment, clock)
    moment = ready_to_advance(deployment, clock)

    results = in_parallel(
        lambda: services.deployments_tick(now=moment),
        lambda: services.deployments_tick(now=moment),
    )

    assert not any(isinstance(result, Exception) for result in results), results
    deployment.refresh_from_db()
    assert deployment.current_phase == 2, [result.to_dict() for result in results]
    assert deployment.events.filter(kind=EventKind.PROMOTE).count() == 1
    assert sum(result.advanced for result in results) == 1
    assert canary_weight(deployment) == 50
