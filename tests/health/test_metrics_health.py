"""The health app's collector on /metrics: alerts not yet resolved by severity, and the stored
health checks by verdict, in two queries."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from health import services
from health.metrics import collector
from health.models import Alert
from tests.canary_site.exposition import samples_of, value
from tests.health.conftest import traffic

pytestmark = pytest.mark.django_db


def read() -> Any:
    return samples_of(collector.collect())


def evaluate(service: str, policy: Any, now: Any, window_end: Any, *, errors: int) -> Any:
    services.metrics_record_outcomes(
        outcomes=traffic(service, "2.0", end=window_end, seconds=60, requests=200, errors=errors)
    )
    services.metrics_record_outcomes(
        outcomes=traffic(service, "1.0", end=window_end, seconds=60, requests=1000, errors=1)
    )
    return services.health_evaluate(
        service=service, canary_version="2.0", stable_version="1.0", policy=policy, now=now
    )


def test_collector__counts_checks_by_verdict__and_alerts_until_they_are_resolved(
    now, window_end, make_policy, make_user
):
    policy = make_policy()
    failing = evaluate("checkout", policy, now, window_end, errors=10)
    passing = evaluate("cart", policy, now, window_end, errors=0)
    assert (failing.verdict, passing.verdict) == ("critical", "pass")
    alert = Alert.objects.get(service="checkout")
    assert alert.severity == "critical"
    services.alert_raise(
        service="search",
        canary_version="3.0",
        policy=None,
        title="search rollback failed",
        message="the rollback ran out of time",
        severity="warning",
    )

    with CaptureQueriesContext(connection) as queries:
        samples = read()

    assert len(queries) == 2
    checks = {
        verdict: value(samples, "canary_health_checks_total", verdict=verdict)
        for verdict in ("pass", "warning", "critical", "no_data", "inconclusive")
    }
    assert checks == {"pass": 1, "warning": 0, "critical": 1, "no_data": 0, "inconclusive": 0}
    assert value(samples, "canary_alerts_open", severity="critical") == 1
    assert value(samples, "canary_alerts_open", severity="warning") == 1

    person = make_user("olga", roles=["engineer"])
    services.alert_acknowledge(alert=alert, actor=person)
    # Acknowledged is still open: someone is on it, nothing is resolved.
    assert value(read(), "canary_alerts_open", severity="critical") == 1
    services.alert_resolve(alert=alert, actor=person, note="rolled back")
    assert value(read(), "canary_alerts_open", severity="critical") == 0
    assert value(read(), "canary_alerts_open", severity="warning") == 1
