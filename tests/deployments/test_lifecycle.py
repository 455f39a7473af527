"""Tests of the deployment lifecycle: the transition table and the phase-progress rule."""

from __future__ import annotations

import itertools
import json
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.config import Criterion, Operator, PhaseConfig, RollbackThresholds
from deployments.lifecycle import (
    ACTIVE_STATUSES,
    PERSON_ACTIONS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Action,
    CriterionState,
    Evidence,
    Observation,
    Outcome,
    Sample,
    Series,
    Status,
    TransitionRefused,
    allowed_actions,
    can,
    is_terminal,
    person_actions,
    phase_judgement,
    transition,
)

S = Status
A = Action

# The table of DESIGN.md ("Deployment lifecycle") and issue 6, written out independently of
# the code so that a change to either shows here.
EXPECTED: dict[Action, tuple[set[Status], Status]] = {
    A.START: ({S.PENDING}, S.RUNNING),
    A.PAUSE: ({S.RUNNING}, S.PAUSED),
    A.RESUME: ({S.PAUSED}, S.RUNNING),
    A.PROMOTE: ({S.RUNNING, S.PAUSED}, S.RUNNING),
    A.PROMOTE_FULL: ({S.RUNNING, S.PAUSED}, S.SUCCEEDED),
    A.SUCCEED: ({S.RUNNING}, S.SUCCEEDED),
    A.ROLLBACK: ({S.RUNNING, S.PAUSED}, S.ROLLING_BACK),
    A.FINISH_ROLLBACK: ({S.ROLLING_BACK}, S.ROLLED_BACK),
    A.STEP_ROLLBACK: ({S.ROLLING_BACK}, S.ROLLING_BACK),
    A.FAIL: ({S.RUNNING, S.PAUSED, S.ROLLING_BACK}, S.FAILED),
    A.ABORT: ({S.PENDING, S.RUNNING, S.PAUSED}, S.ABORTED),
    A.RETRY: ({S.ROLLED_BACK, S.FAILED, S.ABORTED}, S.PENDING),
}

PAIRS = list(itertools.product(Status, Action))
ALLOWED = [(status, action) for status, action in PAIRS if status in EXPECTED[action][0]]
REFUSED = [(status, action) for status, action in PAIRS if status not in EXPECTED[action][0]]


def pair_id(pair: tuple[Status, Action]) -> str:
    status, action = pair
    return f"{action}-when-{status}"


# --------------------------------------------------------------------------- the table


def test_table__covers_every_action_once() -> None:
    assert set(TRANSITIONS) == set(Action)
    assert {a: (set(t.sources), t.target) for a, t in TRANSITIONS.items()} == EXPECTED


def test_table__has_every_pair_either_allowed_or_refused() -> None:
    assert len(ALLOWED) + len(REFUSED) == len(Status) * len(Action) == 96
    assert len(ALLOWED) == 21


@pytest.mark.parametrize(("status", "action"), ALLOWED, ids=[pair_id(p) for p in ALLOWED])
def test_action__when_allowed__moves_to_its_target(status: Status, action: Action) -> None:
    assert transition(status, action) == EXPECTED[action][1]
    assert can(status, action)
    assert action in allowed_actions(status)


@pytest.mark.parametrize(("status", "action"), REFUSED, ids=[pair_id(p) for p in REFUSED])
def test_action__when_not_allowed__is_refused_with_a_sentence(
    status: Status, action: Action
) -> None:
    with pytest.raises(TransitionRefused) as refused:
        transition(status, action)
    error = refused.value
    assert (error.action, error.current) == (action, status)
    assert str(error) == error.reason
    assert error.reason.startswith(("A ", "An "))
    assert " cannot " in error.reason
    assert ": " in error.reason
    assert error.reason.endswith(".")
    assert not can(status, action)
    assert action not in allowed_actions(status)


def reason_for(status: Status | str, action: Action | str) -> str:
    with pytest.raises(TransitionRefused) as refused:
        transition(status, action)
    return refused.value.reason


def test_pause__when_succeeded__is_refused_because_it_has_finished() -> None:
    assert reason_for("succeeded", "pause") == (
        "A succeeded deployment cannot be paused: it has finished."
    )


def test_start__when_running__is_refused_because_it_is_already_running() -> None:
    assert reason_for(S.RUNNING, A.START) == (
        "A running deployment cannot be started: it is already running."
    )


def test_resume__when_running__is_refused_because_it_is_not_paused() -> None:
    assert reason_for(S.RUNNING, A.RESUME) == (
        "A running deployment cannot be resumed: it is not paused."
    )


