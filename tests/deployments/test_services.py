"""The deployments services: creation from a configuration, and the one transition function with
its effects on routing weights and linked flags."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from canary_site.exceptions import TransitionNotAllowed, ValidationFailed
from deployments import services
from deployments.choices import DeploymentStatus, EventKind, PhaseStatus
from deployments.models import Deployment
from deployments.signals import deployment_transitioned
from flags import services as flag_services
from flags.models import Flag
from routing.models import RuleTarget, Service
from tests.deployments.conftest import CANARY, STABLE, make_config, phase

pytestmark = pytest.mark.django_db


def weights(deployment: Deployment) -> dict[str, float]:
    deployment.refresh_from_db()
    if deployment.routing_rule_id is None:
        return {}
    return {
        item.target.name: float(item.weight)
        for item in RuleTarget.objects.filter(rule_id=deployment.routing_rule_id).select_related(
            "target"
        )
    }


def act(deployment: Deployment, action: str, **kwargs: Any) -> Deployment:
    kwargs.setdefault("source", "api")
    return services.deployment_transition(deployment_id=deployment.pk, action=action, **kwargs)


@pytest.fixture
def flag(db: Any) -> Flag:
    return flag_services.flag_create(key="new-checkout", name="New checkout")


# ---------------------------------------------------------------------------- creation


def test_create__from_a_config__stores_the_deployment_its_phases_and_a_created_event(
    make_deployment, engineer
):
    deployment = make_deployment(actor=engineer, source="api")

    assert deployment.status == DeploymentStatus.PENDING
    assert deployment.stable_version == STABLE and deployment.canary_version == CANARY
    assert [p.traffic_percentage for p in deployment.phases.all()] == [
        Decimal("10"),
        Decimal("50"),
        Decimal("100"),
    ]
    assert deployment.stable_target.name == "stable"
    assert deployment.canary_target.name == "canary"
    assert deployment.created_by == engineer
    assert deployment.validation["valid"] is True
    assert deployment.spec.phases[0].success_criteria[0].metric == "availability"
    event = deployment.events.get()
    assert event.kind == EventKind.CREATED and event.actor == engineer and event.source == "api"


def test_create__from_yaml_text__reads_the_same_configuration(routed_service):
    text = """
name: shop 2.0
serviceName: shop
stableVersion: "1.0.0"
canaryVersion: "2.0.0"
phases:
  - trafficPercentage: 20
    durationMs: 60000
  - trafficPercentage: 100
    durationMs: 60000
