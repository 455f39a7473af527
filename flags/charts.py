"""Plotly figures of the flag pages, built from selector series (no plotting in views).

Each figure leaves here as JSON that is safe inside ``<script type="application/json">``;
``static/canary/charts.js`` draws it after each htmx swap.
"""

from __future__ import annotations

import plotly.graph_objects as go

from flags.selectors import ExposureSeries

# Colour-blind-safe (Okabe-Ito), so variants stay apart for everyone.
VARIANT_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]

# Keeps "</script>" and friends out of the embedded JSON whatever a variant is named.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def exposure_figure(series: ExposureSeries, *, title: str) -> go.Figure:
    """Exposures per variant over time, as stacked bars."""
    figure = go.Figure()
    # plotly.js reads dates as wall-clock time and would mis-handle an offset; the axis says UTC.
    moments = [moment.replace(tzinfo=None) for moment in series.buckets]
    for index, (variant, counts) in enumerate(series.counts.items()):
        figure.add_trace(
            go.Bar(
                x=moments,
                y=counts,
                name=variant,
                marker_color=VARIANT_COLOURS[index % len(VARIANT_COLOURS)],
                hovertemplate=f"{variant}: %{{y}}<extra></extra>",
            )
        )
    figure.update_layout(
        title={"text": title, "font": {"size": 14}},
        barmode="stack",
        bargap=0.1,
        margin={"l": 48, "r": 16, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.2},
        xaxis={"title": {"text": "time (UTC)"}},
        yaxis={"title": {"text": "evaluations"}, "rangemode": "tozero"},
        height=300,
        template="plotly_white",
    )
    return figure


def exposure_figure_json(series: ExposureSeries, *, title: str) -> str:
    """The figure as JSON to embed in a page."""
    return exposure_figure(series, title=title).to_json().translate(_SCRIPT_SAFE)