def test_abort__when_rolling_back__is_refused_because_a_rollback_is_under_way() -> None:
    assert reason_for(S.ROLLING_BACK, A.ABORT) == (
        "A deployment that is rolling back cannot be aborted: a rollback is under way; "
        "wait until it finishes or fails."
    )


def test_retry__when_succeeded__is_refused_and_points_to_a_new_deployment() -> None:
    assert reason_for(S.SUCCEEDED, A.RETRY) == (
        "A succeeded deployment cannot be retried: it has finished and its canary is now the "
        "stable version; create a new deployment."
    )


def test_start__when_failed__is_refused_and_points_to_retry() -> None:
    assert reason_for(S.FAILED, A.START) == (
        "A failed deployment cannot be started: it has ended; retry it to begin again."
    )


def test_pause__when_pending__is_refused_because_it_has_not_started() -> None:
    assert reason_for(S.PENDING, A.PAUSE) == (
        "A pending deployment cannot be paused: it has not started."
    )


def test_finish_rollback__when_running__is_refused_because_it_is_not_rolling_back() -> None:
    assert reason_for(S.RUNNING, A.FINISH_ROLLBACK) == (
        "A running deployment cannot finish a rollback: it is not rolling back."
    )


def test_succeed__when_paused__is_refused_and_points_to_resume_or_promote_fully() -> None:
    assert reason_for(S.PAUSED, A.SUCCEED) == (
        "A paused deployment cannot be marked succeeded: it is paused; resume it, or promote "
        "it fully."
    )


@pytest.mark.parametrize("status", [S.ROLLED_BACK, S.FAILED, S.ABORTED])
def test_retry__when_ended_without_success__returns_to_pending(status: Status) -> None:
    assert transition(status, A.RETRY) == S.PENDING


def test_promote__when_paused__resumes_at_the_next_phase() -> None:
    assert transition(S.PAUSED, A.PROMOTE) == S.RUNNING


def test_promote_full__when_paused__succeeds() -> None:
    assert transition(S.PAUSED, A.PROMOTE_FULL) == S.SUCCEEDED


def test_unknown_status__is_a_programming_error_not_a_refusal() -> None:
    with pytest.raises(ValueError, match="unknown deployment status 'done'"):
        transition("done", "start")
    with pytest.raises(ValueError, match="unknown deployment action 'explode'"):
        transition("running", "explode")


def test_allowed_actions__follow_the_order_of_the_action_enum() -> None:
    assert allowed_actions(S.RUNNING) == [
        A.PAUSE,
        A.PROMOTE,
        A.PROMOTE_FULL,
        A.SUCCEED,
        A.ROLLBACK,
        A.FAIL,
        A.ABORT,
    ]
    assert allowed_actions(S.SUCCEEDED) == []


def test_person_actions__are_the_tables_less_the_ticks_own_verbs() -> None:
    assert set(PERSON_ACTIONS) == set(Action) - {
        A.SUCCEED,
        A.ROLLBACK,
        A.FINISH_ROLLBACK,
        A.STEP_ROLLBACK,
        A.FAIL,
    }
    assert person_actions(S.RUNNING) == [A.PAUSE, A.PROMOTE, A.PROMOTE_FULL, A.ABORT]
    assert person_actions(S.ROLLING_BACK) == []
    for status in Status:
        assert set(person_actions(status)) == set(allowed_actions(status)) & set(PERSON_ACTIONS)


@pytest.mark.parametrize("status", list(Status))
def test_is_terminal__only_for_finished_statuses(status: Status) -> None:
    expected = status in {S.SUCCEEDED, S.ROLLED_BACK, S.FAILED, S.ABORTED}
    assert is_terminal(status) is expected
    assert is_terminal(str(status)) is expected


def test_terminal_statuses__are_left_only_by_retry() -> None:
    for status in TERMINAL_STATUSES:
        assert set(allowed_actions(status)) <= {A.RETRY}
    assert allowed_actions(S.SUCCEEDED) == []


def test_active_statuses__are_neither_pending_nor_terminal() -> None:
    assert ACTIVE_STATUSES.isdisjoint(TERMINAL_STATUSES)
    assert S.PENDING not in ACTIVE_STATUSES
    assert ACTIVE_STATUSES | TERMINAL_STATUSES | {S.PENDING} == set(Status)


def test_every_status__is_reachable_from_pending() -> None:
    seen = {S.PENDING}
    queue = deque([S.PENDING])
    while queue:
        status = queue.popleft()
        for action in allowed_actions(status):
            target = transition(status, action)
            if target not in seen:
                seen.add(target)
                queue.append(target)
    assert seen == set(Status)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(list(Action)), max_size=30))
