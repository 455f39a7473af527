"""Kill switches: what an activation changes in one transaction and what recovery puts back,
kill-all, the watch on the beat (arming, the grace period, firing, auto-recovery with its
attempts), and an activation that never waits on a tick holding a deployment's row."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

pytestmark = pytest.mark.django_db

STABLE, CANARY = "1.0.0", "2.0.0"


def _config() -> dict[str, Any]:
    return {
        "name": "shop 2.0",
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "phases": [
            {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
            for share in (20, 100)
        ],
        "maxDeploymentTimeMs": 600_000,
    }


@pytest.fixture
def shop(db: Any) -> Any:
    from routing import services

    service = services.service_create(name="shop", stable_version=STABLE)
    for name, port, version in (("stable", 9, STABLE), ("canary", 10, CANARY)):
        services.target_create(
            service=service, name=name, endpoint=f"http://127.0.0.1:{port}", version=version
        )
    return service


@pytest.fixture
def running(shop: Any) -> Any:
    from deployments import services
    from deployments.transitions import deployment_transition

    deployment = services.deployment_create(config=_config())
    deployment_transition(deployment_id=deployment.pk, action="start")
    deployment.refresh_from_db()
    return deployment


@pytest.fixture
def flags(running: Any) -> dict[str, Any]:
    from flags import services

    made = {
        "guarded": services.flag_create(key="guarded", name="Guarded", kill_switch_enabled=True),
        "plain": services.flag_create(key="plain", name="Plain"),
        "off": services.flag_create(key="off", name="Off", kill_switch_enabled=True),
    }
    for key in ("guarded", "plain"):
        made[key] = services.flag_enable(flag=made[key])
    for flag in made.values():
        running.flags.add(flag)
    return made


def _switch(**definition: Any) -> Any:
    from rollback import services

    return services.kill_switch_create(definition={"name": "stop-shop", **definition})


def _status(flag: Any) -> str:
    flag.refresh_from_db()
    return flag.status


def test_a_service_switch_halts_the_service_pauses_its_canary_and_kills_its_guarded_flags(
    running, flags, people
):
    from canary_site.exceptions import TransitionNotAllowed
    from deployments import services as deployment_services
    from deployments.transitions import deployment_transition
    from rollback import services

    switch = _switch(scope="service", targetComponent="shop")
    activation = services.kill_switch_trigger(
        switch=switch, reason="checkout is on fire", actor=people["erin"], source="ui"
    )
    running.refresh_from_db()
    running.service.refresh_from_db()
    assert running.service.halted_since is not None
    assert running.status == "paused"
    assert _status(flags["guarded"]) == "killed"
    assert _status(flags["plain"]) == "enabled", "a flag without kill_switch_enabled keeps serving"
    assert _status(flags["off"]) == "killed"
    assert activation.trigger == "manual" and activation.activated_by == people["erin"]
    recorded = {item["key"]: item["previous"] for item in activation.changes["flags"]}
    assert recorded == {"guarded": "enabled", "off": "disabled"}
    assert activation.changes["paused"] == [{"id": running.pk, "phase": 1}]
    # No deployment of a halted service may start.
    other = deployment_services.deployment_create(config={**_config(), "name": "shop 2.1"})
    deployment_transition(deployment_id=running.pk, action="abort", reason="make room")
    with pytest.raises(TransitionNotAllowed) as refused:
        deployment_transition(deployment_id=other.pk, action="start")
    assert "halted" in refused.value.message


def test_recovery_puts_back_exactly_what_the_activation_changed(running, flags, people):
    from flags import services as flag_services
    from rollback import services

    switch = _switch(scope="service", targetComponent="shop")
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    # Meanwhile a person revives one flag by hand: recovery leaves it as they set it.
    flag_services.flag_enable(flag=flags["off"], reason="needed")
    flag_services.flag_disable(flag=flags["off"])
    activation = services.kill_switch_recover(
        switch_id=switch.pk, reason="fixed", actor=people["ada"]
    )
    running.refresh_from_db()
    running.service.refresh_from_db()
    assert activation.state == "recovered" and activation.recovered_by == people["ada"]
    assert running.service.halted_since is None
    assert running.status == "running" and running.current_phase == 1
    assert running.canary_share == Decimal("20")
    assert _status(flags["guarded"]) == "enabled"
    assert _status(flags["off"]) == "disabled"
    assert activation.changes["restored"]["flags"] == ["guarded"]
    switch.refresh_from_db()
    assert switch.state == "ready"


def test_firing_twice_leaves_one_activation(running, flags, people):
    from rollback import services
    from rollback.models import KillSwitchActivation

    switch = _switch(scope="flag", flags=["plain"])
    first = services.kill_switch_trigger(switch=switch, reason="a", actor=people["erin"])
    second = services.kill_switch_trigger(switch=switch, reason="b", actor=people["ada"])
    assert first.pk == second.pk
    assert KillSwitchActivation.objects.count() == 1
    assert _status(flags["plain"]) == "killed"
    running.refresh_from_db()
    assert running.status == "running", "a flag switch leaves deployments alone"


def test_kill_all_halts_every_service_and_kills_only_guarded_flags(running, flags, people):
    from canary_site.exceptions import Forbidden, ValidationFailed
    from rollback import services
    from routing.models import Service

    with pytest.raises(ValidationFailed):
        services.kill_switch_kill_all(reason="", actor=people["erin"])
    with pytest.raises(Forbidden):
        services.kill_switch_kill_all(reason="stop", actor=people["vic"])
    activation = services.kill_switch_kill_all(reason="stop everything", actor=people["erin"])
    assert activation.switch.name == "kill-all" and activation.switch.scope == "system"
    assert activation.trigger == "kill_all"
    assert not Service.objects.filter(halted_since__isnull=True).exists()
    assert _status(flags["guarded"]) == "killed" and _status(flags["plain"]) == "enabled"


def test_an_approval_policy_may_hold_a_recovery_but_never_a_trigger(running, flags, people):
    from canary_site.gates import ApprovalRequired
    from rollback import services

    services.approval_policy_create(
        name="careful recovery", scope_kind="all", actions=["killswitch.recover"], quorum=1
    )
    switch = _switch(scope="service", targetComponent="shop")
    services.kill_switch_trigger(switch=switch, reason="fire", actor=people["erin"])
    with pytest.raises(ApprovalRequired):
        services.kill_switch_recover(switch_id=switch.pk, reason="fixed", actor=people["erin"])
    switch.refresh_from_db()
    assert switch.state == "active"


def _push(service: str, version: str, requests: int, errors: int, at: Any) -> None:
    from health import services as health_services

    health_services.metrics_push(
        samples=[
            {
                "service": service,
                "version": version,
                "metric": metric,
                "value": value,
                "timestamp": at.timestamp(),
            }
            for metric, value in (("requests", requests), ("errors", errors))
        ],
        now=at,
    )


def test_the_watch_arms_fires_after_the_grace_period_and_recovers_at_most_max_attempts(
    running, flags
):
    from rollback import services
    from rollback.models import KillSwitchActivation

    switch = _switch(
        scope="service",
        targetComponent="shop",
        gracePeriodMs=20_000,
        triggerConditions=[{"type": "error_rate_threshold", "component": "shop", "threshold": 10}],
        autoRecovery={"enabled": True, "delayMs": 30_000, "maxAttempts": 1},
    )
    start = timezone.now()
    _push("shop", STABLE, 200, 80, start - timedelta(seconds=2))
    report = services.kill_switches_watch(now=start)
    switch.refresh_from_db()
    assert (report.arming, switch.state) == (1, "arming")
    assert "80 errors in 200 requests" in switch.arming_reason
    # Still within the grace period: arming, not fired.
    _push("shop", STABLE, 200, 80, start + timedelta(seconds=8))
    services.kill_switches_watch(now=start + timedelta(seconds=10))
    switch.refresh_from_db()
    assert switch.state == "arming"
    _push("shop", STABLE, 200, 80, start + timedelta(seconds=20))
    report = services.kill_switches_watch(now=start + timedelta(seconds=21))
    switch.refresh_from_db()
    assert report.fired == 1 and switch.state == "active"
    activation = KillSwitchActivation.objects.get(switch=switch)
    assert activation.trigger == "condition" and "grace period 20 s" in activation.reason
    # The condition clears (no traffic, no errors in the window); after delayMs it recovers.
    clear = start + timedelta(seconds=120)
    services.kill_switches_watch(now=clear)
    report = services.kill_switches_watch(now=clear + timedelta(seconds=31))
    activation.refresh_from_db()
    assert report.recovered == 1 and activation.state == "recovered"
    assert activation.recovery_attempt == 1
    # It fires again; its one automatic attempt is used: it stays active and says so.
    again = clear + timedelta(seconds=60)
    _push("shop", STABLE, 200, 90, again - timedelta(seconds=1))
    services.kill_switches_watch(now=again)
    services.kill_switches_watch(now=again + timedelta(seconds=21))
    switch.refresh_from_db()
    assert switch.state == "active"
    later = again + timedelta(seconds=200)
    services.kill_switches_watch(now=later)
    services.kill_switches_watch(now=later + timedelta(seconds=31))
    switch.refresh_from_db()
    latest = switch.activations.first()
    assert switch.state == "active" and latest.state == "active"
    assert "used its 1 attempts" in latest.recovery


def test_the_watch_disarms_when_the_condition_clears(running):
    from rollback import services

    switch = _switch(
        scope="service",
        targetComponent="shop",
        gracePeriodMs=60_000,
        triggerConditions=[{"type": "error_rate_threshold", "component": "shop", "threshold": 10}],
    )
    now = timezone.now()
    _push("shop", STABLE, 100, 60, now - timedelta(seconds=1))
    services.kill_switches_watch(now=now)
    report = services.kill_switches_watch(now=now + timedelta(seconds=120))
    switch.refresh_from_db()
    assert report.disarmed == 1 and switch.state == "ready"


def test_the_watch_takes_a_fixed_number_of_queries(running, django_assert_max_num_queries):
    from rollback import services

    for index in range(20):
        _switch(
            name=f"watch-{index}",
            scope="service",
            targetComponent="shop",
            triggerConditions=[
                {"type": "error_rate_threshold", "component": "shop", "threshold": 50},
                {"type": "critical_alert", "component": "shop"},
            ],
        )
    with django_assert_max_num_queries(6):
        report = services.kill_switches_watch()
    assert report.watched == 20 and report.fired == 0


@pytest.mark.django_db(transaction=True)
def test_an_activation_does_not_wait_for_a_tick_holding_the_deployments_row(running, people):
    """A tick holds the deployment's row in another connection; the switch still fires at once
    (the halt takes the canary out), and the watch pauses the deployment once the row is free."""
    from deployments.models import Deployment
    from rollback import services

    switch = _switch(scope="service", targetComponent="shop")
    holding = threading.Event()
    release = threading.Event()

    def tick_holding_the_row() -> None:
        with transaction.atomic():
            list(Deployment.objects.select_for_update().filter(pk=running.pk))
            holding.set()
            release.wait(20)
        connection.close()

    thread = threading.Thread(target=tick_holding_the_row)
    thread.start()
    assert holding.wait(10)
    try:
        activation = services.kill_switch_trigger(switch=switch, reason="now", actor=people["erin"])
        running.service.refresh_from_db()
        assert running.service.halted_since is not None
        assert activation.changes["leftForTheWatch"] == [running.pk]
    finally:
        release.set()
        thread.join(10)
    report = services.kill_switches_watch()
    running.refresh_from_db()
    activation.refresh_from_db()
    assert report.paused == 1 and running.status == "paused"
    assert activation.changes["paused"] == [{"id": running.pk, "phase": 1}]


def test_recovering_a_switch_that_is_not_active_is_refused_before_any_approval(running, people):
    from canary_site.exceptions import TransitionNotAllowed
    from rollback import services
    from rollback.models import ApprovalRequest

    services.approval_policy_create(
        name="careful recovery", scope_kind="all", actions=["killswitch.recover"], quorum=1
    )
    switch = _switch(scope="service", targetComponent="shop")
    with pytest.raises(TransitionNotAllowed) as refused:
        services.kill_switch_recover(switch_id=switch.pk, reason="fixed", actor=people["erin"])
    assert refused.value.code == "not_active"
    assert not ApprovalRequest.objects.exists()


def test_the_kill_all_name_is_kept_for_the_system_switch(running, people):
    from canary_site.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        _switch(name="kill-all", scope="service", targetComponent="shop")
    assert list(refused.value.fields) == ["name"]
    with pytest.raises(ValidationFailed) as nul:
        _switch(name="stop\x00shop")
    assert "NUL" in nul.value.message
