"""The gate in the lower apps' services, through every path: the API answers 202 with the request
and changes nothing, the dashboard shows a banner, the admin commits the request and nothing
else, a task opens a request too; the approved change is applied by the same service, or
superseded when the object changed since; emergencies never wait."""

from __future__ import annotations

import pytest
from celery import shared_task
from django.test import Client

from canary_site import gates
from canary_site.exceptions import TransitionNotAllowed
from deployments import services as deployment_services
from deployments.models import Deployment
from flags import services as flag_services
from flags.models import Flag
from rollback import services
from rollback.models import ApprovalRequest
from routing.models import RoutingRule, RuleTarget
from tests.deployments.conftest import make_deployment, policy, routed_service  # noqa: F401

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def everything(make_policy, *actions, **fields):
    return make_policy(scope_kind="all", scope_value="", actions=list(actions), **fields)


def only_request() -> ApprovalRequest:
    (request,) = ApprovalRequest.objects.all()
    return request


# --- deployments ---------------------------------------------------------------------------------


@pytest.fixture
def running(make_deployment):  # noqa: F811
    deployment = make_deployment()
    deployment_services.deployment_transition(deployment_id=deployment.pk, action="start")
    return Deployment.objects.get(pk=deployment.pk)


def test_deployment_promote_full_over_rest__202_with_the_request__then_applied_when_approved(
    api_client, people, make_policy, running
):
    everything(make_policy, "deployment.promote_full")
    api_client.force_authenticate(people["erin"])

    response = api_client.post(
        f"/api/v1/deployments/{running.pk}/promote-full/", {"reason": "ship it"}, format="json"
    )

    assert response.status_code == 202
    request = ApprovalRequest.objects.get(pk=response.json()["approval_request"]["id"])
    assert response.json()["approval_request"]["url"] == f"/api/v1/approvals/{request.pk}/"
    assert Deployment.objects.get(pk=running.pk).status == "running"
    assert request.action == "deployment.promote_full"
    assert request.change["before"]["status"] == "running"
    assert request.change["after"] == {
        **request.change["before"],
        "status": "succeeded",
        "canary_share": 100.0,
    }
    assert request.reason == "ship it"

    applied = services.approval_request_approve(request_id=request.pk, actor=people["ann"])

    assert applied.state == "applied"
    deployment = Deployment.objects.get(pk=running.pk)
    assert deployment.status == "succeeded"
    assert deployment.events.filter(kind="promote_full").get().actor == people["erin"]


@pytest.mark.parametrize(
    ("verb", "route"),
    [("promote", "promote"), ("abort", "abort"), ("promote_full", "promote-full")],
)
def test_each_gated_deployment_verb_over_rest__opens_a_request(
    api_client, people, make_policy, running, verb, route
):
    everything(make_policy, f"deployment.{verb}")
    api_client.force_authenticate(people["erin"])

    response = api_client.post(
        f"/api/v1/deployments/{running.pk}/{route}/", {"reason": "r"}, format="json"
    )

    assert response.status_code == 202
    assert only_request().action == f"deployment.{verb}"
    assert Deployment.objects.get(pk=running.pk).status == "running"


def test_deployment_start__gated__and_a_refused_transition__is_409_not_a_request(
    api_client,
    people,
    make_policy,
    make_deployment,  # noqa: F811
):
    everything(make_policy, "deployment.start", "deployment.retry")
    pending = make_deployment()
    api_client.force_authenticate(people["erin"])

    started = api_client.post(f"/api/v1/deployments/{pending.pk}/start/", {}, format="json")
    retried = api_client.post(f"/api/v1/deployments/{pending.pk}/retry/", {}, format="json")

    assert started.status_code == 202
    assert retried.status_code == 409
    assert only_request().action == "deployment.start"


def test_pause__is_not_gated(api_client, people, make_policy, running):
    everything(make_policy, *[a for a in gates.GATED_ACTIONS if a.startswith("deployment.")])
    api_client.force_authenticate(people["erin"])

    response = api_client.post(f"/api/v1/deployments/{running.pk}/pause/", {}, format="json")

    assert response.status_code == 200
    assert not ApprovalRequest.objects.exists()


