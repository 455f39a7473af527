"""Plotly figures of the health pages, built from selector series (no plotting in views).

Each figure leaves here as JSON that is safe inside ``<script type="application/json">``;
``static/canary/charts.js`` draws it after each htmx swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import plotly.graph_objects as go

from health.selectors import Series

CANARY_COLOUR = "#d9480f"
STABLE_COLOUR = "#1c7ed6"

COMPARISON_CHARTS: tuple[tuple[str, str, str], ...] = (
    ("error_rate", "Error rate", "%"),
    ("latency_p95", "p95 latency", "ms"),
    ("throughput", "Requests per second", "req/s"),
)
"""(metric, title, unit) of the canary-against-stable charts of a service's health page."""

# Keeps "</script>" and friends out of the embedded JSON whatever a series is named.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


@dataclass(frozen=True)
class Chart:
    """One figure for a page: ``element_id`` of its div and ``figure_json`` to embed."""

    element_id: str
    metric: str
    title: str
    figure_json: str


def _naive_utc(moments: Sequence[datetime]) -> list[datetime]:
    # plotly.js reads dates as wall-clock time and would mis-handle an offset; axes say UTC.
    return [moment.replace(tzinfo=None) for moment in moments]


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
                x=_naive_utc(series.timestamps),
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


def figure_json(figure: go.Figure) -> str:
    """The figure as JSON safe to embed in a page's ``<script type="application/json">``."""
    return figure.to_json().translate(_SCRIPT_SAFE)


def comparison_charts(
    *,
    series: Mapping[tuple[str, str], Series],
    canary_version: str,
    stable_version: str | None,
    id_prefix: str = "chart",
) -> list[Chart]:
    """The service page's charts: error rate, p95 latency and requests per second."""
    charts: list[Chart] = []
    for metric, title, unit in COMPARISON_CHARTS:
        figure = comparison_figure(
            title=title,
            unit=unit,
            canary=series.get((canary_version, metric)),
            stable=series.get((stable_version, metric)) if stable_version else None,
        )
        charts.append(
            Chart(
                element_id=f"{id_prefix}-{metric.replace('_', '-')}",
                metric=metric,
                title=title,
                figure_json=figure_json(figure),
            )
        )
    return charts
