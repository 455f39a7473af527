"""The validator's ``type: "rollback"``: a plan read as the services read it, every problem it
can find named by field and code, its worst case against its own maximum, and the REST
endpoint answering for it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from deployments.validation import Timing, validate
from tests.rollback import test_executions as executions

# The deployment the rollback tests share: "shop" running on its third phase (40%).
shop, running = executions.shop, executions.running

# Fixed figures, so that no setting of the machine running the tests moves them: a fault takes
# 16 + 60 + 5 + 5 = 86 s to be seen and acted on, and 30 s are allowed to take it out.
TIMING = Timing(
    tick_interval_ms=5_000,
    evaluation_interval_ms=None,
    rollback_action_ms=30_000,
    data_delay_ms=16_000,
    window_ms=60_000,
)


def guide_plan(**changes: Any) -> dict[str, Any]:
    """The guide's own plan (``rollbackService.createConfig``)."""
    plan = {
        "name": "Emergency Rollback Plan",
        "description": "Comprehensive rollback strategy",
        "strategy": "phased",
        "triggers": ["automatic", "manual"],
        "autoTriggerEnabled": True,
        "triggerThresholds": [
            {
                "metric": "error_rate",
                "operator": "greater_than",
                "threshold": 10,
                "duration": 5,
                "consecutiveFailures": 2,
            }
        ],
        "validation": {
            "enabled": True,
            "healthCheckPath": "/health",
            "validationTimeoutMs": 30_000,
            "successCriteria": [{"type": "health_check", "weight": 1, "required": True}],
            "retryAttempts": 3,
            "retryDelayMs": 10_000,
        },
        "actions": [
            {
                "id": "stop-traffic",
                "name": "Stop New Traffic",
                "type": "stop_new_traffic",
                "order": 1,
                "timeoutMs": 30_000,
                "config": {},
            },
            {
                "id": "drain-connections",
                "name": "Drain Connections",
                "type": "drain_connections",
                "order": 2,
                "timeoutMs": 60_000,
                "config": {},
            },
            {
                "id": "update-flags",
                "name": "Update Feature Flags",
                "type": "update_feature_flags",
                "order": 3,
                "timeoutMs": 15_000,
                "config": {"disable": True},
            },
        ],
        "notifications": {
            "enabled": True,
            "onStart": True,
            "onProgress": False,
            "onComplete": True,
            "onFailure": True,
            "channels": ["email", "slack"],
            "recipients": ["team@company.com"],
        },
        "safety": {
            "requireApproval": False,
            "approvers": [],
            "maxRollbackTimeMs": 300_000,
            "allowConsecutiveRollbacks": False,
            "cooldownPeriodMs": 300_000,
        },
    }
    plan.update(changes)
    return plan


def check(plan: Any, **kwargs: Any) -> Any:
    return validate(plan, type="rollback", timing=TIMING, **kwargs)


def found(issues: Any) -> list[tuple[str, str]]:
    return [(issue.field, issue.code) for issue in issues]


def the(report: Any, code: str) -> Any:
    (issue,) = report.issues(code=code)
    return issue


def test_the_guides_plan__is_valid__and_its_worst_case_counts_every_timeout_and_retry():
    report = check(guide_plan())

    assert report.valid, report.errors
    assert report.warnings == ()
    # 30 s + 60 s + 15 s of actions, then validation: 4 attempts of 30 s with 3 delays of 10 s.
    assert report.worst_case_time_to_rollback_ms == 105_000 + 150_000
    (phased,) = report.recommendations
    assert "adds 3m" in phased and "deploymentId" in phased