def test_deployment_dashboard__a_banner_names_the_request(people, make_policy, running):
    everything(make_policy, "deployment.promote_full")
    client = signed_in(people["erin"])

    over_htmx = client.post(
        f"/deployments/{running.pk}/act/",
        {"action": "promote_full", "reason": "ship"},
        HTTP_HX_REQUEST="true",
    )

    assert over_htmx.status_code == 202
    request = only_request()
    body = over_htmx.content.decode()
    assert 'data-testid="approval-banner"' in body
    assert f"/rollback/approvals/{request.pk}/" in body
    plain = client.post(
        f"/deployments/{running.pk}/act/", {"action": "promote_full", "reason": "ship"}
    )
    assert plain.status_code == 302
    assert "Approval required" in client.get(plain["Location"]).content.decode()
    assert Deployment.objects.get(pk=running.pk).status == "running"


def test_deployment_admin_action__opens_a_request_and_does_not_act(people, make_policy, running):
    everything(make_policy, "deployment.abort")
    client = signed_in(people["erin"])

    response = client.post(
        "/admin/deployments/deployment/",
        {"action": "abort_deployments", "_selected_action": [str(running.pk)]},
        follow=True,
    )

    assert "Approval required" in response.content.decode()
    assert only_request().action == "deployment.abort"
    assert Deployment.objects.get(pk=running.pk).status == "running"


def test_automatic_rollback_on_a_breach__never_waits(people, make_policy, running):
    everything(make_policy, "deployment.rollback", "deployment.abort", "flag.disable")

    # The control loop's own decision, as the tick makes it.
    (result,) = deployment_services.deployments_transition(
        requests=[
            deployment_services.TransitionRequest(
                deployment_id=running.pk, action="rollback", reason="error rate breached"
            )
        ]
    )

    assert result.done
    assert Deployment.objects.get(pk=running.pk).status == "rolling_back"
    assert not ApprovalRequest.objects.exists()


def test_manual_rollback__is_gated(people, make_policy, running):
    everything(make_policy, "deployment.rollback")

    with pytest.raises(gates.ApprovalRequired):
        deployment_services.deployment_transition(
            deployment_id=running.pk, action="rollback", actor=people["erin"], source="ui"
        )

    assert Deployment.objects.get(pk=running.pk).status == "running"


def test_superseded__the_deployment_moved_on_since_the_request(people, make_policy, running):
    everything(make_policy, "deployment.promote_full")
    with pytest.raises(gates.ApprovalRequired) as raised:
        deployment_services.deployment_transition(
            deployment_id=running.pk, action="promote_full", actor=people["erin"], reason="go"
        )
    deployment_services.deployment_transition(
        deployment_id=running.pk, action="pause", actor=people["erin"]
    )

    with pytest.raises(TransitionNotAllowed) as stale:
        services.approval_request_approve(request_id=raised.value.request_id, actor=people["ann"])

    assert stale.value.code == "superseded"
    assert ApprovalRequest.objects.get(pk=raised.value.request_id).state == "superseded"
    assert Deployment.objects.get(pk=running.pk).status == "paused"


# --- flags ---------------------------------------------------------------------------------------


@pytest.fixture
def payments_flag(db):
    return flag_services.flag_create(key="checkout-v2", tags=["payments"], status="disabled")


def test_flag_writes_over_rest__each_202__nothing_changes(
    api_client, people, make_policy, payments_flag
):
    make_policy(actions=[a for a in gates.GATED_ACTIONS if a.startswith("flag.")])
    api_client.force_authenticate(people["erin"])
    key = payments_flag.key

    answers = {
        "update": api_client.patch(f"/api/v1/flags/{key}/", {"name": "V2"}, format="json"),
        "enable": api_client.post(f"/api/v1/flags/{key}/enable/", {}, format="json"),
        "rollout": api_client.post(
            f"/api/v1/flags/{key}/rollout/", {"percentage": 5}, format="json"
        ),
        "rule": api_client.post(
            f"/api/v1/flags/{key}/rules/",
            {"rule": {"name": "nl", "constraints": [], "serve": {"variant": "on"}}},
            format="json",
        ),
        "delete": api_client.delete(f"/api/v1/flags/{key}/"),
        "create": api_client.post(
            "/api/v1/flags/", {"key": "checkout-v3", "tags": ["payments"]}, format="json"
        ),
    }

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 202)
    flag = Flag.objects.get(key=key)
    assert (flag.name, flag.status, flag.version, flag.rules) == ("", "disabled", 1, [])
    assert not Flag.objects.filter(key="checkout-v3").exists()
    assert sorted(ApprovalRequest.objects.values_list("action", flat=True)) == sorted(
        ["flag.update", "flag.enable", "flag.rollout", "flag.update", "flag.delete", "flag.create"]
    )


