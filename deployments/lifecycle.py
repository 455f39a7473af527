"""Deployment lifecycle: the transition table, and the rule that judges a phase's progress.

Pure Python (no Django, no database). The one service that changes a deployment's status asks
`transition()` first, inside its transaction with the row locked, and turns `TransitionRefused`
into a 409; the tick asks `phase_judgement()` what a running phase should do next.

The transition table (DESIGN.md, "Deployment lifecycle")::

    action           from                               to
    start            pending                            running
    pause            running                            paused
    resume           paused                             running
    promote          running, paused                    running
    promote_full     running, paused                    succeeded
    succeed          running                            succeeded
    rollback         running, paused                    rolling_back
    finish_rollback  rolling_back                       rolled_back
    step_rollback    rolling_back                       rolling_back
    fail             running, paused, rolling_back      failed
    abort            pending, running, paused           aborted
    retry            rolled_back, failed, aborted       pending

Notes on the choices made:

- ``promote`` moves to the next phase now. From paused it also resumes: a person who paused to
  look and then promotes has decided to go on. On the last phase the service performs
  ``succeed`` instead, since there is no next phase; the table knows statuses, not phases.
- ``succeed`` is the tick's verb after the last phase passed, so only a running deployment
  succeeds by it; a person uses ``promote_full``, which also works on a paused one.
- ``fail`` from running or paused is the tick's verb past the maximum deployment time (issue
  6), the service returning the canary's traffic to stable as it does; from rolling_back it
  means the rollback itself could not be completed.
- ``abort`` is refused while rolling back: traffic is already on its way back to stable, and
  the rollback's own outcome (rolled_back or failed) is the truthful end.
- ``retry`` takes an ended deployment that did not succeed (rolled_back, failed, aborted) back
  to pending, to start again from its first phase with the same configuration; its event
  timeline is kept. A succeeded deployment cannot be retried: its canary is now the stable
  version, so a new deployment is the way forward.
- Terminal statuses (succeeded, rolled_back, failed, aborted) are the ones where nothing runs:
  no tick, no traffic to the canary, pages stop polling. Only ``retry``, a person's decision,
  leaves one of them.

The phase-progress rule (`phase_judgement`), given a phase's settings, when it started, now,
and the observations of each metric (value None for a window without data):

1. **breach** when the latest observation of a metric with a rollback threshold is on the bad
   side of it (error rate or p95 latency above, availability below; equal is not a breach).
   A breach outranks everything else. An empty window never breaches; a stale observation
   still does, since acting on old bad news is safe and ignoring it is not.
2. **advance** when the phase has run its minimum duration and every success criterion has
   held for its own duration: an unbroken run of passing observations, from the first to the
   latest, spanning at least the criterion's ``durationMs`` (0 needs one passing observation).
   A run is broken by a failing value, by a window without data, or by a gap longer than
   ``max_gap`` between observations; a latest observation older than ``max_gap`` is no data.
   So no phase advances without the data its criteria need.
3. **wait** otherwise, with the time left of the minimum duration and, for each criterion not
   yet held, whether it is holding (and how long it still needs), failing, or without data.

Only observations from the phase's start to now count: earlier ones measured another traffic
share.

**Evidence.** Besides the metric values, the judgement reads the latest health check of the
canary (`Evidence`): its samples (requests and errors) in the fast and the current window, and
the phase's own canary traffic so far (the health app's windows never reach back before the
phase began) with whether the health policy's verdict over it is healthy. With it:

- a phase advances only on traffic of its own: at least ``min_requests`` canary requests since
  it began (100 by default), a healthy verdict over them, a check no older than ``max_gap``,
  and a canary still receiving traffic (a fast window, the last few seconds, with no request
  holds the phase, saying so). This holds whatever the criteria, and a phase without
  criteria needs it too, so nothing is promoted on no evidence;
- the error-rate and availability thresholds are breached on evidence, not on a point value:
  when the lower bound of the canary's error rate (the exact, Clopper-Pearson, one-sided bound
  at the level of ``z``, 3.9 by default: a false alarm at most once in 20,000 looks at a canary
  sitting on its threshold, however thin its window) is
  above ``errorRate``, or the upper bound of its availability below ``availability``, in
  either window. One error in 48 requests is not 2.08% errors beyond doubt. Without evidence
  (a replay of bare values) the latest value is compared as it is;
- every breach and every advance says its sample: "2 errors in 48 requests, 4.2%, 95%
  interval 1.2-14%".
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from deployments.config import ROLLBACK_RULES, Criterion, PhaseConfig, format_duration
from health import sequential

# --------------------------------------------------------------------------- statuses, actions


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    ABORTED = "aborted"


class Action(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    PROMOTE_FULL = "promote_full"
    SUCCEED = "succeed"
    ROLLBACK = "rollback"
    FINISH_ROLLBACK = "finish_rollback"
    STEP_ROLLBACK = "step_rollback"
    FAIL = "fail"
    ABORT = "abort"
    RETRY = "retry"


TERMINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.ROLLED_BACK, Status.FAILED, Status.ABORTED})
"""Statuses in which nothing runs; only `Action.RETRY` leaves one (not succeeded)."""

ACTIVE_STATUSES = frozenset({Status.RUNNING, Status.PAUSED, Status.ROLLING_BACK})
"""Statuses in which the canary may hold traffic."""

PERSON_ACTIONS: tuple[Action, ...] = (
    Action.START,
    Action.PAUSE,
    Action.RESUME,
    Action.PROMOTE,
    Action.PROMOTE_FULL,
    Action.ABORT,
    Action.RETRY,
)
"""The verbs a person may use, in the dashboard, the API and the admin alike. ``succeed``,
``rollback``, ``finish_rollback``, ``step_rollback`` and ``fail`` are the control loop's own: a
person's rollback is asked of the rollback app (its plan, cooldown and approvals), which then
performs it; a person who wants the canary out of traffic at once aborts."""


@dataclass(frozen=True)
class Transition:
    action: Action
    sources: frozenset[Status]
    target: Status
    meaning: str


def _row(action: Action, sources: Sequence[Status], target: Status, meaning: str) -> Transition:
    return Transition(action, frozenset(sources), target, meaning)


TRANSITIONS: Mapping[Action, Transition] = MappingProxyType(
    {
        row.action: row
        for row in (
            _row(Action.START, [Status.PENDING], Status.RUNNING, "begin the first phase"),
            _row(Action.PAUSE, [Status.RUNNING], Status.PAUSED, "hold the current phase"),
            _row(Action.RESUME, [Status.PAUSED], Status.RUNNING, "go on with the current phase"),
            _row(
                Action.PROMOTE,
                [Status.RUNNING, Status.PAUSED],
                Status.RUNNING,
                "move to the next phase now",
            ),
            _row(
                Action.PROMOTE_FULL,
                [Status.RUNNING, Status.PAUSED],
                Status.SUCCEEDED,
                "give the canary all traffic and make it the stable version",
            ),
            _row(
                Action.SUCCEED,
                [Status.RUNNING],
                Status.SUCCEEDED,
                "the last phase passed: the canary becomes the stable version",
            ),
            _row(
                Action.ROLLBACK,
                [Status.RUNNING, Status.PAUSED],
                Status.ROLLING_BACK,
                "take the canary out of traffic",
            ),
            _row(
                Action.FINISH_ROLLBACK,
                [Status.ROLLING_BACK],
                Status.ROLLED_BACK,
                "the canary is out of traffic",
            ),
            _row(
                Action.STEP_ROLLBACK,
                [Status.ROLLING_BACK],
                Status.ROLLING_BACK,
                "move the canary's share on the way down",
            ),
            _row(
                Action.FAIL,
                [Status.RUNNING, Status.PAUSED, Status.ROLLING_BACK],
                Status.FAILED,
                "past the maximum deployment time, or the rollback could not complete",
            ),
            _row(
                Action.ABORT,
                [Status.PENDING, Status.RUNNING, Status.PAUSED],
                Status.ABORTED,
                "stop by hand; traffic returns to stable at once",
            ),
            _row(
                Action.RETRY,
                [Status.ROLLED_BACK, Status.FAILED, Status.ABORTED],
                Status.PENDING,
                "start again from the first phase with the same configuration",
            ),
        )
    }
)


class TransitionRefused(Exception):
    """An action the table does not allow from the current status; ``reason`` says why."""

    code = "transition_refused"

    def __init__(self, action: Action, current: Status, reason: str) -> None:
        self.action = action
        self.current = current
        self.reason = reason
        super().__init__(reason)


def transition(current: Status | str, action: Action | str) -> Status:
    """The status ``action`` leads to from ``current``; raises `TransitionRefused` if none.

    An unknown status or action is a programming error (ValueError), not a refusal.
    """
    status = _status(current)
    verb = _action(action)
    row = TRANSITIONS[verb]
    if status not in row.sources:
        raise TransitionRefused(verb, status, refusal_reason(status, verb))
    return row.target


def can(current: Status | str, action: Action | str) -> bool:
    return _status(current) in TRANSITIONS[_action(action)].sources


def allowed_actions(current: Status | str) -> list[Action]:
    """The actions allowed from ``current``, in the order of `Action`."""
    status = _status(current)
    return [action for action in Action if status in TRANSITIONS[action].sources]


def person_actions(current: Status | str) -> list[Action]:
    """The `PERSON_ACTIONS` allowed from ``current``, in the order of `Action`."""
    return [action for action in allowed_actions(current) if action in PERSON_ACTIONS]


def is_terminal(status: Status | str) -> bool:
    return _status(status) in TERMINAL_STATUSES


_Word = TypeVar("_Word", Status, Action)


def _status(value: Status | str) -> Status:
    return _word(Status, value, "status")


def _action(value: Action | str) -> Action:
    return _word(Action, value, "action")


def _word(enum: type[_Word], value: Any, noun: str) -> _Word:
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"unknown deployment {noun} {value!r}; one of {', '.join(enum)}") from None


_SUBJECT = {
    Status.PENDING: "A pending deployment",
    Status.RUNNING: "A running deployment",
    Status.PAUSED: "A paused deployment",
    Status.SUCCEEDED: "A succeeded deployment",
    Status.ROLLING_BACK: "A deployment that is rolling back",
    Status.ROLLED_BACK: "A rolled-back deployment",
    Status.FAILED: "A failed deployment",
    Status.ABORTED: "An aborted deployment",
}

_CANNOT = {
    Action.START: "be started",
    Action.PAUSE: "be paused",
    Action.RESUME: "be resumed",
    Action.PROMOTE: "be promoted",
    Action.PROMOTE_FULL: "be promoted fully",
    Action.SUCCEED: "be marked succeeded",
    Action.ROLLBACK: "be rolled back",
    Action.FINISH_ROLLBACK: "finish a rollback",
    Action.STEP_ROLLBACK: "step a rollback",
    Action.FAIL: "be marked failed",
    Action.ABORT: "be aborted",
    Action.RETRY: "be retried",
}

_ENDED = {Status.ROLLED_BACK, Status.FAILED, Status.ABORTED}


def refusal_reason(current: Status, action: Action) -> str:
    """The sentence that explains a refused transition, e.g. "A succeeded deployment cannot be
    paused: it has finished."."""
    return f"{_SUBJECT[current]} cannot {_CANNOT[action]}: {_because(current, action)}."