def test_schema_errors__every_bad_action_and_every_bad_section_are_named_at_once():
    plan = guide_plan(bogus=1)
    plan["actions"] += [
        {"id": "x", "type": "reboot"},
        {"id": "hook", "type": "call_webhook", "config": {"url": "ftp://example.com"}},
    ]
    plan["safety"]["maxRollbackTimeMs"] = "soon"
    plan["validation"]["healthCheckPath"] = "health"

    report = check(plan)

    assert found(report.errors) == [
        ("actions[3].type", "invalid_choice"),
        ("actions[4].config.url", "invalid_value"),
        ("bogus", "unknown_field"),
        ("validation.healthCheckPath", "invalid_value"),
        ("safety.maxRollbackTimeMs", "invalid_type"),
    ]
    assert report.errors[0].message.startswith("actions[3].type must be one of stop_new_traffic")
    assert report.errors[2].message.startswith("bogus is an unknown field; expected one of")
    # Set aside, the maximum is not judged from its default, nor the worst case without the
    # actions that did not read.
    assert report.worst_case_time_to_rollback_ms is None
    assert report.issues(code="rollback_time_exceeds_max") == []


def test_schema_errors__match_the_first_one_the_services_refuse_a_plan_with():
    from canary_site.exceptions import ValidationFailed
    from rollback.services import rollback_plan_validate

    plan = guide_plan()
    plan["actions"][1]["id"] = "stop-traffic"

    report = check(plan)
    with pytest.raises(ValidationFailed) as refused:
        rollback_plan_validate(definition=plan)

    assert found(report.errors) == [("actions[1].id", "invalid_value")]
    assert list(refused.value.fields) == [report.errors[0].field]
    assert "also actions[0].id" in report.errors[0].message


def test_a_plan_without_a_name__still_has_its_other_sections_checked():
    plan = guide_plan()
    del plan["name"]
    plan["actions"][0]["timeoutMs"] = 400_000

    report = check(plan)

    assert found(report.errors)[:1] == [("name", "required")]
    assert ("actions[0].timeoutMs", "timeout_exceeds_max_rollback_time") in found(report.errors)


def test_config_text__yaml_is_read_and_a_broken_text_is_one_error():
    assert check(yaml.safe_dump(guide_plan(), sort_keys=False)).valid
    report = check("name: [unclosed")
    assert found(report.errors) == [("config", "unparseable")]
    assert found(check(["not", "a", "plan"]).errors) == [("config", "invalid_type")]


# --------------------------------------------------------------------------- actions


def test_two_actions_of_one_order__are_a_warning_naming_both():
    plan = guide_plan()
    plan["actions"][2]["order"] = 2

    report = check(plan)

    issue = the(report, "duplicate_action_order")
    assert issue.field == "actions[2].order"
    assert "actions[1]" in issue.message and report.valid


def test_an_action_moving_traffic_after_a_validate_action__is_a_warning():
    plan = guide_plan(strategy="immediate")
    plan["actions"] = [
        {"id": "check", "type": "validate", "order": 1, "timeoutMs": 200_000},
        {"id": "down", "type": "set_weights", "order": 2, "config": {"canaryPercentage": 0}},
    ]

    report = check(plan)

    assert found(report.warnings) == [("actions[1].type", "traffic_after_validation")]
    assert "actions[0]" in report.warnings[0].message


def test_no_stop_new_traffic__is_a_recommendation_saying_it_is_added_first():
    plan = guide_plan(strategy="immediate")
    plan["actions"] = [plan["actions"][2]]

    report = check(plan)

    assert report.valid and report.warnings == ()
    assert any("added first" in text for text in report.recommendations)
    # The added step's 30 s count in the worst case.
    assert report.worst_case_time_to_rollback_ms == 30_000 + 15_000 + 150_000


def test_set_weights_without_stop__leaves_the_canary_in_traffic_until_the_end():
    plan = guide_plan(strategy="immediate")
    plan["actions"] = [
        {"id": "half", "type": "set_weights", "order": 1, "config": {"canaryPercentage": 5}}
    ]

    report = check(plan)

    issue = the(report, "canary_left_in_traffic")
    assert issue.field == "actions[0].config.canaryPercentage"
    assert "5%" in issue.message
    assert not any("added first" in text for text in report.recommendations)


def test_a_validate_action_shorter_than_the_validations_retries__is_cut_short():
    plan = guide_plan(strategy="immediate")
    plan["actions"].append({"id": "check", "type": "validate", "order": 4, "timeoutMs": 40_000})

    issue = the(check(plan), "validation_cut_short")

    assert issue.field == "actions[3].timeoutMs"
    assert "40s" in issue.message and "2m 30s" in issue.message


