"""Plotly figures of the rollback pages, built from selector data (no plotting in views), as
`canary_site.charts.Chart` for the chart partial: rollbacks over time and how fast they took
the canary out of traffic; one execution's steps and the canary's share while it ran."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import plotly.graph_objects as go

from canary_site.charts import Chart, naive_utc
from deployments.charts import PLANNED_COLOUR
from health.charts import CANARY_COLOUR, STABLE_COLOUR
from rollback import selectors
from rollback.choices import RollbackTrigger, StepState
from rollback.models import RollbackExecution

TRIGGER_COLOURS = {
    RollbackTrigger.AUTOMATIC: CANARY_COLOUR,
    RollbackTrigger.MANUAL: STABLE_COLOUR,
    RollbackTrigger.KILL_SWITCH: "#862e9c",
}
# The colours of the stylesheet's status badges, so a step reads the same in a chart.
STEP_COLOURS = {
    StepState.SUCCEEDED: "#16794c",
    StepState.FAILED: "#b42318",
    StepState.RUNNING: "#0b62d6",
    StepState.PENDING: "#adb5bd",
    StepState.SKIPPED: "#5b6577",
}
# Rollbacks spread over at most this long are counted per hour, longer spreads per day.
HOURLY_UP_TO = timedelta(hours=48)


def _layout(figure: go.Figure, *, unit: str, key: str, height: int = 260) -> None:
    # The title is the page's <figcaption>; the legend sits above the plot.
    figure.update_layout(
        height=height,
        margin={"l": 50, "r": 10, "t": 30, "b": 36},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        xaxis={"type": "date", "hoverformat": "%Y-%m-%d %H:%M:%S UTC"},
        yaxis={"title": {"text": unit}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        uirevision=key,  # keeps zoom and legend choices across refreshes
    )


def _empty(figure: go.Figure, text: str) -> None:
    figure.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)


# --------------------------------------------------------------------------- statistics


def _floor(moment: datetime, hourly: bool) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment if hourly else moment.replace(hour=0)


def rollbacks_over_time_figure(executions: Iterable[Any]) -> go.Figure:
    """Rollbacks (not rehearsals) per hour, or per day past two days, stacked by trigger; every
    period from the first to the last is on the axis, a quiet one at zero."""
    rows = [execution for execution in executions if not execution.rehearsal]
    figure = go.Figure()
    if rows:
        first = min(row.created_at for row in rows)
        last = max(row.created_at for row in rows)
        hourly = last - first <= HOURLY_UP_TO
        step = timedelta(hours=1) if hourly else timedelta(days=1)
        periods = [_floor(first, hourly)]
        while periods[-1] < _floor(last, hourly):
            periods.append(periods[-1] + step)
        index = {period: position for position, period in enumerate(periods)}
        counts = {trigger: [0] * len(periods) for trigger in RollbackTrigger.values}
        for row in rows:
            counts.setdefault(row.trigger, [0] * len(periods))
            counts[row.trigger][index[_floor(row.created_at, hourly)]] += 1
        for trigger, values in counts.items():
            label = RollbackTrigger(trigger).label if trigger in RollbackTrigger.values else trigger
            figure.add_trace(
                go.Bar(
                    x=naive_utc(periods),
                    y=values,
                    name=label,
                    marker={"color": TRIGGER_COLOURS.get(trigger, PLANNED_COLOUR)},
                    hovertemplate=f"%{{y}}<extra>{label}</extra>",
                )
            )
        figure.update_layout(barmode="stack", bargap=0.1)
    else:
        _empty(figure, "No rollbacks yet")
    _layout(figure, unit="rollbacks", key="rollbacks-over-time")
    return figure


def time_to_out_of_traffic_figure(executions: Iterable[Any], *, median: float | None) -> go.Figure:
    """Each rollback's seconds from the fault (or its start) to the canary out of traffic, at
    the moment it began, with the median of the statistics as a line."""
    points = []
    for execution in executions:
        if execution.rehearsal:
            continue
        seconds = selectors.seconds_to_out_of_traffic(
            execution.breach_at, execution.started_at, execution.out_of_traffic_at
        )
        if seconds is not None:
            points.append((execution.started_at or execution.created_at, seconds, execution))
    points.sort(key=lambda point: point[0])
    figure = go.Figure()
    if points:
        figure.add_trace(
            go.Scatter(
                x=naive_utc([point[0] for point in points]),
                y=[point[1] for point in points],
                text=[f"#{point[2].pk} {point[2].service}" for point in points],
                name="rollback",
                mode="markers",
                marker={"size": 8, "color": CANARY_COLOUR},
                hovertemplate="%{y:.1f} s<extra>%{text}</extra>",
            )
        )
        if median is not None:
            figure.add_trace(
                go.Scatter(
                    x=naive_utc([points[0][0], points[-1][0]]),
                    y=[median, median],
                    name=f"median {median:.1f} s",
                    mode="lines",
                    line={"color": PLANNED_COLOUR, "width": 2, "dash": "dash"},
                    hovertemplate=f"median {median:.1f} s<extra></extra>",
                )
            )
    else:
        _empty(figure, "No rollback has taken a canary out of traffic yet")
    _layout(figure, unit="seconds", key="time-to-out-of-traffic")
    return figure


def statistics_charts(stats: Mapping[str, Any], executions: Iterable[Any]) -> list[Chart]:
    """The statistics page's charts: rollbacks over time by trigger, and each rollback's time
    from the fault to the canary out of traffic beside the median (`rollback_statistics`)."""
    rows = list(executions)
    median = (stats.get("timeToOutOfTraffic") or {}).get("median")
    over_time = "Rollbacks over time, by trigger"
    speed = "Time from the fault to the canary out of traffic"
    return [
        Chart.of(
            rollbacks_over_time_figure(rows),
            element_id="rollback-stats-over-time",
            title=over_time,
            label=f"{over_time}: {stats.get('total', 0)} rollbacks",
        ),
        Chart.of(
            time_to_out_of_traffic_figure(rows, median=median),
            element_id="rollback-stats-out-of-traffic",
            title=speed,
            label=f"{speed}, per rollback"
            + (f"; median {median:.1f} seconds" if median is not None else ""),
        ),
    ]


# --------------------------------------------------------------------------- one execution


def step_label(step: Any) -> str:
    return f"{step.position + 1}. {step.name}"


def steps_figure(execution: RollbackExecution, *, now: datetime | None = None) -> go.Figure:
    """A bar per step from its start to its end (a running one to now), coloured by state, the
    first step at the top; steps that never began keep their row, empty."""
    steps = list(execution.steps.all())
    end_now = execution.finished_at or now or datetime.now(UTC)
    figure = go.Figure()
    by_state: dict[str, list[Any]] = {}
    for step in steps:
        if step.started_at is not None:
            by_state.setdefault(step.state, []).append(step)
    for state in StepState.values:
        rows = by_state.get(state)
        if not rows:
            continue
        label = StepState(state).label
        ends = [step.finished_at or end_now for step in rows]
        figure.add_trace(
            go.Bar(
                orientation="h",
                base=naive_utc([step.started_at for step in rows]),
                x=[
                    max(0, int((stop - step.started_at).total_seconds() * 1000))
                    for step, stop in zip(rows, ends, strict=True)
                ],
                y=[step_label(step) for step in rows],
                name=label,
                marker={"color": STEP_COLOURS.get(state, PLANNED_COLOUR)},
                hovertemplate="%{x} ms<extra>%{y}: " + label + "</extra>",
            )
        )
    if not by_state:
        _empty(figure, "No step has begun")
    _layout(figure, unit="", key=f"rollback-{execution.pk}-steps", height=80 + 28 * len(steps))
    figure.update_layout(barmode="overlay")
    figure.update_yaxes(
        type="category",
        categoryorder="array",
        categoryarray=[step_label(step) for step in steps],
        autorange="reversed",
        title=None,
    )
    return figure


def share_figure(share: Any) -> go.Figure:
    """The canary's share while the execution ran, as steps."""
    figure = go.Figure()
    if share.times:
        figure.add_trace(
            go.Scatter(
                x=naive_utc(share.times),
                y=share.shares,
                name="canary share",
                mode="lines+markers",
                marker={"size": 5},
                line={"color": CANARY_COLOUR, "width": 2, "shape": "hv"},
                hovertemplate="%{y:.2f}%<extra>canary</extra>",
            )
        )
    else:
        _empty(figure, "Traffic did not move")
    _layout(figure, unit="%", key="rollback-share")
    figure.update_yaxes(range=[0, 105])
    return figure


def execution_timeline(execution: RollbackExecution, *, now: datetime | None = None) -> list[Chart]:
    """One execution's charts: its steps over time, and the canary's share meanwhile (from
    the deployment's rollback events; `selectors.execution_detail` has them loaded)."""
    prefix = f"rollback-{execution.pk}"
    kind = "rehearsal" if execution.rehearsal else "rollback"
    share = selectors.execution_share(execution=execution, now=now)
    steps_title = "Steps over time"
    share_title = "Canary share of traffic"
    return [
        Chart.of(
            steps_figure(execution, now=now),
            element_id=f"{prefix}-steps",
            title=steps_title,
            label=f"{steps_title} of {kind} #{execution.pk}, coloured by state",
        ),
        Chart.of(
            share_figure(share),
            element_id=f"{prefix}-share",
            title=share_title,
            label=f"{share_title} during {kind} #{execution.pk}",
        ),
    ]
