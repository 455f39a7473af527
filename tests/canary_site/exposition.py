"""Reading Prometheus metrics in tests: a collector's samples, a page's samples, one value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(families: Iterable[Any]) -> Samples:
    """Every sample of these metric families (a collector's ``collect()``), by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def page_samples(text: str) -> Samples:
    """Every sample of an exposition page."""
    return samples_of(text_string_to_metric_families(text))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample of ``name`` with exactly these labels, or None when there is none."""
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _labels in samples}
