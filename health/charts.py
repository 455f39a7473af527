"""Plotly figures of the health pages, built from selector series (no plotting in views), as
`canary_site.charts.Chart` for the chart partial."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import plotly.graph_objects as go

from canary_site.charts import Chart, naive_utc
from health.selectors import Series

CANARY_COLOUR = "#d9480f"
STABLE_COLOUR = "#1c7ed6"

COMPARISON_CHARTS: tuple[tuple[str, str, str], ...] = (
    ("error_rate", "Error rate", "%"),
    ("latency_p95", "p95 latency", "ms"),
    ("throughput", "Requests per second", "req/s"),
)
"""(metric, title, unit) of the canary-against-stable charts of a service's health page."""


def comparison_figure(
    *,
    title: str,
    unit: str,
    canary: Series | None,
    stable: Series | None,
) -> go.Figure:
    """Canary against stable for one metric, as lines over time."""
    figure = go.Figure()
    for label, series, colour in (
        ("stable", stable, STABLE_COLOUR),
        ("canary", canary, CANARY_COLOUR),
    ):
        if series is None:
            continue
        figure.add_trace(
            go.Scatter(
                x=naive_utc(series.timestamps),
                y=series.values,
                name=f"{label} {series.version}",
                mode="lines+markers",
                marker={"size": 4},
                line={"color": colour, "width": 2},
                connectgaps=False,
                hovertemplate=f"%{{y:.3g}} {unit}<extra>{label} {series.version}</extra>",
            )
        )
    # The title is the page's <figcaption>; the legend sits above the plot, out of the axes' way.
    figure.update_layout(
        height=240,
        margin={"l": 50, "r": 10, "t": 30, "b": 30},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        xaxis={"type": "date", "hoverformat": "%H:%M:%S UTC"},
        yaxis={"title": {"text": unit}, "rangemode": "tozero"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        uirevision=title,  # keeps zoom and legend choices across the 5-second refreshes
    )
    return figure


def comparison_charts(
    *,
    series: Mapping[tuple[str, str], Series],
    canary_version: str,
    stable_version: str | None,
    id_prefix: str = "chart",
    metrics: Collection[str] | None = None,
) -> list[Chart]:
    """The service page's charts: error rate, p95 latency and requests per second (those of
    ``metrics`` only, when given)."""
    charts: list[Chart] = []
    versions = f"canary {canary_version} against stable {stable_version or '(none)'}"
    for metric, title, unit in COMPARISON_CHARTS:
        if metrics is not None and metric not in metrics:
            continue
        figure = comparison_figure(
            title=title,
            unit=unit,
            canary=series.get((canary_version, metric)),
            stable=series.get((stable_version, metric)) if stable_version else None,
        )
        charts.append(
            Chart.of(
                figure,
                element_id=f"{id_prefix}-{metric.replace('_', '-')}",
                title=title,
                label=f"{title}: {versions}",
            )
        )
    return charts