def _because(current: Status, action: Action) -> str:
    # Said from the point of view of someone who pressed the button: what state blocks it and,
    # where there is one, what to do instead.
    if current == Status.SUCCEEDED:
        if action == Action.RETRY:
            return (
                "it has finished and its canary is now the stable version; create a new deployment"
            )
        return "it has finished"
    if current in _ENDED:
        if action == Action.START:
            return "it has ended; retry it to begin again"
        return "it has ended"
    if current == Status.PENDING:
        if action == Action.RETRY:
            return "it has not run yet; start it"
        return "it has not started"
    if current == Status.ROLLING_BACK:
        if action == Action.ROLLBACK:
            return "it is already rolling back"
        return "a rollback is under way; wait until it finishes or fails"
    if action in (Action.FINISH_ROLLBACK, Action.STEP_ROLLBACK):
        return "it is not rolling back"
    if action == Action.RETRY:
        return "it has not ended"
    if current == Status.RUNNING:
        if action == Action.START:
            return "it is already running"
        if action == Action.RESUME:
            return "it is not paused"
    if current == Status.PAUSED:
        if action == Action.START:
            return "it has already started; resume it"
        if action == Action.PAUSE:
            return "it is already paused"
        if action == Action.SUCCEED:
            return "it is paused; resume it, or promote it fully"
    return f"the lifecycle allows it only from {_listing(TRANSITIONS[action].sources)}"


