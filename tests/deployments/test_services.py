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


def test_delete__of_a_deployment_that_has_started__is_refused__its_timeline_is_evidence(
    make_deployment,
):
    deployment = make_deployment()
    act(deployment, "start")
    with pytest.raises(TransitionNotAllowed):
        services.deployment_delete(deployment_id=deployment.pk)
    act(deployment, "abort")

    with pytest.raises(TransitionNotAllowed) as refused:
        services.deployment_delete(deployment_id=deployment.pk)

    assert refused.value.code == "has_run"
    assert Deployment.objects.get().events.filter(kind=EventKind.START).exists()


def test_delete__of_a_deployment_that_never_started__removes_it(make_deployment):
    pending = make_deployment()
    aborted = act(make_deployment(), "abort")

    services.deployment_delete(deployment_id=pending.pk)
    services.deployment_delete(deployment_id=aborted.pk)

    assert not Deployment.objects.exists()


def test_transitions__are_on_the_audit_trail(make_deployment, engineer):
    from canary_site.models import AuditEntry

    deployment = make_deployment()
    act(deployment, "start", actor=engineer, reason="ship it")

    entry = AuditEntry.objects.filter(
        content_type__model="deployment", object_pk=str(deployment.pk), verb="start"
    ).get()
    assert (entry.actor, entry.source, entry.reason) == (engineer, "api", "ship it")


# ---------------------------------------------------------------------------- many at once


def started_deployments(count: int, offset: int = 0, **create: Any) -> list[Deployment]:
    """``count`` started deployments, each of its own service."""
    from routing import services as routing_services

    made = []
    for index in range(offset, offset + count):
        name = f"svc-{index}"
        service = routing_services.service_create(name=name, stable_version=STABLE)
        for role, version in (("stable", STABLE), ("canary", CANARY)):
            routing_services.target_create(
                service=service,
                name=role,
                endpoint=f"http://127.0.0.1:{9 + index}",
                version=version,
            )
        deployment = services.deployment_create(
            config=make_config(service=name, name=name), **create
        )
        made.append(act(deployment, "start"))
    return made


def promotes(deployments: list[Deployment], **fields: Any) -> list[services.TransitionRequest]:
    return [
        services.TransitionRequest(
            deployment_id=d.pk, action="promote", reason="ready", expected_phase=1, **fields
        )
        for d in deployments
    ]


