"""Plotly figures of the deployments pages, built from selector data (no plotting in views), as
`canary_site.charts.Chart` for the chart partial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from canary_site.charts import Chart, naive_utc
from deployments.selectors import ShareSeries, Statistics

# Canary-against-stable figures look the same on the health and the deployment pages.
from health.charts import CANARY_COLOUR, STABLE_COLOUR, comparison_charts

PLANNED_COLOUR = "#495057"


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
                x=naive_utc(planned.times),
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
                x=naive_utc(canary_requests.timestamps),
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
    versions = f"canary {canary_version} against stable {stable_version}"
    share = traffic_share_figure(
        planned=planned,
        canary_requests=series.get((canary_version, "requests")),
        stable_requests=series.get((stable_version, "requests")),
    )
    title = "Canary share of traffic"
    return [
        Chart.of(share, element_id=f"{prefix}-share", title=title, label=f"{title}: {versions}"),
        *comparison_charts(
            series=series,
            canary_version=canary_version,
            stable_version=stable_version,
            id_prefix=prefix,
            metrics=("error_rate", "latency_p95"),
        ),
    ]


def _bars_layout(figure: go.Figure, *, title: str, unit: str) -> None:
    figure.update_layout(
        title={"text": title, "x": 0, "font": {"size": 14}},
        height=280,
        margin={"l": 50, "r": 10, "t": 36, "b": 60},
        yaxis={"title": {"text": unit}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )


def statistics_charts(stats: Statistics) -> list[Chart]:
    """Time per phase (average and longest, by position) and deployments by outcome."""
    phases = go.Figure()
    labels = [f"{stat.order}. {stat.name}" for stat in stats.phase_times]
    for name, colour in (("average", STABLE_COLOUR), ("longest", CANARY_COLOUR)):
        phases.add_trace(
            go.Bar(
                x=labels,
                y=[getattr(stat, f"{name}_ms") / 1000 for stat in stats.phase_times],
                name=name,
                marker={"color": colour},
                hovertemplate=f"%{{y:.0f}} s<extra>{name}</extra>",
            )
        )
    _bars_layout(phases, title="Time per phase", unit="seconds")
    phases.update_layout(barmode="group", legend={"orientation": "h", "y": -0.3})
    outcomes = go.Figure(
        go.Bar(
            x=list(stats.by_status),
            y=list(stats.by_status.values()),
            marker={"color": PLANNED_COLOUR},
            hovertemplate="%{y}<extra>%{x}</extra>",
        )
    )
    _bars_layout(outcomes, title="Deployments by status", unit="deployments")
    return [
        Chart.of(phases, element_id="stats-phase-times", title="Time per phase"),
        Chart.of(outcomes, element_id="stats-outcomes", title="Deployments by status"),
    ]
