"""The health pages: overview, a service's charts, checks and alerts, and the alert buttons."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape

from health import services
from health.models import Alert
from tests.health.conftest import traffic

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(engineer: Any) -> Client:
    client = Client()
    client.force_login(engineer)
    return client


@pytest.fixture
def viewer(make_user: Any) -> Client:
    client = Client()
    client.force_login(make_user("vic", roles=["viewer"]))
    return client


@pytest.fixture
def critical_check(make_policy: Any, now: Any, window_end: Any) -> Any:
    policy = make_policy()
    for batch in (
        traffic("checkout", "2.0", end=window_end, seconds=120, requests=200, errors=10),
        traffic("checkout", "1.0", end=window_end, seconds=120, requests=1000, errors=1),
    ):
        services.metrics_record_outcomes(outcomes=batch)
    return services.health_evaluate(
        service="checkout", canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )


def figures(html: str) -> dict[str, dict[str, Any]]:
    found = re.findall(
        r'<script type="application/json" data-plot-for="([^"]+)">(.*?)</script>', html, re.S
    )
    return {element: json.loads(body) for element, body in found}


def test_overview__lists_services_with_their_latest_verdict_and_why(client, critical_check):
    html = client.get("/health/").content.decode()

    assert 'href="/health/services/checkout/"' in html
    assert "verdict-critical" in html
    assert escape(critical_check.message) in html
    assert "Critical: checkout 2.0 is unhealthy" in html  # the open alert


def test_overview__over_htmx__renders_only_its_partial(client, critical_check):
    response = client.get(
        "/health/", headers={"HX-Request": "true", "HX-Target": "health-overview"}
    )

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="health-overview"')
    assert "<header" not in html


def test_service_page__charts_canary_against_stable_for_three_metrics(client, critical_check):
    html = client.get("/health/services/checkout/").content.decode()

    charts = figures(html)
    assert set(charts) == {"chart-error-rate", "chart-latency-p95", "chart-throughput"}
    for figure in charts.values():
        assert [trace["name"] for trace in figure["data"]] == ["stable 1.0", "canary 2.0"]
    canary_errors = [v for v in charts["chart-error-rate"]["data"][1]["y"] if v is not None]
    assert canary_errors and all(value == pytest.approx(5.0) for value in canary_errors)
    assert 'hx-trigger="every 5s"' in html
    assert "cdn" not in html.lower()


def test_service_page__checks_table_shows_each_verdict_and_its_why(client, critical_check):
    html = client.get("/health/services/checkout/").content.decode()

    assert f'id="check-{critical_check.pk}"' in html
    assert escape(critical_check.message) in html
    for result in critical_check.results:
        assert escape(result["message"]) in html


def test_service_page__charts_partial_over_htmx(client, critical_check):
    response = client.get(
        "/health/services/checkout/?canary=2.0&stable=1.0&window=3600",
        headers={"HX-Request": "true", "HX-Target": "health-charts"},
    )

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="health-charts"')
    assert "health-checks" not in html
    assert len(figures(html)) == 3


def test_service_page__a_figure_cannot_break_out_of_its_script_element(client, window_end):
    services.metrics_record_outcomes(
        outcomes=traffic("checkout", "2.0", end=window_end, seconds=20)
    )

    html = client.get("/health/services/checkout/?canary=2.0&stable=</script>").content.decode()

    assert "</script><" not in html.split("data-plot-for")[1].split("</script>")[0]


def test_alerts_panel__engineer_sees_buttons__viewer_does_not(client, viewer, critical_check):
    engineer_html = client.get("/health/services/checkout/").content.decode()
    viewer_html = viewer.get("/health/services/checkout/").content.decode()

    alert = Alert.objects.get()
    assert f"/health/alerts/{alert.pk}/acknowledge/" in engineer_html
    assert f"/health/alerts/{alert.pk}/acknowledge/" not in viewer_html
    assert "Critical: checkout 2.0 is unhealthy" in viewer_html


def test_acknowledge_button__over_htmx__answers_with_the_updated_alerts_panel(
    client, critical_check
):
    alert = Alert.objects.get()

    response = client.post(
        f"/health/alerts/{alert.pk}/acknowledge/",
        headers={"HX-Request": "true", "HX-Target": "health-alerts"},
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="health-alerts"')
    assert "Acknowledged by erin" in html
    alert.refresh_from_db()
    assert alert.status == "acknowledged"


def test_resolve_button__without_javascript__redirects_back_with_a_message(client, critical_check):
    alert = Alert.objects.get()

    response = client.post(f"/health/alerts/{alert.pk}/resolve/", follow=True)

    assert response.redirect_chain[-1][0] == "/health/services/checkout/"
    assert "Alert resolved." in response.content.decode()
    alert.refresh_from_db()
    assert alert.status == "resolved"


def test_resolve_button__twice__says_why_with_409(client, critical_check):
    alert = Alert.objects.get()
    client.post(f"/health/alerts/{alert.pk}/resolve/")

    response = client.post(
        f"/health/alerts/{alert.pk}/resolve/",
        headers={"HX-Request": "true", "HX-Target": "health-alerts"},
    )

    assert response.status_code == 409
    assert "already resolved" in response.content.decode()


def test_acknowledge_button__by_a_viewer__is_forbidden(viewer, critical_check):
    alert = Alert.objects.get()

    response = viewer.post(f"/health/alerts/{alert.pk}/acknowledge/")

    assert response.status_code == 403
    alert.refresh_from_db()
    assert alert.status == "open"


def test_pages__need_a_signed_in_user():
    response = Client().get("/health/services/checkout/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_service_page__a_since_the_database_cannot_hold__is_a_form_error_not_a_500(client):
    response = client.get("/health/services/checkout/", {"since": "2026-01-01T00:00:00+23:00"})

    assert response.status_code == 200
    errors = re.search(r'<ul class="errors" role="alert">(.*?)</ul>', response.content.decode())
    assert errors is not None
    assert "since" in errors.group(1)
    assert "+23:00" in errors.group(1)
