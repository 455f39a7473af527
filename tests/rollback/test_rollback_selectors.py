"""The rollback app's reads: a rollback's impact before it runs (traffic from the metric store,
the routing rule's affinity, the linked flags' evaluations, stable's health), the statistics of
many executions in one query, and the history and detail of executions."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from tests.rollback import test_executions as executions

# The deployment the rollback tests share: "shop" running on its third phase (40%).
shop, running = executions.shop, executions.running
STABLE, CANARY = executions.STABLE, executions.CANARY
_advance_until_ended = executions._advance_until_ended
_auto_rollback = executions._auto_rollback
_plan = executions._plan

pytestmark = pytest.mark.django_db


def push(now: datetime, version: str, *, requests: int, errors: int = 0, ago: float = 30) -> None:
    """Samples through the health app's ingestion, as a REST client pushes them."""
    from health import services

    moment = (now - timedelta(seconds=ago)).isoformat()
    samples = [
        {
            "service": "shop",
            "version": version,
            "metric": "requests",
            "value": requests,
            "timestamp": moment,
        },
    ]
    if errors:
        samples.append(
            {
                "service": "shop",
                "version": version,
                "metric": "errors",
                "value": errors,
                "timestamp": moment,
            }
        )
    services.metrics_push(samples=samples, now=now)


def link_flags(deployment: Any, *keys: str) -> list[Any]:
    from flags import services

    flags = [services.flag_create(key=key, status="enabled") for key in keys]
    deployment.flags.add(*flags)
    return flags


def expose(key: str, minute: int, **variants: int) -> None:
    """Exposure counts as the flags app's recorder writes them (one row per minute)."""
    from flags.exposures import upsert_counts

    upsert_counts({(minute, key, variant): count for variant, count in variants.items()})


# --------------------------------------------------------------------------- impact


def test_impact__without_a_plan__is_the_built_in_plan_with_the_traffic_it_moves(running):
    from rollback import selectors

    now = timezone.now()
    push(now, CANARY, requests=300)
    push(now, STABLE, requests=600, errors=3)
    push(now, CANARY, requests=5_000, ago=90)  # before the last minute: not counted

    impact = selectors.rollback_impact(deployment=running, now=now)

    assert impact["plan"] == "built-in immediate" and impact["strategy"] == "immediate"
    assert impact["canaryShare"] == 40.0
    assert impact["requestsPerMinute"] == 300.0
    assert impact["stableRequestsPerMinute"] == 600.0
    assert impact["steps"] == ["Stop new traffic", "Linked flags off"]
    assert impact["worstCaseMs"] == 0  # done in the rollback's own transaction
    assert impact["requiresApproval"] is False and impact["cooldownLeftSeconds"] == 0
    stable = impact["stable"]
    assert stable["healthy"] is True and stable["warning"] is None
    assert stable["errorRate"] == pytest.approx(0.5) and stable["sampleSize"] == 600
    assert stable["lastProbe"] is None
    assert impact["affinity"]["enabled"] is False
    assert "routed afresh" in impact["affinity"]["note"]
    assert impact["flags"] == []


def test_impact__by_a_plan__lists_its_expanded_steps_and_their_worst_case(running):
    from rollback import selectors

    plan = _plan(
        strategy="gradual",
        strategyConfig={"durationMs": 9_000, "steps": 4},
        validation={
            "enabled": True,
            "validationTimeoutMs": 2_000,
            "retryAttempts": 1,
            "retryDelayMs": 500,
        },
        actions=[
            {"id": "stop", "type": "stop_new_traffic", "timeoutMs": 1_000},
            {"id": "flags", "type": "update_feature_flags", "timeoutMs": 3_000},
        ],
        safety={"requireApproval": True, "approvers": ["ann"]},
    )

    impact = selectors.rollback_impact(deployment=running)

    assert impact["plan"] == plan.name and impact["strategy"] == "gradual"
    assert impact["steps"] == [
        "Canary to 30%",
        "Canary to 20%",
        "Canary to 10%",
        "Stop new traffic",
        "Update feature flags",
        "Validate stable",
    ]
    # Four moves of 1 s paced 2.25 s apart (three paces), the flags' 3 s, and validation:
    # two attempts of 2 s with 0.5 s between.
    assert impact["worstCaseMs"] == 4 * 1_000 + 3 * 2_250 + 3_000 + (2 * 2_000 + 500)
    assert impact["requiresApproval"] is True


