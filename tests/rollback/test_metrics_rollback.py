"""The rollback app's collector on /metrics: rollbacks by service and trigger, the time to take a
canary out of traffic, kill switches and pending sign-offs, from stored rows in four queries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rollback.metrics import collector
from tests.canary_site.exposition import page_samples, samples_of, value
from tests.rollback.test_services import ask

pytestmark = pytest.mark.django_db

STABLE, CANARY = "1.0.0", "2.0.0"


def running(name: str) -> Any:
    """A deployment of service ``name`` running on its first phase (20%)."""
    from deployments import services
    from deployments.transitions import deployment_transition
    from routing import services as routing_services

    service = routing_services.service_create(name=name, stable_version=STABLE)
    for target, port, version in (("stable", 9, STABLE), ("canary", 10, CANARY)):
        routing_services.target_create(
            service=service, name=target, endpoint=f"http://127.0.0.1:{port}", version=version
        )
    deployment = services.deployment_create(
        config={
            "name": f"{name} 2.0",
            "serviceName": name,
            "stableVersion": STABLE,
            "canaryVersion": CANARY,
            "phases": [
                {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
                for share in (20, 100)
            ],
            "maxDeploymentTimeMs": 600_000,
        }
    )
    deployment_transition(deployment_id=deployment.pk, action="start")
    return deployment


def roll_back_automatically(deployment: Any, *, fault_start: Any, now: Any) -> None:
    """What the tick does on a breach: roll back and finish, with when the fault began."""
    from deployments.transitions import TransitionRequest, deployments_transition

    deployments_transition(
        requests=[
            TransitionRequest(
                deployment_id=deployment.pk,
                action="rollback",
                reason="breach",
                evidence={"faultStart": fault_start.isoformat()},
            ),
            TransitionRequest(
                deployment_id=deployment.pk,
                action="finish_rollback",
                reason="out",
                expected_status="rolling_back",
            ),
        ],
        now=now,
    )


def read() -> Any:
    return samples_of(collector.collect())


def test_collector__counts_rollbacks_by_trigger__and_times_each_from_its_breach(people):
    from rollback import services
    from rollback.models import RollbackExecution

    now = timezone.now()
    shop, cart, search = running("shop"), running("cart"), running("search")
    roll_back_automatically(shop, fault_start=now - timedelta(seconds=7), now=now)
    services.rollback_request(
        deployment_id=cart.pk, reason="p99 doubled", actor=people["erin"], source="ui"
    )
    plan = services.rollback_plan_create(
        definition={"name": "careful", "service": "search", "isDefault": True}
    )
    services.rollback_rehearse(plan=plan, deployment=search, actor=people["erin"])
    assert RollbackExecution.objects.filter(rehearsal=True).count() == 1

    with CaptureQueriesContext(connection) as queries:
        samples = read()

    assert len(queries) == 4
    rollbacks = {
        (dict(labels)["service"], dict(labels)["trigger"]): count
        for (name, labels), count in samples.items()
        if name == "canary_rollbacks_total"
    }
    # Every trigger of a service that rolled back; the rehearsal moved nothing and is not one.
    assert rollbacks == {
        ("shop", "automatic"): 1,
        ("shop", "manual"): 0,
        ("shop", "kill_switch"): 0,
        ("cart", "automatic"): 0,
        ("cart", "manual"): 1,
        ("cart", "kill_switch"): 0,
    }
    histogram = "canary_rollback_out_of_traffic_seconds"
    # Seven seconds from the fault's start to the canary out of traffic.
    assert value(samples, f"{histogram}_bucket", service="shop", le="5.0") == 0
    assert value(samples, f"{histogram}_bucket", service="shop", le="10.0") == 1
    assert value(samples, f"{histogram}_bucket", service="shop", le="+Inf") == 1
    assert value(samples, f"{histogram}_count", service="shop") == 1
    assert value(samples, f"{histogram}_sum", service="shop") == pytest.approx(7, abs=0.01)
    # No breach behind a person's rollback: timed from its start, out in the same transaction.
    assert value(samples, f"{histogram}_bucket", service="cart", le="1.0") == 1
    assert value(samples, f"{histogram}_count", service="search") is None


def test_collector__an_active_kill_switch__and_the_rollback_it_began(people):
    from rollback import services

    running("shop")
    switch = services.kill_switch_create(
        definition={
            "name": "stop-shop",
            "scope": "service",
            "targetComponent": "shop",
            "deploymentAction": "rollback",
        }
    )
    assert value(read(), "canary_kill_switches_active") == 0

    services.kill_switch_trigger(switch=switch, reason="shop is on fire", actor=people["erin"])

    samples = read()
    assert value(samples, "canary_kill_switches_active") == 1
    assert value(samples, "canary_kill_switches", state="active") == 1
    assert value(samples, "canary_kill_switches", state="ready") == 0
    assert value(samples, "canary_rollbacks_total", service="shop", trigger="kill_switch") == 1

    services.kill_switch_recover(switch_id=switch.pk, actor=people["erin"], reason="fixed")
    samples = read()
    assert value(samples, "canary_kill_switches_active") == 0
    assert value(samples, "canary_kill_switches", state="ready") == 1


def test_metrics_page__shows_the_sign_offs_waiting(
    people, health_policy, make_policy, client: Client
):
    make_policy(quorum=1)
    assert value(page_samples(client.get("/metrics").content.decode()), PENDING) == 0

    ask(health_policy, people)

    assert value(page_samples(client.get("/metrics").content.decode()), PENDING) == 1


PENDING = "canary_approval_requests_pending"
