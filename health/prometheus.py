"""A small client of the Prometheus HTTP API (``/api/v1/query``) and the query templates.

Templates use ``{{service}}``, ``{{version}}`` and ``{{window}}``; the first two are escaped for
a PromQL string literal, since they are meant to sit inside label matchers' quotes.
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

PLACEHOLDERS = ("{{service}}", "{{version}}", "{{window}}")


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered with an error."""


def duration(seconds: int) -> str:
    """A PromQL duration: 30s, 5m, 2h."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(template: str, *, service: str, version: str, window_seconds: int) -> str:
    return (
        template.replace("{{service}}", _escape(service))
        .replace("{{version}}", _escape(version))
        .replace("{{window}}", duration(window_seconds))
    )


def query(base_url: str, promql: str, *, at: datetime, timeout: float) -> float | None:
    """The query's value at ``at``: the sum of an instant vector's samples, or a scalar.

    None when the result is empty or not a number (NaN): no data, not zero.
    """
    params = urllib.parse.urlencode({"query": promql, "time": f"{at.timestamp():.3f}"})
    url = f"{base_url}/api/v1/query?{params}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = ""
        with contextlib.suppress(ValueError, OSError):  # the error body is a bonus
            detail = json.loads(error.read()).get("error", "")
        raise PrometheusError(f"HTTP {error.code}: {detail or error.reason}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise PrometheusError(f"could not query {base_url}: {error}") from error
    if body.get("status") != "success":
        raise PrometheusError(str(body.get("error") or "Prometheus answered without success"))
    data = body.get("data") or {}
    kind = data.get("resultType")
    result = data.get("result")
    values: list[float] = []
    if kind == "vector":
        values = [float(item["value"][1]) for item in result or []]
    elif kind == "scalar":
        values = [float(result[1])]
    else:
        raise PrometheusError(f"expected an instant vector or a scalar, got {kind!r}")
    values = [value for value in values if math.isfinite(value)]
    if not values:
        return None
    return math.fsum(values)
