"""The rollback executions API: the history with its filters, one execution with its steps,
cancel, the statistics, and a person's rollback of a deployment (201, 202 held for approval,
409 in the cooldown with the time left, 400, 403), beside the deployments' own routes."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from deployments.models import Deployment
from rollback import services
from rollback.models import ApprovalRequest, RollbackExecution
from tests.rollback.api_world import client_for, make_plan, running_deployment, shop_service

pytestmark = pytest.mark.django_db

EXECUTIONS = "/api/v1/rollback/executions/"
STATISTICS = "/api/v1/rollback/statistics/"


def rollback_url(deployment) -> str:
    return f"/api/v1/deployments/{deployment.pk}/rollback/"


@pytest.fixture
def running(db):
    shop_service()
    return running_deployment()


@pytest.fixture
def erin(api_client, people):
    return client_for(api_client, people["erin"])


def _advance_until_ended(execution) -> RollbackExecution:
    moment = timezone.now()
    for _ in range(200):
        services.rollback_executions_advance(now=moment, ids=[execution.pk])
        execution.refresh_from_db()
        if execution.ended:
            return execution
        moment += timedelta(seconds=5)
    raise AssertionError(f"execution still {execution.state}")


def _rehearsal(running, people, **plan) -> RollbackExecution:
    return services.rollback_rehearse(
        plan=make_plan(**plan), deployment=running, actor=people["erin"], reason="drill"
    )


# --- a person's rollback: POST /api/v1/deployments/{id}/rollback/ ------------------------------


def test_rollback__by_the_built_in_plan__answers_201_and_the_deployment_is_rolled_back(
    erin, running
):
    response = erin.post(rollback_url(running), {"reason": "p99 doubled"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["plan"] is None and body["plan_name"] == "built-in immediate"
    assert body["trigger"] == "manual" and body["rehearsal"] is False
    assert body["state"] == "succeeded" and body["ended"] is True
    assert body["requested_by"] == "erin" and body["source"] == "api"
    assert body["reason"] == "p99 doubled"
    assert [step["type"] for step in body["steps"]] == [
        "stop_new_traffic",
        "update_feature_flags",
    ]
    assert {step["state"] for step in body["steps"]} == {"succeeded"}
    running.refresh_from_db()
    assert running.status == "rolled_back" and running.canary_share == 0


def test_rollback__with_a_plan_that_asks_approval__answers_202_and_pauses_the_deployment(
    erin, running, people
):
    make_plan(isDefault=True, safety={"requireApproval": True, "approvers": ["ann"]})

    response = erin.post(rollback_url(running), {"reason": "errors climbing"}, format="json")

    assert response.status_code == 202, response.content
    body = response.json()
    request = ApprovalRequest.objects.get(pk=body["approval_request"]["id"])
    assert body["approval_request"]["action"] == "rollback.execute"
    assert body["approval_request"]["url"] == f"/api/v1/approvals/{request.pk}/"
    assert "Approval required" in body["message"]
    running.refresh_from_db()
    assert running.status == "paused" and running.canary_share == Decimal("50")
    execution = RollbackExecution.objects.get(deployment=running)
    assert execution.state == "awaiting_approval" and execution.approval_id == request.pk
    assert list(request.approvers.values_list("username", flat=True)) == ["ann"]


def test_rollback__within_the_cooldown__is_409_with_the_time_left(erin, running):
    make_plan(
        isDefault=True,
        strategy="immediate",
        actions=[],
        safety={"allowConsecutiveRollbacks": False, "cooldownPeriodMs": 600_000},
    )
    first = erin.post(rollback_url(running), {"reason": "slow"}, format="json")
    assert first.status_code == 201, first.content
    _advance_until_ended(RollbackExecution.objects.get(pk=first.json()["id"]))
    for action in ("retry", "start"):
        assert erin.post(f"/api/v1/deployments/{running.pk}/{action}/").status_code == 200

    refused = erin.post(rollback_url(running), {"reason": "again"}, format="json")

    assert refused.status_code == 409, refused.content
    error = refused.json()["error"]
    assert error["code"] == "cooldown"
    assert re.search(r"allows the next rollback in (9|10) min", error["message"])
    assert 540 <= int(refused["Retry-After"]) <= 600
    running.refresh_from_db()
    assert running.status == "running"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": 5}, None),
        ({"reason": ["x"]}, "reason"),
        ({"reason": "x" * 2001}, "reason"),
        ({"reason": "a\u0000b"}, "reason"),
        ({"reason": "why", "plan": "abc"}, "plan"),
        ({"reason": "why", "plan": 999_999}, "plan"),
        ({"reason": "why", "plan": 10**30}, "plan"),
        ({"reason": "why", "colour": "red"}, "colour"),
    ],
)
def test_rollback__bad_input__is_400_naming_the_field_and_moves_nothing(erin, running, body, field):
    response = erin.post(rollback_url(running), body, format="json")

    if field is None:  # a number is read as its text: a reason all the same
        assert response.status_code == 201
        return
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    running.refresh_from_db()
    assert running.status == "running"


def test_rollback__malformed_json__is_400(erin, running):
    response = erin.generic("POST", rollback_url(running), "{oops", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


@pytest.mark.parametrize("who", ["vic", "ann"])
def test_rollback__by_a_viewer_or_an_approver__is_403(api_client, people, running, who):
    response = client_for(api_client, people[who]).post(
        rollback_url(running), {"reason": "x"}, format="json"
    )

    assert response.status_code == 403
    running.refresh_from_db()
    assert running.status == "running" and not RollbackExecution.objects.exists()


def test_rollback__an_admin_may(api_client, people, running):
    response = client_for(api_client, people["ada"]).post(
        rollback_url(running), {"reason": "x"}, format="json"
    )

    assert response.status_code == 201


def test_rollback__a_deployment_not_running__is_409__and_an_unknown_one_404(erin, running):
    Deployment.objects.filter(pk=running.pk).update(status="succeeded")

    refused = erin.post(rollback_url(running), {"reason": "x"}, format="json")
    assert refused.status_code == 409
    assert "running or paused" in refused.json()["error"]["message"]
    assert "Retry-After" not in refused
    missing = erin.post("/api/v1/deployments/999999/rollback/", {"reason": "x"}, format="json")
    assert missing.status_code == 404


def test_the_deployments_own_routes__still_answer_beside_the_rollback_route(erin, running):
    detail = erin.get(f"/api/v1/deployments/{running.pk}/")
    assert detail.status_code == 200 and detail.json()["id"] == running.pk
    assert erin.get(f"/api/v1/deployments/{running.pk}/events/").status_code == 200
    assert erin.post(f"/api/v1/deployments/{running.pk}/pause/").status_code == 200
    # Only POST is routed; the rollback is not a deployment verb of the deployments router.
    assert erin.get(rollback_url(running)).status_code == 405
    assert erin.post(rollback_url(running), {"reason": "x"}, format="json").status_code == 201


# --- the history: GET /api/v1/rollback/executions/ ---------------------------------------------


def test_list__newest_first__filters_by_service_deployment_state_trigger_rehearsal_and_time(
    api_client, people, running
):
    drill = _rehearsal(running, people)
    manual = services.rollback_request(
        deployment_id=running.pk, reason="by hand", actor=people["erin"]
    )
    vic = client_for(api_client, people["vic"])

    def ids(query: str = "") -> list[int]:
        response = vic.get(f"{EXECUTIONS}?{query}")
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["results"]]

    assert ids() == [manual.pk, drill.pk]
    assert ids("service=shop") == [manual.pk, drill.pk]
    assert ids("service=cart") == []
    assert ids(f"deployment={running.pk}") == [manual.pk, drill.pk]
    assert ids("deployment=999999") == []
    assert ids("state=succeeded") == [manual.pk]
    assert ids("state=running&state=succeeded") == [manual.pk, drill.pk]
    assert ids("trigger=manual") == [manual.pk, drill.pk]
    assert ids("trigger=automatic") == []
    assert ids("rehearsal=true") == [drill.pk]
    assert ids("rehearsal=false") == [manual.pk]
    assert ids("ordering=created_at") == [drill.pk, manual.pk]
    assert ids("page_size=1") == [manual.pk]
    since = (manual.created_at + timedelta(seconds=1)).isoformat()
    assert ids(f"since={since.replace('+', '%2B')}") == []
    until = (drill.created_at - timedelta(seconds=1)).isoformat()
    assert ids(f"until={until.replace('+', '%2B')}") == []
    listed = vic.get(EXECUTIONS).json()["results"][0]
    assert "steps" not in listed and listed["plan_name"] == "built-in immediate"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=exploded", "state"),
        ("trigger=whenever", "trigger"),
        ("since=yesterday", "since"),
        ("since=2026-01-01T00:00:00%2B23:00", "since"),
        ("until=9999-12-31T23:59:59-15:00", "until"),
        ("deployment=abc", "deployment"),
    ],
)
def test_list__a_filter_value_it_cannot_read__is_400_naming_it(erin, running, query, field):
    response = erin.get(f"{EXECUTIONS}?{query}")

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_detail__lists_the_steps_in_order__and_an_unknown_id_is_404(api_client, people, running):
    hook = {
        "id": "hook",
        "type": "call_webhook",
        "config": {"url": "https://hooks.example.com/x", "secret": "s3cret"},
    }
    drill = _rehearsal(running, people, actions=[hook], strategy="immediate")
    ann = client_for(api_client, people["ann"])

    body = ann.get(f"{EXECUTIONS}{drill.pk}/").json()

    assert [(s["position"], s["key"], s["type"]) for s in body["steps"]] == [
        (0, "stop-new-traffic", "stop_new_traffic"),
        (1, "hook", "call_webhook"),
    ]
    assert set(body["steps"][0]) == {
        "position",
        "key",
        "type",
        "name",
        "state",
        "attempts",
        "timeout_ms",
        "after_ms",
        "started_at",
        "finished_at",
        "timed_out",
        "output",
        "error",
    }
    assert body["definition"]["actions"][0]["config"]["secret"] == "********"
    assert "s3cret" not in str(body)
    for missing in ("999999", "abc"):
        assert ann.get(f"{EXECUTIONS}{missing}/").status_code == 404


# --- cancel: POST /api/v1/rollback/executions/{id}/cancel/ --------------------------------------


def test_cancel__stops_a_rehearsal__and_a_second_cancel_is_409(erin, running, people):
    drill = _rehearsal(running, people)

    response = erin.post(f"{EXECUTIONS}{drill.pk}/cancel/", {"reason": "enough"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "cancelled" and body["ended"] is True
    assert "enough" in body["outcome"]
    assert {step["state"] for step in body["steps"]} == {"skipped"}
    again = erin.post(f"{EXECUTIONS}{drill.pk}/cancel/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "ended"


def test_cancel__of_a_rollback_awaiting_approval__closes_its_request_and_leaves_it_paused(
    erin, running
):
    make_plan(isDefault=True, safety={"requireApproval": True, "approvers": ["ann"]})
    held = erin.post(rollback_url(running), {"reason": "errors"}, format="json")
    execution = RollbackExecution.objects.get(deployment=running)

    response = erin.post(f"{EXECUTIONS}{execution.pk}/cancel/", {}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["state"] == "cancelled"
    request = ApprovalRequest.objects.get(pk=held.json()["approval_request"]["id"])
    assert request.state == "cancelled"
    running.refresh_from_db()
    assert running.status == "paused"


@pytest.mark.parametrize("who", ["vic", "ann"])
def test_cancel__by_a_viewer_or_an_approver__is_403(api_client, people, running, who):
    drill = _rehearsal(running, people)

    response = client_for(api_client, people[who]).post(f"{EXECUTIONS}{drill.pk}/cancel/")

    assert response.status_code == 403
    drill.refresh_from_db()
    assert drill.state == "running"


def test_cancel__bad_input__is_400__and_an_unknown_execution_404(erin, running, people):
    drill = _rehearsal(running, people)

    for body in ({"reason": ["x"]}, {"reason": "x" * 2001}, {"why": "x"}):
        response = erin.post(f"{EXECUTIONS}{drill.pk}/cancel/", body, format="json")
        assert response.status_code == 400, body
    assert erin.post(f"{EXECUTIONS}999999/cancel/").status_code == 404
    drill.refresh_from_db()
    assert drill.state == "running"


# --- statistics: GET /api/v1/rollback/statistics/ -----------------------------------------------


def test_statistics__count_rollbacks_by_outcome__with_service_and_since(
    api_client, people, running
):
    _rehearsal(running, people)
    services.rollback_request(deployment_id=running.pk, reason="by hand", actor=people["erin"])
    vic = client_for(api_client, people["vic"])

    body = vic.get(STATISTICS).json()
    assert body["total"] == 1 and body["rehearsals"] == 1
    assert body["byTrigger"]["manual"] == 1 and body["byState"]["succeeded"] == 1
    assert body["successRate"] == 100.0
    assert [item["service"] for item in body["services"]] == ["shop"]

    assert vic.get(f"{STATISTICS}?service=shop").json()["total"] == 1
    assert vic.get(f"{STATISTICS}?service=cart").json()["total"] == 0
    later = (timezone.now() + timedelta(hours=1)).isoformat().replace("+", "%2B")
    assert vic.get(f"{STATISTICS}?since={later}").json()["total"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=soon", "since"),
        ("since=2026-01-01T00:00:00%2B20:00", "since"),
        ("service=a%00b", "service"),
        ("colour=red", "colour"),
    ],
)
def test_statistics__a_query_it_cannot_read__is_400_naming_it(erin, running, query, field):
    response = erin.get(f"{STATISTICS}?{query}")

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_statistics__need_a_role(api_client, make_user, running):
    assert api_client.get(STATISTICS).status_code == 401
    nobody = client_for(api_client, make_user("nobody"))
    assert nobody.get(STATISTICS).status_code == 403
