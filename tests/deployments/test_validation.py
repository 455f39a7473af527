"""Tests of the configuration validator: the guide's examples, each finding by field and code."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments.config import simple_canary_config
from deployments.validation import (
    Context,
    Findings,
    Timing,
    ValidationReport,
    register_validator,
    validate,
    validate_request,
)
from tests.deployments.guide_examples import (
    multi_phase_config,
    quick_start_config,
    traffic_split_endpoints,
    validation_context,
)

Config = dict[str, Any]


def good_config() -> Config:
    """Four five-minute phases, 5% to 100%, criteria and thresholds: nothing to find."""
    return simple_canary_config("Checkout canary", "checkout", "1.4.0", "1.5.0").to_dict()


def found(issues: Any) -> list[tuple[str, str]]:
    return [(issue.field, issue.code) for issue in issues]


def criterion(metric: str, operator: str, threshold: float, duration_ms: int = 0) -> Config:
    return {
        "metric": metric,
        "operator": operator,
        "threshold": threshold,
        "durationMs": duration_ms,
    }


def test_good_config__is_valid_with_nothing_to_say() -> None:
    report = validate(good_config())
    assert report.valid
    assert report.errors == report.warnings == ()
    assert report.recommendations == ()


# --------------------------------------------------------------------------- the guide's examples


def test_guide_multi_phase_example__has_its_two_impossible_criteria_found() -> None:
    report = validate(multi_phase_config())
    assert not report.valid
    assert found(report.errors) == [
        ("phases[0].successCriteria[0].threshold", "criterion_never_passes"),
        ("phases[0].successCriteria[1].threshold", "criterion_never_passes"),
    ]
    assert report.errors[0].message == (
        "availability > 100 can never pass: availability is always between 0 and 100, so the "
        "phase could never advance."
    )
    assert report.errors[1].message.startswith("error_rate < 0 can never pass")


def test_guide_multi_phase_example__fills_its_four_hours_so_strict_mode_refuses_it_too() -> None:
    report = validate(multi_phase_config())
    assert found(report.warnings) == [("maxDeploymentTimeMs", "little_time_to_spare")]
    strict = validate(multi_phase_config(), strict_mode=True)
    assert ("maxDeploymentTimeMs", "little_time_to_spare") in found(strict.errors)
    assert strict.warnings == ()


def test_guide_multi_phase_example__in_the_guides_context_also_exceeds_its_traffic_cap() -> None:
    report = validate(multi_phase_config(), context=validation_context())
    assert found(report.errors) == [
        ("phases[0].successCriteria[0].threshold", "criterion_never_passes"),
        ("phases[0].successCriteria[1].threshold", "criterion_never_passes"),
        ("phases[3].trafficPercentage", "traffic_exceeds_constraint"),
    ]


def test_guide_multi_phase_example__with_its_impossible_criteria_fixed__is_valid() -> None:
    config = multi_phase_config()
    config["phases"][0]["successCriteria"][0]["threshold"] = 99.9
    config["phases"][0]["successCriteria"][1]["threshold"] = 0.1
    report = validate(config)
    assert report.valid
    assert report.estimated_time_to_full_promotion_ms == 13_200_000 + 4 * 5_000


def test_guide_quick_start_example__never_reaches_full_traffic() -> None:
    report = validate(quick_start_config())
    assert found(report.errors) == [("phases[0].trafficPercentage", "final_phase_not_full")]
    assert any("at least three phases" in text for text in report.recommendations)


def test_guide_validation_example__validates_the_quick_start_config_in_its_context() -> None:
    report = validate(quick_start_config(), context=validation_context())
    # 5% is under the 50% cap; one phase worth 5 minutes rolls back well within 10 minutes.
    assert found(report.errors) == [("phases[0].trafficPercentage", "final_phase_not_full")]


def test_guide_encryption_policy__refuses_the_guides_plain_http_endpoints() -> None:
    config = good_config() | traffic_split_endpoints()
    report = validate(config, context=validation_context())
    assert ("stableEndpoint", "insecure_endpoint") in found(report.errors)
    assert ("canaryEndpoint", "insecure_endpoint") in found(report.errors)


# --------------------------------------------------------------------------- errors


def set_phase(index: int, **values: Any) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        config["phases"][index].update(values)

    return change


def set_criterion(phase: int, entry: Config) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        config["phases"][phase]["successCriteria"] = [entry]

    return change


def set_thresholds(phase: int, **values: Any) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        config["phases"][phase]["rollbackThresholds"] = values

    return change


def set_top(**values: Any) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        config.update(values)

    return change


def set_all_thresholds(**values: Any) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        for phase in config["phases"]:
            phase["rollbackThresholds"] = values

    return change


def twin_phase_ids(config: Config) -> None:
    config["phases"][1]["id"] = config["phases"][0]["id"]


CRITERION = "phases[0].successCriteria[0]"

ERROR_CASES: list[tuple[str, Callable[[Config], None], str, str]] = [
    ("same-versions", set_top(canaryVersion="1.4.0"), "canaryVersion", "versions_identical"),
    (
        "traffic-above-100",
        set_phase(1, trafficPercentage=101),
        "phases[1].trafficPercentage",
        "out_of_range",
    ),
    (
        "traffic-below-0",
        set_phase(0, trafficPercentage=-5),
        "phases[0].trafficPercentage",
        "out_of_range",
    ),
    (
        "phase-at-0",
        set_phase(0, trafficPercentage=0),
        "phases[0].trafficPercentage",
        "phase_without_traffic",
    ),
    (
        "three-decimals",
        set_phase(1, trafficPercentage=36.675),
        "phases[1].trafficPercentage",
        "too_precise",
    ),
    (
        "traffic-falls",
        set_phase(2, trafficPercentage=20),
        "phases[2].trafficPercentage",
        "traffic_decreases",
    ),
    (
        "ends-below-100",
        set_phase(3, trafficPercentage=90),
        "phases[3].trafficPercentage",
        "final_phase_not_full",
    ),
    ("twin-ids", twin_phase_ids, "phases[1].id", "duplicate_phase_id"),
    (
        "initial-differs",
        set_top(initialTrafficPercentage=10),
        "initialTrafficPercentage",
        "initial_traffic_mismatch",
    ),
    (
        "initial-above-100",
        set_top(initialTrafficPercentage=150),
        "initialTrafficPercentage",
        "out_of_range",
    ),
    ("negative-phase", set_phase(0, durationMs=-1), "phases[0].durationMs", "out_of_range"),
    (
        "negative-hold",
        set_criterion(0, criterion("availability", "greater_than", 99, -1)),
        f"{CRITERION}.durationMs",
        "out_of_range",
    ),
    (
        "phases-too-long",
        set_top(maxDeploymentTimeMs=600_000),
        "maxDeploymentTimeMs",
        "phases_exceed_max_time",
    ),
    ("no-max-time", set_top(maxDeploymentTimeMs=0), "maxDeploymentTimeMs", "out_of_range"),
    (
        "availability-above-100",
        set_criterion(0, criterion("availability", "greater_than", 100)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "availability-equals-101",
        set_criterion(0, criterion("availability", "equals", 101)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "error-rate-below-0",
        set_criterion(0, criterion("error_rate", "less_than", 0)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "error-rate-above-100",
        set_criterion(0, criterion("error_rate", "greater_than", 100)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "latency-below-0",
        set_criterion(0, criterion("latency_p95", "less_than", 0)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "response-time-below-0",
        set_criterion(0, criterion("response_time", "less_than", -5)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "throughput-below-0",
        set_criterion(0, criterion("throughput", "less_than", 0)),
        f"{CRITERION}.threshold",
        "criterion_never_passes",
    ),
    (
        "errors-above-rollback",
        set_criterion(0, criterion("error_rate", "greater_than", 10)),
        f"{CRITERION}.threshold",
        "criterion_contradicts_rollback",
    ),
    (
        "availability-under-rollback",
        set_criterion(0, criterion("availability", "less_than", 90)),
        f"{CRITERION}.threshold",
        "criterion_contradicts_rollback",
    ),
    (
        "latency-over-rollback",
        set_criterion(0, criterion("latency_p95", "greater_than", 2000)),
        f"{CRITERION}.threshold",
        "criterion_contradicts_rollback",
    ),
    (
        "error-rate-threshold-101",
        set_thresholds(0, errorRate=101),
        "phases[0].rollbackThresholds.errorRate",
        "out_of_range",
    ),
    (
        "availability-threshold-negative",
        set_thresholds(0, availability=-1),
        "phases[0].rollbackThresholds.availability",
        "out_of_range",
    ),
    (
        "latency-threshold-negative",
        set_thresholds(0, latencyP95=-1),
        "phases[0].rollbackThresholds.latencyP95",
        "out_of_range",
    ),
    (
        "latency-threshold-0",
        set_thresholds(0, latencyP95=0),
        "phases[0].rollbackThresholds.latencyP95",
        "out_of_range",
    ),
    ("ftp-endpoint", set_top(canaryEndpoint="ftp://canary"), "canaryEndpoint", "invalid_url"),
    (
        "password-in-endpoint",
        set_top(canaryEndpoint="https://ops:hunter2@canary.internal"),
        "canaryEndpoint",
        "credentials_in_endpoint",
    ),
    (
        "token-in-description",
        set_top(description="deploy with token=abc123"),
        "description",
        "sensitive_data",
    ),
    (
        "password-in-phase-name",
        set_phase(0, name="password: hunter2"),
        "phases[0].name",
        "sensitive_data",
    ),
    ("unknown-key", set_top(owner="me"), "owner", "unknown_field"),
]


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_each_error__is_found_by_its_field_and_code(
    change: Callable[[Config], None], field: str, code: str
) -> None:
    config = good_config()
    change(config)
    report = validate(config)
    assert not report.valid
    assert (field, code) in found(report.errors)
    (issue,) = report.issues(code=code, field=field)
    assert issue.message.endswith(".")


CONTEXT_ERROR_CASES: list[tuple[str, Callable[[Config], None], Config, str, str]] = [
    (
        "traffic-cap",
        set_top(),
        {"resourceConstraints": {"maxTrafficPercentage": 50}},
        "phases[2].trafficPercentage",
        "traffic_exceeds_constraint",
    ),
    (
        "rollback-too-slow",
        set_top(),
        {"resourceConstraints": {"maxRollbackTimeMs": 10_000}},
        "context.resourceConstraints.maxRollbackTimeMs",
        "rollback_time_exceeds_constraint",
    ),
    (
        "rollback-by-hand",
        set_top(autoRollback=False),
        {"resourceConstraints": {"maxRollbackTimeMs": 600_000}},
        "autoRollback",
        "rollback_time_exceeds_constraint",
    ),
    (
        "deployment-too-long",
        set_top(),
        {"resourceConstraints": {"maxDeploymentTimeMs": 1_800_000}},
        "maxDeploymentTimeMs",
        "deployment_time_exceeds_constraint",
    ),
    (
        "https-required",
        set_top(canaryEndpoint="http://canary.internal:8080"),
        {"securityPolicies": {"requireHttps": True}},
        "canaryEndpoint",
        "insecure_endpoint",
    ),
    (
        "approval-in-production",
        set_top(),
        {"environment": "production", "securityPolicies": {"requireApprovalInProduction": True}},
        "autoPromote",
        "approval_required",
    ),
    (
        "authorization-rule-in-prod",
        set_top(),
        {
            "environment": "prod",
            "securityPolicies": [
                {"name": "p", "rules": [{"type": "authorization", "required": True}]}
            ],
        },
        "autoPromote",
        "approval_required",
    ),
    (
        "service-busy",
        set_top(),
        {"deployingServices": ["checkout"]},
        "serviceName",
        "service_already_deploying",
    ),
]


@pytest.mark.parametrize(
    ("change", "context", "field", "code"),
    [case[1:] for case in CONTEXT_ERROR_CASES],
    ids=[case[0] for case in CONTEXT_ERROR_CASES],
)
def test_each_context_error__is_found_by_its_field_and_code(
    change: Callable[[Config], None], context: Config, field: str, code: str
) -> None:
    config = good_config()
    change(config)
    assert validate(config).valid or code == "rollback_time_exceeds_constraint"
    report = validate(config, context=context)
    assert (field, code) in found(report.errors)


def test_traffic_cap__allows_a_person_to_promote_past_it() -> None:
    config = good_config() | {"autoPromote": False}
    context = {"resourceConstraints": {"maxTrafficPercentage": 50}}
    assert validate(config, context=context).valid
    manual = good_config() | {"trafficShiftStrategy": "manual", "autoPromote": False}
    assert validate(manual, context=context).issues(code="traffic_exceeds_constraint") == []


def test_approval_policy__does_not_apply_outside_production() -> None:
    context = {"environment": "staging", "securityPolicies": {"requireApprovalInProduction": True}}
    assert validate(good_config(), context=context).valid


def test_schema_and_meaning_errors__are_reported_together() -> None:
    config = good_config()
    del config["name"]
    config["phases"][3]["durationMs"] = "long"
    config["phases"][0]["successCriteria"] = [criterion("availability", "greater_than", 100)]
    report = validate(config)
    assert found(report.errors) == [
        ("name", "required"),
        ("phases[3].durationMs", "invalid_type"),
        ("phases[0].successCriteria[0].threshold", "criterion_never_passes"),
    ]
    assert report.estimated_time_to_full_promotion_ms is None


# --------------------------------------------------------------------------- warnings


def add_phase_criterion(phase: int, entry: Config) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        config["phases"][phase]["successCriteria"].append(entry)

    return change


def reshape(*percentages: float) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        for phase, value in zip(config["phases"], percentages, strict=True):
            phase["trafficPercentage"] = value
        config["initialTrafficPercentage"] = percentages[0]

    return change


WARNING_CASES: list[tuple[str, Callable[[Config], None], Config | None, str, str]] = [
    ("short-phase", set_phase(1, durationMs=30_000), None, "phases[1].durationMs", "short_phase"),
    (
        "no-criteria",
        set_phase(1, successCriteria=[]),
        None,
        "phases[1].successCriteria",
        "no_success_criteria",
    ),
    (
        "no-thresholds",
        set_thresholds(1),
        None,
        "phases[1].rollbackThresholds",
        "no_rollback_thresholds",
    ),
    (
        "big-first-step",
        reshape(20, 40, 70, 100),
        None,
        "phases[0].trafficPercentage",
        "big_first_step",
    ),
    ("auto-rollback-off", set_top(autoRollback=False), None, "autoRollback", "auto_rollback_off"),
    (
        # The health policy's comparison still rolls back: a warning, no longer an error.
        "auto-rollback-without-thresholds",
        set_all_thresholds(),
        None,
        "autoRollback",
        "auto_rollback_without_thresholds",
    ),
    (
        "always-passes",
        add_phase_criterion(0, criterion("error_rate", "less_than", 101)),
        None,
        "phases[0].successCriteria[1].threshold",
        "criterion_always_passes",
    ),
    (
        "weaker-than-rollback",
        add_phase_criterion(0, criterion("availability", "greater_than", 94)),
        None,
        "phases[0].successCriteria[1].threshold",
        "criterion_weaker_than_rollback",
    ),
    (
        "hold-outlasts-phase",
        add_phase_criterion(0, criterion("error_rate", "less_than", 1, 600_000)),
        None,
        "phases[0].successCriteria[1].durationMs",
        "criterion_outlasts_phase",
    ),
    (
        "short-timeout",
        set_top(maxDeploymentTimeMs=240_000),
        None,
        "maxDeploymentTimeMs",
        "short_deployment_timeout",
    ),
    (
        "little-spare-time",
        set_top(maxDeploymentTimeMs=1_300_000),
        None,
        "maxDeploymentTimeMs",
        "little_time_to_spare",
    ),
    (
        "not-linear",
        reshape(5, 10, 50, 100),
        None,
        "trafficShiftStrategy",
        "strategy_shape_mismatch",
    ),
    (
        "manual-auto-promote",
        set_top(trafficShiftStrategy="manual"),
        None,
        "autoPromote",
        "auto_promote_ignored",
    ),
    (
        "never-breached",
        set_thresholds(0, errorRate=100),
        None,
        "phases[0].rollbackThresholds.errorRate",
        "threshold_never_breached",
    ),
    (
        "zero-tolerance",
        set_thresholds(0, availability=100),
        None,
        "phases[0].rollbackThresholds.availability",
        "zero_tolerance_threshold",
    ),
    (
        "http-in-production",
        set_top(canaryEndpoint="http://canary.internal"),
        {"environment": "production"},
        "canaryEndpoint",
        "insecure_endpoint",
    ),
    (
        "dependency-busy",
        set_top(),
        {"serviceDependencies": ["payments"], "deployingServices": ["payments"]},
        "serviceName",
        "dependency_deploying",
    ),
]


@pytest.mark.parametrize(
    ("change", "context", "field", "code"),
    [case[1:] for case in WARNING_CASES],
    ids=[case[0] for case in WARNING_CASES],
)
def test_each_warning__is_found_and_strict_mode_makes_it_an_error(
    change: Callable[[Config], None], context: Config | None, field: str, code: str
) -> None:
    config = good_config()
    change(config)
    report = validate(config, context=context)
    assert (field, code) in found(report.warnings)
    assert (field, code) not in found(report.errors)
    strict = validate(config, context=context, strict_mode=True)
    assert not strict.valid
    assert (field, code) in found(strict.errors)
    assert strict.warnings == ()


def test_warnings_alone__leave_a_configuration_valid() -> None:
    config = good_config() | {"autoRollback": False}
    report = validate(config)
    assert report.valid
    assert found(report.warnings) == [("autoRollback", "auto_rollback_off")]


def test_exponential_strategy__accepts_its_own_shape() -> None:
    config = simple_canary_config(
        "c", "checkout", "1", "2", initial_percentage=1, steps=5, strategy="exponential"
    )
    assert validate(config).valid
    assert validate(config).warnings == ()


# --------------------------------------------------------------------------- recommendations


def test_recommendations__give_advice_beyond_the_findings() -> None:
    config = quick_start_config()
    config["phases"][0]["trafficPercentage"] = 100
    config["phases"][0]["rollbackThresholds"] = {"errorRate": 5}
    config["initialTrafficPercentage"] = 100
    config["maxDeploymentTimeMs"] = 10_800_000
    config["notifications"] = {"onFailure": False}
    report = validate(config)
    assert len(report.recommendations) == 5
    assert report.recommendations[0].startswith("Use at least three phases")


# --------------------------------------------------------------------------- estimates


def test_estimates__sum_phase_minimums_and_ticks_and_add_up_the_rollback_path() -> None:
    report = validate(good_config())
    assert report.estimated_time_to_full_promotion_ms == 4 * (300_000 + 5_000)
    # From the fault's first bad bucket: data delay, a window, evaluation, tick, hold, action.
    assert report.worst_case_time_to_rollback_ms == 16_000 + 60_000 + 5_000 + 5_000 + 0 + 30_000


def test_estimates__follow_the_servers_timing() -> None:
    timing = Timing(
        tick_interval_ms=10_000,
        evaluation_interval_ms=30_000,
        breach_hold_ms=60_000,
        rollback_action_ms=15_000,
        data_delay_ms=3_000,
        window_ms=20_000,
    )
    report = validate(good_config(), timing=timing)
    assert report.estimated_time_to_full_promotion_ms == 4 * (300_000 + 10_000)
    assert report.worst_case_time_to_rollback_ms == (
        3_000 + 20_000 + 30_000 + 10_000 + 60_000 + 15_000
    )


def test_estimate__counts_a_hold_longer_than_its_phase() -> None:
    config = good_config()
    config["phases"][0]["successCriteria"][0]["durationMs"] = 900_000
    report = validate(config)
    assert report.estimated_time_to_full_promotion_ms == 900_000 + 3 * 300_000 + 4 * 5_000


def test_worst_case_rollback__is_unbounded_when_a_person_decides() -> None:
    assert validate(good_config() | {"autoRollback": False}).worst_case_time_to_rollback_ms is None


# --------------------------------------------------------------------------- inputs and outputs


def test_report__serialises_to_camel_case_json() -> None:
    report = validate(quick_start_config())
    data = json.loads(json.dumps(report.to_dict()))
    assert list(data) == [
        "valid",
        "errors",
        "warnings",
        "recommendations",
        "estimatedTimeToFullPromotionMs",
        "worstCaseTimeToRollbackMs",
    ]
    assert data["errors"][0] == {
        "field": "phases[0].trafficPercentage",
        "code": "final_phase_not_full",
        "message": report.errors[0].message,
    }


def test_configuration_object_and_text__validate_like_the_dict() -> None:
    config = simple_canary_config("c", "checkout", "1", "2")
    expected = validate(config.to_dict())
    assert validate(config) == expected
    assert validate(config.to_yaml()) == expected
    assert validate(config.to_json()) == expected


def test_unreadable_text__is_an_unparseable_error() -> None:
    report = validate("name: [")
    assert found(report.errors) == [("config", "unparseable")]


def test_not_a_mapping__is_an_invalid_type_on_config() -> None:
    assert found(validate([1, 2, 3]).errors) == [("config", "invalid_type")]


@pytest.mark.parametrize(
    ("context", "field", "code"),
    [
        ({"owner": "me"}, "context.owner", "unknown_field"),
        (
            {"resourceConstraints": {"maxGpu": 1}},
            "context.resourceConstraints.maxGpu",
            "unknown_field",
        ),
        (
            {"resourceConstraints": {"maxTrafficPercentage": "half"}},
            "context.resourceConstraints.maxTrafficPercentage",
            "invalid_type",
        ),
        ({"securityPolicies": "strict"}, "context.securityPolicies", "invalid_type"),
        (
            {"securityPolicies": {"requireTls": True}},
            "context.securityPolicies.requireTls",
            "unknown_field",
        ),
        (
            {"securityPolicies": [{"name": "p", "rules": [{"type": "magic"}]}]},
            "context.securityPolicies[0].rules[0].type",
            "invalid_choice",
        ),
        ({"deployingServices": "checkout"}, "context.deployingServices", "invalid_type"),
        ([], "context", "invalid_type"),
    ],
)
def test_a_bad_context__is_an_error_naming_its_field(context: Any, field: str, code: str) -> None:
    assert (field, code) in found(validate(good_config(), context=context).errors)


def test_guide_context__reads_its_rollback_time_and_policy_list() -> None:
    findings = Findings()
    from deployments.validation import read_context

    context = read_context(validation_context(), findings)
    assert findings.errors == []
    assert context == Context(
        environment="production",
        max_traffic_percentage=50,
        max_rollback_time_ms=600_000,
        require_https=True,
    )
    assert context.production


def test_other_guide_types__are_not_validated_here() -> None:
    report = validate({}, type="traffic_rule")
    assert found(report.errors) == [("type", "unsupported_type")]
    assert found(validate({}, type="blue_green").errors) == [("type", "invalid_choice")]


def test_another_app__can_register_its_own_type() -> None:
    def feature_flags(raw: Any, context: Context, timing: Timing, findings: Findings) -> None:
        if not raw.get("name"):
            findings.error("name", "required", "name is required.")

    from deployments import validation

    register_validator("feature_flag", feature_flags)
    try:
        assert found(validate({}, type="feature_flag").errors) == [("name", "required")]
        assert validate({"name": "x"}, type="feature_flag").valid
    finally:
        validation._VALIDATORS.pop("feature_flag")
    with pytest.raises(ValueError):
        register_validator("blue_green", feature_flags)


def test_request_body__is_read_like_the_guides_validate_call() -> None:
    body = {
        "type": "canary_deployment",
        "config": multi_phase_config(),
        "context": validation_context(),
        "strictMode": True,
    }
    report = validate_request(body)
    assert ("phases[3].trafficPercentage", "traffic_exceeds_constraint") in found(report.errors)
    assert ("maxDeploymentTimeMs", "little_time_to_spare") in found(report.errors)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, [("config", "required")]),
        ({"config": {}, "dryRun": True}, [("dryRun", "unknown_field")]),
        ({"config": {}, "strictMode": "yes"}, [("strictMode", "invalid_type")]),
        ("validate this", [("request", "invalid_type")]),
    ],
)
def test_a_bad_request_body__is_an_error_naming_its_field(
    body: Any, errors: list[tuple[str, str]]
) -> None:
    report = validate_request(body)
    assert isinstance(report, ValidationReport)
    assert found(report.errors) == errors


# --------------------------------------------------------------------------- properties


def phases_at(percentages: list[float]) -> Config:
    config = good_config()
    template = config["phases"][0]
    config["phases"] = [
        {**template, "id": f"phase-{i + 1}", "trafficPercentage": value}
        for i, value in enumerate(percentages)
    ]
    config["initialTrafficPercentage"] = percentages[0]
    config["trafficShiftStrategy"] = "phased"
    config["maxDeploymentTimeMs"] = 10**9
    return config


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.decimals(min_value="0.01", max_value=100, places=2).map(float), min_size=1, max_size=8
    )
)
def test_generated_phase_lists__are_refused_exactly_when_they_fall_or_stop_short(
    percentages: list[float],
) -> None:
    report = validate(phases_at(percentages))
    falls = {
        f"phases[{i + 1}].trafficPercentage"
        for i, (before, after) in enumerate(pairwise(percentages))
        if after < before
    }
    assert {issue.field for issue in report.issues(code="traffic_decreases")} == falls
    short = percentages[-1] != 100
    assert bool(report.issues(code="final_phase_not_full")) is short
    assert report.valid is (not falls and not short)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=json_values, context=json_values)
def test_anything_a_client_sends__gets_a_report_not_an_exception(config: Any, context: Any) -> None:
    report = validate(config, context=context if isinstance(context, dict) else None)
    json.dumps(report.to_dict())


mutations = st.sampled_from(
    ["name", "phases", "initialTrafficPercentage", "maxDeploymentTimeMs", "notifications"]
)


@settings(max_examples=200, deadline=None)
@given(
    phase=st.integers(min_value=0, max_value=3),
    key=st.sampled_from(
        ["trafficPercentage", "durationMs", "successCriteria", "rollbackThresholds", "id"]
    ),
    value=json_values,
    top=mutations,
    top_value=json_values,
)
def test_a_valid_config_with_any_field_replaced__still_gets_a_report(
    phase: int, key: str, value: Any, top: str, top_value: Any
) -> None:
    config = good_config()
    config["phases"][phase][key] = value
    report = validate(config)
    json.dumps(report.to_dict())
    config[top] = top_value
    json.dumps(validate(config).to_dict())
