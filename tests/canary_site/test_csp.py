"""The Content-Security-Policy of every page, kept honest in real Chromium, and the pages that show
a secret once, which no cache may keep."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import expect

from tests.conftest import login

# Runs in every document before its own scripts; the policy does not apply to it.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolations.push(
    event.violatedDirective + " blocked " + (event.blockedURI || "inline") + " at " +
    event.sourceFile + ":" + event.lineNumber + " " + (event.sample || "")
  );
});
"""


def directives(header: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


@pytest.fixture
def signed_in(make_user: Any) -> Client:
    client = Client()
    client.force_login(make_user("ada", roles=["admin"]))
    return client


# --- the header ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_page__carries_a_policy_with_no_inline_code_and_no_framing(signed_in: Client):
    response = signed_in.get("/")

    policy = directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    for directive in ("script-src", "style-src"):
        sources = policy[directive]
        assert "'self'" in sources
        assert "'unsafe-inline'" not in sources
        assert "'unsafe-eval'" not in sources
        assert all(s == "'self'" or s.startswith("'nonce-") for s in sources), sources


@pytest.mark.django_db
def test_nonce__is_new_on_every_response_and_is_the_one_the_page_uses(signed_in: Client):
    nonces = []
    for _ in range(2):
        response = signed_in.get("/")
        style_sources = directives(response["Content-Security-Policy"])["style-src"]
        (nonce,) = [s[len("'nonce-") : -1] for s in style_sources if s.startswith("'nonce-")]
        assert f'nonce="{nonce}"' in response.content.decode()
        nonces.append(nonce)

    assert nonces[0] != nonces[1]


@pytest.mark.django_db
def test_anonymous_pages_and_probes__carry_the_policy_too(client: Client):
    for path in ("/accounts/login/", "/healthz"):
        response = client.get(path)

        assert "frame-ancestors 'none'" in response["Content-Security-Policy"], path


@pytest.mark.django_db
def test_api_docs__need_no_exception_to_the_policy(signed_in: Client):
    site = directives(signed_in.get("/")["Content-Security-Policy"])

    response = signed_in.get("/api/docs/")

    assert response.status_code == 200
    policy = directives(response["Content-Security-Policy"])
    assert {k: v for k, v in policy.items() if k != "style-src"} == {
        k: v for k, v in site.items() if k != "style-src"
    }
    html = response.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
    assert "<style" not in html and "style=" not in html
    script = signed_in.get("/api/docs/?script=")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.content.decode()


# --- secrets shown once -------------------------------------------------------------------------


@pytest.mark.django_db
def test_token_creation_page__is_never_stored_by_a_cache(signed_in: Client):
    response = signed_in.post("/profile/", {"name": "pipeline"})

    assert response.status_code == 200
    assert 'data-testid="new-token-secret"' in response.content.decode()
    assert "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_evaluation_key_creation_page__is_never_stored_by_a_cache(signed_in: Client):
    response = signed_in.post("/flags/-/keys/", {"name": "checkout", "rate_limit": ""})

    assert response.status_code == 200
    assert 'data-testid="new-key-secret"' in response.content.decode()
    assert "no-store" in response["Cache-Control"]


# --- real Chromium ------------------------------------------------------------------------------


@pytest.fixture
def watched_page(page: Any) -> Any:
    """A page whose policy violations are kept in ``window.__cspViolations`` and whose console
    errors are kept in ``page.console_errors``."""
    page.context.add_init_script(RECORD_VIOLATIONS)
    page.console_errors = []
    page.on(
        "console",
        lambda message: (
            page.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    return page


def violations(page: Any) -> list[str]:
    return page.evaluate("window.__cspViolations") + [
        text for text in page.console_errors if "Content Security Policy" in text
    ]


@pytest.fixture
def estate(db: Any) -> dict[str, Any]:
    """A flag, a routed service with a split and a pending deployment of it: every main page has
    something to draw."""
    from deployments import services as deployment_services
    from flags import services as flag_services
    from routing import services as routing_services
    from tests.deployments.conftest import make_config

    service = routing_services.service_create(name="shop", stable_version="1.0.0")
    routing_services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version="1.0.0"
    )
    routing_services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version="2.0.0"
    )
    split = routing_services.rule_create(
        service=service, name="split", priority=10, targets={"stable": 90, "canary": 10}
    )
    flag = flag_services.flag_create(key="new-checkout", status="enabled")
    deployment = deployment_services.deployment_create(config=make_config())
    return {"flag": flag, "rule": split, "deployment": deployment}


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_main_pages__draw_their_charts_with_no_policy_violation(watched_page, make_user, estate):
    page = watched_page
    make_user("erin", roles=["engineer"])
    page.goto("/accounts/login/")
    assert violations(page) == [], violations(page)
    login(page, "erin")
    deployment = estate["deployment"]

    charted = [
        ("/", None),
        ("/flags/", None),
        (f"/flags/{estate['flag'].key}/", f"#exposure-chart-{estate['flag'].pk}"),
        (f"/deployments/{deployment.pk}/", f"#deployment-{deployment.pk}-share"),
        ("/deployments/new/", None),
        ("/deployments/statistics/", "#stats-phase-times"),
        ("/health/", None),
        ("/health/services/shop/?canary=2.0.0&stable=1.0.0", "#chart-error-rate"),
        ("/routing/", None),
        ("/routing/services/shop/", "#traffic-chart-plot"),
        (f"/routing/rules/{estate['rule'].pk}/", None),
        ("/audit/", None),
        ("/admin/", None),
    ]
    for path, chart in charted:
        page.goto(path)
        page.wait_for_load_state("load")
        if chart:
            expect(page.locator(f"{chart} .main-svg").first).to_be_attached()
            page.locator(chart).hover()
        assert violations(page) == [], (path, violations(page))

    # The rollout slider and its number box stay in step without any inline handler.
    page.goto(f"/flags/{estate['flag'].key}/")
    page.get_by_label("Rollout slider").fill("30")
    expect(page.get_by_label("Rollout percentage")).to_have_value("30")
    page.get_by_label("Rollout percentage").fill("45")
    expect(page.get_by_label("Rollout slider")).to_have_value("45")

    # The mode bar works too: its PNG export draws through data: and blob: images.
    chart = f"#deployment-{deployment.pk}-share"
    page.goto(f"/deployments/{deployment.pk}/")
    page.locator(chart).hover()
    with page.expect_download() as download:
        page.locator(f"{chart} .modebar-btn[data-title^='Download plot']").click()
    assert download.value.suggested_filename.endswith(".png")
    assert violations(page) == [], violations(page)

    # The slider's read-outs follow it without any inline handler.
    page.goto(f"/routing/rules/{estate['rule'].pk}/")
    page.get_by_label("Share of canary").fill("25")
    expect(page.locator("#slider-share")).to_have_text("25.00")
    expect(page.locator("#rest-share")).to_have_text("75.00")
    expect(page.get_by_test_id("weights-saved")).to_contain_text("canary 25.00%")
    assert violations(page) == [], violations(page)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_api_docs__swagger_ui_renders_the_schema_with_no_policy_violation(watched_page, make_user):
    page = watched_page
    make_user("ada", roles=["admin"])
    login(page, "ada")

    page.goto("/api/docs/")

    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Canary API")
    expect(page.locator(".opblock").first).to_be_visible()
    assert violations(page) == [], violations(page)
