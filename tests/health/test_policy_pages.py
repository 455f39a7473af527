"""The health policy pages: listed, read, written in the form (thresholds, rollback thresholds
and escalation rules as rows added without JavaScript) and checked as you type, deleted; and
where a policy's news goes, on its page and on the page of a deployment it judges. Viewers read
everything and change nothing; engineers and admins edit."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape

from canary_site.models import AuditEntry
from health import services
from health.forms import policy_initial
from health.models import HealthPolicy

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
STABLE, CANARY = "1.0.0", "2.0.0"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(response: Any) -> str:
    return response.content.decode()


def field_error(html: str, field_id: str) -> str:
    """The error shown beside the field ``id_<field_id>``, or '' when there is none."""
    found = re.search(
        rf'<p class="error" role="alert" id="id_{re.escape(field_id)}-error">(.*?)</p>', html
    )
    return found.group(1) if found else ""


@pytest.fixture
def people(make_user: Any) -> dict[str, Any]:
    return {
        "erin": make_user("erin", roles=["engineer"]),
        "ada": make_user("ada", roles=["admin"]),
        "vic": make_user("vic", roles=["viewer"]),
        "ann": make_user("ann", roles=["approver"]),
    }


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


@pytest.fixture(autouse=True)
def _no_follow_up_tasks(settings: Any) -> None:
    settings.CANARY_DEPLOYMENTS_ENQUEUE = False


def deployment_of(
    policy: HealthPolicy | None, *, start: bool = True, notifications: dict[str, bool] | None = None
) -> Any:
    """shop 2.0 judged by ``policy``, running its first phase unless ``start`` is false."""
    from deployments import services as deployments
    from deployments.transitions import deployment_transition

    config: dict[str, Any] = {
        "name": f"shop {CANARY} {policy.name if policy else 'default'}",
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "phases": [
            {"trafficPercentage": share, "durationMs": 60_000, "successCriteria": []}
            for share in (10, 100)
        ],
    }
    if notifications is not None:
        config["notifications"] = notifications
    deployment = deployments.deployment_create(config=config, health_policy=policy)
    if start:
        deployment_transition(deployment_id=deployment.pk, action="start")
    deployment.refresh_from_db()
    return deployment


def make_policy(name: str = "careful", **fields: Any) -> HealthPolicy:
    return services.health_policy_create(name=name, **fields)


# Every section of the form filled as an engineer would: two thresholds, a rollback threshold,
# an escalation rule.
FORM: dict[str, Any] = {
    "op": "save",
    "name": "checkout strict",
    "description": "tight bounds for checkout",
    "window_seconds": "120",
    "fast_window_seconds": "15",
    "min_requests": "50",
    "no_data": "fail",
    "threshold_count": "2",
    "threshold-0-metric": "error_rate",
    "threshold-0-operator": "gt",
    "threshold-0-warning": "1",
    "threshold-0-critical": "5",
    "threshold-0-consecutive_failures": "2",
    "threshold-1-metric": "latency_p95",
    "threshold-1-operator": "gt",
    "threshold-1-critical": "800",
    "threshold-1-consecutive_failures": "1",
    "comparison_enabled": "on",
    "comparison_metrics": ["error_rate", "latency"],
    "comparison_tolerance_percent": "25",
    "comparison_margin_points": "0.1",
    "comparison_margin_ms": "10",
    "comparison_latency_percentile": "99",
    "comparison_alpha": "0.02",
    "comparison_fast_alpha": "0.0001",
    "comparison_baseline_window_seconds": "600",
    "comparison_severity": "critical",
    "comparison_rollback": "on",
    "trend_enabled": "on",
    "trend_metrics": ["error_rate"],
    "trend_custom_metrics": "queue_depth",
    "trend_windows": "8",
    "trend_min_windows": "4",
    "trend_alpha": "0.05",
    "trend_severity": "warning",
    "sample_ratio_alpha": "0.001",
    "sample_ratio_severity": "warning",
    "auto_rollback_enabled": "on",
    "rollback_count": "1",
    "rollback-0-metric": "error_rate",
    "rollback-0-operator": "gte",
    "rollback-0-threshold": "20",
    "rollback-0-consecutive_violations": "3",
    "alerting_enabled": "on",
    "alert_channels": ["email", "webhook"],
    "alert_recipients": "oncall@example.com, team@example.com",
    "slack_webhook_url": "",
    "webhook_url": "https://hooks.example.com/canary",
    "alert_cooldown_seconds": "600",
    "escalation_count": "1",
    "escalation-0-severity": "critical",
    "escalation-0-delay_seconds": "120",
    "escalation-0-recipients": "boss@example.com",
}

SAVED_DOCUMENT = {
    "window_seconds": 120,
    "fast_window_seconds": 15,
    "min_requests": 50,
    "no_data": "fail",
    "thresholds": [
        {
            "metric": "error_rate",
            "operator": "gt",
            "warning": 1.0,
            "critical": 5.0,
            "consecutive_failures": 2,
        },
        {
            "metric": "latency_p95",
            "operator": "gt",
            "warning": None,
            "critical": 800.0,
            "consecutive_failures": 1,
        },
    ],
    "comparison": {
        "enabled": True,
        "metrics": ["error_rate", "latency"],
        "tolerance_percent": 25.0,
        "margin_points": 0.1,
        "margin_ms": 10.0,
        "alpha": 0.02,
        "fast_alpha": 0.0001,
        "latency_percentile": 99.0,
        "baseline_window_seconds": 600,
        "severity": "critical",
        "rollback": True,
    },
    "trend": {
        "enabled": True,
        "metrics": ["error_rate", "custom:queue_depth"],
        "windows": 8,
        "min_windows": 4,
        "alpha": 0.05,
        "severity": "warning",
    },
    "sample_ratio": {"enabled": False, "alpha": 0.001, "severity": "warning"},
    "auto_rollback": {
        "enabled": True,
        "thresholds": [
            {
                "metric": "error_rate",
                "operator": "gte",
                "threshold": 20.0,
                "consecutive_violations": 3,
            }
        ],
    },
}


def posted(policy: HealthPolicy) -> dict[str, Any]:
    """What the edit form of ``policy`` posts back untouched: its fields and its rows, as a
    browser sends them (ticked boxes as "on", unticked ones left out)."""
    initial, rows = policy_initial(policy)
    data: dict[str, Any] = {"op": "save"}
    for name, value in initial.items():
        if value is True:
            data[name] = "on"
        elif value not in (False, None):
            data[name] = value
    for prefix, found in rows.items():
        data[f"{prefix}_count"] = str(len(found))
        for row in found:
            for name in row.fields:
                value = row.initial.get(name, row.fields[name].initial)
                if value is True:
                    data[row.add_prefix(name)] = "on"
                elif value not in (False, None, "", []):
                    data[row.add_prefix(name)] = value
    return data


# ------------------------------------------------------------------------------ the roles


def test_policy_pages__need_a_role__viewers_read__only_engineers_and_admins_write(
    people, make_user
):
    policy = make_policy()
    nobody = signed_in(make_user("norole"))
    url = f"/health/policies/{policy.pk}"

    assert nobody.get("/health/policies/").status_code == 403
    assert nobody.get(f"{url}/").status_code == 403
    for reader in (signed_in(people["vic"]), signed_in(people["ann"])):
        listed, detail = page(reader.get("/health/policies/")), page(reader.get(f"{url}/"))
        assert "careful" in listed and "careful" in detail
        assert "New policy" not in listed
        assert f'href="{url}/edit/"' not in detail and f'href="{url}/delete/"' not in detail
        assert reader.get("/health/policies/new/").status_code == 403
        assert reader.get(f"{url}/edit/").status_code == 403
        assert reader.get(f"{url}/delete/").status_code == 403
        assert reader.post("/health/policies/new/", FORM).status_code == 403
        assert reader.post(f"{url}/edit/", FORM).status_code == 403
        assert reader.post(f"{url}/delete/").status_code == 403
        assert reader.post("/health/policies/validate/", FORM).status_code == 403
    assert list(HealthPolicy.objects.values_list("name", flat=True)) == ["careful"]
    for writer in (signed_in(people["erin"]), signed_in(people["ada"])):
        assert 'href="/health/policies/new/"' in page(writer.get("/health/policies/"))
        detail = page(writer.get(f"{url}/"))
        assert f'href="{url}/edit/"' in detail and f'href="{url}/delete/"' in detail
        assert writer.get("/health/policies/new/").status_code == 200
        assert writer.get(f"{url}/edit/").status_code == 200
        assert writer.get(f"{url}/delete/").status_code == 200


def test_list__names_alerting_channels_auto_rollback_and_the_deployments_it_judges(people, shop):
    quiet = make_policy(
        "quiet", alerting_enabled=False, policy={"auto_rollback": {"enabled": False}}
    )
    loud = make_policy(
        "loud", alert_channels=["email", "slack"], alert_recipients=["oncall@example.com"]
    )
    deployment_of(loud)
    deployment_of(loud, start=False)

    html = page(signed_in(people["vic"]).get("/health/policies/"))

    row = {
        policy.name: re.search(rf'data-testid="policy-{policy.pk}">(.*?)</tr>', html, re.S).group(1)
        for policy in (quiet, loud)
    }
    assert re.findall(r'class="status status-\w+">(\w+)<', row["quiet"]) == ["Off", "Off"]
    assert re.findall(r'class="status status-\w+">(\w+)<', row["loud"]) == ["On", "On"]
    assert "none" in row["quiet"] and "0 deployments" in row["quiet"]
    assert re.findall(r'class="tag">(\w+)<', row["loud"]) == ["email", "slack"]
    assert "2 deployments" in row["loud"]


def test_detail__reads_the_policy_in_the_forms_words(people):
    policy = make_policy(
        policy=SAVED_DOCUMENT, alert_channels=["email"], alert_recipients=["a@b.co"]
    )

    html = page(signed_in(people["vic"]).get(f"/health/policies/{policy.pk}/"))

    assert "<dd>120 s</dd>" in html and "Fail: count it as critical" in html
    assert "<tr><td>Error rate (%)</td><td>above</td><td>1</td><td>5</td><td>2</td></tr>" in html
    assert (
        "<tr><td>Latency p95 (ms)</td><td>above</td><td>—</td><td>800</td><td>1</td></tr>" in html
    )
    assert "<td>Error rate (%)</td><td>at or above</td><td>20</td><td>3</td>" in html
    assert "may be 25% worse than stable" in html
    assert re.search(r"<strong>Email</strong>: a@b\.co", html)


# --------------------------------------------------------------------------------- create


def test_create__through_the_form_with_threshold_rows__saves_the_document_and_alerting(people):
    response = signed_in(people["erin"]).post("/health/policies/new/", FORM)

    policy = HealthPolicy.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/health/policies/{policy.pk}/"
    assert policy.name == "checkout strict"
    assert policy.description == "tight bounds for checkout"
    assert policy.policy == SAVED_DOCUMENT
    assert policy.alerting_enabled is True
    assert policy.alert_channels == ["email", "webhook"]
    assert policy.alert_recipients == ["oncall@example.com", "team@example.com"]
    assert policy.webhook_url == "https://hooks.example.com/canary"
    assert policy.alert_cooldown_seconds == 600
    assert policy.escalation_rules == [
        {"severity": "critical", "delay_seconds": 120, "recipients": ["boss@example.com"]}
    ]
    entry = AuditEntry.objects.get(object_pk=str(policy.pk), verb="create")
    assert entry.actor == people["erin"] and entry.source == "ui"


def test_create__over_htmx__success_is_a_client_redirect(people):
    response = signed_in(people["erin"]).post("/health/policies/new/", FORM, **HTMX)

    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/health/policies/{HealthPolicy.objects.get().pk}/"


def test_create__blank_fields_take_the_readers_defaults__and_a_blank_row_is_left_out(people):
    data = {
        "op": "save",
        "name": "plain",
        "threshold_count": "1",
        "threshold-0-operator": "gt",
        "alert_cooldown_seconds": "300",
    }

    response = signed_in(people["erin"]).post("/health/policies/new/", data)

    assert response.status_code == 302
    document = HealthPolicy.objects.get().policy
    assert document["window_seconds"] == 300 and document["min_requests"] == 100
    assert document["thresholds"] == []
    # Unticked switches are off, as a browser sends them.
    assert document["comparison"]["enabled"] is False
    assert document["auto_rollback"]["enabled"] is False


def test_new_form__starts_from_the_readers_defaults_with_one_empty_threshold_row(people):
    html = page(signed_in(people["erin"]).get("/health/policies/new/"))

    assert re.search(r'<input type="number" name="window_seconds" value="300"[^>]*step="1"', html)
    assert re.search(r'<label for="id_window_seconds">Window \(seconds\)</label>', html)
    assert re.search(r'<label for="id_min_requests">Minimum requests</label>', html)
    assert 'data-testid="threshold-row-0"' in html and 'data-testid="threshold-row-1"' not in html
    assert 'name="threshold-0-critical"' in html and 'type="number"' in html
    for metric in ("availability", "error_rate", "latency_p95", "throughput", "custom"):
        assert f'<option value="{metric}">' in html
    assert re.search(r'name="comparison_enabled"[^>]*checked', html)


def test_add_a_threshold__and_remove_one__re_render_the_rows_without_saving(people):
    client = signed_in(people["erin"])

    added = page(client.post("/health/policies/new/", {**FORM, "op": "add-threshold"}, **HTMX))
    removed = page(client.post("/health/policies/new/", {**FORM, "op": "remove-threshold-0"}))
    escalation = page(client.post("/health/policies/new/", {**FORM, "op": "add-escalation"}))

    assert not HealthPolicy.objects.exists()
    assert added.lstrip().startswith('<form id="policy-editor"')
    assert 'data-testid="threshold-row-2"' in added
    assert 'name="threshold_count" value="3"' in added
    # The second row moved up, keeping what was typed.
    assert 'data-testid="threshold-row-1"' not in removed
    assert re.search(r'name="threshold-0-critical" value="800"', removed)
    assert re.search(r'<option value="latency_p95" selected>', removed)
    assert 'data-testid="escalation-row-1"' in escalation


def test_metric_units__the_rows_values_say_their_unit(people):
    html = page(signed_in(people["erin"]).post("/health/policies/new/", {**FORM, "op": "refresh"}))

    assert "Threshold 1: critical at (%)" in html
    assert "Threshold 2: critical at (ms)" in html
    assert "Rollback threshold 1: roll back at (%)" in html


# ----------------------------------------------------------------------------------- edit


def test_edit__shows_the_stored_policy__and_saves_a_change(people):
    policy = make_policy(
        policy={
            "window_seconds": 90,
            "thresholds": [
                {"metric": "custom:queue_depth", "operator": "gte", "critical": 40},
                {"metric": "availability", "operator": "lt", "warning": 99.5},
            ],
        },
        alert_channels=["email"],
        alert_recipients=["oncall@example.com"],
    )
    client = signed_in(people["erin"])

    html = page(client.get(f"/health/policies/{policy.pk}/edit/"))
    data = posted(policy) | {"threshold-1-warning": "99", "alert_cooldown_seconds": "60"}
    response = client.post(f"/health/policies/{policy.pk}/edit/", data)

    assert re.search(r'name="window_seconds" value="90"', html)
    assert re.search(r'name="threshold-0-custom_metric" value="queue_depth"', html)
    assert re.search(r'name="threshold-1-warning" value="99.5"', html)
    assert "oncall@example.com" in html
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.policy["thresholds"][1]["warning"] == 99.0
    assert policy.alert_cooldown_seconds == 60
    assert policy.policy["thresholds"][0]["metric"] == "custom:queue_depth"


def test_edit__a_policy_written_over_rest__posted_back_untouched__keeps_every_key(people):
    before = make_policy(
        policy=SAVED_DOCUMENT,
        alert_channels=["email", "slack"],
        alert_recipients=["oncall@example.com"],
        slack_webhook_url="https://hooks.slack.com/services/T/B/x",
        escalation_rules=[
            {"severity": "warning", "delay_seconds": 30, "recipients": ["a@example.com"]},
            {
                "severity": "critical",
                "delay_seconds": 60,
                "recipients": ["b@example.com"],
                "channels": ["email"],
            },
        ],
    )
    stored = HealthPolicy.objects.values().get(pk=before.pk)

    response = signed_in(people["erin"]).post(f"/health/policies/{before.pk}/edit/", posted(before))

    assert response.status_code == 302
    after = HealthPolicy.objects.values().get(pk=before.pk)
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in stored.items() if k != "updated_at"
    }


# --------------------------------------------------------------------- errors next to fields


def test_form__the_readers_errors_appear_next_to_the_field_and_row_they_name(people):
    client = signed_in(people["erin"])

    below = client.post("/health/policies/new/", {**FORM, "threshold-0-critical": "0.5"}, **HTMX)
    alpha = client.post("/health/policies/new/", {**FORM, "comparison_alpha": "2"}, **HTMX)
    window = client.post("/health/policies/new/", {**FORM, "window_seconds": "1.5"}, **HTMX)
    rollback = client.post("/health/policies/new/", {**FORM, "rollback-0-threshold": ""}, **HTMX)

    assert below.status_code == 400
    assert "critical value must be at or above the warning value" in field_error(
        page(below), "threshold-0-critical"
    )
    assert "must be below 1" in field_error(page(alpha), "comparison_alpha")
    assert "must be a whole number" in field_error(page(window), "window_seconds")
    assert "is required" in field_error(page(rollback), "rollback-0-threshold")
    assert not HealthPolicy.objects.exists()


def test_form__a_blank_row_before_a_bad_one__the_error_is_on_the_row_the_person_sees(people):
    data = {
        **FORM,
        "threshold_count": "3",
        "threshold-0-metric": "",
        "threshold-0-warning": "",
        "threshold-0-critical": "",
        "threshold-0-consecutive_failures": "",
        "threshold-1-metric": "error_rate",
        "threshold-1-critical": "150",
        "threshold-2-metric": "custom",
        "threshold-2-custom_metric": "bad name!",
        "threshold-2-operator": "gt",
        "threshold-2-critical": "3",
    }

    first = page(signed_in(people["erin"]).post("/health/policies/new/", data))
    fixed = page(
        signed_in(people["erin"]).post(
            "/health/policies/new/", {**data, "threshold-1-critical": "15"}
        )
    )

    assert "must be at most 100" in field_error(first, "threshold-1-critical")
    assert field_error(first, "threshold-0-critical") == ""
    assert "custom:&lt;name&gt;" in field_error(fixed, "threshold-2-custom_metric")


def test_form__alerting_errors_are_on_their_fields_and_rows(people):
    client = signed_in(people["erin"])

    address = client.post("/health/policies/new/", {**FORM, "alert_recipients": "oncall@, x"})
    nobody = client.post("/health/policies/new/", {**FORM, "escalation-0-recipients": ""})
    url = client.post("/health/policies/new/", {**FORM, "webhook_url": "not a url"})
    cooldown = client.post("/health/policies/new/", {**FORM, "alert_cooldown_seconds": "-1"})

    assert "is not an email address" in field_error(page(address), "alert_recipients")
    assert "name at least one email address" in field_error(page(nobody), "escalation-0-recipients")
    assert "valid URL" in field_error(page(url), "webhook_url")
    assert field_error(page(cooldown), "alert_cooldown_seconds")
    assert not HealthPolicy.objects.exists()


def test_form__a_taken_name_is_said_on_the_name(people):
    make_policy("checkout strict")

    response = signed_in(people["erin"]).post("/health/policies/new/", FORM)

    assert response.status_code == 400
    assert "already exists" in field_error(page(response), "name")


# ------------------------------------------------------------------------ checked as you type


def test_editor__asks_for_the_findings_as_you_type(people):
    html = page(signed_in(people["erin"]).get("/health/policies/new/"))

    section = re.search(r'<section id="policy-findings"[^>]*>', html)
    assert section is not None
    assert 'hx-post="/health/policies/validate/"' in section.group(0)
    assert "input changed delay:400ms" in section.group(0)


def test_validate__a_good_policy_is_valid(people):
    html = page(signed_in(people["erin"]).post("/health/policies/validate/", FORM, **HTMX))

    assert 'data-testid="policy-findings"' in html and "<strong>Valid</strong>" in html
    assert "<form" not in html


def test_validate__names_the_row_and_field_of_each_problem__and_stores_nothing(people):
    data = {
        **FORM,
        "threshold-1-critical": "-3",
        "alert_recipients": "nobody-at-all",
        "fast_window_seconds": "abc",
    }

    html = page(signed_in(people["erin"]).post("/health/policies/validate/", data, **HTMX))

    assert "2 errors" in html
    assert re.search(r"<strong>Fast window \(seconds\)</strong>: must be a whole number", html)
    assert re.search(r'data-field="alert_recipients\[0\]"><strong>Email recipients</strong>', html)
    # The reader stops at its first problem; the threshold's turn comes once that is fixed.
    fixed = {**data, "fast_window_seconds": "15"}
    again = page(signed_in(people["erin"]).post("/health/policies/validate/", fixed, **HTMX))
    assert re.search(
        r'data-field="policy\.thresholds\[1\]\.critical"><strong>Threshold 2: Critical at'
        r"</strong>: must be at least 0",
        again,
    )
    assert not HealthPolicy.objects.exists()


def test_validate__of_an_edit__does_not_call_its_own_name_taken(people):
    policy = make_policy("checkout strict")

    html = page(
        signed_in(people["erin"]).post(
            "/health/policies/validate/", {**FORM, "policy_id": str(policy.pk)}, **HTMX
        )
    )

    assert "<strong>Valid</strong>" in html


# --------------------------------------------------------------------------------- delete


def test_delete__asks_first__then_deletes(people):
    policy = make_policy()
    client = signed_in(people["erin"])

    confirm = page(client.get(f"/health/policies/{policy.pk}/delete/"))
    response = client.post(f"/health/policies/{policy.pk}/delete/")

    assert "Delete careful?" in confirm and "Delete policy" in confirm
    assert response.status_code == 302 and response["Location"] == "/health/policies/"
    assert not HealthPolicy.objects.exists()


def test_delete__names_the_deployments_it_judges_with_a_canary_in_traffic(people, shop):
    policy = make_policy()
    running = deployment_of(policy)
    deployment_of(policy, start=False)

    confirm = page(signed_in(people["erin"]).get(f"/health/policies/{policy.pk}/delete/"))

    assert "The 2 deployments it judges will be judged by the default policy" in confirm
    assert "1 of it with a canary in traffic now" in confirm
    assert f'href="/deployments/{running.pk}/"' in confirm


# ------------------------------------------------------------------- where the news goes


def test_default_policy__without_a_channel__its_page_and_its_deployments_say_nobody_is_told(
    people, shop, settings
):
    from deployments.judging import default_policy

    settings.CANARY_SLACK_WEBHOOK_URL = ""
    settings.CANARY_WEBHOOK_URL = ""
    policy = default_policy()
    deployment = deployment_of(policy)
    client = signed_in(people["erin"])

    own = page(client.get(f"/health/policies/{policy.pk}/"))
    theirs = page(client.get(f"/deployments/{deployment.pk}/"))
    read_only = page(signed_in(people["vic"]).get(f"/deployments/{deployment.pk}/"))

    for html in (own, theirs):
        loud = re.search(r'data-testid="news-nobody">(.*?)</div>', html, re.S)
        assert loud is not None
        assert "<code>onRollback</code> included, reaches nobody" in loud.group(1)
        assert f"{policy.name} has no channel configured" in loud.group(1)
        assert f'href="/health/policies/{policy.pk}/edit/"' in loud.group(1)
    assert 'id="deployment-notifications"' in theirs
    # A viewer is told who may change it, and where the policy is.
    assert "An engineer can change the alerting of" in read_only
    assert f'href="/health/policies/{policy.pk}/edit/"' not in read_only


def test_a_deployment_on_the_default_policy__is_told_which_channels_and_recipients_it_reaches(
    people, shop, settings
):
    from deployments.judging import default_policy

    settings.CANARY_SLACK_WEBHOOK_URL = "https://hooks.slack.com/services/T0/B0/secret"
    settings.CANARY_WEBHOOK_URL = ""
    policy = default_policy()
    services.health_policy_update(
        policy=policy,
        alert_channels=["email", "slack", "webhook"],
        alert_recipients=["oncall@example.com"],
    )
    deployment = deployment_of(policy, notifications={"onStart": False})

    html = page(signed_in(people["vic"]).get(f"/deployments/{deployment.pk}/"))

    part = re.search(r'<section id="deployment-notifications".*?</section>', html, re.S).group(0)
    assert "<code>onRollback</code>" in part and "<code>onStart</code>" not in part
    assert 'data-testid="news-nobody"' not in part
    assert re.search(r"<strong>Email</strong>: oncall@example\.com", part)
    assert re.search(
        r"<strong>Slack</strong>: hooks\.slack\.com "
        r"\(the site&#x27;s URL, CANARY_SLACK_WEBHOOK_URL\)",
        part,
    )
    assert "secret" not in part
    assert (
        "Webhook is ticked, but neither the policy nor the site (CANARY_WEBHOOK_URL) has a URL"
        in (part)
    )


def test_a_deployment_naming_no_policy__or_whose_policy_has_alerting_off__is_told_loudly(
    people, shop
):
    quiet = make_policy(
        "quiet", alerting_enabled=False, alert_channels=["email"], alert_recipients=["a@b.co"]
    )
    unnamed = deployment_of(None, start=False)
    silenced = deployment_of(quiet, start=False)
    client = signed_in(people["vic"])

    none_html = page(client.get(f"/deployments/{unnamed.pk}/"))
    off_html = page(client.get(f"/deployments/{silenced.pk}/"))

    assert re.search(r'data-testid="news-nobody">.*?it names no health policy', none_html, re.S)
    assert re.search(r'data-testid="news-nobody">.*?alerting is off on quiet', off_html, re.S)
    assert escape("The default policy judges its canary") in none_html


# -------------------------------------------------------------------------------- browser


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_browser__a_newcomer_writes_a_policy_checked_as_they_type(page, make_user):
    from playwright.sync_api import expect

    from tests.conftest import login

    make_user("bea", roles=["engineer"])
    login(page, "bea")
    page.goto("/health/policies/")
    page.get_by_role("link", name="New policy").click()

    page.get_by_label("Name").fill("checkout strict")
    page.get_by_label("Threshold 1: metric").select_option("error_rate")
    # The editor re-renders for the metric: its values now say their unit.
    warning = page.get_by_label("Threshold 1: warning at (%)")
    warning.fill("5")
    page.get_by_label("Threshold 1: critical at (%)").fill("1")
    findings = page.locator("#policy-findings")
    expect(findings).to_contain_text("Threshold 1: Critical at")
    expect(findings).to_contain_text("must be at or above the warning value")

    page.get_by_label("Threshold 1: critical at (%)").fill("10")
    expect(findings).to_contain_text("Valid")
    page.get_by_role("button", name="Add a threshold").click()
    second = page.get_by_label("Threshold 2: metric")
    latency = page.get_by_label("Threshold 2: critical at (ms)")
    for _ in range(3):
        # A change made while htmx still settles the new row is not heard: wait until it is
        # idle, and choose again if the row did not re-render for its metric.
        page.wait_for_function(
            "() => !document.querySelector('.htmx-request, .htmx-settling, .htmx-swapping')"
        )
        second.select_option("latency_p95")
        try:
            expect(latency).to_be_visible(timeout=8_000)
            break
        except AssertionError:
            second.select_option("error_rate")
    latency.fill("900")
    page.get_by_role("button", name="Save policy").click()

    expect(page.get_by_role("heading", name="checkout strict")).to_be_visible()
    policy = HealthPolicy.objects.get(name="checkout strict")
    assert [(t["metric"], t["critical"]) for t in policy.policy["thresholds"]] == [
        ("error_rate", 10.0),
        ("latency_p95", 900.0),
    ]


def test_a_policy_judging_a_running_deployment_cannot_be_deleted(db):
    from canary_site.exceptions import TransitionNotAllowed
    from deployments import services as deployment_services
    from deployments.transitions import deployment_transition
    from health import services
    from routing import services as routing_services

    service = routing_services.service_create(name="shop", stable_version="1.0.0")
    for name, port, version in (("stable", 9, "1.0.0"), ("canary", 10, "2.0.0")):
        routing_services.target_create(
            service=service, name=name, endpoint=f"http://127.0.0.1:{port}", version=version
        )
    policy = services.health_policy_create(name="in-use", alerting_enabled=False)
    deployment = deployment_services.deployment_create(
        config={
            "name": "shop 2.0",
            "serviceName": "shop",
            "stableVersion": "1.0.0",
            "canaryVersion": "2.0.0",
            "phases": [{"trafficPercentage": 100, "durationMs": 60_000, "successCriteria": []}],
        },
        health_policy=policy,
    )
    deployment_transition(deployment_id=deployment.pk, action="start")
    with pytest.raises(TransitionNotAllowed) as refused:
        services.health_policy_delete(policy=policy)
    assert "shop 2.0" in refused.value.message
    deployment_transition(deployment_id=deployment.pk, action="abort", reason="done")
    services.health_policy_delete(policy=policy)
