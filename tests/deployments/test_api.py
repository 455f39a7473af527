"""The deployments REST API: CRUD from the guide's configuration (JSON or YAML), the lifecycle
actions with their 409s, the timeline, the YAML export and the validator."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from rest_framework.test import APIClient

from deployments.models import Deployment
from flags import services as flag_services
from tests.deployments.conftest import make_config
from tests.deployments.guide_examples import (
    multi_phase_config,
    quick_start_config,
    validation_context,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_for(make_user: Any) -> Any:
    def make(role: str) -> APIClient:
        client = APIClient()
        client.force_authenticate(make_user(f"{role}-user", roles=[role]))
        return client

    return make


@pytest.fixture
def engineer_api(client_for: Any) -> APIClient:
    return client_for("engineer")


def create(client: APIClient, config: dict[str, Any] | None = None, **extra: Any) -> Any:
    body = {"config": config or make_config(), **extra} if extra else (config or make_config())
    return client.post("/api/v1/deployments/", body, format="json")


def act(client: APIClient, deployment_id: int, verb: str, **body: Any) -> Any:
    return client.post(f"/api/v1/deployments/{deployment_id}/{verb}/", body, format="json")


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


# ---------------------------------------------------------------------------- CRUD


def test_create__from_the_guides_json__answers_201_with_its_phases(routed_service, engineer_api):
    response = create(engineer_api)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["service"] == "shop" and body["canary_target"] == "canary"
    assert [phase["traffic_percentage"] for phase in body["phases"]] == [
        "10.00",
        "50.00",
        "100.00",
    ]
    assert body["validation"]["valid"] is True
    assert body["allowed_actions"] == ["start", "abort"]


def test_create__from_yaml__with_the_yaml_content_type(routed_service, engineer_api):
    text = yaml.safe_dump(make_config(), sort_keys=False)

    response = engineer_api.post("/api/v1/deployments/", text, content_type="application/yaml")

    assert response.status_code == 201, response.json()
    assert response.json()["config"]["phases"][2]["trafficPercentage"] == 100


def test_create__with_broken_yaml__is_a_400_naming_the_problem(routed_service, engineer_api):
    response = engineer_api.post(
        "/api/v1/deployments/", "name: [unclosed", content_type="application/yaml"
    )

    assert response.status_code == 400
    assert error_of(response)["code"] == "parse_error"


def test_create__with_the_wrapper__links_a_policy_by_name_and_flags_by_key(
    routed_service, policy, engineer_api
):
    flag_services.flag_create(key="new-checkout")

    response = create(engineer_api, health_policy="deploy-test", linked_flags=["new-checkout"])

    assert response.status_code == 201, response.json()
    assert response.json()["health_policy"] == "deploy-test"
    assert response.json()["linked_flags"] == ["new-checkout"]


def test_create__with_an_unknown_flag__says_which(routed_service, engineer_api):
    response = create(engineer_api, linked_flags=["nope"])

    assert response.status_code == 400
    assert "linked_flags" in error_of(response)["fields"]


def test_create__with_schema_errors__answers_400_naming_each_field(routed_service, engineer_api):
    config = make_config()
    config["phases"][0]["durationMs"] = -1.5
    config["bogus"] = True

    response = create(engineer_api, config)

    assert response.status_code == 400
    fields = error_of(response)["fields"]
    assert set(fields) == {"phases[0].durationMs", "bogus"}


def test_create__as_a_viewer__is_forbidden(routed_service, client_for):
    response = create(client_for("viewer"))

    assert response.status_code == 403


def test_list_and_read__are_open_to_viewers_and_filter_by_status(make_deployment, client_for):
    make_deployment()
    viewer = client_for("viewer")

    listed = viewer.get("/api/v1/deployments/?status=pending")
    empty = viewer.get("/api/v1/deployments/?status=running")

    assert listed.status_code == 200 and listed.json()["count"] == 1
    assert empty.json()["count"] == 0
    deployment_id = listed.json()["results"][0]["id"]
    assert viewer.get(f"/api/v1/deployments/{deployment_id}/").status_code == 200


def test_update__a_pending_deployment__with_a_new_config(make_deployment, engineer_api):
    deployment = make_deployment()
    config = make_config(name="renamed")

    response = engineer_api.put(f"/api/v1/deployments/{deployment.pk}/", config, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["name"] == "renamed"


def test_delete__pending_is_204__running_is_409(make_deployment, engineer_api):
    pending = make_deployment()
    assert engineer_api.delete(f"/api/v1/deployments/{pending.pk}/").status_code == 204
    running = make_deployment()
    act(engineer_api, running.pk, "start")

    response = engineer_api.delete(f"/api/v1/deployments/{running.pk}/")

    assert response.status_code == 409
    assert "abort it first" in error_of(response)["message"]


# ---------------------------------------------------------------------------- actions


def test_actions__walk_the_lifecycle(make_deployment, engineer_api):
    deployment = make_deployment()

    assert act(engineer_api, deployment.pk, "start").json()["status"] == "running"
    assert act(engineer_api, deployment.pk, "pause").json()["status"] == "paused"
    assert act(engineer_api, deployment.pk, "resume").json()["status"] == "running"
    promoted = act(engineer_api, deployment.pk, "promote", reason="looked fine", phase=1)
    assert promoted.json()["current_phase"] == 2
    assert act(engineer_api, deployment.pk, "abort").json()["status"] == "aborted"
    assert act(engineer_api, deployment.pk, "retry").json()["status"] == "pending"
    act(engineer_api, deployment.pk, "start")
    full = act(engineer_api, deployment.pk, "promote-full", reason="hotfix")
    assert full.json()["status"] == "succeeded"


def test_action__not_allowed_now__is_a_409_with_the_reason(make_deployment, engineer_api):
    deployment = make_deployment()

    response = act(engineer_api, deployment.pk, "resume")

    assert response.status_code == 409
    assert error_of(response) == {
        "code": "transition_refused",
        "message": "A pending deployment cannot be resumed: it has not started.",
        "fields": {},
    }


def test_promote__without_a_reason_when_criteria_have_not_held__is_a_400_on_reason(
    make_deployment, engineer_api
):
    deployment = make_deployment()
    act(engineer_api, deployment.pk, "start")

    response = act(engineer_api, deployment.pk, "promote")

    assert response.status_code == 400
    assert list(error_of(response)["fields"]) == ["reason"]


def test_promote__on_a_phase_you_no_longer_see__is_a_409(make_deployment, engineer_api):
    deployment = make_deployment()
    act(engineer_api, deployment.pk, "start")
    act(engineer_api, deployment.pk, "promote", reason="ok", phase=1)

    response = act(engineer_api, deployment.pk, "promote", reason="ok", phase=1)

    assert response.status_code == 409
    assert error_of(response)["code"] == "moved_on"


def test_start__of_an_invalid_config__is_a_409_naming_the_fields(routed_service, engineer_api):
    config = make_config()
    config["phases"][2]["trafficPercentage"] = 90  # never reaches 100%
    created = create(engineer_api, config).json()
    assert created["validation"]["valid"] is False

    response = act(engineer_api, created["id"], "start")

    assert response.status_code == 409
    assert "phases[2].trafficPercentage" in error_of(response)["fields"]


def test_action__with_an_unknown_field__is_a_400(make_deployment, engineer_api):
    deployment = make_deployment()

    response = act(engineer_api, deployment.pk, "start", reson="typo")

    assert response.status_code == 400
    assert "reson" in error_of(response)["fields"]


def test_actions__as_a_viewer__are_forbidden(make_deployment, client_for):
    deployment = make_deployment()

    response = act(client_for("viewer"), deployment.pk, "start")

    assert response.status_code == 403
    assert Deployment.objects.get().status == "pending"


def test_events__list_the_timeline_newest_first_with_actor_and_reason(
    make_deployment, engineer_api
):
    deployment = make_deployment()
    act(engineer_api, deployment.pk, "start", reason="go")

    response = engineer_api.get(f"/api/v1/deployments/{deployment.pk}/events/")

    assert response.status_code == 200
    events = response.json()["results"]
    assert [event["kind"] for event in events] == ["start", "created"]
    assert events[0]["actor"] == "engineer-user" and events[0]["reason"] == "go"
    assert events[0]["source"] == "api" and events[0]["canary_share"] == "10.00"


# ---------------------------------------------------------------------------- YAML export


def test_config_yaml__exports_what_create_accepts_back(make_deployment, engineer_api):
    deployment = make_deployment()

    response = engineer_api.get(f"/api/v1/deployments/{deployment.pk}/config.yaml")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/yaml")
    text = response.content.decode()
    assert yaml.safe_load(text) == deployment.config
    again = engineer_api.post("/api/v1/deployments/", text, content_type="application/yaml")
    assert again.status_code == 201
    assert again.json()["config"] == deployment.config


def test_config_yaml__of_a_missing_deployment__is_a_404(engineer_api):
    response = engineer_api.get("/api/v1/deployments/999/config.yaml")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


# ---------------------------------------------------------------------------- validator


def validate(client: APIClient, body: Any, **kwargs: Any) -> Any:
    response = client.post("/api/v1/validate", body, format="json", **kwargs)
    assert response.status_code == 200, response.content
    return response.json()


def found(issues: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(issue["field"], issue["code"]) for issue in issues]


def test_validate__the_guides_multi_phase_example_in_its_context__finds_its_impossible_criteria(
    client_for,
):
    body = {
        "type": "canary_deployment",
        "config": multi_phase_config(),
        "context": validation_context(),
        "strictMode": False,
    }

    report = validate(client_for("viewer"), body)

    assert report["valid"] is False
    assert found(report["errors"]) == [
        ("phases[0].successCriteria[0].threshold", "criterion_never_passes"),
        ("phases[0].successCriteria[1].threshold", "criterion_never_passes"),
        ("phases[3].trafficPercentage", "traffic_exceeds_constraint"),
    ]
    assert found(report["warnings"]) == [("maxDeploymentTimeMs", "little_time_to_spare")]
    assert report["recommendations"]
    assert set(report["estimates"]) == {"timeToFullPromotionMs", "worstCaseTimeToRollbackMs"}
    assert report["estimates"]["worstCaseTimeToRollbackMs"] == report["worstCaseTimeToRollbackMs"]


def test_validate__the_guides_quick_start__never_reaches_full_traffic(engineer_api):
    report = validate(engineer_api, {"config": quick_start_config()})

    assert found(report["errors"]) == [("phases[0].trafficPercentage", "final_phase_not_full")]


def test_validate__strict_mode__makes_warnings_errors(engineer_api):
    report = validate(engineer_api, {"config": multi_phase_config(), "strictMode": True})

    assert ("maxDeploymentTimeMs", "little_time_to_spare") in found(report["errors"])
    assert report["warnings"] == []


def test_validate__a_yaml_config_text__is_read_too(engineer_api):
    text = yaml.safe_dump(make_config(), sort_keys=False)

    report = validate(engineer_api, {"config": text})

    assert report["valid"] is True, report["errors"]
    assert report["estimatedTimeToFullPromotionMs"] == 3 * (20_000 + 5_000)


def test_validate__a_whole_yaml_request__with_the_yaml_content_type(engineer_api):
    body = yaml.safe_dump({"config": quick_start_config(), "strictMode": False})

    response = engineer_api.post("/api/v1/validate", body, content_type="application/yaml")

    assert response.status_code == 200
    assert response.json()["valid"] is False


@pytest.mark.parametrize(
    "body",
    [[], "text", {"config": None}, {"type": "nope", "config": {}}, {"config": "{"}],
)
def test_validate__anything_a_client_sends__is_answered_never_a_500(engineer_api, body):
    report = validate(engineer_api, body)

    assert report["valid"] is False and report["errors"]


def test_validate__with_a_trailing_slash__answers_too(engineer_api):
    response = engineer_api.post("/api/v1/validate/", {"config": make_config()}, format="json")

    assert response.status_code == 200 and response.json()["valid"] is True


def test_simple_config__builds_a_valid_config_with_phases_to_100(engineer_api):
    response = engineer_api.post(
        "/api/v1/deployments/simple-config/",
        {"name": "shop", "serviceName": "shop", "stableVersion": "1.0.0", "canaryVersion": "2.0"},
        format="json",
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert [p["trafficPercentage"] for p in body["config"]["phases"]] == [5, 36.67, 68.33, 100]
    assert body["validation"]["valid"] is True
    assert yaml.safe_load(body["yaml"]) == body["config"]


def test_schema__documents_the_deployment_routes(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    paths = json.loads(response.content)["paths"]
    for path in (
        "/api/v1/deployments/",
        "/api/v1/deployments/{id}/promote-full/",
        "/api/v1/deployments/{id}/events/",
        "/api/v1/deployments/{id}/config.yaml",
        "/api/v1/validate",
    ):
        assert path in paths
