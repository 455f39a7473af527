"""Plotly figures of the routing pages, built from selector series (no plotting in views), as
`canary_site.charts.Chart` for the chart partial."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from canary_site.charts import Chart, naive_utc

PALETTE = ("#1c7ed6", "#d9480f", "#2b8a3e", "#7048e8", "#e67700", "#0c8599", "#c2255c")


def traffic_figure(
    *,
    series: Mapping[str, Mapping[str, Sequence[Any]]],
    labels: Mapping[str, str],
    stable_version: str,
) -> go.Figure:
    """Requests per second (top) and error rate (bottom) per version, each line named after
    the targets that run that version. ``series`` is ``selectors.outcome_series``' output."""
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=("Requests per second", "Error rate (%)"),
    )
    # Stable first, so it keeps the first colour whatever the canary versions are called.
    versions = sorted(series, key=lambda version: (version != stable_version, version))
    for index, version in enumerate(versions):
        points = series[version]
        colour = PALETTE[index % len(PALETTE)]
        name = labels.get(version, version)
        x = naive_utc(points["timestamps"])
        for row, key, unit in ((1, "rps", "req/s"), (2, "error_rate", "%")):
            figure.add_trace(
                go.Scatter(
                    x=x,
                    y=list(points[key]),
                    name=name,
                    legendgroup=version,
                    showlegend=row == 1,
                    mode="lines+markers",
                    marker={"size": 4},
                    line={"color": colour, "width": 2},
                    connectgaps=False,
                    hovertemplate=f"%{{y:.3g}} {unit}<extra>{name}</extra>",
                ),
                row=row,
                col=1,
            )
    figure.update_layout(
        height=420,
        margin={"l": 50, "r": 10, "t": 36, "b": 70},
        legend={"orientation": "h", "y": -0.22},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    figure.update_yaxes(rangemode="tozero")
    figure.update_xaxes(type="date")
    figure.update_xaxes(title_text="UTC", row=2, col=1)
    return figure


def traffic_chart(
    *,
    series: Mapping[str, Mapping[str, Sequence[Any]]],
    labels: Mapping[str, str],
    stable_version: str,
) -> Chart:
    figure = traffic_figure(series=series, labels=labels, stable_version=stable_version)
    return Chart.of(
        figure,
        element_id="traffic-chart-plot",
        title="Traffic per target",
        label="Requests per second and error rate per version",
    )