def test_any_sequence_of_actions__moves_only_along_the_table(actions: list[Action]) -> None:
    status = S.PENDING
    for action in actions:
        try:
            after = transition(status, action)
        except TransitionRefused:
            assert action not in allowed_actions(status)
            continue
        assert (status, after) == (status, EXPECTED[action][1])
        # A succeeded deployment is the end of the road: its canary is the stable version.
        assert status != S.SUCCEEDED
        status = after


# --------------------------------------------------------------------------- phase progress

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def series(values: dict[float, float | None]) -> list[Observation]:
    return [Observation(at(second), value) for second, value in values.items()]


def every(step: float, start: float, end: float, value: float | None) -> dict[float, float | None]:
    """Observations every ``step`` seconds from ``start`` to ``end`` inclusive."""
    count = int((end - start) // step) + 1
    return {start + i * step: value for i in range(count)}


AVAILABILITY_HELD_3_MIN = Criterion("availability", Operator.GREATER_THAN, 99, 180_000)

PHASE = PhaseConfig(
    id="phase-1",
    name="5% traffic",
    traffic_percentage=5,
    duration_ms=300_000,
    success_criteria=(AVAILABILITY_HELD_3_MIN,),
    rollback_thresholds=RollbackThresholds(error_rate=5, latency_p95=1000, availability=95),
)


def healthy(until: float, start: float = 0) -> dict[str, list[Observation]]:
    return {
        "availability": series(every(5, start, until, 99.9)),
        "error_rate": series(every(5, start, until, 0.1)),
        "latency_p95": series(every(5, start, until, 120.0)),
    }


def own(seconds: float, *, requests: int = 500, errors: int = 0, healthy: bool = True) -> Evidence:
    """The latest health check at ``seconds``: the phase's own traffic, judged healthy."""
    return Evidence(
        at=at(seconds),
        windows={"fast": Sample(50, 0, 5.0), "current": Sample(100, 0, 30.0)},
        phase=Sample(requests, errors, seconds),
        healthy=healthy,
        verdict="pass" if healthy else "critical",
    )


def test_phase__before_its_minimum_duration__waits_with_the_time_left() -> None:
    judgement = phase_judgement(
        PHASE, started_at=T0, now=at(240), observations=healthy(until=240), evidence=own(240)
    )
    assert judgement.outcome == Outcome.WAIT
    assert judgement.time_left_ms == 60_000
    assert judgement.criteria[0].state == CriterionState.HELD
    assert judgement.reason == "Wait: 1m left of the phase's minimum 5m."


def test_phase__after_its_duration_with_every_criterion_held__advances() -> None:
    judgement = phase_judgement(
        PHASE, started_at=T0, now=at(300), observations=healthy(until=300), evidence=own(300)
    )
    assert judgement.outcome == Outcome.ADVANCE
    assert judgement.time_left_ms == 0
    assert judgement.breaches == ()
    assert judgement.reason == (
        "Advance: the phase has run its minimum 5m on its own canary traffic (0 errors in 500 "
        "requests, 0%, 95% interval 0-0.76%), judged healthy, and every success criterion "
        "held: availability > 99 held for 5m (needs 3m)."
    )


def test_phase__with_a_criterion_holding_too_briefly__waits_and_says_how_long_to_go() -> None:
    observations = healthy(until=300)
    observations["availability"] = series(
        {**every(5, 0, 200, 99.9), 205: 98.0, **every(5, 210, 300, 99.9)}
    )
    judgement = phase_judgement(
        PHASE, started_at=T0, now=at(300), observations=observations, evidence=own(300)
    )
    assert judgement.outcome == Outcome.WAIT
    progress = judgement.criteria[0]
    assert progress.state == CriterionState.HOLDING
    assert progress.held_ms == 90_000
    assert progress.remaining_ms == 90_000
    assert judgement.earliest_advance_ms == 90_000
    assert judgement.reason == (
        "Wait: the phase's minimum 5m has passed, but availability > 99 has held for 1m 30s "
        "of 3m (1m 30s to go)."
    )


def test_phase__without_any_observation__waits_for_data_even_after_its_duration() -> None:
    judgement = phase_judgement(PHASE, started_at=T0, now=at(3600), observations={})
    assert judgement.outcome == Outcome.WAIT
    assert judgement.criteria[0].state == CriterionState.NO_DATA
    assert judgement.without_data == judgement.criteria
    assert "availability > 99 has no data yet in this phase" in judgement.reason


def test_phase__whose_latest_window_was_empty__waits_for_data() -> None:
    observations = healthy(until=300)
    observations["availability"].append(Observation(at(305), None))
    judgement = phase_judgement(PHASE, started_at=T0, now=at(305), observations=observations)
    assert judgement.outcome == Outcome.WAIT
    assert judgement.criteria[0].state == CriterionState.NO_DATA
    assert "the latest window was empty" in judgement.criteria[0].detail


def test_phase__whose_data_stopped_arriving__does_not_advance_on_stale_data() -> None:
    judgement = phase_judgement(PHASE, started_at=T0, now=at(600), observations=healthy(until=300))
    assert judgement.outcome == Outcome.WAIT
    assert judgement.criteria[0].state == CriterionState.NO_DATA
    assert "its latest is 5m old" in judgement.reason


def test_criterion__with_an_empty_window_in_its_run__restarts_its_hold() -> None:
    observations = healthy(until=300)
    observations["availability"] = series(
        {**every(5, 0, 200, 99.9), 205: None, **every(5, 210, 300, 99.9)}
    )
    judgement = phase_judgement(PHASE, started_at=T0, now=at(300), observations=observations)
    assert judgement.outcome == Outcome.WAIT
    assert judgement.criteria[0].held_ms == 90_000


def test_criterion__with_a_gap_longer_than_max_gap__restarts_its_hold() -> None:
    observations = healthy(until=300)
    observations["availability"] = series({**every(5, 0, 100, 99.9), **every(5, 200, 300, 99.9)})
    judgement = phase_judgement(PHASE, started_at=T0, now=at(300), observations=observations)
    assert judgement.criteria[0].held_ms == 100_000
    relaxed = phase_judgement(
        PHASE,
        started_at=T0,
        now=at(300),
        observations=observations,
        max_gap=None,
        evidence=own(300),
    )
    assert relaxed.outcome == Outcome.ADVANCE


def test_criterion__failing_now__says_so_with_its_latest_value() -> None:
    observations = healthy(until=300)
    observations["availability"][-1] = Observation(at(300), 97.5)
    judgement = phase_judgement(PHASE, started_at=T0, now=at(300), observations=observations)
    assert judgement.outcome == Outcome.WAIT
    assert judgement.criteria[0].state == CriterionState.FAILING
    assert "availability > 99 is not met (latest 97.5)" in judgement.reason


def test_criterion__with_no_hold__needs_one_passing_observation() -> None:
    phase = PhaseConfig(
        "p",
        "p",
        5,
        60_000,
        success_criteria=(Criterion("error_rate", Operator.LESS_THAN, 1, 0),),
    )
    judgement = phase_judgement(
        phase,
        started_at=T0,
        now=at(60),
        observations={"error_rate": [Observation(at(60), 0.2)]},
        evidence=own(60),
    )
    assert judgement.outcome == Outcome.ADVANCE


def test_criterion__on_response_time__reads_observations_under_that_name() -> None:
    phase = PhaseConfig(
        "p",
        "p",
        5,
        0,
        success_criteria=(Criterion("response_time", Operator.LESS_THAN, 200, 10_000),),
    )
    judgement = phase_judgement(
        phase,
        started_at=T0,
        now=at(10),
        observations={"response_time": series(every(5, 0, 10, 150.0))},
        evidence=own(10),
    )
    assert judgement.outcome == Outcome.ADVANCE


def test_criterion__equals__passes_only_at_its_threshold() -> None:
    phase = PhaseConfig(
        "p", "p", 5, 0, success_criteria=(Criterion("error_rate", Operator.EQUALS, 0, 0),)
    )
    zero = phase_judgement(
        phase,
        started_at=T0,
        now=at(1),
        observations={"error_rate": series({1: 0.0})},
        evidence=own(1),
    )
    some = phase_judgement(
        phase,
        started_at=T0,
        now=at(1),
        observations={"error_rate": series({1: 0.01})},
        evidence=own(1),
    )
    assert (zero.outcome, some.outcome) == (Outcome.ADVANCE, Outcome.WAIT)


def test_phase__without_success_criteria__advances_on_its_own_healthy_traffic_only() -> None:
    phase = PhaseConfig("p", "p", 5, 60_000)

    on_time_alone = phase_judgement(phase, started_at=T0, now=at(60), observations={})
    on_evidence = phase_judgement(
        phase, started_at=T0, now=at(60), observations={}, evidence=own(60, requests=120)
    )

    assert on_time_alone.outcome == Outcome.WAIT
    assert on_time_alone.reason == (
        "Wait: the phase's minimum 1m has passed, but no health check of the canary has "
        "judged this phase yet."
    )
    assert on_evidence.outcome == Outcome.ADVANCE
    assert on_evidence.reason == (
        "Advance: the phase has run its minimum 1m on its own canary traffic (0 errors in 120 "
        "requests, 0%, 95% interval 0-3.1%), judged healthy, and it has no success criteria."
    )


@pytest.mark.parametrize(
    ("metric", "value", "threshold"),
    [
        ("error_rate", 7.5, "errorRate"),
        ("latency_p95", 1500.0, "latencyP95"),
        ("availability", 90.0, "availability"),
    ],
)
def test_breach__of_any_rollback_threshold__rolls_back_with_its_evidence(
    metric: str, value: float, threshold: str
) -> None:
    observations = healthy(until=120)
    observations[metric].append(Observation(at(125), value))
    judgement = phase_judgement(PHASE, started_at=T0, now=at(125), observations=observations)
    assert judgement.outcome == Outcome.BREACH
    (breach,) = judgement.breaches
    assert (breach.threshold, breach.metric, breach.observed, breach.at) == (
        threshold,
        metric,
        value,
        at(125),
    )
    side = "below" if metric == "availability" else "above"
    assert judgement.reason.startswith(f"Roll back: {metric} {value:g} is {side} the {threshold}")


def test_breach__outranks_a_phase_ready_to_advance() -> None:
    observations = healthy(until=300)
    observations["error_rate"][-1] = Observation(at(300), 50.0)
    judgement = phase_judgement(PHASE, started_at=T0, now=at(300), observations=observations)
    assert judgement.outcome == Outcome.BREACH
    assert judgement.criteria[0].state == CriterionState.HELD


def test_value_equal_to_a_rollback_threshold__is_not_a_breach() -> None:
    observations = healthy(until=120)
    observations["error_rate"].append(Observation(at(125), 5.0))
    observations["availability"].append(Observation(at(125), 95.0))
    judgement = phase_judgement(PHASE, started_at=T0, now=at(125), observations=observations)
    assert judgement.outcome == Outcome.WAIT


def test_empty_window__never_breaches() -> None:
    observations = {"error_rate": series({100: 50.0, 105: None})}
    judgement = phase_judgement(PHASE, started_at=T0, now=at(105), observations=observations)
    assert judgement.breaches == ()


def test_stale_bad_news__still_breaches() -> None:
    observations = {"error_rate": series({100: 50.0})}
    judgement = phase_judgement(PHASE, started_at=T0, now=at(1000), observations=observations)
    assert judgement.outcome == Outcome.BREACH


def test_observations_outside_the_phase__are_ignored() -> None:
    observations = healthy(until=300, start=-600)
    observations["error_rate"].append(Observation(at(-10), 90.0))
    observations["error_rate"].append(Observation(at(400), 90.0))
    judgement = phase_judgement(
        PHASE, started_at=T0, now=at(300), observations=observations, evidence=own(300)
    )
    assert judgement.outcome == Outcome.ADVANCE
    assert judgement.criteria[0].held_ms == 300_000


def test_observations__may_arrive_in_any_order() -> None:
    observations = {name: list(reversed(values)) for name, values in healthy(until=300).items()}
    judgement = phase_judgement(
        PHASE, started_at=T0, now=at(300), observations=observations, evidence=own(300)
    )
    assert judgement.outcome == Outcome.ADVANCE


def test_judgement__is_evidence_that_serialises_to_json() -> None:
    observations = healthy(until=120)
    observations["error_rate"].append(Observation(at(125), 7.5))
    data = json.loads(
        json.dumps(
            phase_judgement(PHASE, started_at=T0, now=at(125), observations=observations).to_dict()
        )
    )
    assert data["outcome"] == "breach"
    assert data["breaches"][0] == {
        "threshold": "errorRate",
        "metric": "error_rate",
        "limit": 5,
        "observed": 7.5,
        "at": "2025-01-01T12:02:05+00:00",
        "window": "",
        "sample": None,
    }
    assert data["criteria"][0]["state"] == "holding"
    assert set(data) == {
        "outcome",
        "reason",
        "elapsedMs",
        "timeLeftMs",
        "earliestAdvanceMs",
        "criteria",
        "breaches",
        "ownTraffic",
        "evidence",
    }


observation_values = st.one_of(st.none(), st.floats(min_value=90, max_value=100))


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.integers(min_value=-60, max_value=700), observation_values),
        max_size=60,
        unique_by=lambda item: item[0],
    ),
    now=st.integers(min_value=0, max_value=700),
)
def test_no_phase__advances_without_the_data_its_criteria_need(
    values: list[tuple[int, float | None]], now: int
) -> None:
    phase = PhaseConfig(
        "p",
        "p",
        5,
        300_000,
        success_criteria=(AVAILABILITY_HELD_3_MIN,),
        rollback_thresholds=RollbackThresholds(error_rate=5),
    )
    observations = {"availability": [Observation(at(s), v) for s, v in values]}
    judgement = phase_judgement(phase, started_at=T0, now=at(now), observations=observations)
    if judgement.outcome != Outcome.ADVANCE:
        return
    # Advancing needs passing data in the phase, fresh within the maximum gap (a minute), and
    # an unbroken run of passing observations spanning at least the three-minute hold.
    inside = sorted(((s, v) for s, v in values if 0 <= s <= now), key=lambda item: item[0])
    assert now >= 300
    assert inside
    last = inside[-1][0]
    assert now - last <= 60

    def passes(value: float | None) -> bool:
        return value is not None and value > 99

    assert any(
        start <= last - 180 and all(passes(v) for s, v in inside if start <= s <= last)
        for start, _ in inside
    )


