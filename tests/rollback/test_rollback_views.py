"""The rollback pages: plans listed, written in the form or as YAML and checked as you type,
their detail with Preview and Rehearse, a live execution that stops polling once it has ended,
Cancel, the history and the statistics, and the Roll back panel of a deployment's page. Viewers
read everything and change nothing; engineers and admins edit."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from rollback import services
from rollback.models import ApprovalRequest, RollbackExecution, RollbackPlan

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
STABLE, CANARY = "1.0.0", "2.0.0"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(response: Any) -> str:
    return response.content.decode()


@pytest.fixture
def shop(db: Any) -> Any:
    from routing import services as routing

    service = routing.service_create(name="shop", stable_version=STABLE)
    routing.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    routing.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
    )
    return service


def _config(name: str = "shop 2.0") -> dict[str, Any]:
    return {
        "name": name,
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "maxDeploymentTimeMs": 600_000,
        "phases": [
            {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
            for share in (10, 50, 100)
        ],
    }


@pytest.fixture
def running(shop: Any) -> Any:
    """shop 2.0 running its first phase, at 10%."""
    from deployments import services as deployments
    from deployments.transitions import deployment_transition

    deployment = deployments.deployment_create(config=_config())
    deployment_transition(deployment_id=deployment.pk, action="start")
    deployment.refresh_from_db()
    return deployment


def make_plan(**definition: Any) -> RollbackPlan:
    return services.rollback_plan_create(
        definition={"name": "careful", "service": "shop", "isDefault": True, **definition}
    )


GRADUAL = {
    "strategy": "gradual",
    "strategyConfig": {"durationMs": 4000, "steps": 2},
    "actions": [
        {"id": "stop", "name": "Stop new traffic", "type": "stop_new_traffic", "order": 1},
        {
            "id": "hook",
            "name": "Tell the pager",
            "type": "call_webhook",
            "order": 2,
            "timeoutMs": 5000,
            "config": {"url": "http://127.0.0.1:9/hook"},
        },
    ],
}


# Every field of the form, filled as an engineer would.
FORM = {
    "mode": "form",
    "op": "save",
    "name": "checkout careful",
    "description": "down in two steps, then the pager",
    "service": "shop",
    "deployment_id": "",
    "is_default": "on",
    "enabled": "on",
    "strategy": "gradual",
    "gradual_duration_s": "2",
    "gradual_steps": "2",
    "keep_warm_s": "60",
    "triggers": ["automatic", "manual"],
    "auto_trigger": "on",
    "health_check_path": "/health",
    "validation_timeout_s": "5",
    "retry_attempts": "2",
    "retry_delay_s": "1.5",
    "approvers": "",
    "max_rollback_time_s": "120",
    "allow_consecutive": "on",
    "cooldown_s": "0",
    "channels": "email",
    "recipients": "team@example.com",
    "kept": "",
    "action_count": "2",
    "action-0-type": "stop_new_traffic",
    "action-0-name": "Stop new traffic",
    "action-0-order": "1",
    "action-0-timeout_s": "30",
    "action-1-type": "call_webhook",
    "action-1-name": "Tell the pager",
    "action-1-order": "2",
    "action-1-timeout_s": "5",
    "action-1-url": "http://127.0.0.1:9/hook",
    "action-1-secret": "s3cret",
    "reason": "a gentler way down",
}


# ------------------------------------------------------------------------------ plan list


def test_plan_list__viewer_reads_without_a_new_button__engineer_gets_one(people, shop):
    make_plan(**GRADUAL)

    viewer = page(signed_in(people["vic"]).get("/rollback/plans/"))
    engineer = page(signed_in(people["erin"]).get("/rollback/plans/"))

    for html in (viewer, engineer):
        assert "careful" in html and "Gradual" in html and "default" in html
        # 2 s of pace, two traffic steps of 30 s and the webhook's 5 s: the worst case at 10%.
        assert "1m 7s" in html
    assert "New plan" not in viewer
    assert 'href="/rollback/plans/new/"' in engineer


def test_plan_pages__need_a_role__and_writing_needs_an_engineer(people, make_user, shop):
    plan = make_plan()
    nobody = signed_in(make_user("norole"))
    viewer, approver = signed_in(people["vic"]), signed_in(people["ann"])

    assert nobody.get("/rollback/plans/").status_code == 403
    for client in (viewer, approver):
        assert client.get(f"/rollback/plans/{plan.pk}/").status_code == 200
        assert client.get("/rollback/plans/new/").status_code == 403
        assert client.get(f"/rollback/plans/{plan.pk}/edit/").status_code == 403
        assert client.post(f"/rollback/plans/{plan.pk}/delete/").status_code == 403
        assert client.post("/rollback/plans/new/", FORM).status_code == 403
        assert client.post("/rollback/plans/validate/", FORM).status_code == 403
    assert RollbackPlan.objects.count() == 1
    for name in ("erin", "ada"):
        assert signed_in(people[name]).get("/rollback/plans/new/").status_code == 200


# ------------------------------------------------------------------------------- the form


def test_plan_form__saves_the_guides_plan_in_milliseconds__and_goes_to_its_page(people, shop):
    response = signed_in(people["erin"]).post("/rollback/plans/new/", FORM)

    plan = RollbackPlan.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/rollback/plans/{plan.pk}/"
    assert (plan.name, plan.strategy, plan.is_default, plan.service.name) == (
        "checkout careful",
        "gradual",
        True,
        "shop",
    )
    definition = plan.definition
    assert definition["strategyConfig"] == {"durationMs": 2000, "steps": 2, "keepWarmMs": 60000}
    assert definition["validation"]["retryDelayMs"] == 1500
    assert definition["safety"]["maxRollbackTimeMs"] == 120_000
    assert definition["notifications"]["recipients"] == ["team@example.com"]
    assert definition["actions"][1] == {
        "type": "call_webhook",
        "name": "Tell the pager",
        "order": 2,
        "timeoutMs": 5000,
        "config": {"url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
    }
    assert plan.created_by == people["erin"]


def test_plan_form__over_htmx__success_is_a_client_redirect(people, shop):
    response = signed_in(people["erin"]).post("/rollback/plans/new/", FORM, **HTMX)

    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/rollback/plans/{RollbackPlan.objects.get().pk}/"


def test_plan_form__the_services_errors_appear_next_to_the_fields_they_name(people, shop):
    client = signed_in(people["erin"])

    short = client.post("/rollback/plans/new/", {**FORM, "action-1-timeout_s": "0.01"}, **HTMX)
    ftp = client.post("/rollback/plans/new/", {**FORM, "action-1-url": "ftp://pager"}, **HTMX)

    assert (short.status_code, ftp.status_code) == (400, 400)
    assert not RollbackPlan.objects.exists()
    # On the second action's row: its timeout, its address.
    error = re.search(r'id="id_action-1-timeout_s-error">([^<]*)<', page(short))
    assert error is not None
    assert error.group(1) == "timeoutMs: must be between 100 and 3600000"
    error = re.search(r'id="id_action-1-url-error">([^<]*)<', page(ftp))
    assert error is not None
    assert error.group(1) == "config.url: must be an http:// or https:// address"
    assert 'id="plan-editor"' in page(short) and "<html" not in page(short), "only the editor"


def test_plan_form__a_top_level_error_is_on_its_field(people, shop):
    response = signed_in(people["erin"]).post(
        "/rollback/plans/new/", {**FORM, "cooldown_s": "soon"}
    )

    assert response.status_code == 400
    error = re.search(r'id="id_cooldown_s-error">([^<]*)<', page(response))
    assert error is not None
    assert "safety.cooldownPeriodMs: must be a whole number" in error.group(1)


def test_plan_form__an_unknown_service_and_a_taken_name_are_named_on_their_fields(people, shop):
    make_plan(name="checkout careful", isDefault=False)
    client = signed_in(people["erin"])

    taken = client.post("/rollback/plans/new/", FORM)
    unknown = client.post("/rollback/plans/new/", {**FORM, "service": "nope", "name": "other"})

    assert taken.status_code == 400
    assert re.search(r'id="id_name-error">[^<]*already exists', page(taken))
    assert unknown.status_code == 400
    assert re.search(r'id="id_service-error">[^<]*valid choice', page(unknown))
    assert RollbackPlan.objects.count() == 1


def test_plan_form__add_an_action__and_remove_one__re_render_the_rows_without_saving(people, shop):
    client = signed_in(people["erin"])

    added = page(client.post("/rollback/plans/new/", {**FORM, "op": "add-action"}, **HTMX))
    removed = page(client.post("/rollback/plans/new/", {**FORM, "op": "remove-action-0"}, **HTMX))

    assert 'data-testid="action-row-2"' in added
    assert 'name="action_count" value="3"' in added
    assert 'name="action_count" value="1"' in removed
    # The webhook moved up to the first row, with its settings.
    assert re.search(r'name="action-0-url"[^>]*value="http://127.0.0.1:9/hook"', removed)
    assert not RollbackPlan.objects.exists()


def test_plan_edit__shows_the_plan_in_seconds__and_saves_the_change(people, shop):
    plan = make_plan(
        **GRADUAL,
        triggerThresholds=[{"metric": "error_rate", "threshold": 5, "duration": 30}],
    )
    client = signed_in(people["ada"])

    html = page(client.get(f"/rollback/plans/{plan.pk}/edit/"))
    assert re.search(r'name="gradual_duration_s"[^>]*value="4"', html)
    assert re.search(r'name="action-1-url"[^>]*value="http://127.0.0.1:9/hook"', html)

    data = {**FORM, "name": "careful", "gradual_duration_s": "8", "kept": _kept(html)}
    response = client.post(f"/rollback/plans/{plan.pk}/edit/", data)

    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.definition["strategyConfig"]["durationMs"] == 8000
    # What the form has no field for came back as it was.
    assert plan.definition["triggerThresholds"] == [
        {"metric": "error_rate", "threshold": 5, "duration": 30}
    ]


def _kept(html: str) -> str:
    match = re.search(r'name="kept" value="([^"]*)"', html)
    assert match is not None
    return match.group(1).replace("&quot;", '"')


# ---------------------------------------------------------------------------------- YAML


YAML_PLAN = """
name: yaml plan
service: shop
strategy: blue_green
strategyConfig: {keepWarmMs: 30000}
actions:
  - {id: stop, type: stop_new_traffic, order: 1}
