"""The kill switch reader (the guide's vocabulary) and the judge of its conditions: pure."""

from __future__ import annotations

import pytest

from rollback import killswitches as ks


def test_reads_the_guides_example_with_component_as_service():
    spec = ks.read_kill_switch(
        {
            "name": "service-emergency-stop",
            "description": "Emergency stop for critical service",
            "scope": "component",
            "targetComponent": "my-service",
            "triggerConditions": [
                {"type": "error_rate_threshold", "threshold": 20, "component": "my-service"}
            ],
            "autoRecovery": {
                "enabled": True,
                "delayMs": 300000,
                "maxAttempts": 3,
                "recoveryActions": [],
            },
            "notifications": {"enabled": True, "channels": ["email"], "recipients": ["a@b.c"]},
            "gracePeriodMs": 30000,
            "priority": "critical",
            "enabled": True,
        }
    )
    assert spec.scope == ks.Scope.SERVICE and spec.service == "my-service"
    assert spec.conditions[0].type == ks.ConditionType.ERROR_RATE
    assert spec.conditions[0].threshold == 20 and spec.conditions[0].window_ms == 60_000
    assert spec.grace_period_ms == 30_000 and spec.priority == ks.Priority.CRITICAL
    assert spec.auto_recovery.max_attempts == 3
    assert spec.auto_recovery.actions == tuple(ks.RecoveryAction), "none listed: restore everything"
    assert spec.notify_channels == ("email",) and spec.automatic
    again = ks.read_kill_switch(ks.spec_to_dict(spec))
    assert again == spec


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"name": "x", "scope": "service"}, "targetComponent", "names the service"),
        ({"name": "x", "scope": "flag"}, "flags", "lists the flags"),
        ({"name": "x", "scope": "galaxy"}, "scope", "must be one of system, service, flag"),
        (
            {"name": "x", "triggerConditions": [{"type": "error_rate_threshold", "threshold": 5}]},
            "triggerConditions[0].component",
            "names the service",
        ),
        (
            {
                "name": "x",
                "triggerConditions": [
                    {"type": "availability_threshold", "component": "a", "threshold": 120}
                ],
            },
            "triggerConditions[0].threshold",
            "between 0 and 100",
        ),
        ({"name": "x", "gracePeriodMs": -1}, "gracePeriodMs", "between 0"),
        (
            {"name": "x", "autoRecovery": {"recoveryActions": ["dance"]}},
            "autoRecovery.recoveryActions[0]",
            "must be one of",
        ),
        ({"name": "x", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_definitions_name_the_field(data, field, words):
    with pytest.raises(ks.InvalidKillSwitch) as error:
        ks.read_kill_switch(data)
    assert error.value.field == field
    assert words in error.value.message


def _condition(kind: str, threshold: float, **more) -> ks.Condition:
    return ks.Condition(type=ks.ConditionType(kind), service="shop", threshold=threshold, **more)


def test_an_error_rate_holds_only_on_evidence():
    condition = _condition("error_rate_threshold", 5)
    gross = ks.judge(condition, ks.Window(requests=200, errors=60), 0)
    assert gross.holds and "60 errors in 200 requests" in gross.sentence
    assert gross.numbers["lowerBound"] > 5
    # 8% measured, but 3 in 40 cannot say it is above 5%.
    thin = ks.judge(condition, ks.Window(requests=40, errors=3), 0)
    assert not thin.holds and thin.numbers["lowerBound"] < 5
    quiet = ks.judge(condition, ks.Window(requests=10, errors=10), 0)
    assert not quiet.holds and "fewer than the 20 a verdict needs" in quiet.sentence


def test_availability_latency_and_alerts():
    down = ks.judge(
        _condition("availability_threshold", 99), ks.Window(requests=1000, errors=50), 0
    )
    assert down.holds and down.numbers["availability"] == 95.0
    fine = ks.judge(
        _condition("availability_threshold", 90), ks.Window(requests=1000, errors=50), 0
    )
    assert not fine.holds
    slow = ks.judge(
        _condition("latency_threshold", 500), ks.Window(requests=100, latency_p95=800.0), 0
    )
    assert slow.holds and "800 ms" in slow.sentence
    alert = ks.Condition(type=ks.ConditionType.CRITICAL_ALERT, service="shop")
    assert ks.judge(alert, None, 1).holds and not ks.judge(alert, None, 0).holds
    assert not ks.judge(ks.Condition(type=ks.ConditionType.MANUAL), None, 5).holds


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"])
def test_text_postgresql_cannot_store_is_refused_with_its_path(bad):
    with pytest.raises(ks.InvalidKillSwitch) as error:
        ks.read_kill_switch({"name": "x", "scope": "flag", "flags": ["ok", bad]})
    assert error.value.field == "flags[1]"
    with pytest.raises(ks.InvalidKillSwitch) as error:
        ks.read_kill_switch({"name": bad})
    assert error.value.field == "name"