# --------------------------------------------------------------------------- columnar series


def reference_progress(
    criterion: Criterion, observations: list[Observation], now: datetime, max_gap: timedelta
) -> tuple[str, int]:
    """The run of a criterion measured on datetimes, one observation at a time: the rule as
    first written, against which the columnar `Series` judgement is held."""
    values = sorted(observations, key=lambda obs: obs.at)
    if not values:
        return "no_data", 0
    latest = values[-1]
    if now - latest.at > max_gap or latest.value is None:
        return "no_data", 0
    if not criterion.passes(latest.value):
        return "failing", 0
    start = latest
    for earlier in reversed(values[:-1]):
        if earlier.value is None or not criterion.passes(earlier.value):
            break
        if start.at - earlier.at > max_gap:
            break
        start = earlier
    held = int((latest.at - start.at).total_seconds() * 1000)
    return ("held" if held >= criterion.duration_ms else "holding"), held


criteria = st.builds(
    Criterion,
    metric=st.just("availability"),
    operator=st.sampled_from(list(Operator)),
    threshold=st.sampled_from([95, 99, 99.5, 100]),
    duration_ms=st.sampled_from([0, 20_000, 180_000]),
)
moments = st.one_of(
    st.integers(min_value=-60, max_value=700),
    st.floats(min_value=-60, max_value=700, allow_nan=False).map(lambda s: round(s, 3)),
)
readings = st.one_of(st.none(), st.sampled_from([95.0, 99.0, 99.5, 100.0]), st.integers(90, 100))


