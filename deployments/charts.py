"""Plotly figures of the deployments pages, built from selector data (no plotting in views).

Each figure leaves here as JSON that is safe inside ``<script type="application/json">``;
``static/canary/charts.js`` draws it after each htmx swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import plotly.graph_objects as go

from deployments.selectors import ShareSeries, Statistics

# Canary-against-stable figures look the same on the health and the deployment pages.
from health.charts import CANARY_COLOUR, STABLE_COLOUR, comparison_figure, figure_json

PLANNED_COLOUR = "#495057"


@dataclass(frozen=True)
class Chart:
    """One figure for a page: ``element_id`` of its div and ``figure_json`` to embed."""

    element_id: str
    title: str
    figure_json: str


def _naive_utc(moments: Sequence[datetime]) -> list[datetime]:
    # plotly.js reads dates as wall-clock time; the axes say UTC.
    return [moment.replace(tzinfo=None) for moment in moments]


def _layout(figure: go.Figure, *, title: str, unit: str, key: str) -> None:
    figure.update_layout(
        title={"text": f"{title} (UTC)", "x": 0, "font": {"size": 14}},
        height=260,
        margin={"l": 50, "r": 10, "t": 36, "b": 36},
        legend={"orientation": "h", "y": -0.2},
        xaxis={"type": "date"},
        yaxis={"title": {"text": unit}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        uirevision=key,  # keeps zoom and legend choices across the 5-second refreshes
    )


def traffic_share_figure(
    *, planned: ShareSeries, canary_requests: Any, stable_requests: Any
) -> go.Figure:
    """The canary's share of traffic: as the deployment set it (steps) and as the metric store
    saw it (canary requests over all requests of the two versions, per step)."""
    figure = go.Figure()
    if planned.times:
        figure.add_trace(
            go.Scatter(
                x=_naive_utc(planned.times),
                y=planned.shares,
                name="planned",
                mode="lines",
                line={"color": PLANNED_COLOUR, "width": 2, "shape": "hv", "dash": "dash"},
                hovertemplate="%{y:.2f}%<extra>planned</extra>",
            )
        )
    if canary_requests is not None and stable_requests is not None:
        shares: list[float | None] = []
        for canary, stable in zip(canary_requests.values, stable_requests.values, strict=True):
            total = (canary or 0) + (stable or 0)
            shares.append(100.0 * (canary or 0) / total if total else None)
        figure.add_trace(
            go.Scatter(
                x=_naive_utc(canary_requests.timestamps),
                y=shares,
                name="observed",
                mode="lines+markers",
                marker={"size": 4},
                line={"color": CANARY_COLOUR, "width": 2},
                connectgaps=False,
                hovertemplate="%{y:.1f}%<extra>observed</extra>",
            )
        )
    _layout(figure, title="Canary share of traffic", unit="%", key="share")
    figure.update_yaxes(range=[0, 105])
    return figure


def deployment_charts(
    *,
    deployment_id: int,
    planned: ShareSeries,
    series: Mapping[tuple[str, str], Any],
    canary_version: str,
    stable_version: str,
) -> list[Chart]:
    """The deployment page's live charts: traffic share, then error rate and p95 latency."""
    prefix = f"deployment-{deployment_id}"
    charts = [
        Chart(
            element_id=f"{prefix}-share",
            title="Canary share of traffic",
            figure_json=figure_json(
                traffic_share_figure(
                    planned=planned,
                    canary_requests=series.get((canary_version, "requests")),
                    stable_requests=series.get((stable_version, "requests")),
                )
            ),
        )
    ]
    for metric, title, unit in (
        ("error_rate", "Error rate", "%"),
        ("latency_p95", "p95 latency", "ms"),
    ):
        figure = comparison_figure(
            title=title,
            unit=unit,
            canary=series.get((canary_version, metric)),
            stable=series.get((stable_version, metric)),
        )
        charts.append(
            Chart(
                element_id=f"{prefix}-{metric.replace('_', '-')}",
                title=title,
                figure_json=figure_json(figure),
            )
        )
    return charts


def statistics_charts(stats: Statistics) -> list[Chart]:
    """Time per phase (average and longest, by position) and deployments by outcome."""
    phases = go.Figure()
    labels = [f"{stat.order}. {stat.name}" for stat in stats.phase_times]
    phases.add_trace(
        go.Bar(
            x=labels,
            y=[stat.average_ms / 1000 for stat in stats.phase_times],
            name="average",
            marker={"color": STABLE_COLOUR},
            hovertemplate="%{y:.0f} s<extra>average</extra>",
        )
    )
    phases.add_trace(
        go.Bar(
            x=labels,
            y=[stat.longest_ms / 1000 for stat in stats.phase_times],
            name="longest",
            marker={"color": CANARY_COLOUR},
            hovertemplate="%{y:.0f} s<extra>longest</extra>",
        )
    )
    phases.update_layout(
        title={"text": "Time per phase", "x": 0, "font": {"size": 14}},
        barmode="group",
        height=280,
        margin={"l": 50, "r": 10, "t": 36, "b": 60},
        yaxis={"title": {"text": "seconds"}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        legend={"orientation": "h", "y": -0.3},
    )
    outcomes = go.Figure(
        go.Bar(
            x=list(stats.by_status),
            y=list(stats.by_status.values()),
            marker={"color": PLANNED_COLOUR},
            hovertemplate="%{y}<extra>%{x}</extra>",
        )
    )
    outcomes.update_layout(
        title={"text": "Deployments by status", "x": 0, "font": {"size": 14}},
        height=280,
        margin={"l": 50, "r": 10, "t": 36, "b": 60},
        yaxis={"title": {"text": "deployments"}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return [
        Chart("stats-phase-times", "Time per phase", figure_json(phases)),
        Chart("stats-outcomes", "Deployments by status", figure_json(outcomes)),
    ]