def test_impact__names_the_affinity_and_the_linked_flags_with_their_evaluations(running):
    from rollback import selectors
    from routing import services as routing

    routing.rule_update(
        rule=running.routing_rule, affinity={"type": "cookie", "name": "canary_session"}
    )
    link_flags(running, "shop-new-ui", "shop-checkout")
    now = timezone.now()
    minute = int(now.timestamp()) // 60
    expose("shop-new-ui", minute - 1, on=120, off=30)
    expose("shop-new-ui", minute, on=999)  # the minute under way
    expose("shop-new-ui", minute - 2, on=500)  # an older one

    impact = selectors.rollback_impact(deployment=running, now=now)

    affinity = impact["affinity"]
    assert affinity["enabled"] is True and affinity["by"] == "cookie canary_session"
    assert "move to stable" in affinity["note"]
    assert affinity["pinnedSessions"] is None and "not counted" in affinity["note"]
    assert [(f["key"], f["status"], f["evaluationsPerMinute"]) for f in impact["flags"]] == [
        ("shop-checkout", "enabled", 0.0),
        ("shop-new-ui", "enabled", 150.0),
    ]
    assert all(f["percentage"] == 100.0 for f in impact["flags"])


def test_impact__onto_an_unhealthy_stable__says_so_loudly(running):
    from rollback import selectors
    from routing import services as routing
    from routing.models import Target

    stable = Target.objects.get(pk=running.stable_target_id)
    # A real probe of the stable target's endpoint, where nothing listens.
    routing.target_update(
        target=stable,
        health_check={
            "enabled": True,
            "path": "/health",
            "interval_s": 1,
            "timeout_s": 1,
            "unhealthy_threshold": 1,
        },
    )
    summary = routing.targets_probe_due()
    assert summary.failed == 1
    now = timezone.now()
    push(now, STABLE, requests=400, errors=40)

    impact = selectors.rollback_impact(deployment=running, now=now)

    stable_now = impact["stable"]
    assert stable_now["healthy"] is False
    assert stable_now["lastProbe"]["consecutiveFailures"] == 1
    assert stable_now["lastProbe"]["result"]
    assert stable_now["errorRate"] == pytest.approx(10.0) and stable_now["sampleSize"] == 400
    warning = stable_now["warning"]
    assert warning.startswith("Rolling back onto an unhealthy stable:")
    assert "marked unhealthy" in warning and "10.00%" in warning and "40 of 400" in warning


def test_impact__a_high_error_rate_on_few_requests__is_not_called_unhealthy(running):
    from rollback import selectors

    now = timezone.now()
    push(now, STABLE, requests=5, errors=2)

    stable = selectors.rollback_impact(deployment=running, now=now)["stable"]

    assert stable["errorRate"] == pytest.approx(40.0) and stable["enoughRequests"] is False
    assert stable["healthy"] is True and stable["warning"] is None


def test_impact__within_a_cooldown__says_how_long_is_left(running):
    from rollback import selectors
    from rollback.models import RollbackExecution

    _plan(safety={"allowConsecutiveRollbacks": False, "cooldownPeriodMs": 600_000})
    _auto_rollback(running)
    began = RollbackExecution.objects.get(deployment=running).created_at

    impact = selectors.rollback_impact(deployment=running, now=began + timedelta(minutes=4))

    assert impact["cooldownLeftSeconds"] == 360


def test_impact__takes_a_fixed_number_of_queries_however_many_flags(
    running, django_assert_max_num_queries
):
    from rollback import selectors

    _plan(strategy="phased")
    link_flags(running, *(f"flag-{number}" for number in range(12)))

    with django_assert_max_num_queries(7):
        impact = selectors.rollback_impact(deployment=running)

    assert len(impact["flags"]) == 12
    # Phased: back through the earlier phases (20%, then 10%), validating at each.
    assert impact["steps"][:4] == [
        "Canary back to 20%",
        "Validate at 20%",
        "Canary back to 10%",
        "Validate at 10%",
    ]


