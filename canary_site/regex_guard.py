r"""The one screen for regular expressions that client text is matched against.

Flag constraints and routing conditions both search client-supplied text (context attributes,
headers, paths) with Python's backtracking ``re``, which takes exponential or high polynomial
time on hostile input. Both engines compile their patterns here, when a definition is saved or
a snapshot is built, never per request, and refuse with the same sentences. Pure Python with no
Django import: the floor every app may use.

The rules, for a pattern that sees at most ``max_input`` characters (``MAX_INPUT_LENGTH``,
1,024, the prefix routing conditions look at; flags pass their own 256):

* at most ``MAX_PATTERN_LENGTH`` (256) characters, and it must compile;
* no backreferences;
* no quantifier that can match what follows it inside an unbounded repeated group (``(a+)+`` is
  refused, ``^([a-z]+\.)+com$`` is fine, because ``[a-z]+`` must stop at the ``.``);
* no alternatives inside a repeated group that can start with the same character (``(a|ab)+``
  is refused, ``(?:foo|bar)+`` is fine);
* a pessimistic count of the character tests a search makes on the worst input of
  ``max_input`` characters (:class:`_Estimate`) must stay within ``MAX_BACKTRACKING`` (528,392,
  a few milliseconds of ``re``). On flags' 256 characters it admits one unbounded quantifier
  that can match what follows it in an unanchored pattern (``.*@example\.com$``), two in a
  pattern anchored with ``^`` (``^.*-.*$``), and any number that cannot (``\w+@\w+\.com``).
  On routing's 1,024 it admits one in an anchored pattern (``^/api/.*/v2$``) and unanchored
  ones only where the text before them cannot be matched by them (``Chrome/\d+``, ``/v\d+/``):
  ``\d+\.\d+`` rescans the text from every start, a quadratic ten milliseconds there, and is
  refused (``\d\.\d`` finds the same). ``.*.*x``, ``^.*.*.*x`` and ``.*`` followed by a long
  run of characters it overlaps (``.*aaaa…ab``) are refused everywhere.

:func:`compile_screened` returns the compiled pattern or raises :class:`UnsafeRegex` with the
sentence each engine reports on its own field; :func:`screen` returns the verdict with the
count behind it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from re import _constants as _sre  # the parsed-pattern opcodes
from re import _parser as _sre_parser
from typing import Any

__all__ = [
    "MAX_BACKTRACKING",
    "MAX_INPUT_LENGTH",
    "MAX_PATTERN_LENGTH",
    "Screening",
    "UnsafeRegex",
    "compile_screened",
    "screen",
]

MAX_PATTERN_LENGTH = 256
"""Longest pattern either engine accepts."""

MAX_INPUT_LENGTH = 1024
"""Longest text a screened pattern is matched against (routing looks at this long a prefix)."""

_UNBOUNDED = 1 << 16
_REPEAT_OPCODES = frozenset({_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT})


MAX_BACKTRACKING = 8 * 257**2
"""The most character tests a screened pattern may make on the worst input it is given.

One budget for every input length, so a screened pattern costs every engine at most a few
milliseconds of ``re``: eight times the square of 256 characters, which on 256 characters
admits one unbounded quantifier that can match what follows it in an unanchored search, or two
in an anchored one, with room for forced ones. On 1,024 characters the same budget admits one
such quantifier in an anchored pattern and none that can rescan the text from every start.
"""


class UnsafeRegex(ValueError):
    """A pattern that does not compile or could take too long to match; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Screening:
    """What the screen found: the refusal (``None`` when accepted) and the estimate behind it.

    ``steps`` is the counted character tests of a search on the worst input (up to the point of
    refusal, if refused); ``budget`` is what they were held to.
    """

    problem: str | None
    steps: float
    budget: float
    anchored: bool


_TOO_MANY_WAYS = (
    "too many ways to match, such as several unbounded quantifiers that can match the same "
    "characters (.*.*x); anchoring the pattern with ^ helps, and a search needs no leading "
    ".* (.*x finds what x finds)"
)
_NESTED = "a quantifier inside a repeated group, such as (a+)+"
_ALTERNATIVES = (
    "alternatives inside a repeated group must start with characters that tell them apart"
)
_BACKREFERENCE = "backreferences are not allowed"


