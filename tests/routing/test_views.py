"""The routing dashboard: services and health, the service page's partials and chart, the
"test a request" panel, the rule editor and its weight slider, and the admin."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from health.histogram import Histogram
from health.ingest import OutcomeBatchItem
from health.services import metrics_record_outcomes
from routing import selectors, services
from routing.models import RoutingRule, RuleTarget, Service, Target

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(engineer) -> Client:
    client = Client()
    client.force_login(engineer)
    return client


@pytest.fixture
def viewer_client(make_user) -> Client:
    client = Client()
    client.force_login(make_user("vic", roles=["viewer"]))
    return client


@pytest.fixture
def shop() -> Service:
    service = services.service_create(name="shop", stable_version="1.0.0")
    services.target_create(service=service, name="stable", endpoint="http://s:1", version="1.0.0")
    services.target_create(service=service, name="canary", endpoint="http://c:1", version="2.0.0")
    return service


@pytest.fixture
def rule(shop) -> RoutingRule:
    return services.rule_create(service=shop, name="split", targets={"stable": 90, "canary": 10})


def test_index__lists_services_with_their_targets_and_health(client, rule):
    services.target_set_health(target=Target.objects.get(name="canary"), healthy=False)

    html = client.get("/routing/").content.decode()

    assert 'href="/routing/services/shop/"' in html
    assert "health-ok" in html and "health-bad" in html
    assert "http://c:1" in html


def test_index__over_htmx__renders_only_the_services_panel(client, rule):
    response = client.get("/routing/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="services-panel")

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="services-panel"')
    assert "<header" not in html


def test_service_page__embeds_the_traffic_chart_from_recorded_outcomes(client, rule):
    now = timezone.now() - timedelta(seconds=60)
    metrics_record_outcomes(
        outcomes=[
            OutcomeBatchItem("shop", "1.0.0", now, 900, 9, Histogram.from_values([5.0] * 900)),
            OutcomeBatchItem("shop", "2.0.0", now, 100, 5, Histogram.from_values([7.0] * 100)),
        ]
    )

    html = client.get("/routing/services/shop/").content.decode()

    assert 'data-plot-for="traffic-chart-plot"' in html
    start = html.index('data-plot-for="traffic-chart-plot">') + len(
        'data-plot-for="traffic-chart-plot">'
    )
    figure = json.loads(html[start : html.index("</script>", start)])
    names = {trace["name"] for trace in figure["data"]}
    assert names == {"v1.0.0: stable", "v2.0.0: canary"}
    rates = [value for trace in figure["data"] for value in trace["y"] if value]
    assert rates, figure["data"]
    assert "No traffic recorded yet" not in html


def test_service_page__partials_refresh_by_element_id(client, rule):
    for element in ["traffic-chart", "breakers", "service-targets"]:
        response = client.get(
            "/routing/services/shop/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET=element
        )
        assert response.content.decode().lstrip().startswith(f'<section id="{element}"')


def test_service_page__shows_circuit_states_the_proxies_published(
    client, rule, clean_breaker_reports
):
    import time

    cache.set(
        selectors.BREAKERS_KEY,
        {
            "p1": {"at": time.time(), "services": {"shop": {"stable": "closed", "canary": "open"}}},
            "p2": {
                "at": time.time(),
                "services": {"shop": {"stable": "closed", "canary": "closed"}},
            },
        },
    )

    html = client.get(
        "/routing/services/shop/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="breakers"
    ).content.decode()

    assert "circuit-open" in html
    assert "circuit-open" in client.get("/routing/").content.decode()
    states = {state.target: (state.state, state.proxies) for state in selectors.circuit_states()}
    assert states == {"canary": ("open", 1), "stable": ("closed", 2)}


def test_decide_panel__shows_the_decision_and_why(client, shop):
    services.rule_create(
        service=shop,
        name="beta",
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )

    response = client.post(
        "/routing/services/shop/decide/",
        {"method": "GET", "path": "/cart", "headers": "X-Beta: 1", "cookies": "", "query": ""},
        HTTP_HX_REQUEST="true",
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="decide-panel"')
    assert "→ canary" in html
    assert "header x-beta equals &quot;1&quot;" in html


def test_decide_panel__bad_input__is_400_next_to_the_field(client, shop):
    response = client.post(
        "/routing/services/shop/decide/",
        {"method": "GET", "path": "cart", "headers": "no colon here", "client_ip": "x"},
        HTTP_HX_REQUEST="true",
    )

    html = response.content.decode()
    assert response.status_code == 400
    for field in ["path", "headers", "client_ip"]:
        assert f'id="id_{field}-error"' in html


def test_rule_editor__shows_one_slider_for_a_two_target_split(client, rule):
    html = client.get(f"/routing/rules/{rule.pk}/").content.decode()

    assert 'type="range" id="weight-slider" name="weight_canary"' in html
    assert 'value="10.00"' in html


def test_weight_slider__saves_the_split_over_htmx(client, rule):
    response = client.post(
        f"/routing/rules/{rule.pk}/weights/", {"weight_canary": "25"}, HTTP_HX_REQUEST="true"
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="weights-panel"')
    assert "Saved: stable 75.00%, canary 25.00%" in html
    weights = dict(RuleTarget.objects.values_list("target__name", "weight"))
    assert weights == {"stable": Decimal("75.00"), "canary": Decimal("25.00")}


def test_weights_form__not_summing_to_100__is_400_with_the_message(client, shop):
    services.target_create(service=shop, name="canary-b", endpoint="http://b:1", version="2.0.0")
    rule = services.rule_create(service=shop, targets={"stable": 80, "canary": 10, "canary-b": 10})

    response = client.post(
        f"/routing/rules/{rule.pk}/weights/",
        {"weight_stable": "80", "weight_canary": "30", "weight_canary-b": "10"},
        HTTP_HX_REQUEST="true",
    )

    assert response.status_code == 400
    assert "must sum to" in response.content.decode()
    assert RuleTarget.objects.get(target__name="canary").weight == Decimal("10.00")


def test_rule_editor__saves_settings__and_shows_engine_errors_on_the_field(client, rule):
    data = {
        "name": "split",
        "priority": "5",
        "enabled": "on",
        "strategy": "weighted",
        "strategy_key": "",
        "conditions": "[]",
        "affinity": '{"type": "cookie", "name": "s", "ttl_s": -10}',
        "failover": "null",
        "circuit_breaker": "null",
        "rate_limit": "null",
        "health_check": "null",
    }

    bad = client.post(f"/routing/rules/{rule.pk}/", data, HTTP_HX_REQUEST="true")
    good = client.post(
        f"/routing/rules/{rule.pk}/",
        data | {"affinity": '{"type": "cookie", "name": "s", "ttl_s": 60}'},
        HTTP_HX_REQUEST="true",
    )

    assert bad.status_code == 400
    assert 'id="id_affinity-error"' in bad.content.decode()
    assert "ttl_s" in bad.content.decode()
    assert good.status_code == 200
    rule.refresh_from_db()
    assert (rule.priority, rule.affinity["ttl_s"]) == (5, 60)


def test_viewer__cannot_change_weights_or_rules(viewer_client, rule):
    assert viewer_client.get(f"/routing/rules/{rule.pk}/").status_code == 200
    assert (
        viewer_client.post(
            f"/routing/rules/{rule.pk}/weights/", {"weight_canary": "50"}
        ).status_code
        == 403
    )
    assert viewer_client.post(f"/routing/rules/{rule.pk}/", {"priority": "1"}).status_code == 403


def test_admin__rule_form_refuses_what_the_engine_refuses(make_user, rule):
    admin_user = make_user("ada", roles=["admin"])
    client = Client()
    client.force_login(admin_user)

    page = client.get(f"/admin/routing/routingrule/{rule.pk}/change/")
    response = client.post(
        f"/admin/routing/routingrule/{rule.pk}/change/",
        {
            "service": rule.service_id,
            "name": "split",
            "priority": "100",
            "enabled": "on",
            "strategy": "weighted",
            "strategy_key": "",
            "targets_text": "stable=80, canary=10",
            "conditions": "[]",
            "affinity": "null",
            "failover": "null",
            "circuit_breaker": "null",
            "rate_limit": "null",
            "health_check": "null",
            "rule_targets-TOTAL_FORMS": "0",
            "rule_targets-INITIAL_FORMS": "0",
        },
    )

    assert page.status_code == 200
    assert response.status_code == 200  # the form again, with its error
    assert "must sum to" in response.content.decode()
    assert RuleTarget.objects.get(target__name="canary").weight == Decimal("10.00")
    for model in ["service", "target", "routingrule"]:
        assert client.get(f"/admin/routing/{model}/").status_code == 200


def test_rule_editor__with_a_line_break_in_a_condition__shows_the_error_on_the_field(client, rule):
    data = {
        "name": "split",
        "priority": "5",
        "enabled": "on",
        "strategy": "weighted",
        "strategy_key": "",
        # JSON's \n is a real line break once parsed.
        "conditions": '[{"source": "path", "operator": "prefix", '
        '"values": ["/a\\nserver { listen 9998; }\\n#"]}]',
        "affinity": "null",
        "failover": "null",
        "circuit_breaker": "null",
        "rate_limit": "null",
        "health_check": "null",
    }

    response = client.post(f"/routing/rules/{rule.pk}/", data, HTTP_HX_REQUEST="true")

    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_conditions-error"' in html
    assert "conditions[0].values[0]" in html and "control characters" in html
    rule.refresh_from_db()
    assert rule.conditions == []
