"""Plotly figures of the kill switch pages, built from the health app's series (no plotting in
views), as `canary_site.charts.Chart` for the chart partial: for each metric condition of a
switch, the watched metric over the last hour against its threshold, each activation a vertical
line where it fired and where it was recovered.

The series are what the switch's watch reads: every version the service's targets serve. The
error rate and the availability are those of all of them together (their requests and errors
added per step); percentiles do not add, so the p95 latency is drawn per version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import plotly.graph_objects as go
from django.utils import timezone

from canary_site.charts import Chart, naive_utc
from deployments.charts import PLANNED_COLOUR
from health import selectors as health_selectors
from health.charts import CANARY_COLOUR, STABLE_COLOUR
from health.choices import SeriesMetric
from rollback import killswitches
from routing.models import Target

WINDOW_SECONDS = 3600
THRESHOLD_COLOUR = "#b42318"
RECOVERED_COLOUR = "#16794c"
VERSION_COLOURS = (STABLE_COLOUR, CANARY_COLOUR, "#862e9c", "#5b6577", "#e0b100")
Type = killswitches.ConditionType
# (title, unit) of each metric condition's chart.
WORDS: dict[str, tuple[str, str]] = {
    Type.ERROR_RATE: ("Error rate", "%"),
    Type.LATENCY: ("p95 latency", "ms"),
    Type.AVAILABILITY: ("Availability", "%"),
}


@dataclass(frozen=True)
class Line:
    """One drawn series: its name and its values at the chart's moments."""

    name: str
    values: list[float | None]


@dataclass(frozen=True)
class ConditionSeries:
    """What one metric condition's chart draws."""

    index: int
    condition: killswitches.Condition
    moments: list[datetime]
    step_seconds: int
    lines: list[Line]
    # The moment of the read: an activation up to it is marked, though its step is not over.
    until: datetime


def watched_versions(services: Iterable[str]) -> dict[str, list[str]]:
    """Each service's versions as the watch reads them: those its targets serve."""
    found: dict[str, list[str]] = {}
    rows = (
        Target.objects.filter(service__name__in=list(services))
        .values_list("service__name", "version")
        .order_by("service__name", "version")
        .distinct()
    )
    for service, version in rows:
        found.setdefault(service, []).append(version)
    return found


def condition_series(
    spec: killswitches.KillSwitchSpec, *, now: datetime | None = None
) -> list[ConditionSeries]:
    """Every metric condition's series over the last hour, from one read of the store."""
    metric_conditions = [
        (index, condition)
        for index, condition in enumerate(spec.conditions)
        if condition.watches_metrics
    ]
    if not metric_conditions:
        return []
    now = now or timezone.now()
    services = sorted({condition.service for _, condition in metric_conditions})
    versions = watched_versions(services)
    every_version = sorted({version for found in versions.values() for version in found})
    found = health_selectors.series_many_services(
        services=services,
        # No version at all still gives the hour's moments, each without a value.
        versions=every_version or [""],
        metrics=[SeriesMetric.REQUESTS, SeriesMetric.ERRORS, SeriesMetric.LATENCY_P95],
        window_seconds=WINDOW_SECONDS,
        now=now,
    )
    sample = next(iter(found.values()))
    moments, step = sample.timestamps, sample.step_seconds
    result = []
    for index, condition in metric_conditions:
        mine = versions.get(condition.service, [])
        if condition.type == Type.LATENCY:
            lines = [
                Line(
                    f"p95 {version}",
                    list(found[(condition.service, version, SeriesMetric.LATENCY_P95)].values),
                )
                for version in mine
            ]
        else:
            rates = _rates(found, condition, mine, len(moments))
            lines = [Line(WORDS[condition.type][0].lower(), rates)]
        result.append(ConditionSeries(index, condition, list(moments), step, lines, now))
    return result


