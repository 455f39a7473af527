"""Plotly figures of the flag pages, built from selector series (no plotting in views), as
`canary_site.charts.Chart` for the chart partial."""

from __future__ import annotations

import plotly.graph_objects as go

from canary_site.charts import Chart, naive_utc
from flags.selectors import ExposureSeries

# Colour-blind-safe (Okabe-Ito), so variants stay apart for everyone.
VARIANT_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]


def exposure_figure(series: ExposureSeries, *, title: str) -> go.Figure:
    """Exposures per variant over time, as stacked bars."""
    figure = go.Figure()
    moments = naive_utc(series.buckets)
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


def exposure_chart(series: ExposureSeries, *, title: str, element_id: str) -> Chart:
    return Chart.of(
        exposure_figure(series, title=title),
        element_id=element_id,
        title=title,
        label="Exposures per variant over time",
    )