def _listing(statuses: frozenset[Status]) -> str:
    names = [str(status).replace("_", " ") for status in Status if status in statuses]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# --------------------------------------------------------------------------- phase progress


DEFAULT_MAX_GAP = timedelta(seconds=60)
"""How far apart observations may be before the run of a criterion counts as broken."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One measurement of a metric: a value, or None when its window had no data."""

    at: datetime
    value: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "value": self.value}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    """A moment as whole microseconds after the epoch: exact, as a datetime is."""
    aware = moment.tzinfo is not None and moment.utcoffset() is not None
    return (moment - (_EPOCH if aware else _NAIVE_EPOCH)) // _MICROSECOND


class Series(Sequence[Observation]):
    """One metric's observations in time order, kept as columns: each moment in microseconds
    after the epoch, and each value.

    `phase_judgement` works on these; it judges a thousand phases every tick, each with the
    many observations its longest criterion holds, so it compares integers and makes an
    `Observation` only for the few it reports (the latest, a breach). A deployment phase's log
    is already columnar (`deployments.observing`) and becomes a series without a datetime per
    point; a list of observations becomes one with `Series.of`.
    """

    __slots__ = ("_items", "aware", "micros", "values")

    def __init__(
        self,
        micros: list[int],
        values: list[float | None],
        *,
        aware: bool = True,
        items: list[Observation] | None = None,
    ) -> None:
        self.micros = micros
        self.values = values
        self.aware = aware
        # The caller's own observations, when it gave some; else they are made when asked for.
        self._items = items

    @classmethod
    def of(cls, observations: Iterable[Observation]) -> Series:
        """Observations in any order, as a series (oldest first; equal moments keep their order)."""
        if isinstance(observations, Series):
            return observations
        items = sorted(observations, key=lambda obs: obs.at)
        if not items:
            return cls([], [])
        aware = items[0].at.tzinfo is not None and items[0].at.utcoffset() is not None
        return cls(
            [_micros(obs.at) for obs in items],
            [obs.value for obs in items],
            aware=aware,
            items=items,
        )

    @classmethod
    def from_timestamps(cls, stamps: Sequence[float], values: Sequence[float | None]) -> Series:
        """Observations at epoch seconds, each read as `datetime.fromtimestamp(stamp, UTC)`,
        in any order (oldest first after; equal moments keep their order)."""
        stamps, values = list(stamps), list(values)
        if set(map(type, stamps)) <= {int}:
            micros = [stamp * 1_000_000 for stamp in stamps]
        else:
            micros = [
                stamp * 1_000_000
                if type(stamp) is int
                else _micros(datetime.fromtimestamp(stamp, tz=UTC))
                for stamp in stamps
            ]
        if not all(map(operator.le, micros, micros[1:])):
            order = sorted(range(len(micros)), key=micros.__getitem__)
            micros, values = [micros[i] for i in order], [values[i] for i in order]
        return cls(micros, values, aware=True)

    def __len__(self) -> int:
        return len(self.micros)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._items is not None:
            return self._items[index]
        moment = (_EPOCH if self.aware else _NAIVE_EPOCH) + self.micros[index] * _MICROSECOND
        return Observation(moment, self.values[index])

    def __iter__(self) -> Iterator[Observation]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"Series({list(self)!r})"

    def between(self, start: int, end: int, *, aware: bool) -> Series:
        """The observations from ``start`` to ``end`` (microseconds after the epoch), inclusive."""
        if not self.micros:
            return self
        if aware != self.aware:
            raise TypeError("can't compare offset-naive and offset-aware datetimes")
        first = bisect_left(self.micros, start)
        last = bisect_right(self.micros, end)
        if first == 0 and last == len(self.micros):
            return self
        return Series(
            self.micros[first:last],
            self.values[first:last],
            aware=self.aware,
            items=None if self._items is None else self._items[first:last],
        )