# --------------------------------------------------------------------------- time


def test_an_action_timeout_and_the_worst_case_beyond_the_maximum__are_errors_with_figures():
    plan = guide_plan(strategy="immediate")
    plan["safety"]["maxRollbackTimeMs"] = 120_000
    plan["actions"][1]["timeoutMs"] = 180_000

    report = check(plan)

    assert found(report.errors) == [
        ("actions[1].timeoutMs", "timeout_exceeds_max_rollback_time"),
        ("safety.maxRollbackTimeMs", "rollback_time_exceeds_max"),
    ]
    worst = 30_000 + 180_000 + 15_000 + 150_000
    assert report.worst_case_time_to_rollback_ms == worst
    message = report.errors[1].message
    assert "safety.maxRollbackTimeMs 2m" in message
    assert "6m 15s" in message  # the worst case
    assert "the steps' timeouts 3m 45s" in message and "validation 2m 30s" in message


def test_a_gradual_rollback__counts_its_pace_in_the_worst_case():
    plan = guide_plan(strategy="gradual", strategyConfig={"durationMs": 20_000, "steps": 4})

    report = check(plan)

    # Three steps down and the stop, each with the stop action's 30 s, paced 5 s apart.
    assert report.worst_case_time_to_rollback_ms == 4 * 30_000 + 3 * 5_000 + 75_000 + 150_000
    assert report.issues(code="gradual_exceeds_breach_budget") == []


def test_a_gradual_rollback_longer_than_the_rollback_action_budget__is_a_warning_saying_so():
    plan = guide_plan(strategy="gradual", strategyConfig={"durationMs": 120_000, "steps": 4})

    issue = the(check(plan), "gradual_exceeds_breach_budget")

    assert issue.field == "strategyConfig.durationMs"
    assert "2m is longer than the breach budget of 30s" in issue.message
    assert "CANARY_DEPLOYMENT_ROLLBACK_ACTION_MS" in issue.message


def test_a_gradual_rollback__is_held_to_the_contexts_max_rollback_time_less_detection():
    plan = guide_plan(strategy="gradual", strategyConfig={"durationMs": 120_000, "steps": 4})
    roomy = {"resourceConstraints": {"maxRollbackTime": 600_000}}
    tight = {"resourceConstraints": {"maxRollbackTime": 180_000}}

    assert check(plan, context=roomy).issues(code="gradual_exceeds_breach_budget") == []
    issue = the(check(plan, context=tight), "gradual_exceeds_breach_budget")

    # 180 s less the 86 s before the rollback begins.
    assert "breach budget of 1m 34s" in issue.message
    assert "maxRollbackTime of 3m less the 1m 26s" in issue.message


# --------------------------------------------------------------------------- safety


def test_approval_with_nobody_to_approve__is_a_warning(db):
    plan = guide_plan()
    plan["safety"]["requireApproval"] = True

    report = check(plan)

    assert found(report.warnings) == [("safety.requireApproval", "approval_without_approvers")]


def test_approval_by_the_approver_role__with_one_approver__recommends_a_second(people):
    from django.contrib.auth import get_user_model

    plan = guide_plan()
    plan["safety"]["requireApproval"] = True
    get_user_model().objects.filter(username__in=["bob", "cat", "ada"]).update(is_active=False)

    report = check(plan)

    assert report.warnings == ()
    assert any("nobody approves their own" in text for text in report.recommendations)


def test_named_approvers__unknown_or_without_the_role__are_named(people):
    plan = guide_plan()
    plan["safety"].update(requireApproval=True, approvers=["erin", "zed"])

    report = check(plan)

    assert found(report.warnings) == [
        ("safety.approvers", "unknown_approver"),
        ("safety.approvers", "approver_cannot_approve"),
        ("safety.requireApproval", "approval_without_approvers"),
    ]
    assert "zed" in report.warnings[0].message and "erin" in report.warnings[1].message

    plan["safety"]["approvers"] = ["ann", "bob"]
    assert check(plan).warnings == ()