# --------------------------------------------------------------------------- statistics


def _execution(deployment: Any, **fields: Any) -> Any:
    from rollback.models import RollbackExecution

    values = {
        "plan_name": "built-in immediate",
        "strategy": "immediate",
        "deployment": deployment,
        "service": "shop",
        "trigger": "automatic",
        "state": "succeeded",
    }
    values.update(fields)
    return RollbackExecution(**values)


def test_statistics__counts_and_times_overall_and_per_service(running):
    from rollback import selectors
    from rollback.models import RollbackExecution

    t0 = timezone.now() - timedelta(hours=1)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    rows = [
        # A breach 4 s before the rollback began, out 1 s after it: 5 s; done in 10 s.
        _execution(
            running,
            breach_at=at(0),
            started_at=at(4),
            out_of_traffic_at=at(5),
            finished_at=at(14),
            created_at=at(4),
        ),
        # No breach time: from its start, 2 s; failed after 30 s.
        _execution(
            running,
            trigger="manual",
            state="failed",
            started_at=at(100),
            out_of_traffic_at=at(102),
            finished_at=at(130),
            created_at=at(100),
        ),
        # Cancelled while waiting for approval: never began.
        _execution(
            running, trigger="manual", state="cancelled", created_at=at(200), finished_at=at(260)
        ),
        # Still running, out of traffic after 8 s.
        _execution(
            running,
            service="cart",
            trigger="kill_switch",
            state="running",
            strategy="gradual",
            breach_at=at(300),
            started_at=at(301),
            out_of_traffic_at=at(308),
            created_at=at(301),
        ),
        # A rehearsal: counted apart, in nothing else.
        _execution(
            running,
            trigger="manual",
            rehearsal=True,
            started_at=at(400),
            out_of_traffic_at=None,
            finished_at=at(401),
            created_at=at(400),
        ),
    ]
    RollbackExecution.objects.bulk_create(rows)

    stats = selectors.rollback_statistics()

    assert stats["total"] == 4 and stats["rehearsals"] == 1
    assert stats["byTrigger"] == {"automatic": 1, "manual": 2, "kill_switch": 1}
    assert stats["byState"]["succeeded"] == 1 and stats["byState"]["failed"] == 1
    assert stats["byState"]["cancelled"] == 1 and stats["byState"]["running"] == 1
    assert stats["byStrategy"]["gradual"] == 1 and stats["byStrategy"]["immediate"] == 3
    assert stats["ended"] == 3 and stats["succeeded"] == 1
    assert stats["successRate"] == pytest.approx(33.33)
    # 2, 5 and 8 s: median 5; p95 between the two highest ranks: 5 + 0.9 * 3.
    assert stats["timeToOutOfTraffic"] == {"median": 5.0, "p95": 7.7, "max": 8.0, "count": 3}
    # 10 s and 30 s (the cancelled one never started).
    assert stats["timeToDone"] == {"median": 20.0, "p95": 29.0, "max": 30.0, "count": 2}
    by_service = {entry["service"]: entry for entry in stats["services"]}
    assert list(by_service) == ["cart", "shop"]
    assert by_service["cart"]["total"] == 1 and by_service["cart"]["successRate"] is None
    assert by_service["shop"]["total"] == 3 and by_service["shop"]["rehearsals"] == 1
    assert by_service["shop"]["timeToOutOfTraffic"]["median"] == pytest.approx(3.5)

    only_cart = selectors.rollback_statistics(service="cart")
    assert only_cart["total"] == 1 and [s["service"] for s in only_cart["services"]] == ["cart"]
    recent = selectors.rollback_statistics(since=at(150))
    assert recent["total"] == 2 and recent["since"] == at(150).isoformat()


def test_statistics__of_a_real_automatic_rollback__time_from_the_fault_to_out_of_traffic(running):
    from rollback import selectors
    from rollback.models import RollbackExecution

    _auto_rollback(running)
    execution = RollbackExecution.objects.get(deployment=running)

    stats = selectors.rollback_statistics()

    assert stats["total"] == 1 and stats["successRate"] == 100.0
    assert stats["byTrigger"]["automatic"] == 1
    expected = (execution.out_of_traffic_at - execution.started_at).total_seconds()
    assert stats["timeToOutOfTraffic"]["count"] == 1
    assert stats["timeToOutOfTraffic"]["median"] == pytest.approx(expected, abs=1e-3)