def _rates(
    found: dict[tuple[str, str, str], Any],
    condition: killswitches.Condition,
    versions: list[str],
    points: int,
) -> list[float | None]:
    """The error rate (or availability) of all ``versions`` together, step by step."""
    values: list[float | None] = []
    for k in range(points):
        requests = sum(
            found[(condition.service, v, SeriesMetric.REQUESTS)].values[k] or 0 for v in versions
        )
        errors = sum(
            found[(condition.service, v, SeriesMetric.ERRORS)].values[k] or 0 for v in versions
        )
        if not requests:
            values.append(None)
        elif condition.type == Type.ERROR_RATE:
            values.append(100.0 * errors / requests)
        else:
            values.append(100.0 * (requests - errors) / requests)
    return values


def condition_figure(series: ConditionSeries, activations: Sequence[Any]) -> go.Figure:
    """The watched metric against the threshold (a dashed line), with the activations that
    fall in the hour as vertical lines (red where one fired, green where it was recovered)."""
    condition = series.condition
    unit = WORDS[condition.type][1]
    figure = go.Figure()
    x = naive_utc(series.moments)
    for position, line in enumerate(series.lines):
        figure.add_trace(
            go.Scatter(
                x=x,
                y=line.values,
                name=line.name,
                mode="lines+markers",
                marker={"size": 4},
                line={"color": VERSION_COLOURS[position % len(VERSION_COLOURS)], "width": 2},
                connectgaps=False,
                hovertemplate=f"%{{y:.3g}} {unit}<extra>{line.name}</extra>",
            )
        )
    if series.moments:
        end = series.moments[-1] + timedelta(seconds=series.step_seconds)
        figure.add_trace(
            go.Scatter(
                x=naive_utc([series.moments[0], end]),
                y=[condition.threshold, condition.threshold],
                name=f"threshold {condition.threshold:g} {unit}",
                mode="lines",
                line={"color": THRESHOLD_COLOUR, "width": 2, "dash": "dash"},
                hovertemplate=f"threshold {condition.threshold:g} {unit}<extra></extra>",
            )
        )
        start = series.moments[0]
        for activation in activations:
            for moment, colour, word in (
                (activation.activated_at, THRESHOLD_COLOUR, "fired"),
                (activation.recovered_at, RECOVERED_COLOUR, "recovered"),
            ):
                if moment is None or not start <= moment <= max(end, series.until):
                    continue
                at = naive_utc([moment])[0]
                figure.add_shape(
                    type="line",
                    x0=at,
                    x1=at,
                    xref="x",
                    y0=0,
                    y1=1,
                    yref="paper",
                    line={"color": colour, "width": 2, "dash": "dot"},
                )
                figure.add_annotation(
                    x=at,
                    y=1,
                    xref="x",
                    yref="paper",
                    text=f"#{activation.pk} {word}",
                    showarrow=False,
                    yanchor="bottom",
                    font={"color": colour, "size": 11},
                )
    if not any(value is not None for line in series.lines for value in line.values):
        figure.add_annotation(
            text=f"No traffic of {condition.service} in the last hour",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            font={"color": PLANNED_COLOUR},
        )
    figure.update_layout(
        height=240,
        margin={"l": 50, "r": 10, "t": 30, "b": 30},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        xaxis={"type": "date", "hoverformat": "%H:%M:%S UTC"},
        yaxis={"title": {"text": unit}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        uirevision=f"killswitch-condition-{series.index}",
    )
    return figure


def condition_charts(
    spec: killswitches.KillSwitchSpec,
    activations: Sequence[Any],
    *,
    now: datetime | None = None,
) -> list[Chart]:
    """A chart for each metric condition of ``spec``, in the order of its conditions."""
    charts = []
    for series in condition_series(spec, now=now):
        condition = series.condition
        title, unit = WORDS[condition.type]
        above = "below" if condition.type == Type.AVAILABILITY else "above"
        charts.append(
            Chart.of(
                condition_figure(series, activations),
                element_id=f"killswitch-condition-{series.index}",
                title=f"Condition {series.index + 1}: {title.lower()} of {condition.service}",
                label=(
                    f"{title} of {condition.service} over the last hour; the switch may fire "
                    f"{above} {condition.threshold:g} {unit}"
                ),
            )
        )
    return charts
