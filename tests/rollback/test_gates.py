"""The gate's list of gated services, walked: every write service of the lower apps is either
gated (and listed) or named here with the reason it is not, so a new write path cannot slip past
unjudged. And emergencies never wait."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest
from django.utils.module_loading import import_string

from canary_site import gates

# Write services that no policy gates, and why. A new public write function of these modules
# must be gated or added here, with its reason.
UNGATED = {
    "flags.services.flag_kill": "the emergency off-switch never waits (EMERGENCY_ACTIONS)",
    "flags.services.flags_kill_many": "a kill switch's off-switch never waits",
    "flags.services.flags_restore_many": "a kill switch's recovery; gated as killswitch.recover",
    "routing.services.services_set_stable_version": "a deployment's success, already judged",
    "routing.services.target_drain_start": "a rollback's drain never waits for a sign-off",
    "routing.services.target_drain_end": "puts a drained target back; the rule's weights decide",
    "routing.services.services_halt": "an emergency never waits for a sign-off",
    "routing.services.services_release": "an emergency never waits for a sign-off",
    "flags.services.flag_release_control": "hands the rollout back; nothing served changes",
    "flags.services.flag_validate": "checks, writes nothing",
    "flags.services.flag_exposures_flush": "evidence bookkeeping",
    "flags.services.flag_exposures_prune": "retention",
    "routing.services.rules_update_many": "the deployments' batch, part of their transitions",
    "routing.services.rule_check": "checks, writes nothing",
    "routing.services.target_set_health": "the probes' and people's health marks, not traffic",
    "routing.services.target_check": "checks, writes nothing",
    "routing.services.target_record_probe": "the probes' results",
    "routing.services.targets_probe_due": "the control loop's probes",
    "deployments.services.deployment_create": "a pending deployment serves nothing; start is gated",
    "deployments.services.deployment_update": "a pending deployment serves nothing; start is gated",
    "deployments.services.deployment_delete": "only a deployment that never ran is deleted",
    "deployments.services.deployments_transition": (
        "the control loop's decisions (an automatic rollback on a breach never waits) and the "
        "batch behind deployment_transition, which is gated"
    ),
    "deployments.services.deployments_tick": "the control loop",
    "deployments.services.deployment_tick": "the control loop",
}
WATCHED = {
    "flags.services": ("flag_", "flags_"),
    "routing.services": ("rule_", "rules_", "target_", "targets_", "services_"),
    "deployments.services": ("deployment_", "deployments_"),
}


def _public_functions(module: ModuleType, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module.__name__}.{name}"
        for name, value in vars(module).items()
        if name.startswith(prefixes) and inspect.isfunction(value)
    )


def _listed_services() -> dict[str, str]:
    listed: dict[str, str] = {}
    for action in gates.GATED_ACTIONS.values():
        for service in action.services:
            listed.setdefault(service, action.name)
    return listed


def test_every_write_service_of_the_lower_apps__is_gated_or_says_why_not():
    listed = _listed_services()
    unjudged = []
    for module_name, prefixes in WATCHED.items():
        module = import_string(module_name.rsplit(".", 1)[0] + ".services")
        for path in _public_functions(module, prefixes):
            if path not in listed and path not in UNGATED:
                unjudged.append(path)

    assert not unjudged, f"Write services neither gated nor in UNGATED: {unjudged}"


@pytest.mark.parametrize("path", sorted(_listed_services()))
def test_every_listed_service__is_decorated_with_the_gate(path):
    service = import_string(path)

    assert gates.describer_of(service) is not None, f"{path} is listed but not @gates.gated"


@pytest.mark.parametrize("path", sorted(UNGATED))
def test_every_ungated_service__really_is_not_gated(path):
    assert gates.describer_of(import_string(path)) is None


def test_every_decorated_service__is_listed():
    listed = _listed_services()
    decorated = [
        f"{module}.{name}"
        for module in WATCHED
        for name, value in vars(import_string(module.rsplit(".", 1)[0] + ".services")).items()
        if gates.describer_of(value) is not None
    ]

    assert decorated and set(decorated) <= set(listed)


def test_the_deployments_transition_describer__names_each_gated_verb():
    describer = gates.describer_of(import_string("deployments.services.deployment_transition"))
    words = {
        verb: describer.action({"action": verb})
        for verb in ("start", "promote", "promote_full", "abort", "retry", "rollback", "pause")
    }

    assert words == {
        "start": "deployment.start",
        "promote": "deployment.promote",
        "promote_full": "deployment.promote_full",
        "abort": "deployment.abort",
        "retry": "deployment.retry",
        "rollback": "deployment.rollback",
        "pause": None,
    }


def test_every_gated_action__names_the_services_it_gates():
    without = {name for name, action in gates.GATED_ACTIONS.items() if not action.services}

    assert without == set()


def test_emergencies__are_no_gated_action():
    assert not set(gates.EMERGENCY_ACTIONS) & set(gates.GATED_ACTIONS)


def test_arguments__survive_the_round_trip_through_json(db):
    import json
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from health import services as health_services

    policy = health_services.health_policy_create(name="round trip", alerting_enabled=False)
    arguments = {
        "policy": policy,
        "share": Decimal("12.50"),
        "on": date(2027, 1, 2),
        "at": datetime(2027, 1, 2, 3, 4, tzinfo=UTC),
        "names": ("a", "b"),
        "nested": {"weights": {"stable": Decimal("90")}},
    }

    back = gates.decode(json.loads(json.dumps(gates.encode(arguments))))

    assert back["policy"] == policy
    assert back["share"] == Decimal("12.50")
    assert back["on"] == date(2027, 1, 2)
    assert back["at"] == arguments["at"]
    assert back["names"] == ["a", "b"]
    assert back["nested"] == {"weights": {"stable": Decimal("90")}}
    gone = {"$model": "health.healthpolicy", "pk": policy.pk}
    policy.delete()
    with pytest.raises(LookupError):
        gates.decode({"policy": gone})