@settings(max_examples=400, deadline=None)
@given(
    criterion=criteria,
    values=st.lists(st.tuples(moments, readings), max_size=40),
    now=st.integers(min_value=0, max_value=700),
)
def test_phase_judgement__on_columns__is_the_judgement_on_datetimes(
    criterion: Criterion, values: list[tuple[float, float | None]], now: int
) -> None:
    phase = PhaseConfig(
        "p",
        "p",
        5,
        120_000,
        success_criteria=(criterion,),
        rollback_thresholds=RollbackThresholds(error_rate=5, availability=96),
    )
    listed = [Observation(at(s), v) for s, v in values]
    stamps = [T0.timestamp() + s for s, _ in values]
    columns = Series.from_timestamps(
        [int(stamp) if float(stamp).is_integer() else stamp for stamp in stamps],
        [v for _, v in values],
    )
    from_list = phase_judgement(
        phase, started_at=T0, now=at(now), observations={"availability": listed}
    )
    from_columns = phase_judgement(
        phase, started_at=T0, now=at(now), observations={"availability": columns}
    )
    assert from_columns.to_dict() == from_list.to_dict()

    inside = [obs for obs in listed if T0 <= obs.at <= at(now)]
    state, held = reference_progress(criterion, inside, at(now), timedelta(seconds=60))
    assert (str(from_list.criteria[0].state), from_list.criteria[0].held_ms) == (state, held)


