"""The rollback pages' figures carry the data they say: rollbacks per period stacked by trigger,
each rollback's time to out of traffic beside the median, an execution's steps as bars from
start to end coloured by state, and the canary's share while it ran."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.rollback import test_executions as executions

# The deployment the rollback tests share: "shop" running on its third phase (40%).
shop, running = executions.shop, executions.running

pytestmark = pytest.mark.django_db


def figure_of(chart: Any) -> dict[str, Any]:
    """The figure as the page gets it."""
    return json.loads(chart.figure_json)


def by_name(figure: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {trace["name"]: trace for trace in figure["data"]}


def naive(moment: datetime) -> str:
    """How a moment reads on the figures' date axes (UTC without an offset)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()


def _executions(deployment: Any, base: datetime) -> list[Any]:
    from rollback.models import RollbackExecution

    def row(hours: float, trigger: str, seconds: float | None, **fields: Any) -> Any:
        began = base + timedelta(hours=hours)
        values = {
            "plan_name": "built-in immediate",
            "strategy": "immediate",
            "deployment": deployment,
            "service": "shop",
            "trigger": trigger,
            "state": "succeeded",
            "created_at": began,
            "started_at": began,
            "breach_at": began - timedelta(seconds=2),
            "out_of_traffic_at": (
                began + timedelta(seconds=seconds - 2) if seconds is not None else None
            ),
            "finished_at": began + timedelta(seconds=30),
        }
        return RollbackExecution(**{**values, **fields})

    return RollbackExecution.objects.bulk_create(
        [
            row(0.1, "automatic", 4),
            row(0.5, "automatic", 6),
            row(0.7, "manual", 10),
            row(2.2, "kill_switch", 3),
            row(2.4, "manual", None, state="failed"),
            row(2.5, "manual", 1, rehearsal=True),
        ]
    )


def test_statistics_charts__stack_rollbacks_per_hour_by_trigger(running):
    from rollback import charts, selectors

    base = datetime(2030, 5, 4, 10, 0, tzinfo=UTC)
    rows = _executions(running, base)
    stats = selectors.rollback_statistics(since=base)

    over_time, _ = charts.statistics_charts(stats, rows)

    assert over_time.element_id == "rollback-stats-over-time"
    figure = figure_of(over_time)
    assert figure["layout"]["barmode"] == "stack"
    traces = by_name(figure)
    hours = [naive(base + timedelta(hours=h)) for h in (0, 1, 2)]
    assert set(traces) == {"Automatic", "Manual", "Kill switch"}
    for trace in traces.values():
        assert trace["type"] == "bar" and trace["x"] == hours
    # The rehearsal at 12:30 is not a rollback; the quiet hour at 11:00 is on the axis at 0.
    assert traces["Automatic"]["y"] == [2, 0, 0]
    assert traces["Manual"]["y"] == [1, 0, 1]
    assert traces["Kill switch"]["y"] == [0, 0, 1]


def test_statistics_charts__put_each_rollbacks_time_beside_the_median(running):
    from rollback import charts, selectors

    base = datetime(2030, 5, 4, 10, 0, tzinfo=UTC)
    rows = _executions(running, base)
    stats = selectors.rollback_statistics(since=base)
    assert stats["timeToOutOfTraffic"]["median"] == 5.0

    _, speed = charts.statistics_charts(stats, rows)

    traces = by_name(figure_of(speed))
    points = traces["rollback"]
    starts = [base + timedelta(hours=h) for h in (0.1, 0.5, 0.7, 2.2)]
    assert points["x"] == [naive(moment) for moment in starts]
    assert points["y"] == [4.0, 6.0, 10.0, 3.0]
    median = traces["median 5.0 s"]
    assert median["y"] == [5.0, 5.0]
    assert median["x"] == [naive(starts[0]), naive(starts[-1])]
    assert "median 5.0 seconds" in speed.label


def test_statistics_charts__count_per_day_past_two_days(running):
    from rollback import charts, selectors
    from rollback.models import RollbackExecution

    base = datetime(2030, 5, 1, 23, 0, tzinfo=UTC)
    rows = _executions(running, base)
    late = rows[0]
    late.created_at = base + timedelta(days=3)
    RollbackExecution.objects.filter(pk=late.pk).update(created_at=late.created_at)

    over_time, _ = charts.statistics_charts(selectors.rollback_statistics(), rows)

    traces = by_name(figure_of(over_time))
    days = [naive(datetime(2030, 5, day, tzinfo=UTC)) for day in (1, 2, 3, 4)]
    assert traces["Automatic"]["x"] == days
    # 23:30 on the 1st, and the one moved to the 4th; the manual ones at 23:42 and 01:24.
    assert traces["Automatic"]["y"] == [1, 0, 0, 1]
    assert traces["Manual"]["y"] == [1, 1, 0, 0]


