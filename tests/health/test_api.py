"""The health REST API: roles, the one error body naming the field, pushes, checks, alerts."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from health import services
from health.models import Alert, HealthCheck, HealthPolicy, MetricBucket
from tests.health.conftest import traffic

pytestmark = pytest.mark.django_db

METRICS = "/api/v1/health/metrics"


@pytest.fixture
def client(engineer: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(engineer)
    return client


@pytest.fixture
def viewer_client(make_user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(make_user("vic", roles=["viewer"]))
    return client


def assert_error(response: Any, status: int, *, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()["error"]
    assert body["message"]
    if field:
        assert field in body["fields"], body
    return body


def samples(count: int = 3, **overrides: Any) -> list[dict[str, Any]]:
    stamp = (timezone.now() - timedelta(seconds=30)).isoformat()
    items = [
        {
            "service": "checkout",
            "version": "2.0",
            "metric": "requests",
            "value": 10,
            "timestamp": stamp,
        }
        for _ in range(count)
    ]
    items[0].update(overrides)
    return items


# --------------------------------------------------------------------------- push


def test_push__is_accepted__and_a_retry_with_the_same_key_counts_once(client):
    body = {"idempotency_key": "deploy-42-batch-1", "samples": samples()}

    first = client.post(METRICS, body, format="json")
    retry = client.post(METRICS, body, format="json")

    assert first.status_code == 202
    assert first.json() == {
        "accepted": 3,
        "buckets": 1,
        "duplicate": False,
        "idempotency_key": "deploy-42-batch-1",
    }
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert MetricBucket.objects.get().requests == 30


def test_push__the_key_may_come_as_an_idempotency_key_header(client):
    headers = {"Idempotency-Key": "header-key"}
    batch = samples()
    client.post(METRICS, {"samples": batch}, format="json", headers=headers)
    retry = client.post(METRICS, {"samples": batch}, format="json", headers=headers)

    assert retry.json()["duplicate"] is True
    assert MetricBucket.objects.get().requests == 30


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"samples": samples(value=-5)}, "samples[0].value"),
        ({"samples": samples(metric="cpu_seconds")}, "samples[0].metric"),
        (
            {"samples": samples(timestamp=(timezone.now() + timedelta(days=1)).isoformat())},
            "samples[0].timestamp",
        ),
        ({"samples": samples(timestamp="yesterday")}, "samples[0].timestamp"),
        ({"samples": samples(value="ten")}, "samples[0].value"),
        ({"samples": {"service": "checkout"}}, "samples"),
        ({}, "samples"),
        ({"samples": samples(), "source": "ci"}, "source"),
        ({"samples": samples(), "idempotency_key": ""}, "idempotency_key"),
    ],
    ids=[
        "negative-count",
        "unknown-metric",
        "far-future",
        "not-a-time",
        "not-a-number",
        "not-a-list",
        "missing",
        "unknown-field",
        "blank-key",
    ],
)
def test_push__bad_input__is_400_naming_the_field(client, body, field):
    response = client.post(METRICS, body, format="json")

    assert_error(response, 400, field=field)
    assert not MetricBucket.objects.exists()


def test_push__more_samples_than_allowed__is_413(client, settings):
    settings.CANARY_METRICS_PUSH_MAX_SAMPLES = 100

    response = client.post(METRICS, {"samples": samples(101)}, format="json")

    body = assert_error(response, 413, field="samples")
    assert "101 samples" in body["message"]
    assert not MetricBucket.objects.exists()


def test_push__a_body_larger_than_allowed__is_413_before_it_is_read(client, settings):
    settings.CANARY_METRICS_PUSH_MAX_BYTES = 1000
    body = json.dumps({"samples": samples(20)})

    response = client.post(METRICS, body, content_type="application/json")

    assert_error(response, 413, field="samples")


def test_push__header_and_body_keys_that_differ__are_400(client):
    response = client.post(
        METRICS,
        {"idempotency_key": "a", "samples": samples()},
        format="json",
        headers={"Idempotency-Key": "b"},
    )

    assert_error(response, 400, field="idempotency_key")


def test_push__by_a_viewer__is_403(viewer_client):
    assert_error(viewer_client.post(METRICS, {"samples": samples()}, format="json"), 403)


def test_push__without_credentials__is_401():
    assert_error(APIClient().post(METRICS, {"samples": samples()}, format="json"), 401)


# --------------------------------------------------------------------------- policies

POLICY = {
    "name": "checkout-default",
    "policy": {
        "window_seconds": 60,
        "thresholds": [{"metric": "error_rate", "operator": "gt", "warning": 1, "critical": 3}],
    },
    "alert_channels": ["email", "slack"],
    "alert_recipients": ["team@example.com"],
    "alert_cooldown_seconds": 600,
    "escalation_rules": [
        {"severity": "critical", "delay_seconds": 60, "recipients": ["oncall@example.com"]}
    ],
}


def test_policy__engineer_creates_and_changes_it__viewer_reads_it(client, viewer_client):
    created = client.post("/api/v1/health/policies/", POLICY, format="json")
    assert created.status_code == 201, created.content
    policy_id = created.json()["id"]
    assert created.json()["policy"]["comparison"]["tolerance_percent"] == 50.0

    changed = client.patch(
        f"/api/v1/health/policies/{policy_id}/", {"alert_cooldown_seconds": 60}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["alert_cooldown_seconds"] == 60
    assert changed.json()["alert_channels"] == ["email", "slack"]
    document = {**POLICY["policy"], "window_seconds": 120}
    rewritten = client.patch(
        f"/api/v1/health/policies/{policy_id}/", {"policy": document}, format="json"
    )
    assert rewritten.status_code == 200, rewritten.content
    assert rewritten.json()["policy"]["window_seconds"] == 120

    listed = viewer_client.get("/api/v1/health/policies/?name=checkout").json()["results"]
    assert [item["name"] for item in listed] == ["checkout-default"]
    assert_error(viewer_client.post("/api/v1/health/policies/", POLICY, format="json"), 403)
    assert_error(viewer_client.delete(f"/api/v1/health/policies/{policy_id}/"), 403)
    assert client.delete(f"/api/v1/health/policies/{policy_id}/").status_code == 204
    assert not HealthPolicy.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {
                "policy": {
                    "thresholds": [
                        {"metric": "error_rate", "operator": "gt", "warning": 5, "critical": 1}
                    ]
                }
            },
            "policy.thresholds[0].critical",
        ),
        ({"policy": {"window_seconds": 0}}, "policy.window_seconds"),
        (
            {"policy": {"thresholds": [{"metric": "cpu", "operator": "gt", "critical": 1}]}},
            "policy.thresholds[0].metric",
        ),
        ({"policy": []}, "policy"),
        ({"alert_recipients": ["nobody"]}, "alert_recipients[0]"),
        (
            {
                "escalation_rules": [
                    {"severity": "critical", "delay_seconds": -1, "recipients": ["a@b.co"]}
                ]
            },
            "escalation_rules[0].delay_seconds",
        ),
        ({"alert_cooldown_seconds": -1}, "alert_cooldown_seconds"),
        ({"colour": "red"}, "colour"),
    ],
    ids=[
        "critical-below-warning",
        "zero-window",
        "unknown-metric",
        "not-an-object",
        "email",
        "delay",
        "cooldown",
        "unknown",
    ],
)
def test_policy__bad_input__is_400_naming_the_field(client, change, field):
    response = client.post("/api/v1/health/policies/", {**POLICY, **change}, format="json")

    assert_error(response, 400, field=field)
    assert not HealthPolicy.objects.exists()


def test_policy__a_second_one_with_the_same_name__is_400_on_name(client):
    client.post("/api/v1/health/policies/", POLICY, format="json")

    assert_error(client.post("/api/v1/health/policies/", POLICY, format="json"), 400, field="name")


# --------------------------------------------------------------------------- checks


@pytest.fixture
def policy(make_policy: Any) -> Any:
    return make_policy(alert_channels=["email"], alert_recipients=["team@example.com"])


def failing_traffic(window_end: Any) -> None:
    for batch in (
        traffic("checkout", "2.0", end=window_end, seconds=120, requests=200, errors=10),
        traffic("checkout", "1.0", end=window_end, seconds=120, requests=1000, errors=1),
    ):
        services.metrics_record_outcomes(outcomes=batch)


def test_checks__post_evaluates_now__and_the_list_filters_by_verdict(
    client, viewer_client, policy, window_end
):
    failing_traffic(window_end)

    response = client.post(
        "/api/v1/health/checks/",
        {
            "service": "checkout",
            "canary_version": "2.0",
            "stable_version": "1.0",
            "policy": policy.pk,
            "planned_canary_share": 20,
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    check = response.json()
    assert check["verdict"] == "critical"
    assert check["message"].startswith("Critical")
    assert {item["check"] for item in check["results"]} >= {"threshold", "comparison"}
    assert check["inputs"]["canary"]["requests"] > 0
    critical = viewer_client.get("/api/v1/health/checks/?verdict=critical&service=checkout")
    assert [item["id"] for item in critical.json()["results"]] == [check["id"]]
    assert viewer_client.get("/api/v1/health/checks/?verdict=pass").json()["results"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service": "checkout", "canary_version": "2.0", "policy": 999}, "policy"),
        ({"service": "check out", "canary_version": "2.0"}, "service"),
        (
            {"service": "checkout", "canary_version": "2.0", "planned_canary_share": 150},
            "planned_canary_share",
        ),
        ({"service": "checkout", "canary_version": "2.0", "window_seconds": 0}, "window_seconds"),
        ({"service": "checkout"}, "canary_version"),
    ],
    ids=["unknown-policy", "bad-service", "share", "window", "missing"],
)
def test_checks__bad_input__is_400_naming_the_field(client, policy, body, field):
    body.setdefault("policy", policy.pk)

    assert_error(client.post("/api/v1/health/checks/", body, format="json"), 400, field=field)


def test_checks__a_viewer_cannot_trigger_an_evaluation(viewer_client, policy):
    body = {"service": "checkout", "canary_version": "2.0", "policy": policy.pk}

    assert_error(viewer_client.post("/api/v1/health/checks/", body, format="json"), 403)


# --------------------------------------------------------------------------- alerts


@pytest.fixture
def alert(policy: Any, now: Any, window_end: Any) -> Alert:
    failing_traffic(window_end)
    services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )
    return Alert.objects.get()


def test_alerts__engineer_acknowledges_then_resolves__each_only_once(client, alert):
    url = f"/api/v1/health/alerts/{alert.pk}"

    acknowledged = client.post(f"{url}/acknowledge/", {"note": "looking"}, format="json")
    assert acknowledged.status_code == 200, acknowledged.content
    assert acknowledged.json()["status"] == "acknowledged"
    assert acknowledged.json()["acknowledged_by"] == "erin"
    assert_error(client.post(f"{url}/acknowledge/", {}, format="json"), 409, field="status")

    resolved = client.post(f"{url}/resolve/", {"note": "rolled back"}, format="json")
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["resolution"] == "Resolved by erin: rolled back"
    assert_error(client.post(f"{url}/resolve/", {}, format="json"), 409)


def test_alerts__a_viewer_reads_them_but_cannot_acknowledge(viewer_client, alert):
    listed = viewer_client.get("/api/v1/health/alerts/?status=open").json()["results"]

    assert [item["id"] for item in listed] == [alert.pk]
    assert listed[0]["severity"] == "critical" and listed[0]["policy_name"] == "default"
    assert_error(viewer_client.post(f"/api/v1/health/alerts/{alert.pk}/acknowledge/"), 403)
    alert.refresh_from_db()
    assert alert.status == "open"


def test_alerts__acknowledging_one_that_does_not_exist__is_404(client):
    assert_error(client.post("/api/v1/health/alerts/999/acknowledge/"), 404)


def test_alerts__an_unknown_field_in_an_action__is_400(client, alert):
    response = client.post(
        f"/api/v1/health/alerts/{alert.pk}/acknowledge/", {"urgent": True}, format="json"
    )

    assert_error(response, 400, field="urgent")


# --------------------------------------------------------------------------- series


def test_series__returns_plain_lists_for_one_version_and_metric(viewer_client, window_end):
    services.metrics_record_outcomes(
        outcomes=traffic("checkout", "2.0", end=window_end, seconds=60, requests=100, errors=2)
    )

    response = viewer_client.get(
        "/api/v1/health/series/",
        {"service": "checkout", "version": "2.0", "metric": "error_rate", "window": "2m"},
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["step_seconds"] == 10
    assert len(body["timestamps"]) == len(body["values"]) == 12
    measured = [value for value in body["values"] if value is not None]
    assert measured and all(value == pytest.approx(2.0) for value in measured)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"version": "2.0", "metric": "error_rate"}, "service"),
        ({"service": "checkout", "version": "2.0", "metric": "cpu"}, "metric"),
        (
            {"service": "checkout", "version": "2.0", "metric": "error_rate", "window": "soon"},
            "window",
        ),
        (
            {"service": "checkout", "version": "2.0", "metric": "error_rate", "window": "30d"},
            "window",
        ),
        (
            {"service": "checkout", "version": "2.0", "metric": "error_rate", "colour": "red"},
            "colour",
        ),
        (
            {
                "service": "checkout",
                "version": "2.0",
                "metric": "error_rate",
                "window": "1d",
                "step": "1s",
            },
            "step",
        ),
    ],
    ids=["missing", "metric", "window", "too-long", "unknown", "too-many-points"],
)
def test_series__bad_query__is_400_naming_the_parameter(viewer_client, params, field):
    response = viewer_client.get("/api/v1/health/series/", params)

    assert_error(response, 400, field=field)


def test_schema__describes_the_health_endpoints(client):
    schema = client.get("/api/schema/?format=json").json()

    for path in [
        "/api/v1/health/metrics",
        "/api/v1/health/series/",
        "/api/v1/health/policies/",
        "/api/v1/health/checks/",
        "/api/v1/health/alerts/{id}/acknowledge/",
        "/api/v1/health/alerts/{id}/resolve/",
    ]:
        assert path in schema["paths"], path


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/health/checks/", "since"),
        ("/api/v1/health/checks/", "until"),
        ("/api/v1/health/alerts/", "since"),
    ],
)
@pytest.mark.parametrize(
    "value",
    ["2026-01-01T00:00:00+23:00", "2026-01-01T00:00:00-16:00", "0001-01-01T00:00:00+01:00"],
    ids=["offset-too-far-east", "offset-too-far-west", "before-year-1-in-utc"],
)
def test_filters__a_time_the_database_cannot_hold__is_400_naming_it(
    viewer_client, path, field, value
):
    assert_error(viewer_client.get(path, {field: value}), 400, field=field)


def test_checks__since_with_an_offset__is_the_same_moment_in_utc(client, policy, now):
    services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )
    window_end = HealthCheck.objects.get().window_end
    east = timezone.get_fixed_timezone(timedelta(hours=15, minutes=30))

    at_end = client.get(
        "/api/v1/health/checks/", {"since": window_end.astimezone(east).isoformat()}
    )
    later = client.get(
        "/api/v1/health/checks/",
        {"since": (window_end + timedelta(seconds=1)).astimezone(east).isoformat()},
    )

    assert at_end.json()["count"] == 1
    assert later.json()["count"] == 0