_NO_OBSERVATIONS = Series([], [])


DEFAULT_MIN_PHASE_REQUESTS = 100
"""The canary requests a phase needs of its own before it may advance."""

DEFAULT_THRESHOLD_Z = 3.9
"""How sure a breach of an error-rate or availability threshold must be: the one-sided Wilson
bound at this z (a chance of about 1 in 20,000 that a canary right on its threshold looks
beyond it in one window)."""

_Z95 = 1.959964


def wilson_interval(errors: int, requests: int, z: float = _Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a rate (fractions 0 to 1), or None without requests."""
    if requests <= 0:
        return None
    p = errors / requests
    zz = z * z
    denominator = 1 + zz / requests
    centre = (p + zz / (2 * requests)) / denominator
    margin = z * math.sqrt(p * (1 - p) / requests + zz / (4 * requests * requests)) / denominator
    # The ends are exact at the edges; the arithmetic leaves crumbs such as 4e-17.
    low = 0.0 if errors == 0 else max(0.0, centre - margin)
    high = 1.0 if errors == requests else min(1.0, centre + margin)
    return low, high


@dataclass(frozen=True, slots=True)
class Sample:
    """What one window saw of the canary: requests and errors (and the window's length)."""

    requests: int
    errors: int
    seconds: float | None = None

    @property
    def error_rate(self) -> float | None:
        return 100.0 * self.errors / self.requests if self.requests else None

    def interval(self, z: float = _Z95) -> tuple[float, float] | None:
        """The error rate's Wilson interval in percent (95% by default)."""
        bounds = wilson_interval(self.errors, self.requests, z)
        return None if bounds is None else (100.0 * bounds[0], 100.0 * bounds[1])

    def describe(self) -> str:
        """``2 errors in 48 requests, 4.2%, 95% interval 1.2-14%``."""
        if not self.requests:
            return "no requests"
        errors = "1 error" if self.errors == 1 else f"{self.errors:,} errors"
        requests = "1 request" if self.requests == 1 else f"{self.requests:,} requests"
        low, high = self.interval() or (0.0, 0.0)
        rate = self.error_rate or 0.0
        return (
            f"{errors} in {requests}, {_percent(rate)}, 95% interval "
            f"{_percent(low, sign=False)}-{_percent(high)}"
        )

    def to_dict(self) -> dict[str, Any]:
        interval = self.interval()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.seconds,
            "errorRate": None if self.error_rate is None else round(self.error_rate, 4),
            "interval": None if interval is None else [round(v, 4) for v in interval],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Sample | None:
        if not data:
            return None
        seconds = data.get("seconds")
        return cls(
            int(data.get("requests") or 0),
            int(data.get("errors") or 0),
            float(seconds) if seconds else None,
        )


@dataclass(frozen=True)
class Evidence:
    """The latest health check of the canary, as the phase judgement reads it.

    ``at`` is when its windows ended; ``windows`` the canary's samples by window name
    (``fast``, the last few seconds; ``current``, the policy's window); ``phase`` the canary's
    traffic since the phase began; ``healthy`` whether the health policy's verdict over it is
    healthy, ``verdict`` that verdict and ``message`` its sentence.
    """

    at: datetime
    windows: Mapping[str, Sample]
    phase: Sample
    healthy: bool
    verdict: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "windows": {name: sample.to_dict() for name, sample in self.windows.items()},
            "phase": self.phase.to_dict(),
            "healthy": self.healthy,
            "verdict": self.verdict,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Evidence | None:
        """The evidence from `to_dict`, or None for anything else (an old log, nothing)."""
        if not data or not data.get("at"):
            return None
        phase = Sample.from_dict(data.get("phase"))
        if phase is None:
            return None
        windows = {}
        for name, sample in (data.get("windows") or {}).items():
            read = Sample.from_dict(sample)
            if read is not None:
                windows[name] = read
        return cls(
            at=datetime.fromisoformat(data["at"]),
            windows=windows,
            phase=phase,
            healthy=bool(data.get("healthy")),
            verdict=str(data.get("verdict") or ""),
            message=str(data.get("message") or ""),
        )


@dataclass(frozen=True)
class OwnTraffic:
    """Whether the phase has the traffic of its own that advancing needs, and the sentence."""

    enough: bool
    detail: str
    requests: int = 0
    needed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "enough": self.enough,
            "detail": self.detail,
            "requests": self.requests,
            "needed": self.needed,
        }


class Outcome(StrEnum):
    ADVANCE = "advance"
    WAIT = "wait"
    BREACH = "breach"


class CriterionState(StrEnum):
    HELD = "held"
    HOLDING = "holding"
    FAILING = "failing"
    NO_DATA = "no_data"


@dataclass(frozen=True)
class CriterionProgress:
    """Where one success criterion stands: its state, how long it has held, what it still needs.

    ``remaining_ms`` is the hold still needed if every observation from now on passes; for a
    failing criterion, or one without data, that is its whole duration.
    """

    criterion: Criterion
    state: CriterionState
    held_ms: int
    remaining_ms: int
    latest: Observation | None
    detail: str

    @property
    def held(self) -> bool:
        return self.state == CriterionState.HELD

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.criterion.to_dict(),
            "state": str(self.state),
            "heldMs": self.held_ms,
            "remainingMs": self.remaining_ms,
            "latest": self.latest.to_dict() if self.latest else None,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Breach:
    """A rollback threshold breached: which one, by what value, when; the evidence to record."""

    threshold: str
    metric: str
    limit: float
    observed: float
    at: datetime
    # The window's sample when the breach was judged on evidence, and which window it was.
    sample: Sample | None = None
    window: str = ""

    @property
    def sentence(self) -> str:
        side = "above" if ROLLBACK_RULES[self.threshold].breached_above else "below"
        head = (
            f"{self.metric} {_number(self.observed)} is {side} the {self.threshold} rollback "
            f"threshold {_number(self.limit)}"
        )
        if self.sample is None:
            return f"{head} (at {self.at.isoformat()})"
        span = f"the {self.window} window" if self.window else "the window"
        if self.sample.seconds:
            span += f" of {format_duration(int(self.sample.seconds * 1000))}"
        return (
            f"{head} beyond doubt: {self.sample.describe()} in {span} ending {self.at.isoformat()}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "metric": self.metric,
            "limit": self.limit,
            "observed": self.observed,
            "at": self.at.isoformat(),
            "window": self.window,
            "sample": None if self.sample is None else self.sample.to_dict(),
        }


@dataclass(frozen=True)
class PhaseJudgement:
    """What a phase should do now, why (``reason``, a sentence), and the evidence behind it.

    ``time_left_ms`` is what remains of the phase's minimum duration; ``earliest_advance_ms`` is
    the soonest it could advance if every criterion held from now on.
    """

    outcome: Outcome
    reason: str
    elapsed_ms: int
    time_left_ms: int
    earliest_advance_ms: int
    criteria: tuple[CriterionProgress, ...]
    breaches: tuple[Breach, ...]
    own_traffic: OwnTraffic | None = None
    evidence: Evidence | None = None

    @property
    def not_held(self) -> tuple[CriterionProgress, ...]:
        return tuple(progress for progress in self.criteria if not progress.held)

    @property
    def without_data(self) -> tuple[CriterionProgress, ...]:
        return tuple(p for p in self.criteria if p.state == CriterionState.NO_DATA)

    def to_dict(self) -> dict[str, Any]:
        """The evidence as camelCase JSON, for the deployment's event timeline."""
        return {
            "outcome": str(self.outcome),
            "reason": self.reason,
            "elapsedMs": self.elapsed_ms,
            "timeLeftMs": self.time_left_ms,
            "earliestAdvanceMs": self.earliest_advance_ms,
            "criteria": [progress.to_dict() for progress in self.criteria],
            "breaches": [breach.to_dict() for breach in self.breaches],
            "ownTraffic": None if self.own_traffic is None else self.own_traffic.to_dict(),
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
        }


def phase_judgement(
    phase: PhaseConfig,
    *,
    started_at: datetime,
    now: datetime,
    observations: Mapping[str, Sequence[Observation]],
    max_gap: timedelta | None = DEFAULT_MAX_GAP,
    evidence: Evidence | None = None,
    min_requests: int = DEFAULT_MIN_PHASE_REQUESTS,
    z: float = DEFAULT_THRESHOLD_Z,
) -> PhaseJudgement:
    """Judge a running phase: advance, wait or breach, with the sentence that says why.

    ``observations`` maps a metric's name to its observations in any order (a list, or a
    `Series`): each metric a success criterion names, as written in the configuration, and
    ``error_rate``, ``latency_p95`` and ``availability`` for the rollback thresholds.
    ``max_gap`` None accepts any gap (for replaying history whose spacing is known).
    ``evidence`` is the latest health check (see the module docstring): without it, or with
    one from before the phase began, the phase has no traffic of its own and does not
    advance. ``min_requests`` is the canary requests the phase needs of its own, ``z`` how
    sure a breach of a rate threshold must be.
    """
    start, end = _micros(started_at), _micros(now)
    aware = started_at.tzinfo is not None and started_at.utcoffset() is not None
    series = {
        metric: Series.of(values).between(start, end, aware=aware)
        for metric, values in observations.items()
    }
    elapsed_ms = max(0, _ms(now - started_at))
    time_left_ms = max(0, phase.duration_ms - elapsed_ms)
    gap = None if max_gap is None else max_gap // _MICROSECOND

    if evidence is not None and evidence.at < started_at:
        evidence = None  # measured another traffic share
    breaches = tuple(_breaches(phase, series, evidence, z))
    criteria = tuple(
        _progress(criterion, series.get(criterion.metric, _NO_OBSERVATIONS), end, gap)
        for criterion in phase.success_criteria
    )
    own = _own_traffic(evidence, now, max_gap, min_requests)
    earliest = max([time_left_ms, *(progress.remaining_ms for progress in criteria)])

    if breaches:
        outcome = Outcome.BREACH
        reason = "Roll back: " + "; ".join(breach.sentence for breach in breaches) + "."
    elif time_left_ms == 0 and all(progress.held for progress in criteria) and own.enough:
        outcome = Outcome.ADVANCE
        reason = _advance_reason(phase, criteria, own)
    else:
        outcome = Outcome.WAIT
        reason = _wait_reason(phase, time_left_ms, criteria, own)
    return PhaseJudgement(
        outcome=outcome,
        reason=reason,
        elapsed_ms=elapsed_ms,
        time_left_ms=time_left_ms,
        earliest_advance_ms=earliest,
        criteria=criteria,
        breaches=breaches,
        own_traffic=own,
        evidence=evidence,
    )


def _own_traffic(
    evidence: Evidence | None, now: datetime, max_gap: timedelta | None, min_requests: int
) -> OwnTraffic:
    """Whether the phase has, of its own, the healthy canary traffic advancing needs."""
    if evidence is None:
        return OwnTraffic(False, "no health check of the canary has judged this phase yet")
    requests = evidence.phase.requests
    needed = max(1, min_requests)

    def short(detail: str) -> OwnTraffic:
        return OwnTraffic(False, detail, requests, needed)

    if max_gap is not None and now - evidence.at > max_gap:
        age = format_duration(_ms(now - evidence.at))
        return short(f"the latest health check of the canary is {age} old")
    # The last few seconds say whether traffic still flows: a longer window would still hold
    # the requests of a minute ago.
    recent = evidence.windows.get("fast") or evidence.windows.get("current")
    if requests == 0:
        return short("the phase has no canary request of its own yet")
    if recent is not None and recent.requests == 0:
        seconds = f" of {format_duration(int(recent.seconds * 1000))}" if recent.seconds else ""
        return short(
            f"the canary's traffic has stopped: its latest window{seconds} had no request "
            f"(the phase has {_requests(requests)} of its own)"
        )
    if requests < needed:
        return short(f"the phase has {_requests(requests)} of its own; it needs {needed:,}")
    if not evidence.healthy:
        verdict = evidence.verdict or "not known"
        why = f": {evidence.message}" if evidence.message else ""
        return short(
            f"the health policy's verdict over the phase's {_requests(requests)} is "
            f"{verdict}, not pass{why.rstrip('.')}"
        )
    return OwnTraffic(
        True,
        f"on its own canary traffic ({evidence.phase.describe()}), judged healthy",
        requests,
        needed,
    )


def _requests(count: int) -> str:
    return "1 canary request" if count == 1 else f"{count:,} canary requests"


def _breaches(
    phase: PhaseConfig, series: Mapping[str, Series], evidence: Evidence | None, z: float
) -> list[Breach]:
    found = []
    for name, limit in phase.rollback_thresholds.items():
        rule = ROLLBACK_RULES[name]
        if evidence is not None and rule.metric in _RATE_METRICS:
            breach = _breach_on_evidence(name, limit, evidence, z)
            if breach is not None:
                found.append(breach)
            continue
        values = series.get(rule.metric)
        if not values:
            continue
        value = values.values[-1]
        if value is not None and rule.breached(value, limit):
            found.append(Breach(name, rule.metric, limit, value, values[-1].at))
    return found


_RATE_METRICS = frozenset({"error_rate", "availability"})


def _breach_on_evidence(name: str, limit: float, evidence: Evidence, z: float) -> Breach | None:
    """A rate threshold breached beyond doubt in the current or the fast window: the bound of
    the canary's error rate nearest to good is on the bad side of the threshold.

    The bound is the exact one, not Wilson's: at small samples Wilson's is far too sure (one
    error in one request would read as above a 5% threshold at z = 3.9)."""
    rule = ROLLBACK_RULES[name]
    for window in ("current", "fast"):
        sample = evidence.windows.get(window)
        if sample is None or not sample.requests:
            continue
        low = 100.0 * float(sequential.exact_lower(sample.errors, sample.requests, z))
        rate = sample.error_rate or 0.0
        if rule.metric == "error_rate":
            observed, beyond = rate, low > limit
        else:
            observed, beyond = 100.0 - rate, 100.0 - low < limit
        if beyond:
            return Breach(name, rule.metric, limit, round(observed, 4), evidence.at, sample, window)
    return None


def _progress(
    criterion: Criterion,
    values: Series,
    now: int,
    max_gap: int | None,
) -> CriterionProgress:
    """One criterion's progress; ``now`` and ``max_gap`` in microseconds, like the series."""
    needed = criterion.duration_ms
    label = criterion.describe()

    def no_data(latest: Observation | None, why: str) -> CriterionProgress:
        return CriterionProgress(
            criterion, CriterionState.NO_DATA, 0, needed, latest, f"{label} has no data {why}"
        )

    if not values:
        return no_data(None, "yet in this phase")
    moments, points = values.micros, values.values
    last = len(moments) - 1
    latest = values[last]
    if max_gap is not None and now - moments[last] > max_gap:
        age = _ms_of(now - moments[last])
        return no_data(latest, f"(its latest is {format_duration(age)} old)")
    if points[last] is None:
        return no_data(latest, "(the latest window was empty)")
    passes = criterion.predicate()
    if not passes(points[last]):
        return CriterionProgress(
            criterion,
            CriterionState.FAILING,
            0,
            needed,
            latest,
            f"{label} is not met (latest {_number(points[last])})",
        )

    # Walk back from the latest while the run is unbroken: passing values, no gap too long.
    start = last
    for index in range(last - 1, -1, -1):
        value = points[index]
        if value is None or not passes(value):
            break
        if max_gap is not None and moments[start] - moments[index] > max_gap:
            break
        start = index
    held = _ms_of(moments[last] - moments[start])
    if held >= needed:
        return CriterionProgress(
            criterion,
            CriterionState.HELD,
            held,
            0,
            latest,
            f"{label} held for {format_duration(held)} (needs {format_duration(needed)})",
        )
    return CriterionProgress(
        criterion,
        CriterionState.HOLDING,
        held,
        needed - held,
        latest,
        f"{label} has held for {format_duration(held)} of {format_duration(needed)} "
        f"({format_duration(needed - held)} to go)",
    )


def _advance_reason(
    phase: PhaseConfig, criteria: Sequence[CriterionProgress], own: OwnTraffic
) -> str:
    minimum = (
        f"Advance: the phase has run its minimum {format_duration(phase.duration_ms)} {own.detail}"
    )
    if not criteria:
        return f"{minimum}, and it has no success criteria."
    held = "; ".join(progress.detail for progress in criteria)
    return f"{minimum}, and every success criterion held: {held}."


def _wait_reason(
    phase: PhaseConfig,
    time_left_ms: int,
    criteria: Sequence[CriterionProgress],
    own: OwnTraffic,
) -> str:
    minimum = format_duration(phase.duration_ms)
    pending = [progress.detail for progress in criteria if not progress.held]
    if not own.enough:
        pending.append(own.detail)
    text = "; ".join(pending)
    if time_left_ms:
        head = f"Wait: {format_duration(time_left_ms)} left of the phase's minimum {minimum}"
        return f"{head}; {text}." if text else f"{head}."
    return f"Wait: the phase's minimum {minimum} has passed, but {text}."


# --------------------------------------------------------------------------- formatting


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _ms_of(micros: int) -> int:
    """`_ms` of a span in microseconds: the same arithmetic, so the same milliseconds."""
    return int(micros / 1_000_000 * 1000)


def _number(value: float) -> str:
    return f"{value:g}"


def _percent(value: float, *, sign: bool = True) -> str:
    """A rate as people read it: two significant figures, ``4.2%``, ``0.31%``, ``14%``."""
    text = "0" if value == 0 else f"{float(f'{value:.2g}'):g}"
    return f"{text}%" if sign else text
