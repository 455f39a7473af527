"""The observation log of a phase (`deployments.observing`): pure, no database.

The tick extends and trims a thousand logs on every run, so a log in the shape the tick leaves
it (whole seconds, first offset 0, in time order) takes a short way; these tests hold the short
way to the general one, which any other log takes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from deployments import observing
from deployments.config import Criterion, Operator, PhaseConfig, RollbackThresholds
from deployments.lifecycle import Observation, Series

T0 = 1_735_732_800  # 2025-01-01 12:00:00 UTC


def regular_log(offsets: list[int], points: dict[str, list[float | None]]) -> dict[str, Any]:
    return {"t0": T0 + offsets[0], "t": [o - offsets[0] for o in offsets], "m": points}


def same_log_irregular(log: dict[str, Any]) -> dict[str, Any]:
    """The same observations with a float origin, which only the general way reads."""
    return {**log, "t0": float(log["t0"])}


values = st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False))


@st.composite
def logs(draw: Any) -> dict[str, Any]:
    offsets = sorted(draw(st.sets(st.integers(min_value=0, max_value=3_600), min_size=1)))
    names = draw(
        st.lists(
            st.sampled_from(["availability", "error_rate", "latency_p95"]), min_size=1, unique=True
        )
    )
    return regular_log(offsets, {name: [draw(values) for _ in offsets] for name in names})


@settings(max_examples=300, deadline=None)
@given(
    log=logs(),
    second=st.integers(min_value=-100, max_value=3_800),
    new=st.dictionaries(st.sampled_from(["availability", "error_rate", "latency_p99"]), values),
)
def test_record__of_a_regular_log__is_what_the_general_way_records(
    log: dict[str, Any], second: int, new: dict[str, float | None]
) -> None:
    at = datetime.fromtimestamp(T0 + second, tz=UTC)
    quick = observing.record(log, at=at, values=new)
    general = observing.record(same_log_irregular(log), at=at, values=new)
    assert quick == general
    assert quick[0]["t"] == general[0]["t"] and type(quick[0]["t0"]) is type(general[0]["t0"])


@settings(max_examples=300, deadline=None)
@given(
    log=logs(),
    keep_seconds=st.integers(min_value=0, max_value=4_000),
    since=st.integers(min_value=-100, max_value=3_800),
)
def test_trim__of_a_regular_log__is_what_the_general_way_keeps(
    log: dict[str, Any], keep_seconds: int, since: int
) -> None:
    keep = timedelta(seconds=keep_seconds)
    start = datetime.fromtimestamp(T0 + since, tz=UTC)
    quick = observing.trim(log, keep=keep, since=start)
    general = observing.trim(same_log_irregular(log), keep=keep, since=start)
    assert quick == general
    assert type(quick["t0"]) is type(general["t0"])


def test_record__leaves_the_log_it_was_given_unchanged() -> None:
    log = regular_log([0, 10, 20], {"availability": [99.0, 99.5, None]})
    before = {"t0": log["t0"], "t": list(log["t"]), "m": {"availability": [99.0, 99.5, None]}}
    at = datetime.fromtimestamp(T0 + 30, tz=UTC)
    grown, changed = observing.record(log, at=at, values={"availability": 98.123456})
    assert changed
    assert grown["t"] == [0, 10, 20, 30]
    assert grown["m"]["availability"] == [99.0, 99.5, None, 98.1235]
    assert log == before
    again, changed = observing.record(grown, at=at, values={"availability": 10.0})
    assert not changed
    assert again == grown


PHASE = PhaseConfig(
    "p",
    "p",
    5,
    60_000,
    success_criteria=(Criterion("availability", Operator.GREATER_THAN, 99, 30_000),),
    rollback_thresholds=RollbackThresholds(error_rate=5, latency_p95=1000),
)


def test_observations__read_the_log_as_the_judgement_reads_it() -> None:
    log = {
        "t0": T0,
        "t": [0, 10, 20.5],
        "m": {"availability": [99.5, None, 100], "error_rate": [1, 2, 3.25], "x": [1, 2, 3]},
    }
    read = observing.observations(log, PHASE)
    assert set(read) == {"availability", "error_rate", "latency_p95"}
    assert all(isinstance(series, Series) for series in read.values())

    def moment(offset: float) -> datetime:
        return datetime.fromtimestamp(T0 + offset, tz=UTC)

    assert list(read["availability"]) == [
        Observation(moment(0), 99.5),
        Observation(moment(10), None),
        Observation(moment(20.5), 100.0),
    ]
    # A metric only a threshold watches: its latest observation is all a breach looks at.
    assert list(read["error_rate"]) == [Observation(moment(20.5), 3.25)]
    assert list(read["latency_p95"]) == []