def test_statistics_charts__with_no_rollback__say_so():
    from rollback import charts

    over_time, speed = charts.statistics_charts({"total": 0, "timeToOutOfTraffic": {}}, [])

    for chart in (over_time, speed):
        figure = figure_of(chart)
        assert figure["data"] == []
        assert figure["layout"]["annotations"][0]["text"].startswith("No rollback")


def test_execution_timeline__a_bar_per_step_and_the_share_down_to_zero(running):
    from rollback import charts, selectors

    executions._plan(
        strategy="gradual",
        strategyConfig={"durationMs": 8_000, "steps": 4},
        actions=[
            {"id": "stop", "type": "stop_new_traffic", "timeoutMs": 5_000},
            {"id": "off", "type": "update_feature_flags", "timeoutMs": 5_000},
        ],
    )
    executions._auto_rollback(running)
    began = running.rollback_executions.get().started_at
    executions._advance_until_ended(running.rollback_executions.get(), start=began, step=1.0)
    execution = selectors.execution_detail(execution_id=running.rollback_executions.get().pk)
    steps = list(execution.steps.all())

    steps_chart, share_chart = charts.execution_timeline(execution)

    assert steps_chart.element_id == f"rollback-{execution.pk}-steps"
    figure = figure_of(steps_chart)
    (succeeded,) = figure["data"]  # every step succeeded: one trace, one colour
    assert succeeded["name"] == "Succeeded" and succeeded["orientation"] == "h"
    assert succeeded["y"] == [
        "1. Canary to 30%",
        "2. Canary to 20%",
        "3. Canary to 10%",
        "4. Stop new traffic",
        "5. Update feature flags",
    ]
    assert succeeded["base"] == [naive(step.started_at) for step in steps]
    assert succeeded["x"] == [
        int((step.finished_at - step.started_at).total_seconds() * 1000) for step in steps
    ]
    # The pace holds each step down 2 s after the one before it.
    starts = [step.started_at for step in steps]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(starts)] == [
        2.0,
        2.0,
        2.0,
        0.0,
    ]
    assert figure["layout"]["yaxis"]["autorange"] == "reversed"

    share = by_name(figure_of(share_chart))["canary share"]
    assert share["y"] == [40.0, 40.0, 30.0, 20.0, 10.0, 0.0, 0.0, 0.0]
    assert share["x"][0] == naive(execution.started_at)
    assert share["x"][-1] == naive(execution.finished_at)
    assert share["line"]["shape"] == "hv"


def test_execution_timeline__a_failed_step_and_the_skipped_ones_keep_their_rows(running):
    from rollback import charts, selectors, services

    executions._plan(
        strategy="immediate",
        actions=[
            {"id": "stop", "type": "stop_new_traffic", "timeoutMs": 5_000},
            {
                "id": "hook",
                "type": "call_webhook",
                "timeoutMs": 1_000,
                "config": {"url": "http://127.0.0.1:9/rollback"},
            },
            {"id": "off", "type": "update_feature_flags", "timeoutMs": 5_000},
        ],
    )
    executions._auto_rollback(running)
    execution = running.rollback_executions.get()
    start = execution.started_at
    # Nothing listens on port 9: the webhook is tried until its second is up.
    for seconds in (0, 0.5, 1.5):
        services.rollback_executions_advance(now=start + timedelta(seconds=seconds))
    execution = selectors.execution_detail(execution_id=execution.pk)
    assert execution.state == "failed", execution.outcome

    steps_chart, share_chart = charts.execution_timeline(execution)

    figure = figure_of(steps_chart)
    traces = by_name(figure)
    assert set(traces) == {"Succeeded", "Failed"}
    assert traces["Succeeded"]["y"] == ["1. Stop new traffic"]
    assert traces["Failed"]["y"] == ["2. Call webhook"]
    assert traces["Failed"]["x"] == [1500]
    # The step that never began has its row, empty.
    assert figure["layout"]["yaxis"]["categoryarray"] == [
        "1. Stop new traffic",
        "2. Call webhook",
        "3. Update feature flags",
    ]
    share = by_name(figure_of(share_chart))["canary share"]
    assert share["y"][:2] == [40.0, 0.0] and share["y"][-1] == 0.0


def test_execution_timeline__of_a_rehearsal__shows_no_traffic_moving(running):
    from rollback import charts, services

    plan = executions._plan(strategy="immediate")
    execution = services.rollback_rehearse(plan=plan, deployment=running, reason="drill")
    now = timezone.now()

    _, share_chart = charts.execution_timeline(execution, now=now)

    figure = figure_of(share_chart)
    assert figure["data"] == []
    assert figure["layout"]["annotations"][0]["text"] == "Traffic did not move"
    assert "rehearsal" in share_chart.label
