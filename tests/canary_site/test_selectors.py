"""The overview's figures come from every subsystem in a fixed number of queries."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from canary_site.overview import overview_counts

pytestmark = pytest.mark.django_db


def test_overview_counts__reflect_flags_and_routing():
    from flags import services as flag_services
    from routing import services as routing_services

    flag_services.flag_create(key="checkout-v2", status="enabled")
    killed = flag_services.flag_create(key="search-v3", status="enabled")
    flag_services.flag_kill(flag=killed, reason="errors spiking")
    service = routing_services.service_create(name="checkout", stable_version="1.0.0")
    target = routing_services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9001", version="1.0.0"
    )
    routing_services.target_set_health(target=target, healthy=False)

    counts = overview_counts()

    assert counts["flags_enabled"] == 1
    assert counts["flags_killed"] == 1
    assert counts["services"] == 1
    assert (counts["targets"], counts["targets_unhealthy"]) == (1, 1)
    assert counts["alerts_open"] == 0
    assert counts["deployments_running"] == 0


def test_overview_counts__take_the_same_queries_however_many_rows():
    from flags import services as flag_services

    with CaptureQueriesContext(connection) as empty:
        overview_counts()
    for index in range(5):
        flag_services.flag_create(key=f"flag-{index}", status="enabled")
    with CaptureQueriesContext(connection) as full:
        overview_counts()

    assert len(full) == len(empty)