"""


def test_yaml_editor__saves_the_plan_as_written(people, shop):
    response = signed_in(people["erin"]).post(
        "/rollback/plans/new/", {"mode": "yaml", "definition_text": YAML_PLAN}
    )

    plan = RollbackPlan.objects.get()
    assert response.status_code == 302
    assert (plan.name, plan.strategy) == ("yaml plan", "blue_green")
    assert plan.definition["strategyConfig"] == {"keepWarmMs": 30000}


def test_yaml_editor__syntax_and_plan_errors_are_on_the_text(people, shop):
    client = signed_in(people["erin"])

    broken = client.post(
        "/rollback/plans/new/", {"mode": "yaml", "definition_text": "name: [unclosed"}
    )
    wrong = client.post(
        "/rollback/plans/new/",
        {"mode": "yaml", "definition_text": YAML_PLAN.replace("blue_green", "sideways")},
    )

    assert broken.status_code == 400
    assert re.search(r'id="id_definition_text-error">[^<]*not valid YAML', page(broken))
    assert wrong.status_code == 400
    assert re.search(r'id="id_definition_text-error">strategy: must be one of', page(wrong))
    assert not RollbackPlan.objects.exists()


def test_yaml_tab__starts_from_the_stored_plan(people, shop):
    plan = make_plan(**GRADUAL)

    html = page(signed_in(people["erin"]).get(f"/rollback/plans/{plan.pk}/edit/?mode=yaml"))

    assert 'name="definition_text"' in html
    assert "strategy: gradual" in html and "durationMs: 4000" in html


# ---------------------------------------------------------------------- validated as you type


def test_editor__asks_for_the_findings_as_you_type(people, shop):
    html = page(signed_in(people["erin"]).get("/rollback/plans/new/"))

    section = re.search(r'<section id="plan-findings"[^>]*>', html)
    assert section is not None
    assert 'hx-post="/rollback/plans/validate/"' in section.group(0)
    assert "input changed delay:400ms" in section.group(0)


def test_validate__a_good_plan_is_valid_with_its_worst_case(people, shop):
    html = page(signed_in(people["erin"]).post("/rollback/plans/validate/", FORM, **HTMX))

    assert 'data-testid="plan-findings"' in html
    assert "<strong>Valid</strong>" in html
    # 1 s of pace, the stop's 30 s, a step's 30 s and the webhook's 5 s.
    assert re.search(r'data-testid="worst-case">at worst 1m 6s<', html), html


def test_validate__names_the_row_of_a_bad_action__and_stores_nothing(people, shop):
    html = page(
        signed_in(people["erin"]).post(
            "/rollback/plans/validate/", {**FORM, "action-1-timeout_s": "0.01"}, **HTMX
        )
    )

    assert "1 error" in html
    assert re.search(r'data-field="actions\[1\]\.timeoutMs"><strong>Action 2</strong>', html)
    assert not RollbackPlan.objects.exists()


def test_validate__yaml_that_does_not_parse_is_said(people, shop):
    html = page(
        signed_in(people["erin"]).post(
            "/rollback/plans/validate/", {"mode": "yaml", "definition_text": "a: [b"}, **HTMX
        )
    )

    assert "1 error" in html and "not valid YAML" in html


# -------------------------------------------------------------------------------- delete


def test_delete__asks_first__then_deletes(people, shop):
    plan = make_plan()
    client = signed_in(people["erin"])

    confirm = page(client.get(f"/rollback/plans/{plan.pk}/delete/"))
    response = client.post(f"/rollback/plans/{plan.pk}/delete/", {"reason": "unused"})

    assert "Delete careful?" in confirm and "Delete plan" in confirm
    assert response.status_code == 302 and response["Location"] == "/rollback/plans/"
    assert not RollbackPlan.objects.exists()


def test_delete__while_its_rollback_runs__is_refused_with_the_reason(people, running):
    plan = make_plan(**GRADUAL)
    services.rollback_request(deployment_id=running.pk, reason="bad", actor=people["erin"])

    response = signed_in(people["erin"]).post(f"/rollback/plans/{plan.pk}/delete/")

    assert response.status_code == 409
    assert re.search(r'data-testid="delete-error">[^<]*is running a rollback', page(response))
    assert RollbackPlan.objects.filter(pk=plan.pk).exists()


# --------------------------------------------------------------------------- plan detail


def test_plan_detail__definition_steps_and_buttons_by_role(people, running):
    plan = make_plan(**GRADUAL)

    viewer = page(signed_in(people["vic"]).get(f"/rollback/plans/{plan.pk}/"))
    engineer = page(signed_in(people["erin"]).get(f"/rollback/plans/{plan.pk}/"))

    for html in (viewer, engineer):
        assert "strategy: gradual" in html
        assert "Canary to 5%" in html and "Tell the pager" in html
        assert "Preview" in html and f'<option value="{running.pk}">' in html
    assert "Rehearse" not in viewer and "/edit/" not in viewer and "/delete/" not in viewer
    assert "Rehearse" in engineer and "/edit/" in engineer and "/delete/" in engineer


def test_rehearse__runs_the_plan_as_a_rehearsal__and_opens_its_page(people, running):
    plan = make_plan(**GRADUAL)

    response = signed_in(people["erin"]).post(
        f"/rollback/plans/{plan.pk}/rehearse/", {"deployment": running.pk, "reason": "drill"}
    )

    execution = RollbackExecution.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/rollback/executions/{execution.pk}/"
    assert execution.rehearsal and execution.reason == "drill"
    assert execution.requested_by == people["erin"]
    assert signed_in(people["vic"]).post(f"/rollback/plans/{plan.pk}/rehearse/").status_code == 403


def test_rehearse__without_a_deployment__says_so(people, shop):
    plan = make_plan()

    response = signed_in(people["erin"]).post(
        f"/rollback/plans/{plan.pk}/rehearse/", {"deployment": "x"}, follow=True
    )

    assert "choose a deployment" in page(response)
    assert not RollbackExecution.objects.exists()


def test_impact__shows_share_flags_and_a_loud_warning_when_stable_is_unhealthy(people, running):
    from routing.models import Target

    plan = make_plan(**GRADUAL)
    client = signed_in(people["vic"])

    healthy = page(client.get(f"/rollback/impact/?deployment={running.pk}&plan={plan.pk}", **HTMX))
    Target.objects.filter(name="stable").update(healthy=False)
    sick = page(client.get(f"/rollback/impact/?deployment={running.pk}", **HTMX))

    assert 'data-testid="impact-share">10.00%<' in healthy
    assert 'data-testid="impact-plan">careful<' in healthy
    assert "stable-warning" not in healthy
    assert "No flag follows this deployment." in healthy
    assert 'data-testid="stable-warning"' in sick and "marked unhealthy" in sick
    assert client.get("/rollback/impact/?deployment=nope").status_code == 400


# ------------------------------------------------------------------------- an execution


@pytest.fixture
def rolling_back(people: Any, running: Any) -> RollbackExecution:
    make_plan(**GRADUAL)
    return services.rollback_request(
        deployment_id=running.pk, reason="p95 up", actor=people["erin"]
    )


def test_execution_page__header_steps_and_timeline__polling_every_second(people, rolling_back):
    html = page(signed_in(people["vic"]).get(f"/rollback/executions/{rolling_back.pk}/"))

    assert 'data-testid="execution-state">Running<' in html
    assert 'class="status status-running"' in html
    assert "careful" in html and "Gradual" in html and "Manual" in html and "erin" in html
    assert "p95 up" in html
    assert "Canary to 5%" in html and "Tell the pager" in html
    assert f'id="rollback-{rolling_back.pk}-steps"' in html, "the timeline chart"
    steps = re.search(r'<section id="execution-steps"[^>]*>', html)
    assert steps is not None and 'hx-trigger="every 1s"' in steps.group(0)
    assert "Cancel rollback" not in html, "a viewer cancels nothing"


def test_execution_poll__nothing_new_is_a_204__news_are_the_steps_with_the_header(
    people, rolling_back
):
    client = signed_in(people["vic"])
    html = page(client.get(f"/rollback/executions/{rolling_back.pk}/"))
    seen = re.search(r"\?seen=([^\"]+)\"", html).group(1)
    poll = {"HTTP_HX_TARGET": "execution-steps", **HTMX}

    quiet = client.get(f"/rollback/executions/{rolling_back.pk}/?seen={seen}", **poll)
    services.rollback_executions_advance(ids=[rolling_back.pk])
    news = client.get(f"/rollback/executions/{rolling_back.pk}/?seen={seen}", **poll)

    assert quiet.status_code == 204
    assert news.status_code == 200
    body = page(news)
    assert '<section id="execution-steps"' in body and 'hx-trigger="every 1s"' in body
    assert 'id="execution-header" class="card" aria-label="Summary" hx-swap-oob="true"' in body
    assert "Succeeded" in body, "the first step has run"


def test_execution_poll__once_ended__stops_polling_and_the_steps_carry_no_trigger(
    people, rolling_back
):
    services.rollback_execution_cancel(execution=rolling_back, actor=people["erin"], reason="x")
    client = signed_in(people["vic"])

    poll = client.get(
        f"/rollback/executions/{rolling_back.pk}/?seen=old",
        HTTP_HX_TARGET="execution-steps",
        **HTMX,
    )
    full = page(client.get(f"/rollback/executions/{rolling_back.pk}/"))

    assert poll.status_code == 286, "htmx stops polling on 286"
    assert "hx-trigger" not in page(poll).split('id="execution-header"')[0]
    steps = re.search(r'<section id="execution-steps"[^>]*>', full).group(0)
    assert "hx-trigger" not in steps and "hx-get" not in steps
    assert 'data-testid="execution-state">Cancelled<' in full


def test_cancel__an_engineer_cancels_with_a_reason__a_viewer_may_not(people, rolling_back):
    url = f"/rollback/executions/{rolling_back.pk}/cancel/"
    html = page(signed_in(people["erin"]).get(f"/rollback/executions/{rolling_back.pk}/"))
    assert "Cancel rollback" in html

    refused = signed_in(people["vic"]).post(url, {"reason": "no"})
    done = signed_in(people["erin"]).post(url, {"reason": "wrong deployment"}, **HTMX)

    assert refused.status_code == 403
    assert done.status_code == 200
    assert done["HX-Redirect"] == f"/rollback/executions/{rolling_back.pk}/"
    rolling_back.refresh_from_db()
    assert rolling_back.state == "cancelled" and "wrong deployment" in rolling_back.outcome


def test_cancel__an_ended_rollback__is_a_409_with_the_message(people, rolling_back):
    services.rollback_execution_cancel(execution=rolling_back, actor=people["erin"])

    response = signed_in(people["erin"]).post(
        f"/rollback/executions/{rolling_back.pk}/cancel/", {"reason": "again"}, **HTMX
    )

    assert response.status_code == 409
    assert re.search(r'data-testid="cancel-error">[^<]*has ended', page(response))


def test_execution_page__unknown_is_404(people, db):
    assert signed_in(people["vic"]).get("/rollback/executions/999999/").status_code == 404


# ------------------------------------------------------------------ history and statistics


def test_history__newest_first__filtered__and_paginated(people, running):
    plan = make_plan(**GRADUAL)
    older = services.rollback_rehearse(plan=plan, deployment=running, reason="first")
    newer = services.rollback_rehearse(plan=plan, deployment=running, reason="second")
    real = services.rollback_request(deployment_id=running.pk, reason="real", actor=people["erin"])
    client = signed_in(people["vic"])

    everything = page(client.get("/rollback/executions/"))
    rehearsals = page(client.get("/rollback/executions/?rehearsal=true"))
    running_only = page(client.get("/rollback/executions/?state=running&rehearsal=false"))

    rows = re.findall(r'data-testid="execution-(\d+)"', everything)
    assert rows == [str(real.pk), str(newer.pk), str(older.pk)]
    assert re.findall(r'data-testid="execution-(\d+)"', rehearsals) == [
        str(newer.pk),
        str(older.pk),
    ]
    assert re.findall(r'data-testid="execution-(\d+)"', running_only) == [str(real.pk)]


def test_history__pages_of_25(people, running):
    plan = make_plan()
    for index in range(27):
        services.rollback_rehearse(plan=plan, deployment=running, reason=f"drill {index}")
    client = signed_in(people["vic"])

    first = page(client.get("/rollback/executions/?rehearsal=true"))
    second = page(client.get("/rollback/executions/?rehearsal=true&page=2"))

    assert len(re.findall(r'data-testid="execution-\d+"', first)) == 25
    assert len(re.findall(r'data-testid="execution-\d+"', second)) == 2
    assert 'href="?rehearsal=true&amp;page=2"' in first


def test_statistics__figures_and_charts(people, rolling_back):
    services.rollback_execution_cancel(execution=rolling_back, actor=people["erin"])

    html = page(signed_in(people["vic"]).get("/rollback/statistics/"))

    assert 'data-testid="stats-total">1<' in html
    assert 'data-testid="stats-success-rate">0.0%<' in html
    assert 'data-plot-for="rollback-stats-over-time"' in html
    assert 'data-plot-for="rollback-stats-out-of-traffic"' in html
    assert "shop" in html


def test_navigation__the_rollback_pages_are_linked(people, db):
    html = page(signed_in(people["vic"]).get("/rollback/plans/"))

    nav = re.search(r'<nav class="subnav" aria-label="Rollback">.*?</nav>', html, re.S).group(0)
    for href in ("/rollback/plans/", "/rollback/executions/", "/rollback/statistics/"):
        assert f'href="{href}"' in nav
    assert 'href="/rollback/"' in html, "the main navigation leads to the rollback pages"


# ------------------------------------------------------------------ the deployment's panel


def test_deployment_page__loads_the_rollback_panel(people, running):
    html = page(signed_in(people["vic"]).get(f"/deployments/{running.pk}/"))

    assert f'hx-get="/rollback/deployments/{running.pk}/panel/" hx-trigger="load"' in html


def test_panel__an_engineer_gets_roll_back_and_preview__a_viewer_only_preview(people, running):
    url = f"/rollback/deployments/{running.pk}/panel/"

    engineer = page(signed_in(people["erin"]).get(url, **HTMX))
    viewer = page(signed_in(people["vic"]).get(url, **HTMX))

    assert "Roll back</button>" in engineer and 'name="reason"' in engineer
    assert "Roll back</button>" not in viewer
    for html in (engineer, viewer):
        assert "Preview" in html and "the built-in plan" in html
        assert f'href="/rollback/executions/?deployment={running.pk}"' in html
        assert "?seen=running" in html and 'hx-trigger="every 5s"' in html


def test_panel__polls_quietly_until_the_status_changes__and_stops_at_the_end(people, running):
    from deployments.transitions import deployment_transition

    client = signed_in(people["vic"])
    url = f"/rollback/deployments/{running.pk}/panel/?seen=running"

    quiet = client.get(url, **HTMX)
    deployment_transition(deployment_id=running.pk, action="abort", reason="stop")
    ended = client.get(url, **HTMX)

    assert quiet.status_code == 204
    assert ended.status_code == 286
    assert "Roll back</button>" not in page(ended) and "hx-trigger" not in page(ended)


def test_panel__roll_back__goes_to_the_execution_page(people, running):
    make_plan(**GRADUAL)

    response = signed_in(people["erin"]).post(
        f"/rollback/deployments/{running.pk}/rollback/", {"reason": "errors up"}, **HTMX
    )

    execution = RollbackExecution.objects.get()
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/rollback/executions/{execution.pk}/"
    assert (execution.trigger, execution.reason, execution.requested_by) == (
        "manual",
        "errors up",
        people["erin"],
    )
    running.refresh_from_db()
    assert running.status == "rolling_back"


def test_panel__roll_back_without_a_reason__says_why_beside_it(people, running):
    response = signed_in(people["erin"]).post(
        f"/rollback/deployments/{running.pk}/rollback/", {"reason": " "}, **HTMX
    )

    assert response.status_code == 400
    assert re.search(r'data-testid="rollback-error">reason: say why', page(response))
    assert not RollbackExecution.objects.exists()


def test_panel__in_the_cooldown__the_409_says_how_long(people, running):
    make_plan(safety={"allowConsecutiveRollbacks": False, "cooldownPeriodMs": 600_000})
    # shop was rolled back a minute ago.
    RollbackExecution.objects.create(
        plan_name="careful",
        strategy="immediate",
        deployment=running,
        service="shop",
        trigger="manual",
        state="succeeded",
        created_at=timezone.now() - timedelta(minutes=1),
    )

    response = signed_in(people["erin"]).post(
        f"/rollback/deployments/{running.pk}/rollback/", {"reason": "again"}, **HTMX
    )

    assert response.status_code == 409
    assert re.search(
        r'data-testid="rollback-error">[^<]*allows the next rollback in', page(response)
    )
    assert RollbackExecution.objects.count() == 1


def test_panel__a_plan_that_asks_approval__shows_waiting_with_the_request(people, running):
    make_plan(safety={"requireApproval": True, "approvers": ["ann"]})

    response = signed_in(people["erin"]).post(
        f"/rollback/deployments/{running.pk}/rollback/", {"reason": "errors"}, **HTMX
    )

    request = ApprovalRequest.objects.get()
    html = page(response)
    assert response.status_code == 202
    assert 'data-testid="rollback-waiting">Waiting for approval.' in html
    assert f'href="/rollback/approvals/{request.pk}/"' in html
    assert RollbackExecution.objects.get().state == "awaiting_approval"


def test_panel__viewers_may_not_roll_back(people, running):
    response = signed_in(people["vic"]).post(
        f"/rollback/deployments/{running.pk}/rollback/", {"reason": "x"}
    )

    assert response.status_code == 403
    assert not RollbackExecution.objects.exists()


# ------------------------------------------------------------------------ webhook secrets


def test_secrets__never_shown__and_kept_when_the_plan_is_saved_back(people, shop):
    plan = services.rollback_plan_create(
        definition={
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
    )
    client = signed_in(people["erin"])

    detail = page(client.get(f"/rollback/plans/{plan.pk}/"))
    form_page = page(client.get(f"/rollback/plans/{plan.pk}/edit/"))
    yaml_page = page(client.get(f"/rollback/plans/{plan.pk}/edit/?mode=yaml"))

    for html in (detail, form_page, yaml_page):
        assert "pssst-1234" not in html and "********" in html
    data = {
        **FORM,
        "name": "careful",
        "action_count": "1",
        "action-0-key": "hook",
        "action-0-type": "call_webhook",
        "action-0-url": "http://127.0.0.1:9/hook",
        "action-0-secret": "********",
    }
    assert client.post(f"/rollback/plans/{plan.pk}/edit/", data).status_code == 302
    plan.refresh_from_db()
    assert plan.definition["actions"][0]["config"]["secret"] == "pssst-1234"

    text = re.search(r"<textarea[^>]*>(.*?)</textarea>", yaml_page, re.S).group(1)
    text = text.replace("&quot;", '"').replace("&#x27;", "'").replace("&amp;", "&")
    response = client.post(
        f"/rollback/plans/{plan.pk}/edit/", {"mode": "yaml", "definition_text": text}
    )
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.definition["actions"][0]["config"]["secret"] == "pssst-1234"


def test_secrets__a_mask_with_nothing_behind_it_is_refused_on_its_field(people, shop):
    data = {**FORM, "action-1-secret": "********"}

    response = signed_in(people["erin"]).post("/rollback/plans/new/", data)

    assert response.status_code == 400
    assert re.search(r'id="id_action-1-secret-error">[^<]*no secret to keep', page(response))
    assert not RollbackPlan.objects.exists()


def test_yaml__text_the_database_cannot_store__is_a_400_naming_it(people, shop):
    response = signed_in(people["erin"]).post(
        "/rollback/plans/new/",
        {"mode": "yaml", "definition_text": 'name: "nul \\0 here"\nservice: shop'},
    )

    assert response.status_code == 400
    assert re.search(r'id="id_definition_text-error">name: [^<]*cannot be stored', page(response))
    assert not RollbackPlan.objects.exists()


def test_nul_characters__anywhere__are_a_400_never_a_server_error(people, running):
    client = signed_in(people["erin"])
    plan = make_plan()

    answers = [
        client.post("/rollback/plans/new/", {**FORM, "reason": "a\x00b"}),
        client.post(
            "/rollback/plans/new/",
            {**FORM, "is_default": "", "kept": '{"notifications": ["x"]}'},
        ),
        client.post("/rollback/plans/new/", {"mode": "yaml", "definition_text": "a\x00"}),
        client.post(f"/rollback/deployments/{running.pk}/rollback/", {"reason": "a\x00b"}, **HTMX),
        client.post(
            f"/rollback/plans/{plan.pk}/rehearse/", {"deployment": running.pk, "reason": "\x00"}
        ),
    ]

    assert [answer.status_code for answer in answers] == [400, 302, 400, 400, 302]
    assert "Null characters are not allowed" in page(answers[0])
    assert not RollbackExecution.objects.exists()