def test_flag_create__approved__is_created_by_the_requester(people, make_policy):
    make_policy(actions=["flag.create"])
    with pytest.raises(gates.ApprovalRequired) as raised:
        flag_services.flag_create(
            key="new-pay", tags=["payments"], actor=people["erin"], source="api"
        )

    services.approval_request_approve(request_id=raised.value.request_id, actor=people["ann"])

    assert Flag.objects.get(key="new-pay").owner == people["erin"]


def test_flag_kill__never_waits(api_client, people, make_policy, payments_flag):
    make_policy(actions=[a for a in gates.GATED_ACTIONS if a.startswith("flag.")])
    api_client.force_authenticate(people["erin"])

    response = api_client.post(
        f"/api/v1/flags/{payments_flag.key}/kill/", {"reason": "fire"}, format="json"
    )

    assert response.status_code == 200
    assert Flag.objects.get(pk=payments_flag.pk).status == "killed"
    assert not ApprovalRequest.objects.exists()


def test_flag_update__superseded_after_an_edit(people, make_policy, payments_flag):
    make_policy(actions=["flag.update"])
    with pytest.raises(gates.ApprovalRequired) as raised:
        flag_services.flag_update(flag=payments_flag, changes={"name": "A"}, actor=people["erin"])
    flag_services.flag_kill(flag=payments_flag, reason="meanwhile")

    with pytest.raises(TransitionNotAllowed) as stale:
        services.approval_request_approve(request_id=raised.value.request_id, actor=people["ann"])

    assert stale.value.code == "superseded"

    assert ApprovalRequest.objects.get(pk=raised.value.request_id).state == "superseded"
    assert Flag.objects.get(pk=payments_flag.pk).name == ""


def test_flag_dashboard__the_banner_says_approval_required(people, make_policy, payments_flag):
    make_policy(actions=["flag.enable"])
    client = signed_in(people["erin"])

    response = client.post(f"/flags/{payments_flag.key}/toggle/", {"to": "enabled"}, follow=True)

    assert "Approval required" in response.content.decode()
    assert Flag.objects.get(pk=payments_flag.pk).status == "disabled"
    assert only_request().action == "flag.enable"


def test_flag_admin_add__commits_the_request_and_no_flag(people, make_policy):
    make_policy(actions=["flag.create"])
    client = signed_in(people["ada"])

    response = client.post(
        "/admin/flags/flag/add/",
        {
            "key": "admin-made",
            "name": "",
            "description": "",
            "flag_type": "release",
            "value_type": "boolean",
            "variants": '[{"name": "on", "value": true}, {"name": "off", "value": false}]',
            "off_variant": "off",
            "rules": "[]",
            "default_rule": '{"variant": "on"}',
            "targets": "[]",
            "stickiness": "userId",
            "salt": "",
            "tags": '["payments"]',
        },
    )

    request = only_request()
    assert response.status_code == 302
    assert response["Location"] == f"/rollback/approvals/{request.pk}/"
    assert request.action == "flag.create"
    assert not Flag.objects.filter(key="admin-made").exists()


@shared_task
def enable_flag_task(flag_id: int, user_id: int) -> None:
    from django.contrib.auth import get_user_model

    flag_services.flag_enable(
        flag=Flag.objects.get(pk=flag_id), actor=get_user_model().objects.get(pk=user_id)
    )