def test_statistics__over_many_executions_and_services__is_one_query(
    running, django_assert_max_num_queries
):
    from rollback import selectors
    from rollback.models import RollbackExecution

    start = timezone.now() - timedelta(days=2)
    RollbackExecution.objects.bulk_create(
        _execution(
            running,
            service=f"svc-{number % 25}",
            trigger=("automatic", "manual", "kill_switch")[number % 3],
            state=("succeeded", "failed")[number % 7 == 0],
            created_at=start + timedelta(minutes=number),
            started_at=start + timedelta(minutes=number),
            out_of_traffic_at=start + timedelta(minutes=number, seconds=number % 10),
            finished_at=start + timedelta(minutes=number, seconds=30),
        )
        for number in range(500)
    )

    with django_assert_max_num_queries(1):
        stats = selectors.rollback_statistics()

    assert stats["total"] == 500 and len(stats["services"]) == 25
    assert sum(entry["total"] for entry in stats["services"]) == 500
    assert stats["byState"]["failed"] == len([n for n in range(500) if n % 7 == 0])
    assert stats["timeToOutOfTraffic"]["max"] == 9.0


# --------------------------------------------------------------------------- history


def test_history__newest_first_limited_and_filtered__in_one_query(
    running, people, django_assert_max_num_queries
):
    from rollback import selectors
    from rollback.models import RollbackExecution

    t0 = timezone.now() - timedelta(hours=1)
    RollbackExecution.objects.bulk_create(
        _execution(
            running,
            service="shop" if number % 2 else "cart",
            requested_by=people["erin"],
            created_at=t0 + timedelta(minutes=number),
        )
        for number in range(15)
    )

    with django_assert_max_num_queries(1):
        rows = list(selectors.execution_history())
        shown = [(row.deployment.service.name, row.requested_by.username) for row in rows]

    assert len(rows) == 10 and shown[0] == ("shop", "erin")
    assert [row.created_at for row in rows] == sorted(
        (row.created_at for row in rows), reverse=True
    )
    assert rows[0].created_at == t0 + timedelta(minutes=14)
    assert {row.service for row in selectors.execution_history(limit=3, service="cart")} == {"cart"}
    assert selectors.execution_history(limit=None, deployment=running).count() == 15
    assert selectors.execution_history(limit=None, deployment=running.pk + 1000).count() == 0


def test_detail__has_its_steps_in_order__and_none_when_missing(
    running, django_assert_max_num_queries
):
    from rollback import selectors

    _plan(strategy="gradual", strategyConfig={"durationMs": 3_000, "steps": 3})
    _auto_rollback(running)
    execution_id = running.rollback_executions.get().pk

    with django_assert_max_num_queries(4):
        execution = selectors.execution_detail(execution_id=execution_id)
        names = [step.name for step in execution.steps.all()]
        events = execution.deployment.rollback_events

    assert names == ["Canary to 26.67%", "Canary to 13.33%", "Stop new traffic"]
    assert [event.kind for event in events] == ["rollback"]
    assert selectors.execution_detail(execution_id=execution_id + 1000) is None
    assert selectors.execution_detail(execution_id="nope") is None


def test_share__follows_the_rollback_down_to_zero(running):
    from rollback import selectors

    _plan(strategy="gradual", strategyConfig={"durationMs": 8_000, "steps": 4})
    _auto_rollback(running)
    start = running.rollback_executions.get().started_at
    _advance_until_ended(running.rollback_executions.get(), start=start, step=1.0)
    execution = selectors.execution_detail(execution_id=running.rollback_executions.get().pk)

    share = selectors.execution_share(execution=execution)

    assert share.times[0] == execution.started_at and share.times[-1] == execution.finished_at
    assert share.shares == [40.0, 40.0, 30.0, 20.0, 10.0, 0.0, 0.0, 0.0]
    assert share.times == sorted(share.times)
    assert Decimal(str(share.shares[0])) == Decimal("40")
