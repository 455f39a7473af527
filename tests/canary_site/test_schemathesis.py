"""The API fuzzed against its own OpenAPI: Schemathesis reads ``/api/schema/`` from the running
app, generates requests for every operation (valid and invalid ones) and sends them as an
admin. No answer may be a 500, every status must be one the schema documents, and every body
must fit the schema documented for its status.

The database is seeded with one of each kind of object, nullable fields left empty where they
can be, so the answers exercise the schema's nullability and formats, not only empty lists.
The examples are derived from a fixed seed: every run sends the same requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.wsgi import get_wsgi_application
from django.test import override_settings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

# Examples a generation phase sends per operation: the whole run stays within CI's budget.
MAX_EXAMPLES = 8


def seed_objects() -> None:
    """One of each kind of object the API lists, through the services, as the system (no
    actor) would write them."""
    from deployments import services as deployments
    from flags import services as flags
    from health import services as health
    from health.histogram import Histogram
    from health.ingest import OutcomeBatchItem
    from routing import services as routing

    service = routing.service_create(name="shop", stable_version="1.0.0")
    routing.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version="1.0.0"
    )
    routing.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version="2.0.0"
    )
    routing.rule_create(service=service, targets={"stable": 90, "canary": 10})

    policy = health.health_policy_create(
        name="default",
        alert_channels=["email"],
        alert_recipients=["team@example.com"],
        policy={
            "window_seconds": 60,
            "min_requests": 10,
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": False},
            "thresholds": [
                {"metric": "error_rate", "operator": "gt", "warning": 1.0, "critical": 3.0}
            ],
        },
    )
    now = datetime.now(tz=UTC).replace(microsecond=0)
    latency = Histogram.from_values([80.0] * 50)
    health.metrics_record_outcomes(
        outcomes=[
            OutcomeBatchItem(
                service="shop",
                version=version,
                bucket_start=now - timedelta(seconds=seconds),
                requests=50,
                errors=errors,
                latency=latency,
            )
            for version, errors in (("2.0.0", 10), ("1.0.0", 0))
            for seconds in range(10, 70, 10)
        ]
    )
    health.health_evaluate(
        service="shop", canary_version="2.0.0", stable_version="1.0.0", policy=policy, now=now
    )

    flags.segment_create(
        key="beta", constraints=[{"attribute": "country", "operator": "in", "values": ["NL"]}]
    )
    flags.flag_create(key="new-checkout", status="enabled")

    config = {
        "name": "shop 2.0",
        "serviceName": "shop",
        "stableVersion": "1.0.0",
        "canaryVersion": "2.0.0",
        "phases": [
            {
                "trafficPercentage": percentage,
                "durationMs": 60_000,
                "rollbackThresholds": {"errorRate": 10},
            }
            for percentage in (10, 50, 100)
        ],
    }
    deployments.deployment_create(config=config)  # no health policy: nulls in the answer
    running = deployments.deployment_create(config=config | {"name": "shop 2.0 b"})
    deployments.deployment_transition(deployment_id=running.pk, action="start")

    # A policy, and a pending request it opened, for the approvals API.
    from canary_site import services as site
    from canary_site.choices import Role
    from canary_site.gates import ApprovalRequired
    from rollback import services as rollback

    approver = get_user_model().objects.create_user(username="fuzz-approver")
    site.user_set_roles(user=approver, roles=[Role.APPROVER])
    rollback.approval_policy_create(
        name="payments", scope_kind="flag_tag", scope_value="payments", actions=["flag.enable"]
    )
    gated = flags.flag_create(key="pay-later", tags=["payments"])
    with pytest.raises(ApprovalRequired):
        flags.flag_enable(flag=gated)

    # A kill switch over a flag of its own, fired once: an activation to read.
    flags.flag_create(key="switched", status="enabled")
    switch = rollback.kill_switch_create(
        definition={"name": "switched", "scope": "flag", "flags": ["switched"]}
    )
    rollback.kill_switch_trigger(switch=switch, reason="seeded")

    # A plan with a webhook (its secret masked in answers), a rehearsal under way and one
    # cancelled, for the rollback API.
    plan = rollback.rollback_plan_create(
        definition={
            "name": "shop-careful",
            "service": "shop",
            "strategy": "gradual",
            "actions": [
                {
                    "id": "hook",
                    "type": "call_webhook",
                    "config": {"url": "https://hooks.example.com/x", "secret": "s"},
                }
            ],
        }
    )
    rollback.rollback_rehearse(plan=plan, deployment=running)
    cancelled = rollback.rollback_rehearse(plan=plan, deployment=running)
    rollback.rollback_execution_cancel(execution=cancelled)


@pytest.fixture(scope="module")
def admin_token(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """Seeded and committed once for the module; each operation's test runs in a transaction
    rolled back at its end, so every operation meets the same objects."""
    from django.core.management import call_command

    from canary_site import services
    from canary_site.choices import Role

    quiet = override_settings(CANARY_DEPLOYMENTS_ENQUEUE=False, CANARY_NOTIFY_ENQUEUE=False)
    with django_db_blocker.unblock(), quiet:
        seed_objects()
        admin = get_user_model().objects.create_user(username="fuzz-admin")
        services.user_set_roles(user=admin, roles=[Role.ADMIN])
        _token, secret = services.api_token_create(user=admin, name="schemathesis")
    yield secret
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(autouse=True)
def _requests_keep_the_tests_connection() -> Iterator[None]:
    # As Django's own test client does: the app is called in this process, inside the test's
    # transaction, which closing "old" connections at each request would cut.
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _no_follow_up_tasks(settings: Any) -> None:
    # Follow-up work goes to a worker that this test does not run.
    settings.CANARY_DEPLOYMENTS_ENQUEUE = False
    settings.CANARY_NOTIFY_ENQUEUE = False


# Loaded from the app itself at collection. The coverage phase (every boundary value and
# unexpected method of every parameter) is not bounded by max-examples and alone takes several
# times the budget; the fuzzing phase sends valid and invalid requests within it.
schema = schemathesis.openapi.from_wsgi(
    "/api/schema/",
    get_wsgi_application(),
    config=SchemathesisConfig.from_dict(
        {
            "seed": 20260101,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "phases": {"coverage": {"enabled": False}},
        }
    ),
)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api__conforms_to_its_own_schema__and_never_answers_500(case: Any, admin_token: str):
    case.call_and_validate(headers={"Authorization": f"Bearer {admin_token}"}, checks=CHECKS)