def test_a_task__calling_a_gated_service__opens_a_request_too(people, make_policy, payments_flag):
    make_policy(actions=["flag.enable"])

    result = enable_flag_task.apply(args=[payments_flag.pk, people["erin"].pk])

    assert result.failed()
    assert "Approval required" in str(result.result)
    assert only_request().action == "flag.enable"
    assert Flag.objects.get(pk=payments_flag.pk).status == "disabled"


# --- routing -------------------------------------------------------------------------------------


@pytest.fixture
def split(routed_service):  # noqa: F811
    from routing import services as routing_services

    return routing_services.rule_create(
        service=routed_service, name="split", targets={"stable": 90, "canary": 10}
    )


def weights(rule):
    return {rt.target.name: float(rt.weight) for rt in RuleTarget.objects.filter(rule=rule)}


def test_routing_weights_over_rest__202__applied_when_approved(
    api_client, people, make_policy, split
):
    make_policy(
        scope_kind="service", scope_value="shop", actions=["routing.weights", "routing.rule"]
    )
    api_client.force_authenticate(people["erin"])

    response = api_client.post(
        f"/api/v1/routing/rules/{split.pk}/weights/",
        {"weights": {"stable": 50, "canary": 50}},
        format="json",
    )

    assert response.status_code == 202
    assert weights(split) == {"stable": 90.0, "canary": 10.0}
    request = only_request()
    assert request.change == {
        "before": {"weights": {"stable": 90.0, "canary": 10.0}},
        "after": {"weights": {"stable": 50, "canary": 50}},
    }
    services.approval_request_approve(request_id=request.pk, actor=people["ann"])
    assert weights(split) == {"stable": 50.0, "canary": 50.0}


def test_routing_rule_writes_over_rest__202(api_client, people, make_policy, split):
    make_policy(scope_kind="service", scope_value="shop", actions=["routing.rule"])
    api_client.force_authenticate(people["erin"])

    created = api_client.post(
        "/api/v1/routing/rules/",
        {"service": "shop", "name": "more", "targets": [{"target": "stable", "weight": 100}]},
        format="json",
    )
    deleted = api_client.delete(f"/api/v1/routing/rules/{split.pk}/")

    assert (created.status_code, deleted.status_code) == (202, 202)
    assert list(RoutingRule.objects.values_list("name", flat=True)) == ["split"]


def admin_form_data(html: str) -> dict[str, str]:
    """What the admin's change form would post as it stands: every named input, select and
    textarea with its value."""
    from html.parser import HTMLParser

    class Form(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.data: dict[str, str] = {}
            self.open: tuple[str, str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found = {key: value or "" for key, value in attrs}
            name = found.get("name")
            if tag == "input" and name and found.get("type") not in ("submit", "checkbox"):
                self.data[name] = found.get("value", "")
            elif tag == "input" and name and "checked" in found:
                self.data[name] = found.get("value", "on")
            elif tag in ("textarea", "select") and name:
                self.open = (tag, name)
                self.data.setdefault(name, "")
            elif tag == "option" and self.open and "selected" in found:
                self.data[self.open[1]] = found.get("value", "")

        def handle_data(self, data: str) -> None:
            if self.open and self.open[0] == "textarea":
                self.data[self.open[1]] += data

        def handle_endtag(self, tag: str) -> None:
            if self.open and tag == self.open[0]:
                self.open = None

    parser = Form()
    parser.feed(html)
    return parser.data


def test_routing_admin_change__commits_the_request_and_leaves_the_rule(people, make_policy, split):
    make_policy(scope_kind="service", scope_value="shop", actions=["routing.rule"])
    client = signed_in(people["ada"])
    page = client.get(f"/admin/routing/routingrule/{split.pk}/change/").content.decode()
    data = admin_form_data(page)
    data["name"] = "renamed"

    response = client.post(f"/admin/routing/routingrule/{split.pk}/change/", data)

    request = only_request()
    assert response.status_code == 302
    assert response["Location"] == f"/rollback/approvals/{request.pk}/"
    assert RoutingRule.objects.get(pk=split.pk).name == "split"
    assert request.action == "routing.rule"
    assert request.change["after"]["name"] == "renamed"