def compile_screened(
    pattern: str, *, ignore_case: bool = False, max_input: int = MAX_INPUT_LENGTH
) -> re.Pattern[str]:
    """Compile ``pattern`` if it is safe to search text of up to ``max_input`` characters with.

    Raises :class:`UnsafeRegex` otherwise.
    """
    if not isinstance(pattern, str):
        raise UnsafeRegex("regex must be a string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafeRegex(f"regex is longer than {MAX_PATTERN_LENGTH} characters")
    verdict = _verdict(pattern, ignore_case, max_input)
    if isinstance(verdict, str):
        raise UnsafeRegex(verdict)
    return verdict


# Every snapshot reload compiles every pattern again; the verdict of a pattern never changes.
@lru_cache(maxsize=2048)
def _verdict(pattern: str, ignore_case: bool, max_input: int) -> re.Pattern[str] | str:
    flags = re.IGNORECASE if ignore_case else 0
    try:
        parsed = _sre_parser.parse(pattern, flags)
        compiled = re.compile(pattern, flags)
    except (re.error, OverflowError, RecursionError) as error:
        return f"invalid regex: {error}"
    problem = _screen_parsed(parsed, max_input).problem
    if problem:
        return f"regex could take too long to match: {problem}"
    return compiled


def screen(
    pattern: str,
    *,
    ignore_case: bool = False,
    max_input: int = MAX_INPUT_LENGTH,
    budget: float | None = None,
) -> Screening:
    """The screen's verdict and estimate for a pattern that compiles (``re.error`` otherwise).

    ``budget`` replaces ``MAX_BACKTRACKING``; ``math.inf`` measures a pattern that only the
    exponential shapes refuse.
    """
    parsed = _sre_parser.parse(pattern, re.IGNORECASE if ignore_case else 0)
    return _screen_parsed(parsed, max_input, budget)


def _screen_parsed(parsed: Any, max_input: int, budget: float | None = None) -> Screening:
    anchored = (
        len(parsed) > 0
        and parsed[0][0] is _sre.AT
        and parsed[0][1] in (_sre.AT_BEGINNING, _sre.AT_BEGINNING_STRING)
        and not parsed.state.flags & re.MULTILINE
    )
    if budget is None:
        budget = MAX_BACKTRACKING
    starts = 1 if anchored else max_input + 1
    # The exponential shapes first, so that they are named as such rather than as too many ways.
    problem = _Estimate(max_input, budget, starts=starts, counting=False).walk(list(parsed))
    estimate = _Estimate(max_input, budget, starts=starts)
    problem = problem or estimate.walk(list(parsed))
    return Screening(problem=problem, steps=estimate.steps, budget=budget, anchored=anchored)


class _Refused(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem


@dataclass(frozen=True, slots=True)
class _Lead:
    """Single characters matched in a row from positions holding at most ``mult`` arrivals each.

    ``periods`` are the distances at which two matches of the run could overlap; the smallest
    one bounds how many positions the run can match at.
    """

    mult: float
    sets: tuple[frozenset[str] | None, ...] = ()
    periods: tuple[int, ...] = ()

    # Beyond this many characters the bound stops improving; it stays valid.
    LONGEST = 64

    def extended(self, matched: frozenset[str] | None) -> _Lead:
        if len(self.sets) >= self.LONGEST:
            return self
        sets = (*self.sets, matched)
        length = len(sets)

        def overlap(first: frozenset[str] | None) -> bool:
            return first is None or matched is None or not first.isdisjoint(matched)

        periods = (
            *(period for period in self.periods if overlap(sets[length - 1 - period])),
            length,
        )
        return _Lead(self.mult, sets, periods)

    @property
    def period(self) -> int:
        return self.periods[0] if self.periods else 1


class _Estimate:
    r"""A deliberately pessimistic count of the character tests a search makes on the worst input.

    The walk follows the pattern left to right, keeping an upper bound on how often the search
    arrives at the current point (``ways``: over every start position and every path that
    backtracking can take) and on how many of those arrivals share one position of the text
    (``mult``). Each item tests a character (a position, for ``^``, ``$``, ``\b``) once per
    arrival. A search tries every start position (one, when the pattern is anchored with ``^``).

    * A quantifier is *forced* when what it repeats cannot start the way what follows it must
      start (``\d+\.``, ``[^@]+@``): it can only stop in one place, so trying its lengths costs
      tests but leaves one way to go on. Any other variable quantifier multiplies the ways by its
      span (an unbounded one spans every length up to the input cap), once more for every time
      an enclosing group repeats it.
    * Arrivals at distinct positions right after a character the quantifier cannot match
      (``/v\d+``) read disjoint runs of the text, whose lengths add up to the input at most.
    * A run of single characters can only match where the text holds it, and two such places
      are at least the run's smallest possible period apart (``@example`` overlaps itself
      nowhere, ``aaaa`` everywhere), which bounds how many arrivals get past it.
    * An unforced quantifier inside an unbounded repetition (``(a+)+``), alternatives inside a
      repetition that can start alike (``(a|ab)+``) and backreferences are exponential and
      refused outright; otherwise the count must stay within the budget.
    """

    def __init__(
        self, max_input: int, budget: float, *, starts: int, counting: bool = True
    ) -> None:
        self.counting = counting  # False: look for the exponential shapes only
        self.cap = max_input + 1  # positions in a text of max_input characters
        self.max_input = max_input
        self.budget = budget
        self.steps = 0.0
        self.ways = float(starts)
        self.mult = 1.0  # the most arrivals that can share one position
        self.lead = _Lead(1.0)
        self.last: frozenset[str] | None = None  # what the character before the position holds

    def walk(self, items: list[Any]) -> str | None:
        """Count a whole pattern; the reason it is refused, or None."""
        try:
            self._sequence(items, 1, precise=True, top=True)
        except _Refused as refusal:
            return refusal.problem
        return None

    def _charge(self, tests: float) -> None:
        self.steps += tests
        if self.counting and self.steps > self.budget:
            raise _Refused(_TOO_MANY_WAYS)

    def _settle(self) -> None:
        self.mult = min(self.mult, self.ways)
        self.ways = min(self.ways, self.mult * self.cap)

    def _forget(self) -> None:
        """Where the arrivals are is no longer known: all of them may share one position."""
        self.mult = self.ways
        self.lead = _Lead(self.mult)
        self.last = None

    def _state(self) -> tuple[float, float, _Lead, frozenset[str] | None]:
        return (self.ways, self.mult, self.lead, self.last)

    def _restore(self, state: tuple[float, float, _Lead, frozenset[str] | None]) -> None:
        self.ways, self.mult, self.lead, self.last = state

    def _sequence(
        self, items: list[Any], repetitions: int, precise: bool, *, top: bool = False
    ) -> None:
        for index, (opcode, argument) in enumerate(items):
            if opcode in _REPEAT_OPCODES:
                final = top and index == len(items) - 1
                self._repeat(argument, items[index + 1 :], repetitions, precise, final=final)
            elif opcode is _sre.SUBPATTERN:
                self._sequence(list(argument[3]), repetitions, precise)
            elif opcode is _sre.ATOMIC_GROUP:
                self._sequence(list(argument), repetitions, precise)
            elif opcode in (_sre.ASSERT, _sre.ASSERT_NOT):
                self._assertion(list(argument[1]), repetitions)
            elif opcode is _sre.BRANCH:
                self._branch(argument[1], repetitions, precise)
            elif opcode in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
                raise _Refused(_BACKREFERENCE)
            elif opcode is _sre.AT:
                self._charge(self.ways * min(repetitions, self.cap))
            else:
                self._character(_character_set((opcode, argument)), repetitions, precise)

    def _character(self, matched: frozenset[str] | None, repetitions: int, precise: bool) -> None:
        self._charge(self.ways * min(repetitions, self.cap))
        if precise:
            self.lead = self.lead.extended(matched)
            self.ways = min(self.ways, self.lead.mult * (self.cap / self.lead.period + 1))
            self.last = matched
        self._settle()

    def _assertion(self, body: list[Any], repetitions: int) -> None:
        # A lookaround is tried at every arrival and never backtracked into: it costs its tests
        # and leaves the arrivals where they were.
        state = self._state()
        self._forget()
        self._sequence(body, repetitions, precise=False)
        self._restore(state)

    def _branch(self, branches: list[Any], repetitions: int, precise: bool) -> None:
        if repetitions > 1 and not _branches_start_apart(branches):
            raise _Refused(_ALTERNATIVES)
        state = self._state()
        ways = mult = 0.0
        lasts: frozenset[str] | None = frozenset()
        for branch in branches:
            self._restore(state)
            self._sequence(list(branch), repetitions, precise)
            ways += self.ways
            mult += self.mult
            lasts = None if lasts is None or self.last is None else lasts | self.last
        self.ways, self.mult, self.last = ways, mult, lasts
        self.lead = _Lead(mult)
        self._settle()

    def _repeat(
        self,
        argument: Any,
        following: list[Any],
        repetitions: int,
        precise: bool,
        *,
        final: bool = False,
    ) -> None:
        low, high, body = argument
        body = list(body)
        longest = self.max_input if high == _sre.MAXREPEAT else min(high, self.max_input)
        span = max(longest - low, 0) + 1 if high != low else 1
        forced = high != low and _is_forced(body, following)
        single = _single_character(body)
        if single is not None and precise:
            self._single_repeat(single, low, longest, span, forced, final=final)
            return
        arrivals = self.ways
        if high <= 1:
            inner = repetitions
        elif high == _sre.MAXREPEAT:
            inner = _UNBOUNDED
        else:
            inner = min(repetitions * high, _UNBOUNDED)
        # The body is walked first, so that an exponential shape inside it is named as such,
        # and once, with the arrivals of its first round; a body that multiplies the ways
        # multiplies every later round's tests too, which the growth charge covers.
        self._forget()
        before = self.steps
        self._sequence(body, inner, precise=False)
        body_tests = self.steps - before
        growth = self.ways / arrivals if arrivals else 1.0
        after = arrivals
        if high != low:
            if forced:
                # However often it runs, it cannot consume more than the whole input.
                self._charge(arrivals * min(span * min(repetitions, self.cap), self.cap))
            elif repetitions >= _UNBOUNDED:
                raise _Refused(_NESTED)
            elif not self.counting:
                pass
            elif repetitions * math.log(span) > math.log(self.budget):
                raise _Refused(_TOO_MANY_WAYS)
            else:
                after = arrivals * span**repetitions
                self._charge(after)
        if growth > 1:
            self._charge(body_tests * (growth - 1))
        self.ways = after * growth
        self._forget()
        self._settle()

    def _single_repeat(
        self,
        matched: frozenset[str],
        low: int,
        longest: int,
        span: int,
        forced: bool,
        *,
        final: bool,
    ) -> None:
        """A quantifier over one character (``\\d+``, ``.*``, ``[^/]{1,8}``), not repeated."""
        if final:
            # Last in the pattern: the first arrival that matches it ``low`` times ends the
            # search; every other arrival fails within ``low + 1`` tests.
            self._charge(min(self.ways * (longest + 1), self.ways * (low + 1) + longest + 1))
            return
        positions = self.ways / self.mult if self.mult else 0.0
        if self.last is not None and self.last.isdisjoint(matched):
            # Runs from distinct positions never overlap: each is read once per arrival at its
            # position, and all of them together are no longer than the text.
            consumed = self.mult * self.cap + self.ways
            stops = self.mult * (self.cap + positions)
            mult = self.mult
        else:
            consumed = self.ways * (longest + 1)
            stops = self.ways * span
            mult = self.mult * min(span, self.cap)
        if forced:
            # Every shorter length is tried and refused by the next item's first test.
            self._charge(2 * consumed)
        else:
            self._charge(consumed)
            self.ways = min(stops, self.ways * span)
        self.mult = mult
        self.lead = _Lead(mult)
        if low > 0:
            self.last = matched
        elif self.last is not None:
            self.last = self.last | matched
        self._settle()


def _single_character(body: list[Any]) -> frozenset[str] | None:
    """The characters of a quantified body that is one character (``\\d``, ``(a)``, ``[^/]``).

    Returns ``None`` for anything else; an unknown single character matches everything.
    """
    while len(body) == 1 and body[0][0] is _sre.SUBPATTERN:
        body = list(body[0][1][3])
    if len(body) != 1:
        return None
    opcode = body[0][0]
    if opcode in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN):
        return _character_set(body[0]) or _EVERYTHING
    return None


def _is_forced(body: Any, following: list[Any]) -> bool:
    """Whether a repetition of ``body`` can only stop where the ``following`` items start."""
    repeated = _leading_characters(list(body))
    after = _leading_characters(following)
    return repeated is not None and after is not None and repeated.isdisjoint(after)


def _branches_start_apart(branches: Sequence[Any]) -> bool:
    seen: set[str] = set()
    for branch in branches:
        leading = _leading_characters(list(branch))
        if leading is None or not seen.isdisjoint(leading):
            return False
        seen |= leading
    return True


def _leading_characters(items: Sequence[Any]) -> frozenset[str] | None:
    """The characters a sequence must start with, when its first item is one character."""
    if not items:
        return None
    opcode, argument = items[0]
    if opcode is _sre.SUBPATTERN:
        return _leading_characters(list(argument[3]))
    if opcode in _REPEAT_OPCODES:
        return _leading_characters(list(argument[2])) if argument[0] >= 1 else None
    if opcode is _sre.BRANCH:
        union: frozenset[str] = frozenset()
        for branch in argument[1]:
            leading = _leading_characters(list(branch))
            if leading is None:
                return None
            union |= leading
        return union
    return _character_set(items[0])


_CATEGORY_PATTERNS = {
    _sre.CATEGORY_DIGIT: re.compile(r"\d"),
    _sre.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    _sre.CATEGORY_SPACE: re.compile(r"\s"),
    _sre.CATEGORY_NOT_SPACE: re.compile(r"\S"),
    _sre.CATEGORY_WORD: re.compile(r"\w"),
    _sre.CATEGORY_NOT_WORD: re.compile(r"\W"),
}
# Characters that stand in for the whole of Unicode when deciding whether two character classes
# can match the same character: Latin-1 and a few of every other kind.
_CHARACTER_SAMPLE = tuple(chr(code) for code in range(256)) + tuple(
    "ĀāİıŁłŒœſΣσςΩωЖжא٣ب中文日本한글€…\u2028\u3000\U0001f600"
)
_EVERYTHING = frozenset(_CHARACTER_SAMPLE)


def _character_set(item: Any) -> frozenset[str] | None:
    """The sample characters one parsed item matches, or None if it is not one character.

    Case is ignored and ``.`` matches everything, whatever the flags: a larger set can only make
    the screening refuse more.
    """
    opcode, argument = item
    if opcode is _sre.IN:
        argument = tuple(argument)
    elif opcode not in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY):
        return None
    return _cached_character_set(opcode, argument)