def test_series__keeps_the_order_of_observations_at_the_same_moment() -> None:
    first, second = Observation(at(10), 99.0), Observation(at(10), 50.0)
    series = Series.of([Observation(at(20), 1.0), first, second])
    assert list(series) == [first, second, Observation(at(20), 1.0)]
    assert series[1] is second


def test_phase_judgement__mixing_naive_and_aware_moments__is_refused_as_before() -> None:
    naive = [Observation(datetime(2025, 1, 1, 12, 1), 99.9)]
    with pytest.raises(TypeError):
        phase_judgement(PHASE, started_at=T0, now=at(60), observations={"availability": naive})


@settings(max_examples=300, deadline=None)
@given(
    operator=st.sampled_from(list(Operator)),
    threshold=st.one_of(st.integers(-5, 105), st.floats(-5, 105, allow_nan=False)),
    value=st.one_of(st.integers(-5, 105), st.floats(-5, 105, allow_nan=False)),
)
def test_criterion_predicate__is_passes(operator: Operator, threshold: float, value: float) -> None:
    criterion = Criterion("availability", operator, threshold, 0)
    assert criterion.predicate()(value) == criterion.passes(value)
    assert criterion.predicate()(threshold) == criterion.passes(threshold)


# --------------------------------------------------------------------------- own traffic, evidence

