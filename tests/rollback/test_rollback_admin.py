"""The rollback plans and executions in the admin: a plan is its definition, checked by the plan
services and saved through them; executions are read-only records whose one action, Cancel,
is the service's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from rollback import services
from rollback.models import RollbackExecution, RollbackPlan
from tests.rollback.test_rollback_views import GRADUAL, make_plan, running, shop  # noqa: F401

pytestmark = pytest.mark.django_db

PLAN = {"name": "from the admin", "service": "shop", "strategy": "gradual"}


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_plan_add__saves_through_the_service(people, shop):  # noqa: F811
    response = signed_in(people["erin"]).post(
        "/admin/rollback/rollbackplan/add/", {"definition": json.dumps(PLAN)}
    )

    assert response.status_code == 302
    plan = RollbackPlan.objects.get()
    assert (plan.name, plan.strategy, plan.service.name) == ("from the admin", "gradual", "shop")
    assert plan.created_by == people["erin"]


def test_admin_plan_add__a_plan_that_does_not_read__is_shown_on_the_definition(people, shop):  # noqa: F811
    response = signed_in(people["ada"]).post(
        "/admin/rollback/rollbackplan/add/",
        {"definition": json.dumps({**PLAN, "strategy": "sideways"})},
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "strategy: must be one of" in str(errors["definition"])
    assert not RollbackPlan.objects.exists()


def test_admin_plan_add__a_taken_name__is_shown_on_the_definition(people, shop):  # noqa: F811
    make_plan(name="from the admin")

    response = signed_in(people["ada"]).post(
        "/admin/rollback/rollbackplan/add/", {"definition": json.dumps(PLAN)}
    )

    assert response.status_code == 200
    assert "exists already" in str(response.context["adminform"].form.errors["definition"])
    assert RollbackPlan.objects.count() == 1


def test_admin_plan_add__an_unknown_service__is_a_message_not_a_server_error(people, shop):  # noqa: F811
    response = signed_in(people["ada"]).post(
        "/admin/rollback/rollbackplan/add/",
        {"definition": json.dumps({**PLAN, "service": "nope"})},
        follow=True,
    )

    assert response.status_code == 200
    assert "there is no service named" in response.content.decode()
    assert not RollbackPlan.objects.exists()


def test_admin_plan_change__updates_through_the_service(people, shop):  # noqa: F811
    plan = make_plan()

    response = signed_in(people["ada"]).post(
        f"/admin/rollback/rollbackplan/{plan.pk}/change/",
        {"definition": json.dumps({**PLAN, "name": "careful", "strategy": "blue_green"})},
    )

    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.strategy == "blue_green"
    assert plan.definition["strategy"] == "blue_green"


def test_admin_plan_delete__while_its_rollback_runs__is_refused_with_a_message(people, running):  # noqa: F811
    plan = make_plan(**GRADUAL)
    services.rollback_request(deployment_id=running.pk, reason="bad", actor=people["erin"])

    response = signed_in(people["ada"]).post(
        f"/admin/rollback/rollbackplan/{plan.pk}/delete/", {"post": "yes"}, follow=True
    )

    assert "is running a rollback" in response.content.decode()
    assert RollbackPlan.objects.filter(pk=plan.pk).exists()


def test_admin_plan__viewers_read_but_do_not_add(people, shop):  # noqa: F811
    plan = make_plan()
    client = signed_in(people["vic"])

    assert client.get(f"/admin/rollback/rollbackplan/{plan.pk}/change/").status_code == 200
    assert client.get("/admin/rollback/rollbackplan/add/").status_code == 403
    assert (
        client.post(
            "/admin/rollback/rollbackplan/add/", {"definition": json.dumps(PLAN)}
        ).status_code
        == 403
    )


@pytest.fixture
def rolling_back(people: Any, running: Any) -> RollbackExecution:  # noqa: F811
    make_plan(**GRADUAL)
    return services.rollback_request(
        deployment_id=running.pk, reason="p95 up", actor=people["erin"]
    )


def test_admin_execution__read_only_with_its_steps(people, rolling_back):
    client = signed_in(people["ada"])

    page = client.get(f"/admin/rollback/rollbackexecution/{rolling_back.pk}/change/")

    html = page.content.decode()
    assert page.status_code == 200
    assert "Canary to 5%" in html and "Tell the pager" in html
    assert 'name="_save"' not in html
    assert client.get("/admin/rollback/rollbackexecution/add/").status_code == 403
    assert (
        client.post(f"/admin/rollback/rollbackexecution/{rolling_back.pk}/delete/").status_code
        == 403
    )


def test_admin_execution_cancel__goes_through_the_service(people, rolling_back):
    response = signed_in(people["erin"]).post(
        "/admin/rollback/rollbackexecution/",
        {"action": "cancel_executions", "_selected_action": [str(rolling_back.pk)]},
        follow=True,
    )

    assert "Cancelled: 1 rollback(s)." in response.content.decode()
    rolling_back.refresh_from_db()
    assert rolling_back.state == "cancelled"
    assert "Cancelled in the admin." in rolling_back.outcome


def test_admin_execution_cancel__of_an_ended_one__is_a_message(people, rolling_back):
    services.rollback_execution_cancel(execution=rolling_back, actor=people["erin"])

    response = signed_in(people["ada"]).post(
        "/admin/rollback/rollbackexecution/",
        {"action": "cancel_executions", "_selected_action": [str(rolling_back.pk)]},
        follow=True,
    )

    assert f"#{rolling_back.pk}: Rollback #{rolling_back.pk} has ended" in response.content.decode()


def test_admin_execution_cancel__is_not_offered_to_viewers(people, rolling_back):
    client = signed_in(people["vic"])

    listing = client.get("/admin/rollback/rollbackexecution/").content.decode()
    client.post(
        "/admin/rollback/rollbackexecution/",
        {"action": "cancel_executions", "_selected_action": [str(rolling_back.pk)]},
    )

    assert "cancel_executions" not in listing
    rolling_back.refresh_from_db()
    assert rolling_back.state == "running"


def test_admin_plan__the_webhook_secret_is_masked__and_kept_on_save(people, shop):  # noqa: F811
    definition = {
        "name": "careful",
        "service": "shop",
        "actions": [
            {
                "id": "hook",
                "type": "call_webhook",
                "config": {"url": "http://127.0.0.1:9/hook", "secret": "pssst-1234"},
            }
        ],
    }
    plan = services.rollback_plan_create(definition=definition)
    client = signed_in(people["ada"])

    html = client.get(f"/admin/rollback/rollbackplan/{plan.pk}/change/").content.decode()
    masked = json.loads(json.dumps(definition).replace("pssst-1234", "********"))
    response = client.post(
        f"/admin/rollback/rollbackplan/{plan.pk}/change/", {"definition": json.dumps(masked)}
    )

    assert "pssst-1234" not in html and "********" in html
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.definition["actions"][0]["config"]["secret"] == "pssst-1234"