@lru_cache(maxsize=4096)
def _cached_character_set(opcode: Any, argument: Any) -> frozenset[str] | None:
    predicate = _character_predicate((opcode, argument))
    if predicate is None:
        return None
    return frozenset(
        character
        for character in _CHARACTER_SAMPLE
        if any(
            predicate(variant)
            for variant in (character, character.lower(), character.upper())
            if len(variant) == 1
        )
    )


def _character_predicate(item: Any) -> Callable[[str], bool] | None:
    opcode, argument = item
    if opcode is _sre.LITERAL:
        return chr(argument).__eq__
    if opcode is _sre.NOT_LITERAL:
        return chr(argument).__ne__
    if opcode is _sre.ANY:
        return lambda character: True
    if opcode is not _sre.IN:
        return None
    negated = bool(argument) and argument[0][0] is _sre.NEGATE
    tests: list[Callable[[str], bool]] = []
    for member_opcode, member in argument[1:] if negated else argument:
        if member_opcode is _sre.LITERAL:
            tests.append(chr(member).__eq__)
        elif member_opcode is _sre.RANGE:
            low, high = member
            tests.append(lambda character, low=low, high=high: low <= ord(character) <= high)
        elif member_opcode is _sre.CATEGORY and member in _CATEGORY_PATTERNS:
            tests.append(
                lambda character, match=_CATEGORY_PATTERNS[member].match: bool(match(character))
            )
        else:
            return None
    return lambda character: any(test(character) for test in tests) is not negated