NO_CRITERIA = PhaseConfig("p", "p", 10, 60_000)


@settings(max_examples=200, deadline=None)
@given(
    requests=st.integers(min_value=0, max_value=99),
    healthy_verdict=st.booleans(),
    with_criteria=st.booleans(),
    now=st.integers(min_value=60, max_value=3600),
)
def test_phase__with_too_little_canary_traffic_of_its_own__never_advances(
    requests: int, healthy_verdict: bool, with_criteria: bool, now: int
) -> None:
    phase = PHASE if with_criteria else NO_CRITERIA
    judgement = phase_judgement(
        phase,
        started_at=T0,
        now=at(now),
        observations=healthy(until=now),
        evidence=own(now, requests=requests, healthy=healthy_verdict),
    )
    assert judgement.outcome == Outcome.WAIT
    assert judgement.own_traffic is not None and not judgement.own_traffic.enough


def test_phase__with_too_little_traffic__says_how_much_it_has_and_needs() -> None:
    judgement = phase_judgement(
        NO_CRITERIA, started_at=T0, now=at(60), observations={}, evidence=own(60, requests=48)
    )
    assert judgement.reason == (
        "Wait: the phase's minimum 1m has passed, but the phase has 48 canary requests of its "
        "own; it needs 100."
    )


def test_phase__whose_canary_traffic_stopped__holds_and_says_why() -> None:
    stopped = Evidence(
        at=at(300),
        windows={"fast": Sample(0, 0, 5.0), "current": Sample(0, 0, 30.0)},
        phase=Sample(900, 1, 300.0),
        healthy=True,
        verdict="pass",
    )
    judgement = phase_judgement(
        NO_CRITERIA, started_at=T0, now=at(300), observations={}, evidence=stopped
    )
    assert judgement.outcome == Outcome.WAIT
    assert "the canary's traffic has stopped: its latest window of 5s had no request" in (
        judgement.reason
    )


def test_phase__whose_last_seconds_had_no_canary_request__holds_though_its_window_has_some() -> (
    None
):
    evidence = Evidence(
        at=at(300),
        windows={"fast": Sample(0, 0, 10.0), "current": Sample(250, 0, 60.0)},
        phase=Sample(900, 0, 300.0),
        healthy=True,
        verdict="pass",
    )
    judgement = phase_judgement(
        NO_CRITERIA, started_at=T0, now=at(300), observations={}, evidence=evidence
    )
    assert judgement.outcome == Outcome.WAIT
    assert "its latest window of 10s had no request (the phase has 900" in judgement.reason


def test_phase__with_a_verdict_that_is_not_healthy__waits_with_the_policys_sentence() -> None:
    evidence = Evidence(
        at=at(60),
        windows={"current": Sample(300, 9, 30.0)},
        phase=Sample(600, 18, 60.0),
        healthy=False,
        verdict="critical",
        message="Critical (1 critical): error rate 3% against stable 0.1%.",
    )
    judgement = phase_judgement(
        NO_CRITERIA, started_at=T0, now=at(60), observations={}, evidence=evidence
    )
    assert judgement.outcome == Outcome.WAIT
    assert "the health policy's verdict over the phase's 600 canary requests is critical" in (
        judgement.reason
    )
    assert "error rate 3% against stable 0.1%" in judgement.reason


def test_phase__judged_on_a_check_from_before_it_began__has_no_traffic_of_its_own() -> None:
    earlier = own(-5, requests=5_000)
    judgement = phase_judgement(
        NO_CRITERIA, started_at=T0, now=at(60), observations={}, evidence=earlier
    )
    assert judgement.outcome == Outcome.WAIT
    assert judgement.evidence is None
    assert "no health check of the canary has judged this phase yet" in judgement.reason


