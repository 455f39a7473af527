"""The validator's ``type: "kill_switch"``: schema, targets that exist, triggers that mislead."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.validation import validate

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(db: Any) -> Any:
    from routing import services

    return services.service_create(name="shop", stable_version="1.0.0")


def _switch(**more: Any) -> dict[str, Any]:
    return {
        "name": "stop-shop",
        "scope": "service",
        "targetComponent": "shop",
        "triggerConditions": [
            {"type": "error_rate_threshold", "component": "shop", "threshold": 20}
        ],
        "gracePeriodMs": 30_000,
        **more,
    }


def _codes(findings: Any) -> list[tuple[str, str]]:
    return [(issue.field, issue.code) for issue in findings]


def test_a_sound_switch_is_valid(shop):
    report = validate(_switch(), type="kill_switch")
    assert report.valid and not report.errors and not report.warnings


def test_targets_must_exist(db):
    report = validate(
        _switch(
            triggerConditions=[{"type": "critical_alert", "component": "ghost"}],
        ),
        type="kill_switch",
    )
    assert _codes(report.errors) == [
        ("targetComponent", "not_found"),
        ("triggerConditions[0].component", "not_found"),
    ]
    flags = validate({"name": "x", "scope": "flag", "flags": ["nope"]}, type="kill_switch")
    assert _codes(flags.errors) == [("flags", "not_found")]


def test_schema_errors_name_their_field(shop):
    report = validate(_switch(priority="urgent"), type="kill_switch")
    assert _codes(report.errors) == [("priority", "invalid_value")]
    assert "must be one of low, medium, high, critical" in report.errors[0].message


def test_misleading_triggers_are_warnings_and_errors_in_strict_mode(shop):
    config = _switch(
        scope="system",
        gracePeriodMs=0,
        triggerConditions=[
            {"type": "error_rate_threshold", "component": "shop", "threshold": 5, "minRequests": 3}
        ],
    )
    report = validate(config, type="kill_switch")
    assert report.valid
    assert _codes(report.warnings) == [
        ("gracePeriodMs", "no_grace_period"),
        ("scope", "system_switch_on_one_service"),
        ("triggerConditions[0].minRequests", "thin_condition"),
    ]
    strict = validate(config, type="kill_switch", strict_mode=True)
    assert not strict.valid and len(strict.errors) == 3
    manual = validate(
        {"name": "m", "triggerConditions": [{"type": "manual"}], "autoRecovery": {"enabled": True}},
        type="kill_switch",
    )
    assert _codes(manual.warnings) == [("autoRecovery.enabled", "auto_recovery_never_runs")]


def test_rest_validate_takes_a_yaml_kill_switch(shop, api_client, people):
    import yaml

    api_client.force_authenticate(people["vic"])
    response = api_client.post(
        "/api/v1/validate",
        {"type": "kill_switch", "config": yaml.safe_dump(_switch(priority="critical"))},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is True
    assert any("tells nobody" in text for text in body["recommendations"])
