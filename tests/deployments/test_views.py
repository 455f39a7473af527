"""The deployments pages: the list and its live rows, a deployment's page with its partials and
buttons, the wizard with its live validation, the statistics, and the admin's actions."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from django.test import Client

from deployments import services
from deployments.models import Deployment
from tests.deployments.conftest import Clock, feed, make_config

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def browser_for(make_user: Any) -> Any:
    def make(role: str) -> Client:
        client = Client()
        client.force_login(make_user(f"{role}-person", roles=[role]))
        return client

    return make


def partial(client: Client, url: str, target: str) -> Any:
    return client.get(url, HTTP_HX_TARGET=target, **HTMX)


def wizard_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "shop 2.0",
        "service": "shop",
        "stable_version": "",
        "canary_version": "2.0.0",
        "strategy": "phased",
        "auto_promote": "on",
        "auto_rollback": "on",
        "max_minutes": "60",
        "phase_count": "2",
        "config_text": "",
    }
    for index, traffic in enumerate(["20", "100"]):
        data.update(
            {
                f"phase-{index}-traffic": traffic,
                f"phase-{index}-duration": "120",
                f"phase-{index}-availability": "99",
                f"phase-{index}-hold": "60",
                f"phase-{index}-error_rate": "5",
                f"phase-{index}-latency_p95": "1000",
                f"phase-{index}-min_availability": "95",
            }
        )
    data.update(overrides)
    return data


# ---------------------------------------------------------------------------- list


def test_list__shows_each_deployment_with_its_status_and_progress(make_deployment, browser_for):
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start")

    response = browser_for("viewer").get("/deployments/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "shop 2.0" in html and 'class="status status-running"' in html
    assert f'hx-get="/deployments/{deployment.pk}/row/"' in html
    assert "phase 1 of 3" in html
    assert "New deployment" not in html  # a viewer cannot create


def test_list_row__polls_while_running__and_stops_polling_once_ended(make_deployment, browser_for):
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start")
    viewer = browser_for("viewer")

    running = viewer.get(f"/deployments/{deployment.pk}/row/", **HTMX)
    services.deployment_transition(deployment_id=deployment.pk, action="abort")
    ended = viewer.get(f"/deployments/{deployment.pk}/row/", **HTMX)

    assert running.status_code == 200
    assert ended.status_code == 286  # htmx's "stop polling"
    html = ended.content.decode()
    assert html.lstrip().startswith(f'<tr id="deployment-row-{deployment.pk}"')
    assert "Aborted" in html and "hx-trigger" not in html


# ---------------------------------------------------------------------------- detail


def test_detail__shows_phases_criteria_charts_and_timeline(make_deployment, browser_for, clock):
    deployment = make_deployment()
    services.deployment_transition(
        deployment_id=deployment.pk, action="start", reason="go", now=clock.now
    )
    feed(start=clock.now, seconds=60)
    services.deployments_tick(now=clock.advance(16))

    response = browser_for("viewer").get(f"/deployments/{deployment.pk}/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="phase-panel"' in html and 'data-testid="phase-1"' in html
    assert "availability &gt; 95 for 10s" in html
    assert "has held for 0s of 10s" in html  # the criterion's state from the tick
    assert f'data-plot-for="deployment-{deployment.pk}-share"' in html
    assert f'data-plot-for="deployment-{deployment.pk}-error-rate"' in html
    assert "Started" in html and "go" in html
    assert 'name="action"' not in html  # viewers see no buttons


def test_detail__an_engineer_sees_the_buttons_the_lifecycle_allows(make_deployment, browser_for):
    deployment = make_deployment()

    html = browser_for("engineer").get(f"/deployments/{deployment.pk}/").content.decode()

    buttons = re.findall(r'name="action" value="(\w+)"', html)
    assert buttons == ["start", "abort"]


def test_summary_poll__brings_the_buttons_only_when_the_state_changed(make_deployment, browser_for):
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start")
    viewer = browser_for("engineer")
    url = f"/deployments/{deployment.pk}/"

    same = partial(viewer, f"{url}?seen=running-1", "deployment-summary").content.decode()
    moved = partial(viewer, f"{url}?seen=pending-0", "deployment-summary").content.decode()

    assert 'id="deployment-actions"' not in same
    assert '<section id="deployment-actions" aria-label="Actions" hx-swap-oob="true">' in moved


def test_detail_partials__answer_alone__and_stop_polling_when_ended(make_deployment, browser_for):
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start")
    viewer = browser_for("viewer")
    url = f"/deployments/{deployment.pk}/"

    for target in ("deployment-summary", "phase-panel", "deployment-charts", "deployment-timeline"):
        response = partial(viewer, url, target)
        assert response.status_code == 200
        assert response.content.decode().lstrip().startswith(f'<section id="{target}"')
    services.deployment_transition(deployment_id=deployment.pk, action="abort")

    assert partial(viewer, url, "phase-panel").status_code == 286


def test_action__start_over_htmx__answers_the_summary_with_the_panels_out_of_band(
    make_deployment, browser_for
):
    deployment = make_deployment()

    response = browser_for("engineer").post(
        f"/deployments/{deployment.pk}/act/", {"action": "start", "reason": "ship"}, **HTMX
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="deployment-actions"')
    assert 'name="action" value="pause"' in html
    for region in ("deployment-summary", "phase-panel", "deployment-timeline"):
        assert f'<section id="{region}"' in html
    assert html.count('hx-swap-oob="true"') == 3
    deployment.refresh_from_db()
    assert deployment.status == "running"
    event = deployment.events.get(kind="start")
    assert (event.source, event.reason, event.actor.username) == ("ui", "ship", "engineer-person")


def test_action__not_allowed_now__answers_409_with_the_reason(make_deployment, browser_for):
    deployment = make_deployment()

    response = browser_for("engineer").post(
        f"/deployments/{deployment.pk}/act/", {"action": "pause"}, **HTMX
    )

    assert response.status_code == 409
    assert "A pending deployment cannot be paused" in response.content.decode()


def test_action__promote_without_reason_before_the_criteria_hold__asks_for_one(
    make_deployment, browser_for
):
    deployment = make_deployment()
    services.deployment_transition(deployment_id=deployment.pk, action="start")

    response = browser_for("engineer").post(
        f"/deployments/{deployment.pk}/act/", {"action": "promote", "phase": "1"}, **HTMX
    )

    assert response.status_code == 400
    assert "say why you promote anyway" in response.content.decode()


def test_action__as_a_viewer__is_forbidden(make_deployment, browser_for):
    deployment = make_deployment()

    response = browser_for("viewer").post(f"/deployments/{deployment.pk}/act/", {"action": "start"})

    assert response.status_code == 403
    assert Deployment.objects.get().status == "pending"


def test_action__without_javascript__redirects_with_a_message(make_deployment, browser_for):
    deployment = make_deployment()

    response = browser_for("engineer").post(
        f"/deployments/{deployment.pk}/act/", {"action": "start"}, follow=True
    )

    assert response.redirect_chain[-1][0] == f"/deployments/{deployment.pk}/"
    assert "Start: done." in response.content.decode()


# ---------------------------------------------------------------------------- wizard


def test_wizard__validates_the_editor_as_you_type(routed_service, browser_for):
    engineer = browser_for("engineer")

    response = engineer.post("/deployments/new/validate/", wizard_data(), **HTMX)

    assert response.status_code == 200
    assert 'data-testid="validation-report"' in response.content.decode()
    assert "Valid" in response.content.decode()


def test_wizard__names_an_impossible_criterion_under_its_phase(routed_service, browser_for):
    engineer = browser_for("engineer")

    response = engineer.post(
        "/deployments/new/validate/", wizard_data(**{"phase-0-availability": "101"}), **HTMX
    )

    html = response.content.decode()
    assert "1 error" in html
    assert 'data-field="phases[0].successCriteria[0].threshold"' in html
    assert (
        '<div id="phase-errors-0" class="errors" hx-swap-oob="true"><p>availability &gt; 101'
        in html
    )


def test_wizard__validates_a_pasted_yaml_configuration(routed_service, browser_for):
    text = yaml.safe_dump(make_config(phases=[{"trafficPercentage": 50, "durationMs": 60000}]))

    response = browser_for("engineer").post(
        "/deployments/new/validate/", wizard_data(config_text=text), **HTMX
    )

    html = response.content.decode()
    # One error (a last phase below 100%); no thresholds is a warning: the policy rolls back.
    assert "1 error</strong>" in html
    assert 'data-field="phases[0].trafficPercentage"' in html
    assert "phase-errors-0" not in html  # the editor's rows are not what was checked


def test_wizard__add_a_phase__answers_the_form_with_one_more_row(routed_service, browser_for):
    response = browser_for("engineer").post(
        "/deployments/new/", wizard_data(op="add-phase"), **HTMX
    )

    assert response.status_code == 200
    assert 'name="phase-2-traffic"' in response.content.decode()
    assert not Deployment.objects.exists()


def test_wizard__create__stores_the_deployment_and_sends_the_browser_to_it(
    routed_service, policy, browser_for
):
    response = browser_for("engineer").post(
        "/deployments/new/", wizard_data(op="create", health_policy=str(policy.pk)), **HTMX
    )

    deployment = Deployment.objects.get()
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/deployments/{deployment.pk}/"
    assert deployment.health_policy == policy
    assert [p["trafficPercentage"] for p in deployment.config["phases"]] == [20, 100]
    assert deployment.config["phases"][0]["successCriteria"][0]["durationMs"] == 60_000


def test_wizard__create_with_a_missing_version__says_which_field(routed_service, browser_for):
    response = browser_for("engineer").post(
        "/deployments/new/", wizard_data(op="create", canary_version="")
    )

    assert response.status_code == 400
    assert "canaryVersion" in response.content.decode()


def test_wizard__is_for_engineers(routed_service, browser_for):
    assert browser_for("viewer").get("/deployments/new/").status_code == 403
    assert browser_for("engineer").get("/deployments/new/").status_code == 200


# ---------------------------------------------------------------------------- statistics


def test_statistics__success_rate_time_per_phase_and_breach_to_rollback(
    make_deployment, browser_for, clock: Clock
):
    first = make_deployment()
    services.deployment_transition(deployment_id=first.pk, action="start", now=clock.now)
    feed(start=clock.now, seconds=10)
    feed(start=clock.now.replace(microsecond=0) + _seconds(10), seconds=60, errors=25)
    for _ in range(8):
        services.deployments_tick(now=clock.advance(5))
    assert Deployment.objects.get(pk=first.pk).status == "rolled_back"
    second = make_deployment()
    services.deployment_transition(deployment_id=second.pk, action="start")
    services.deployment_transition(deployment_id=second.pk, action="promote_full", reason="ok")

    response = browser_for("viewer").get("/deployments/statistics/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-testid="success-rate">50.0%' in html
    assert "over 1 automatic rollback" in html
    assert 'data-plot-for="stats-phase-times"' in html


# ---------------------------------------------------------------------------- admin


def test_admin__actions_call_the_transition_service(make_deployment, make_user):
    deployment = make_deployment()
    admin = make_user("root", roles=["admin"])
    admin.is_staff = True
    admin.save()
    client = Client()
    client.force_login(admin)

    response = client.post(
        "/admin/deployments/deployment/",
        {"action": "start_deployments", "_selected_action": [deployment.pk]},
        follow=True,
    )

    assert response.status_code == 200
    deployment.refresh_from_db()
    assert deployment.status == "running"
    event = deployment.events.get(kind="start")
    assert (event.source, event.actor) == ("ui", admin)


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)
