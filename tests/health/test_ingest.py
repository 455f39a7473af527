"""Pushed samples into deltas: the pure parsing of `health.ingest`, without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from health.histogram import Histogram
from health.ingest import SampleError, parse_samples

NOW = datetime(2026, 5, 4, 12, 0, 5, tzinfo=UTC)
STAMP = NOW.timestamp() - 30


def parse(samples: list[Any]) -> list[Any]:
    return parse_samples(
        samples, resolution=10, now=NOW, max_future_seconds=300, max_age_seconds=86_400
    )


def sample(**fields: Any) -> dict[str, Any]:
    return {
        "service": "checkout",
        "version": "2.0",
        "metric": "latency_ms",
        "value": 80.0,
        "timestamp": STAMP,
        **fields,
    }


def refused_field(samples: list[Any]) -> str:
    with pytest.raises(SampleError) as refused:
        parse(samples)
    return refused.value.field


# --------------------------------------------------------------------------- repeated keys


def test_parse__many_samples_of_one_series_and_time__add_into_one_delta() -> None:
    samples = [sample(value=float(v)) for v in (5, 80, 81, 2_000)]
    samples += [sample(metric="requests", value=4), sample(metric="errors", value=1)]

    (delta,) = parse(samples)

    assert (delta.requests, delta.errors) == (4, 1)
    assert Histogram(delta.latency) == Histogram.from_values([5.0, 80.0, 81.0, 2_000.0])


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"value": -1.0}, "samples[3].value"),
        ({"value": float("nan")}, "samples[3].value"),
        ({"value": True}, "samples[3].value"),
        ({"count": 0}, "samples[3].count"),
        ({"colour": "red"}, "samples[3].colour"),
        ({"metric": "requests", "value": 2.5}, "samples[3].value"),
        ({"metric": "requests", "count": 2}, "samples[3].count"),
    ],
    ids=["negative", "nan", "bool", "count", "unknown-field", "fraction", "count-on-requests"],
)
def test_parse__a_bad_sample_after_good_ones_of_the_same_key__is_named(
    bad: dict[str, Any], field: str
) -> None:
    # Samples 0-2 are good and share the bad one's service, version, metric and time, so its
    # key is known by then: what is still checked must still name the field.
    metric = bad.get("metric", "latency_ms")
    good = [sample(metric=metric, value=1) for _ in range(3)]

    assert refused_field([*good, sample(**bad)]) == field


def test_parse__a_value_that_is_no_number_and_a_bad_timestamp__names_the_value_first() -> None:
    bad = sample(value="fast", timestamp="not a time")

    assert refused_field([sample(), bad]) == "samples[1].value"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"service": ["checkout"]}, "samples[1].service"),
        ({"version": {"v": 2}}, "samples[1].version"),
        ({"metric": ["requests"]}, "samples[1].metric"),
        ({"timestamp": [STAMP]}, "samples[1].timestamp"),
    ],
    ids=["service", "version", "metric", "timestamp"],
)
def test_parse__a_field_of_the_wrong_type__is_named_not_a_crash(
    bad: dict[str, Any], field: str
) -> None:
    assert refused_field([sample(), sample(**bad)]) == field


def test_parse__a_sample_that_is_not_an_object__is_named() -> None:
    assert refused_field([sample(), ["checkout"]]) == "samples[1]"


def test_parse__the_same_instant_as_a_number_and_as_iso_text__lands_in_one_bucket() -> None:
    iso = datetime.fromtimestamp(STAMP, tz=UTC).isoformat()

    (delta,) = parse(
        [sample(metric="requests", value=1), sample(metric="requests", value=2, timestamp=iso)]
    )

    assert delta.requests == 3


# --------------------------------------------------------------------------- against a reference

names = st.sampled_from(["checkout", "search"])
versions = st.sampled_from(["1.0", "2.0"])
metrics = st.sampled_from(["requests", "errors", "latency_ms", "custom:depth"])
offsets = st.sampled_from([-35.0, -30.0, -21.5, -9.0])


@st.composite
def samples_(draw: Any) -> dict[str, Any]:
    metric = draw(metrics)
    if metric in ("requests", "errors"):
        value: float = draw(st.integers(min_value=0, max_value=1_000))
        count = None
    else:
        value = draw(st.floats(min_value=0.0, max_value=70_000.0, allow_nan=False))
        count = draw(st.none() | st.integers(min_value=1, max_value=5))
    item = {
        "service": draw(names),
        "version": draw(versions),
        "metric": metric,
        "value": value,
        "timestamp": NOW.timestamp() + draw(offsets),
    }
    if count is not None:
        item["count"] = count
    return item


def reference(samples: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The same aggregation written plainly, one sample at a time."""
    found: dict[tuple[Any, ...], list[Any]] = {}
    for item in samples:
        start = item["timestamp"] - item["timestamp"] % 10
        metric = item["metric"]
        series = metric if metric.startswith("custom:") else "requests"
        key = (item["service"], item["version"], series, start)
        row = found.setdefault(key, [0, 0, Histogram(), 0.0, 0, None, None])
        count = item.get("count", 1)
        if metric == "requests":
            row[0] += item["value"]
        elif metric == "errors":
            row[1] += item["value"]
        elif metric == "latency_ms":
            row[2].record(item["value"], count)
        else:
            row[3] += item["value"] * count
            row[4] += count
            row[5] = item["value"] if row[5] is None else min(row[5], item["value"])
            row[6] = item["value"] if row[6] is None else max(row[6], item["value"])
    return {
        key: (r[0], r[1], tuple(r[2].counts) if r[2].total else None, r[3], r[4], r[5], r[6])
        for key, r in found.items()
    }


@settings(max_examples=200, deadline=None)
@given(st.lists(samples_(), max_size=60))
def test_parse__adds_up_like_a_plain_sample_by_sample_reference(
    samples: list[dict[str, Any]],
) -> None:
    parsed = {
        (d.service, d.version, d.metric, d.start.timestamp()): (
            d.requests,
            d.errors,
            tuple(d.latency) if d.latency is not None else None,
            d.value_sum,
            d.value_count,
            d.value_min,
            d.value_max,
        )
        for d in parse(samples)
    }

    expected = reference(samples)
    assert parsed.keys() == expected.keys()
    for key, row in expected.items():
        assert parsed[key][:3] == row[:3]
        assert parsed[key][3] == pytest.approx(row[3])
        assert parsed[key][4:] == row[4:]
