"""Version tokens kept in the database and mirrored in the cache (canary_site/versions.py), and
the routing version built on them: never an error for want of the cache, changes seen through
the database while it is down, outages logged once."""

from __future__ import annotations

import logging
import threading

import pytest
from django.db import connection, transaction

from canary_site.versions import VersionToken, counter_bump, counter_value
from flags.models import FlagsVersion
from routing import services as routing_services
from routing import snapshot as routing_snapshot

pytestmark = pytest.mark.django_db

UNREACHABLE_CACHE = {
    "default": {
        # A real connection attempt to a port where nothing listens.
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
    }
}


@pytest.fixture
def token() -> VersionToken:
    return VersionToken(
        name="test",
        cache_key="test:version",
        database_version=lambda: counter_value(FlagsVersion),
        database_interval=lambda: 3600,
    )


def test_read__is_stable_until_a_write_is_published_and_then_reads_the_database_with_it(token):
    first = token.read()
    assert token.read() == first

    counter_bump(FlagsVersion)
    token.publish()

    second = token.read()
    assert second != first
    assert second.endswith(f"/{counter_value(FlagsVersion)}")


def test_read__with_the_cache_unreachable__never_raises_and_follows_the_database(
    token, settings, caplog
):
    first = token.read()
    settings.CACHES = UNREACHABLE_CACHE

    with caplog.at_level(logging.WARNING):
        same = [token.read() for _ in range(5)]
        counter_bump(FlagsVersion)
        token.publish()  # the cache is out of reach: logged, not raised
        moved = token.read()

    assert same == [first] * 5
    assert moved != first
    assert moved.split("/")[0] == first.split("/")[0]  # the cache part, as last read
    warnings = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].exc_info is None


@pytest.mark.django_db(transaction=True)
def test_counter_bump__two_open_transactions__neither_waits_and_both_count():
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite runs one write transaction at a time")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                counter_bump(FlagsVersion)
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    def bump() -> None:
        try:
            with transaction.atomic():
                counter_bump(FlagsVersion)
        finally:
            connection.close()

    first = threading.Thread(target=hold)
    first.start()
    assert holding.wait(30)
    second = threading.Thread(target=bump)
    second.start()
    second.join(30)
    done_while_first_open = not second.is_alive()
    release.set()
    first.join(30)

    assert done_while_first_open
    assert counter_value(FlagsVersion) == 2
    assert FlagsVersion.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_routing_version__with_the_cache_unreachable__a_write_commits_and_moves_it(
    settings, caplog
):
    version = routing_snapshot.ROUTING_VERSION
    version.reset()
    before = version.read()
    settings.CACHES = UNREACHABLE_CACHE

    with caplog.at_level(logging.WARNING):
        service = routing_services.service_create(name="checkout", stable_version="1.0.0")
        after = version.read()  # publishing after commit made this process look again

    assert service.pk is not None
    assert after != before
    assert len([r for r in caplog.records if "is unreachable" in r.getMessage()]) == 1