def test_phase__on_a_stale_check__does_not_advance() -> None:
    judgement = phase_judgement(
        NO_CRITERIA, started_at=T0, now=at(200), observations={}, evidence=own(60)
    )
    assert judgement.outcome == Outcome.WAIT
    assert "the latest health check of the canary is 2m 20s old" in judgement.reason


def rate_evidence(errors: int, requests: int, *, window: str = "current") -> Evidence:
    return Evidence(
        at=at(125),
        windows={window: Sample(requests, errors, 10.0)},
        phase=Sample(requests, errors, 125.0),
        healthy=True,
        verdict="pass",
    )


def test_threshold__one_error_in_48_requests__is_not_two_percent_errors_beyond_doubt() -> None:
    phase = PhaseConfig("p", "p", 10, 60_000, rollback_thresholds=RollbackThresholds(error_rate=1))
    observations = {"error_rate": series({125: 100 / 48})}  # the point value, 2.08

    judgement = phase_judgement(
        phase, started_at=T0, now=at(125), observations=observations, evidence=rate_evidence(1, 48)
    )
    on_points = phase_judgement(phase, started_at=T0, now=at(125), observations=observations)

    assert judgement.breaches == ()
    assert on_points.outcome == Outcome.BREACH  # what a point estimate would have done


def test_threshold__a_gross_fault_in_the_fast_window__breaches_and_says_its_sample() -> None:
    phase = PhaseConfig("p", "p", 10, 60_000, rollback_thresholds=RollbackThresholds(error_rate=5))
    judgement = phase_judgement(
        phase,
        started_at=T0,
        now=at(125),
        observations={},
        evidence=rate_evidence(20, 50, window="fast"),
    )
    assert judgement.outcome == Outcome.BREACH
    breach = judgement.breaches[0]
    assert (breach.window, breach.observed, breach.sample) == ("fast", 40.0, Sample(50, 20, 10.0))
    assert judgement.reason == (
        "Roll back: error_rate 40 is above the errorRate rollback threshold 5 beyond doubt: "
        "20 errors in 50 requests, 40%, 95% interval 28-54% in the fast window of 10s ending "
        "2025-01-01T12:02:05+00:00."
    )
    # Wilson at z = 1.96: (0.4 + z²/100 ± z·√(0.0048 + z²/10,000)) / (1 + z²/50).
    assert breach.to_dict()["sample"]["interval"] == [27.6084, 53.8186]


def test_availability_threshold__is_breached_when_its_upper_bound_is_below_it() -> None:
    phase = PhaseConfig(
        "p", "p", 10, 60_000, rollback_thresholds=RollbackThresholds(availability=95)
    )
    few = phase_judgement(
        phase, started_at=T0, now=at(125), observations={}, evidence=rate_evidence(3, 30)
    )
    many = phase_judgement(
        phase, started_at=T0, now=at(125), observations={}, evidence=rate_evidence(300, 1000)
    )
    assert few.outcome != Outcome.BREACH  # 90% of 30 could still be 95%
    assert many.outcome == Outcome.BREACH
    assert many.breaches[0].observed == 70.0


@settings(max_examples=500, deadline=None)
@given(
    requests=st.integers(min_value=1, max_value=100_000),
    limit=st.floats(min_value=0, max_value=100, allow_nan=False),
    data=st.data(),
)
def test_threshold__never_breaches_when_the_canarys_rate_is_not_above_it(
    requests: int, limit: float, data: st.DataObject
) -> None:
    # Evidence can only make a breach harder than the point value does, never easier.
    errors = data.draw(st.integers(min_value=0, max_value=int(requests * limit / 100)))
    phase = PhaseConfig(
        "p", "p", 10, 60_000, rollback_thresholds=RollbackThresholds(error_rate=limit)
    )
    judgement = phase_judgement(
        phase, started_at=T0, now=at(125), observations={}, evidence=rate_evidence(errors, requests)
    )
    assert judgement.breaches == ()


def test_sample__describes_itself_with_its_interval() -> None:
    assert Sample(48, 2).describe() == "2 errors in 48 requests, 4.2%, 95% interval 1.2-14%"
    assert Sample(1, 1).describe() == "1 error in 1 request, 100%, 95% interval 21-100%"
    assert Sample(0, 0).describe() == "no requests"


def test_evidence__round_trips_through_its_dict() -> None:
    evidence = own(60, requests=321, errors=4)
    assert Evidence.from_dict(json.loads(json.dumps(evidence.to_dict()))) == evidence
    assert Evidence.from_dict({}) is None