"""
    deployment = services.deployment_create(config=text)

    assert deployment.phases.count() == 2
    assert deployment.config["phases"][0]["id"] == "phase-1"


def test_create__with_schema_errors__names_every_field(routed_service):
    config = make_config()
    del config["canaryVersion"]
    config["phases"][1]["trafficPercentage"] = "half"

    with pytest.raises(ValidationFailed) as caught:
        services.deployment_create(config=config)

    assert set(caught.value.fields) == {"canaryVersion", "phases[1].trafficPercentage"}
    assert Deployment.objects.count() == 0


def test_create__for_an_unknown_service__says_so_on_service_name(routed_service):
    with pytest.raises(ValidationFailed) as caught:
        services.deployment_create(config=make_config(service="nowhere"))

    assert "serviceName" in caught.value.fields


def test_create__with_validation_errors__is_stored__but_cannot_start(make_deployment):
    config = make_config()
    config["phases"][0]["successCriteria"][0]["threshold"] = 101  # availability above 100
    deployment = make_deployment(config)

    assert deployment.validation["valid"] is False
    with pytest.raises(TransitionNotAllowed) as caught:
        act(deployment, "start")

    assert caught.value.status_code == 409
    assert "phases[0].successCriteria[0].threshold" in caught.value.fields
    assert Deployment.objects.get().status == DeploymentStatus.PENDING


def test_update__a_pending_deployment__replaces_its_phases(make_deployment):
    deployment = make_deployment()

    services.deployment_update(
        deployment_id=deployment.pk, config=make_config(phases=[phase(25), phase(100)])
    )

    assert [p.order for p in deployment.phases.all()] == [1, 2]
    assert deployment.events.filter(kind=EventKind.UPDATED).exists()


def test_update__a_started_deployment__is_refused(make_deployment):
    deployment = make_deployment()
    act(deployment, "start")

    with pytest.raises(TransitionNotAllowed):
        services.deployment_update(deployment_id=deployment.pk, config=make_config())


# ---------------------------------------------------------------------------- transitions


def test_start__sets_phase_one_weights_and_the_linked_flags_percentage(make_deployment, flag):
    deployment = make_deployment(flags=[flag])

    act(deployment, "start", reason="go")

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING
    assert deployment.current_phase == 1
    assert deployment.canary_share == Decimal("10")
    assert weights(deployment) == {"stable": 90.0, "canary": 10.0}
    flag.refresh_from_db()
    assert flag.status == "enabled"
    assert flag.default_rule["rollout"]["percentage"] == 10
    assert flag.controlled_by == f"deployment {deployment.pk}"
    first = deployment.phases.get(order=1)
    assert first.status == PhaseStatus.RUNNING and first.started_at is not None
    event = deployment.events.get(kind=EventKind.START)
    assert (event.from_status, event.to_status, event.reason) == ("pending", "running", "go")
    assert event.evidence["traffic"]["rule"]["weights"] == {"stable": 90.0, "canary": 10.0}


def test_start__when_the_service_runs_another_stable_version__is_refused(make_deployment):
    deployment = make_deployment()
    Service.objects.filter(name="shop").update(stable_version="0.9.0")

    with pytest.raises(TransitionNotAllowed) as caught:
        act(deployment, "start")

    assert "stableVersion" in caught.value.fields


def test_start__while_another_deployment_of_the_service_runs__is_refused(make_deployment):
    act(make_deployment(), "start")
    second = make_deployment()

    with pytest.raises(TransitionNotAllowed) as caught:
        act(second, "start")

    assert "serviceName" in caught.value.fields


def test_pause__a_pending_deployment__is_refused_with_the_lifecycle_reason(make_deployment):
    deployment = make_deployment()

    with pytest.raises(TransitionNotAllowed) as caught:
        act(deployment, "pause")

    assert caught.value.message == "A pending deployment cannot be paused: it has not started."


def test_pause_then_resume__keeps_the_phase_and_its_traffic(make_deployment):
    deployment = make_deployment()
    act(deployment, "start")

    act(deployment, "pause")
    assert Deployment.objects.get().status == DeploymentStatus.PAUSED
    act(deployment, "resume")

    deployment.refresh_from_db()
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
    assert weights(deployment) == {"stable": 90.0, "canary": 10.0}


def test_promote__when_the_criteria_have_not_held__requires_a_reason(make_deployment):
    deployment = make_deployment()
    act(deployment, "start")

    with pytest.raises(ValidationFailed) as caught:
        act(deployment, "promote")

    assert list(caught.value.fields) == ["reason"]
    assert "have not held" in caught.value.message
    assert Deployment.objects.get().current_phase == 1


def test_promote__with_a_reason__moves_to_the_next_phase_and_its_weights(make_deployment, flag):
    deployment = make_deployment(flags=[flag])
    act(deployment, "start")

    act(deployment, "promote", reason="verified by hand")

    deployment.refresh_from_db()
    assert deployment.current_phase == 2
    assert weights(deployment) == {"stable": 50.0, "canary": 50.0}
    flag.refresh_from_db()
    assert flag.default_rule["rollout"]["percentage"] == 50
    phases = {p.order: p.status for p in deployment.phases.all()}
    assert phases == {1: PhaseStatus.PASSED, 2: PhaseStatus.RUNNING, 3: PhaseStatus.PENDING}
    event = deployment.events.get(kind=EventKind.PROMOTE)
    assert event.phase == 2 and event.evidence["judgement"]["outcome"] == "wait"


def test_promote__on_the_last_phase__succeeds_and_the_canary_becomes_stable(make_deployment, flag):
    deployment = make_deployment(config=make_config(phases=[phase(50), phase(100)]), flags=[flag])
    act(deployment, "start")
    act(deployment, "promote", reason="ok")

    act(deployment, "promote", reason="ok")

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SUCCEEDED
    assert deployment.finished_at is not None
    assert Service.objects.get(name="shop").stable_version == CANARY
    assert weights(deployment) == {"stable": 0.0, "canary": 100.0}
    assert deployment.routing_rule.enabled is False  # the default route now serves 2.0.0
    flag.refresh_from_db()
    assert flag.default_rule["rollout"]["percentage"] == 100
    assert flag.controlled_by == ""
    assert deployment.events.filter(kind=EventKind.SUCCEED).exists()


def test_promote_full__skips_the_remaining_phases(make_deployment):
    deployment = make_deployment()
    act(deployment, "start")

    act(deployment, "promote_full", reason="hotfix, verified")

    statuses = [p.status for p in Deployment.objects.get().phases.all()]
    assert statuses == [PhaseStatus.PASSED, PhaseStatus.SKIPPED, PhaseStatus.SKIPPED]
    assert Service.objects.get(name="shop").stable_version == CANARY


def test_abort__sends_traffic_back_to_stable_at_once_and_turns_the_flags_off(make_deployment, flag):
    deployment = make_deployment(flags=[flag])
    act(deployment, "start")
    act(deployment, "promote", reason="ok")

    act(deployment, "abort", reason="wrong build")

    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ABORTED
    assert deployment.canary_share == 0
    assert weights(deployment) == {"stable": 100.0, "canary": 0.0}
    assert deployment.routing_rule.enabled is False
    flag.refresh_from_db()
    assert flag.status == "disabled" and flag.controlled_by == ""
    assert Service.objects.get(name="shop").stable_version == STABLE
    assert deployment.phases.get(order=2).status == PhaseStatus.ABORTED


def test_retry__after_abort__returns_to_pending_and_starts_again_on_the_same_rule(
    make_deployment,
):
    deployment = make_deployment()
    act(deployment, "start")
    act(deployment, "abort")
    rule_id = Deployment.objects.get().routing_rule_id

    act(deployment, "retry")
    pending = Deployment.objects.get()
    assert (pending.status, pending.current_phase) == (DeploymentStatus.PENDING, None)
    assert {p.status for p in pending.phases.all()} == {PhaseStatus.PENDING}
    act(deployment, "start")

    deployment.refresh_from_db()
    assert deployment.routing_rule_id == rule_id and deployment.routing_rule.enabled
    assert weights(deployment) == {"stable": 90.0, "canary": 10.0}
    kinds = list(deployment.events.order_by("at", "id").values_list("kind", flat=True))
    assert kinds == ["created", "start", "abort", "retry", "start"]


def test_retry__of_a_succeeded_deployment__is_refused(make_deployment):
    deployment = make_deployment()
    act(deployment, "start")
    act(deployment, "promote_full", reason="ok")

    with pytest.raises(TransitionNotAllowed) as caught:
        act(deployment, "retry")

    assert "create a new deployment" in caught.value.message


def test_transition__on_a_phase_that_moved_on__is_refused(make_deployment):
    deployment = make_deployment()
    act(deployment, "start")
    act(deployment, "promote", reason="ok", expected_phase=1)

    with pytest.raises(TransitionNotAllowed) as caught:
        act(deployment, "promote", reason="ok", expected_phase=1)

    assert caught.value.code == "moved_on"
    assert Deployment.objects.get().current_phase == 2


def test_transition__sends_its_signal_after_commit(
    make_deployment, django_capture_on_commit_callbacks
):
    deployment = make_deployment()
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    deployment_transitioned.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            act(deployment, "start")
    finally:
        deployment_transitioned.disconnect(receiver)

    assert [(r["action"], r["from_status"], r["to_status"]) for r in received] == [
        ("start", "pending", "running")
    ]


def test_delete__of_an_active_deployment__is_refused__and_of_an_ended_one_removes_its_rule(
    make_deployment,
):
    deployment = make_deployment()
    act(deployment, "start")
    with pytest.raises(TransitionNotAllowed):
        services.deployment_delete(deployment_id=deployment.pk)
    act(deployment, "abort")
    rule_id = Deployment.objects.get().routing_rule_id

    services.deployment_delete(deployment_id=deployment.pk)

    assert not Deployment.objects.exists()
    from routing.models import RoutingRule

    assert not RoutingRule.objects.filter(pk=rule_id).exists()


def test_transitions__are_on_the_audit_trail(make_deployment, engineer):
    from canary_site.models import AuditEntry

    deployment = make_deployment()
    act(deployment, "start", actor=engineer, reason="ship it")

    entry = AuditEntry.objects.filter(
        content_type__model="deployment", object_pk=str(deployment.pk), verb="start"
    ).get()
    assert (entry.actor, entry.source, entry.reason) == (engineer, "api", "ship it")