def test_transitions_many__promote_each_in_one_transaction_in_queries_that_do_not_grow(db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    few, many = started_deployments(2), started_deployments(6, offset=2)

    with CaptureQueriesContext(connection) as two:
        services.deployments_transition(requests=promotes(few), source="api")
    with CaptureQueriesContext(connection) as six:
        results = services.deployments_transition(requests=promotes(many), source="api")

    assert len(six.captured_queries) == len(two.captured_queries)
    assert all(result.done for result in results)
    for deployment in many:
        assert weights(deployment) == {"stable": 50.0, "canary": 50.0}
        assert deployment.current_phase == 2
        event = deployment.events.get(kind=EventKind.PROMOTE)
        assert (event.phase, event.canary_share, event.reason) == (2, Decimal("50"), "ready")
        assert event.evidence["traffic"]["rule"]["id"] == deployment.routing_rule_id
        assert [p.status for p in deployment.phases.order_by("order")] == [
            PhaseStatus.PASSED,
            PhaseStatus.RUNNING,
            PhaseStatus.PENDING,
        ]


def test_transitions_many__a_refused_request_writes_nothing_and_the_others_go_on(db):
    first, second = started_deployments(2)
    requests = [
        services.TransitionRequest(deployment_id=first.pk, action="promote", expected_phase=3),
        *promotes([second]),
        services.TransitionRequest(deployment_id=10**9, action="abort"),
    ]

    moved_on, done, missing = services.deployments_transition(requests=requests, source="api")

    assert moved_on.error.code == "moved_on" and moved_on.event is None
    assert done.done and done.event.kind == EventKind.PROMOTE
    assert missing.error.status_code == 404
    assert Deployment.objects.get(pk=first.pk).current_phase == 1
    assert weights(first) == {"stable": 90.0, "canary": 10.0}
    assert Deployment.objects.get(pk=second.pk).current_phase == 2


def test_transitions_many__one_that_cannot_be_written__fails_alone(db):
    first, second, third = started_deployments(3)
    # A linked flag driven by someone else: promoting its deployment cannot set its rollout.
    flag = flag_services.flag_create(key="taken")
    services_flag = Flag.objects.get(pk=flag.pk)
    services_flag.controlled_by = "someone else"
    services_flag.save()
    second.flags.add(flag)

    results = services.deployments_transition(
        requests=promotes([first, second, third]), source="api"
    )

    assert [result.done for result in results] == [True, False, True]
    assert "driven by someone else" in results[1].error.message
    assert [Deployment.objects.get(pk=d.pk).current_phase for d in (first, second, third)] == [
        2,
        1,
        2,
    ]
    assert not second.events.filter(kind=EventKind.PROMOTE).exists()


def test_transitions_many__a_rollback_and_its_end__in_one_batch(db):
    (deployment,) = started_deployments(1)

    rollback, finish = services.deployments_transition(
        requests=[
            services.TransitionRequest(deployment.pk, "rollback", reason="bad canary"),
            services.TransitionRequest(
                deployment.pk, "finish_rollback", expected_status=DeploymentStatus.ROLLING_BACK
            ),
        ]
    )

    assert rollback.done and finish.done
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert weights(deployment) == {"stable": 100.0, "canary": 0.0}
    assert deployment.routing_rule.enabled is False
    kinds = list(deployment.events.order_by("at", "id").values_list("kind", "to_status"))
    assert kinds[-2:] == [("rollback", "rolling_back"), ("finish_rollback", "rolled_back")]


def test_transitions_many__are_on_the_audit_trail_with_their_own_reason_and_verb(db, engineer):
    from canary_site.models import AuditEntry

    first, second = started_deployments(2)
    services.deployments_transition(
        requests=[
            services.TransitionRequest(first.pk, "pause", reason="looking"),
            services.TransitionRequest(second.pk, "abort", reason="wrong build"),
        ],
        actor=engineer,
        source="ui",
    )

    def entry(deployment: Deployment, verb: str) -> AuditEntry:
        return AuditEntry.objects.get(
            content_type__model="deployment", object_pk=str(deployment.pk), verb=verb
        )

    paused, aborted = entry(first, "pause"), entry(second, "abort")
    assert (paused.actor, paused.source, paused.reason) == (engineer, "ui", "looking")
    assert paused.changes["status"] == ["running", "paused"]
    assert aborted.reason == "wrong build"
    assert aborted.changes["status"] == ["running", "aborted"]
    # The routing weights' own entries, written in bulk by routing's service.
    assert AuditEntry.objects.filter(
        content_type__model="ruletarget", verb="set_weights", reason="wrong build"
    ).exists()


def test_transitions_many__successes_make_each_canary_stable_in_queries_that_do_not_grow(
    db, engineer
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from canary_site.models import AuditEntry

    def successes(deployments: list[Deployment]) -> list[services.TransitionRequest]:
        return [
            services.TransitionRequest(d.pk, "promote_full", reason=f"ship {d.name}")
            for d in deployments
        ]

    few, many = started_deployments(2), started_deployments(6, offset=2)
    versions = {d.service_id: Service.objects.get(pk=d.service_id).routing_version for d in many}

    with CaptureQueriesContext(connection) as two:
        services.deployments_transition(requests=successes(few), actor=engineer, source="ui")
    with CaptureQueriesContext(connection) as six:
        results = services.deployments_transition(
            requests=successes(many), actor=engineer, source="ui"
        )

    assert len(six.captured_queries) == len(two.captured_queries)
    assert all(result.done for result in results)
    for deployment, result in zip(many, results, strict=True):
        service = Service.objects.get(pk=deployment.service_id)
        assert service.stable_version == CANARY
        assert result.deployment.service.stable_version == CANARY
        # The weights and the rule's retirement, then the stable version: one bump each.
        assert service.routing_version == versions[service.pk] + 2
        assert result.event.evidence["stableVersion"] == CANARY
        entry = AuditEntry.objects.get(
            content_type__model="service",
            object_pk=str(service.pk),
            action=AuditEntry.Action.UPDATE,
        )
        assert entry.changes["stable_version"] == [STABLE, CANARY]
        assert (entry.actor, entry.source, entry.reason) == (
            engineer,
            "ui",
            f"ship {deployment.name}",
        )


def test_canary_leaving_traffic__resolves_its_open_alerts(make_deployment, policy):
    from health.models import Alert

    deployment = act(make_deployment(), "start")
    alert = Alert.objects.create(
        policy=policy,
        service="shop",
        canary_version=CANARY,
        stable_version=STABLE,
        severity="critical",
        status="open",
        title="shop 2.0.0 is worse than stable",
        message="canary worse than stable",
    )

    act(deployment, "abort", reason="enough")

    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert "left traffic" in alert.resolution
