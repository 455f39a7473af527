"""Dashboard pages of the shell, the process probes and the metrics exposition."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import Client

from canary_site import services
from canary_site.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(engineer) -> Client:
    client = Client()
    client.force_login(engineer)
    return client


def test_overview__shows_navigation_to_every_subsystem_and_the_users_role(client):
    html = client.get("/").content.decode()

    for path in ["/deployments/", "/flags/", "/routing/", "/health/", "/rollback/", "/audit/"]:
        assert f'href="{path}"' in html
    assert "role-engineer" in html
    assert "django_htmx/htmx-2.min.js" in html
    assert "cdn" not in html.lower()


def test_overview__over_htmx__renders_only_the_counts_partial(client):
    services.heartbeat_record(name="beat", identity="beat-host:4242")

    response = client.get("/", HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="overview-counts"')
    assert "<header" not in html
    assert "s ago" in html
    assert "beat-host:4242" in html


def test_profile__creating_a_token__shows_the_secret_once(client, engineer):
    first = client.post("/profile/", {"name": "laptop"}).content.decode()
    token = ApiToken.objects.get(user=engineer)

    assert 'data-testid="new-token-secret"' in first
    assert token.prefix in first
    again = client.get("/profile/").content.decode()
    assert "new-token-secret" not in again
    assert token.prefix in again


def test_profile__bad_input__is_400_with_the_message_next_to_the_field(client):
    response = client.post("/profile/", {"name": "", "expires_at": "soon"})

    html = response.content.decode()
    assert response.status_code == 400
    assert 'id="id_name-error"' in html
    assert 'id="id_expires_at-error"' in html
    assert not ApiToken.objects.exists()


def test_profile__revoking_someone_elses_token__changes_nothing(client, make_user):
    other = make_user("olga", roles=["engineer"])
    token, _secret = services.api_token_create(user=other, name="theirs")

    client.post(f"/profile/tokens/{token.pk}/revoke/")

    token.refresh_from_db()
    assert token.revoked_at is None


def test_audit_page__filters_by_actor_and_refreshes_the_table_over_htmx(client, engineer):
    services.api_token_create(user=engineer, name="one")

    full = client.get("/audit/", {"actor": "erin"}).content.decode()
    partial = client.get("/audit/", {"actor": "nobody"}, HTTP_HX_REQUEST="true").content.decode()

    assert "apitoken: one" in full
    assert partial.lstrip().startswith('<div id="audit-table">')
    assert "No entries match." in partial


def test_missing_csrf_on_a_page_form__is_403_with_a_clear_message(engineer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(engineer)

    response = client.post("/profile/", {"name": "x"})

    assert response.status_code == 403
    assert "security token" in response.content.decode()


def test_unknown_page__is_404_html_with_the_path(client):
    response = client.get("/no/such/page/")

    assert response.status_code == 404
    assert "/no/such/page/" in response.content.decode()


def test_login__wrong_password__says_so_clearly(make_user):
    make_user("lee", roles=["viewer"])

    response = Client().post("/accounts/login/", {"username": "lee", "password": "wrong"})

    assert response.status_code == 200
    assert "did not match" in response.content.decode()


def test_login__repeated_failures__are_throttled_with_429(make_user, settings):
    make_user("lee", roles=["viewer"])
    client = Client()

    statuses = [
        client.post("/accounts/login/", {"username": "lee", "password": "wrong"}).status_code
        for _ in range(settings.AXES_FAILURE_LIMIT + 1)
    ]

    assert statuses[-1] == 429
    # Even the right password is refused while locked out.
    right = client.post("/accounts/login/", {"username": "lee", "password": "pw-Canary-123"})
    assert right.status_code == 429


def test_healthz__answers_ok_without_login():
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz__checks_database_broker_and_cache():
    response = Client().get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "cache": "ok"},
        "beat": {"identity": None, "last_tick_seconds_ago": None},
    }


def test_readyz__names_the_beat_of_the_last_tick_and_how_long_ago():
    services.heartbeat_record(name="beat", identity="beat-host:4242")

    beat = Client().get("/readyz").json()["beat"]

    assert beat["identity"] == "beat-host:4242"
    assert 0 <= beat["last_tick_seconds_ago"] < 60


def test_readyz__when_the_heartbeat_cannot_be_read__says_the_beat_is_unknown(monkeypatch):
    from canary_site import views

    def unreachable(**_kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(views.selectors, "heartbeat_last", unreachable)

    response = Client().get("/readyz")

    assert response.status_code == 200
    assert response.json()["beat"] == {"identity": "unknown", "last_tick_seconds_ago": None}


UNREACHABLE_CACHE = {
    "default": {
        # A real connection attempt to a port where nothing listens.
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
    }
}


def test_readyz__with_an_unreachable_cache__is_200_degraded_naming_it(settings):
    settings.CACHES = UNREACHABLE_CACHE

    response = Client().get("/readyz")

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["checks"]["cache"].startswith("error")
    assert body["checks"]["database"] == body["checks"]["broker"] == "ok"


def test_readyz__with_an_unreachable_broker_and_cache__is_503_naming_both(monkeypatch, settings):
    from kombu import Connection

    from canary_site.celery import app

    settings.CACHES = UNREACHABLE_CACHE
    monkeypatch.setattr(app, "connection_for_write", lambda: Connection("redis://127.0.0.1:1/0"))

    response = Client().get("/readyz")

    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"].startswith("error")
    assert body["checks"]["cache"].startswith("error")


def test_readyz__with_an_unreachable_broker__is_503_naming_it(monkeypatch):
    from kombu import Connection

    from canary_site.celery import app

    # A real connection attempt to a port where nothing listens.
    monkeypatch.setattr(app, "connection_for_write", lambda: Connection("redis://127.0.0.1:1/0"))

    response = Client().get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("error")


def test_metrics__exposes_requests_by_view_latency_and_celery_task_counts(client):
    from canary_site import metrics

    client.get("/")
    metrics._on_success(sender=type("T", (), {"name": "canary_site.tasks.heartbeat_record"}))

    text = Client().get("/metrics").content.decode()

    assert "django_http_responses_total_by_status_view_method_total" in text
    assert "django_http_requests_latency_seconds_by_view_method_bucket" in text
    assert (
        'canary_celery_tasks_total{state="succeeded",task="canary_site.tasks.heartbeat_record"}'
        in text
    )


def test_static__plotly_and_htmx_are_served_from_installed_packages(client):
    assert client.get("/static/vendor/plotly.min.js").status_code == 200
    assert client.get("/static/django_htmx/htmx-2.min.js").status_code == 200


def test_audit_page__a_since_the_database_cannot_hold__is_a_form_error_not_a_500(client):
    response = client.get("/audit/", {"since": "2026-01-01T00:00:00+23:00"})

    assert response.status_code == 200
    assert b"out of range" in response.content
    assert b"since" in response.content


def test_profile__an_expiry_the_database_cannot_hold__is_400_next_to_the_field(client):
    response = client.post("/profile/", {"name": "ci", "expires_at": "2030-01-01T00:00:00+23:00"})

    assert response.status_code == 400
    assert 'id="id_expires_at-error"' in response.content.decode()
    assert not ApiToken.objects.exists()
