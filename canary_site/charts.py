"""Charts on the dashboard pages: how a Plotly figure built by an app's ``charts.py`` reaches the
page.

A figure leaves here as JSON that is safe inside ``<script type="application/json">``;
``templates/canary_site/_chart.html`` embeds it beside the element it is drawn in, and
``static/canary/charts.js`` draws it on load and after each htmx swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import plotly.graph_objects as go

# Keeps "</script>" and friends out of the embedded JSON whatever a series is named.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def figure_json(figure: go.Figure) -> str:
    """The figure as JSON safe to embed in a page's ``<script type="application/json">``."""
    return figure.to_json().translate(_SCRIPT_SAFE)


def naive_utc(moments: Sequence[datetime]) -> list[datetime]:
    """Moments for a date axis. plotly.js reads dates as wall-clock time and would mis-handle an
    offset, so they go without one; the axes say UTC."""
    return [moment.replace(tzinfo=None) for moment in moments]


@dataclass(frozen=True)
class Chart:
    """One figure for a page: ``element_id`` of the element it is drawn in, its ``title``,
    ``label`` (what a screen reader says; the title when empty) and ``figure_json``."""

    element_id: str
    title: str
    figure_json: str
    label: str = ""

    @classmethod
    def of(cls, figure: go.Figure, *, element_id: str, title: str, label: str = "") -> Chart:
        return cls(element_id=element_id, title=title, figure_json=figure_json(figure), label=label)
