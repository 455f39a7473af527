"""The API shell: tokens, the audit trail, and one error body for every kind of bad input."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from rest_framework.test import APIClient

from canary_site.models import ApiToken, AuditEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(engineer) -> APIClient:
    client = APIClient()
    client.force_authenticate(engineer)
    return client


def assert_error(response, status: int, *, field: str | None = None, code: str | None = None):
    assert response.status_code == status
    body = response.json()["error"]
    assert body["message"]
    if field:
        assert field in body["fields"], body
    if code:
        assert body["code"] == code
    return body


def test_token_create__returns_the_secret_once__and_stores_only_its_digest(client, engineer):
    response = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")

    assert response.status_code == 201
    secret = response.json()["token"]
    stored = ApiToken.objects.get(user=engineer, name="ci")
    assert secret not in (stored.digest, stored.prefix)
    assert secret.startswith(stored.prefix)
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["ci"]
    assert "token" not in listed[0]


def test_token__authenticates_as_bearer__until_revoked(client):
    created = client.post("/api/v1/tokens/", {"name": "ci"}, format="json").json()
    bearer = APIClient(HTTP_AUTHORIZATION=f"Bearer {created['token']}")

    assert bearer.get("/api/v1/me/").json()["username"] == "erin"

    assert client.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204
    assert_error(bearer.get("/api/v1/me/"), 401, code="not_authenticated")


def test_token__with_garbage_bearer__is_401_with_the_error_body():
    response = APIClient(HTTP_AUTHORIZATION="Bearer nope").get("/api/v1/me/")

    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_bad_input__malformed_json__is_400_parse_error(client):
    response = client.post("/api/v1/tokens/", "{not json", content_type="application/json")

    assert_error(response, 400, code="parse_error")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": {"a": 1}}, "name"),
        ({"name": ["x"]}, "name"),
        ({"name": "ci", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "ci", "scopes": ["all"]}, "scopes"),
        ({}, "name"),
        ({"name": "x" * 101}, "name"),
    ],
    ids=["object", "list", "bad-date", "past-date", "unknown-field", "missing", "too-long"],
)
def test_bad_input__wrong_types_and_unknown_fields__are_400_naming_the_field(client, body, field):
    response = client.post("/api/v1/tokens/", body, format="json")

    assert_error(response, 400, field=field)
    assert not ApiToken.objects.exists()


def test_bad_input__a_json_array_body__is_400_not_500(client):
    response = client.post("/api/v1/tokens/", [1, 2], format="json")

    assert response.status_code == 400


def test_bad_input__duplicate_token_name__is_400_and_keeps_the_first(client):
    client.post("/api/v1/tokens/", {"name": "ci"}, format="json")

    response = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")

    assert_error(response, 400, field="name")
    assert ApiToken.objects.count() == 1


def test_missing_csrf__on_a_session_write__is_403_with_the_error_body(engineer):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(engineer)

    response = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")

    assert_error(response, 403)
    assert not ApiToken.objects.exists()


def test_unknown_api_path__is_404_with_the_error_body(client):
    assert_error(client.get("/api/v1/no-such-thing/"), 404, code="not_found")


def test_wrong_method__is_405_with_the_error_body(client):
    assert_error(client.put("/api/v1/me/", {}, format="json"), 405)


def test_revoke__unknown_token__is_404(client):
    assert_error(client.delete("/api/v1/tokens/999999/"), 404)


def test_audit__records_api_writes_with_actor_source_and_verb__and_filters(client, engineer):
    created = client.post("/api/v1/tokens/", {"name": "ci"}, format="json").json()
    client.delete(f"/api/v1/tokens/{created['id']}/")

    entries = client.get("/api/v1/audit/", {"object_type": "apitoken", "actor": "erin"}).json()

    actions = [e["action"] for e in entries["results"]]
    assert actions == ["revoke", "create"]
    assert {e["source"] for e in entries["results"]} == {"api"}
    assert entries["results"][0]["changes"]["revoked_at"][0] == "None"
    assert client.get("/api/v1/audit/", {"action": "revoke"}).json()["count"] == 1
    assert client.get("/api/v1/audit/", {"actor": "nobody"}).json()["count"] == 0


def test_audit__bad_filter_value__is_400_naming_the_field(client):
    response = client.get("/api/v1/audit/", {"since": "yesterday-ish"})

    assert_error(response, 400, field="since")


def test_list__paginates_with_page_size(client, engineer):
    for index in range(3):
        client.post("/api/v1/tokens/", {"name": f"t{index}"}, format="json")

    page = client.get("/api/v1/audit/", {"page_size": 2}).json()

    assert page["count"] == AuditEntry.objects.count() == 3
    assert len(page["results"]) == 2
    assert page["next"]


def test_schema__is_openapi_3_and_lists_the_shell_routes(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/tokens/" in schema["paths"]
    assert "/api/v1/audit/" in schema["paths"]


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize(
    "value",
    ["2026-01-01T00:00:00+23:00", "2026-01-01T00:00:00-16:00", "9999-12-31T23:00:00-05:00"],
    ids=["offset-too-far-east", "offset-too-far-west", "past-year-9999-in-utc"],
)
def test_audit__a_time_the_database_cannot_hold__is_400_naming_the_filter(client, field, value):
    response = client.get("/api/v1/audit/", {field: value})

    assert_error(response, 400, field=field)


def test_audit__since_with_an_offset__compares_the_same_moment_in_utc(client):
    client.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    created = AuditEntry.objects.get().timestamp
    just_after = created.astimezone(timezone(timedelta(hours=15, minutes=59))) + timedelta(
        seconds=1
    )

    after = client.get("/api/v1/audit/", {"since": just_after.isoformat()})
    before = client.get("/api/v1/audit/", {"until": just_after.isoformat()})

    assert after.status_code == before.status_code == 200
    assert after.json()["count"] == 0
    assert before.json()["count"] == 1


def test_bad_input__a_body_over_the_upload_limit__is_413_with_the_error_body(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000

    response = client.post("/api/v1/tokens/", {"name": "ci", "pad": "x" * 2_000}, format="json")

    assert_error(response, 413, code="payload_too_large")
    assert not ApiToken.objects.exists()


def openapi(client) -> dict:
    return client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def test_schema__documents_every_error_status_with_the_one_error_body(client):
    schema = openapi(client)
    error = "#/components/schemas/Error"

    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"error"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"401", "403", "503"} <= set(responses), (method, path)
            for status, response in responses.items():
                if status >= "400":
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": error}, (method, path, status)
                    assert response["description"], (method, path, status)
            assert "Retry-After" in responses["503"]["headers"]
    create = schema["paths"]["/api/v1/tokens/"]["post"]["responses"]
    assert {"400", "409", "413", "415"} <= set(create)
    assert "404" in schema["paths"]["/api/v1/tokens/{id}/"]["delete"]["responses"]
    assert "400" not in schema["paths"]["/api/v1/me/"]["get"]["responses"]


def test_schema__nullable_and_blank_fields_are_declared_as_the_api_sends_them(client):
    components = openapi(client)["components"]["schemas"]

    assert components["AuditEntry"]["properties"]["actor"]["nullable"] is True
    deployment = components["Deployment"]["properties"]
    for name in ("health_policy", "stable_target", "canary_target", "created_by"):
        assert deployment[name]["nullable"] is True, name
    webhook = components["HealthPolicy"]["properties"]["webhook_url"]
    assert "format" not in webhook
    assert {"type": "string", "enum": [""]} in webhook["anyOf"]
