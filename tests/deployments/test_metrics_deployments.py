"""The deployments' collector on /metrics: statuses, each active deployment's phase, share and
latest judgement, and breaches, read from stored rows in a fixed number of queries."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from deployments import services
from deployments.choices import DeploymentStatus
from deployments.metrics import collector
from deployments.models import Deployment
from routing import services as routing_services
from tests.canary_site.exposition import page_samples, samples_of, value
from tests.deployments.conftest import CANARY, STABLE, Clock, feed, make_config

pytestmark = pytest.mark.django_db


def start(deployment: Deployment, clock: Clock) -> None:
    services.deployment_transition(
        deployment_id=deployment.pk, action="start", source="api", now=clock.now
    )


def tick(clock: Clock, seconds: float) -> None:
    services.deployments_tick(now=clock.advance(seconds))


def read() -> Any:
    return samples_of(collector.collect())


def running_on(name: str, policy: Any, clock: Clock) -> Deployment:
    """A deployment of its own service ``name``, started."""
    service = routing_services.service_create(name=name, stable_version=STABLE)
    routing_services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    routing_services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
    )
    deployment = services.deployment_create(
        config=make_config(service=name, name=f"{name} 2.0"), health_policy=policy
    )
    start(deployment, clock)
    return deployment


def test_collector__counts_every_status__and_describes_each_active_deployment(
    make_deployment, clock
):
    waiting = make_deployment(make_config(name="later"))
    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=60)
    feed(start=clock.now, seconds=60, version=STABLE)
    tick(clock, 15)

    samples = read()

    assert value(samples, "canary_deployments", status="running") == 1
    assert value(samples, "canary_deployments", status="pending") == 1
    # Every status is there, 0 where no deployment stands: a graph never loses a line.
    assert value(samples, "canary_deployments", status="rolled_back") == 0
    item = {"deployment": str(deployment.pk), "service": "shop"}
    assert value(samples, "canary_deployment_phase", **item) == 1
    assert value(samples, "canary_deployment_canary_share_percent", **item) == 10
    # The phase's minimum time has not passed: its judgement says wait, and only that.
    verdicts = {
        word: value(samples, "canary_deployment_last_verdict", **item, verdict=word)
        for word in ("advance", "wait", "breach")
    }
    assert verdicts == {"advance": 0, "wait": 1, "breach": 0}
    judgement = Deployment.objects.get(pk=deployment.pk).phases.get(order=1).judgement
    health = judgement["evidence"]["verdict"]
    assert value(samples, "canary_deployment_health_verdict", **item, verdict=health) == 1
    assert (
        sum(
            sample_value
            for (name, _labels), sample_value in samples.items()
            if name == "canary_deployment_health_verdict"
        )
        == 1
    )
    # A deployment that holds no traffic has no series of its own.
    pending = {"deployment": str(waiting.pk), "service": "shop"}
    assert value(samples, "canary_deployment_phase", **pending) is None


def test_collector__before_the_first_judgement__every_verdict_reads_0(make_deployment, clock):
    deployment = make_deployment()
    start(deployment, clock)

    samples = read()

    item = {"deployment": str(deployment.pk), "service": "shop"}
    assert all(
        value(samples, "canary_deployment_last_verdict", **item, verdict=word) == 0
        for word in ("advance", "wait", "breach")
    )


def test_collector__a_breach_the_tick_rolled_back__counts_once_for_its_service(
    make_deployment, clock
):
    deployment = make_deployment()
    start(deployment, clock)
    feed(start=clock.now, seconds=120, errors=25)
    assert value(read(), "canary_breaches_total", service="shop") == 0

    for _ in range(12):
        tick(clock, 5)
        if Deployment.objects.get().status != DeploymentStatus.RUNNING:
            break

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    samples = read()
    assert value(samples, "canary_breaches_total", service="shop") == 1
    assert value(samples, "canary_deployments", status="rolled_back") == 1
    # Out of traffic: no longer an active deployment's series.
    item = {"deployment": str(deployment.pk), "service": "shop"}
    assert value(samples, "canary_deployment_phase", **item) is None


def test_collector__a_breach_left_to_a_person__counts__and_a_persons_rollback_does_not(
    make_deployment, clock
):
    deployment = make_deployment(make_config(autoRollback=False))
    start(deployment, clock)
    feed(start=clock.now, seconds=120, errors=25)
    for _ in range(8):
        tick(clock, 5)
    assert value(read(), "canary_breaches_total", service="shop") == 1

    services.deployment_transition(
        deployment_id=deployment.pk,
        action="rollback",
        source="api",
        reason="too many errors",
        now=clock.now,
    )

    assert Deployment.objects.get().status in (
        DeploymentStatus.ROLLING_BACK,
        DeploymentStatus.ROLLED_BACK,
    )
    assert value(read(), "canary_breaches_total", service="shop") == 1


def test_collector__reads_in_the_same_three_queries_however_many_deployments(policy):
    clock = Clock()
    running_on("alpha", policy, clock)
    with CaptureQueriesContext(connection) as one:
        list(collector.collect())
    for name in ("beta", "gamma", "delta", "epsilon"):
        running_on(name, policy, clock)

    with CaptureQueriesContext(connection) as five:
        samples = read()

    assert len(one) == len(five) == 3
    assert value(samples, "canary_deployments", status="running") == 5
    assert {
        dict(labels)["service"]
        for name, labels in samples
        if name == "canary_deployment_canary_share_percent"
    } == {"alpha", "beta", "gamma", "delta", "epsilon"}


def test_metrics_page__shows_the_deployments(make_deployment, clock, client: Client):
    deployment = make_deployment()
    start(deployment, clock)

    samples = page_samples(client.get("/metrics").content.decode())

    assert value(samples, "canary_deployments", status="running") == 1
    item = {"deployment": str(deployment.pk), "service": "shop"}
    assert value(samples, "canary_deployment_canary_share_percent", **item) == 10