def test_approvers_named_with_approval_off__are_ignored():
    plan = guide_plan()
    plan["safety"]["approvers"] = ["ann"]

    assert found(check(plan).warnings) == [("safety.approvers", "approvers_ignored")]


def test_a_cooldown_that_does_nothing_or_is_ignored__is_a_warning():
    no_length = guide_plan()
    no_length["safety"]["cooldownPeriodMs"] = 0
    ignored = guide_plan()
    ignored["safety"]["allowConsecutiveRollbacks"] = True

    assert found(check(no_length).warnings) == [
        ("safety.cooldownPeriodMs", "cooldown_does_nothing")
    ]
    assert found(check(ignored).warnings) == [("safety.cooldownPeriodMs", "cooldown_ignored")]


# --------------------------------------------------------------------------- context


def _with_webhook(url: str) -> dict[str, Any]:
    plan = guide_plan()
    plan["actions"].append(
        {
            "id": "hook",
            "type": "call_webhook",
            "order": 4,
            "timeoutMs": 5_000,
            "config": {"url": url},
        }
    )
    return plan


def test_a_plain_http_webhook__warns_in_production_and_fails_where_https_is_required():
    plan = _with_webhook("http://hooks.example.com/rollback")

    assert check(plan).warnings == ()
    production = check(plan, context={"environment": "production"})
    assert found(production.warnings) == [("actions[3].config.url", "insecure_webhook")]
    strict = check(plan, context={"securityPolicies": {"requireHttps": True}})
    assert found(strict.errors) == [("actions[3].config.url", "insecure_webhook")]
    assert (
        check(
            _with_webhook("https://hooks.example.com/rollback"), context={"environment": "prod"}
        ).warnings
        == ()
    )


# --------------------------------------------------------------------------- placement


def test_a_service_that_does_not_exist__is_an_error_naming_service(db):
    report = check(guide_plan(service="nowhere", isDefault=True))

    assert found(report.errors) == [("service", "not_found")]


def test_a_phased_plan_for_a_deployment__counts_each_of_its_earlier_phases(running):
    report = check(guide_plan(deploymentId=running.pk))

    # From 100% back through 40, 20 and 10: each a step down (30 s) and a validation (150 s).
    assert report.worst_case_time_to_rollback_ms == 255_000 + 3 * (30_000 + 150_000)
    (issue,) = report.errors
    assert (issue.field, issue.code) == ("safety.maxRollbackTimeMs", "rollback_time_exceeds_max")
    assert f"deployment {running.pk} from its last phase" in issue.message
    assert not report.recommendations


# --------------------------------------------------------------------------- REST


def test_rest_validate__accepts_a_rollback_plan_for_every_role(api_client, people):
    plan = guide_plan(strategy="immediate")
    plan["safety"]["maxRollbackTimeMs"] = 50_000
    api_client.force_authenticate(people["vic"])

    response = api_client.post(
        "/api/v1/validate",
        {"type": "rollback", "config": plan, "context": {"environment": "production"}},
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is False
    assert [(e["field"], e["code"]) for e in body["errors"]] == [
        ("actions[1].timeoutMs", "timeout_exceeds_max_rollback_time"),
        ("safety.maxRollbackTimeMs", "rollback_time_exceeds_max"),
    ]
    assert body["worstCaseTimeToRollbackMs"] == 255_000
    assert body["estimates"]["worstCaseTimeToRollbackMs"] == 255_000


def test_rest_validate__a_yaml_rollback_plan_in_strict_mode(api_client, people):
    plan = copy.deepcopy(guide_plan())
    plan["safety"]["cooldownPeriodMs"] = 0
    api_client.force_authenticate(people["erin"])

    response = api_client.post(
        "/api/v1/validate",
        {"type": "rollback", "config": yaml.safe_dump(plan), "strictMode": True},
        format="json",
    )

    body = response.json()
    assert response.status_code == 200
    assert [(e["field"], e["code"]) for e in body["errors"]] == [
        ("safety.cooldownPeriodMs", "cooldown_does_nothing")
    ]
    assert body["warnings"] == []
