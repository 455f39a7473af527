"""The shared regex screen: what it refuses and why, the same words from both engines, and the
property it stands for: a search with an accepted pattern never makes more character tests than
the screen counted, checked against a reference backtracking matcher on generated patterns."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable
from re import _constants as sre
from re import _parser as sre_parser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary_site import regex_guard
from canary_site.regex_guard import (
    MAX_BACKTRACKING,
    MAX_INPUT_LENGTH,
    MAX_PATTERN_LENGTH,
    UnsafeRegex,
    compile_screened,
    screen,
)
from flags.evaluation import InvalidFlagDefinition, validate_constraint
from routing.engine import Condition, InvalidRoutingDefinition

# -- a reference matcher that counts its character tests ----------------------------------------


class TooManyTests(Exception):
    pass


def _character_test(opcode: Any, argument: Any) -> Callable[[str], bool] | None:
    if opcode is sre.LITERAL:
        return lambda char: ord(char) == argument
    if opcode is sre.NOT_LITERAL:
        return lambda char: ord(char) != argument
    if opcode is sre.ANY:
        return lambda char: char != "\n"
    if opcode is not sre.IN:
        return None
    negated = bool(argument) and argument[0][0] is sre.NEGATE
    members = argument[1:] if negated else argument

    def member(char: str) -> bool:
        for kind, value in members:
            if kind is sre.LITERAL and ord(char) == value:
                return True
            if kind is sre.RANGE and value[0] <= ord(char) <= value[1]:
                return True
        return False

    return lambda char: member(char) is not negated


def backtracking_search(pattern: str, text: str, *, limit: float) -> tuple[bool, int]:
    """``re.search(pattern, text) is not None`` the way a backtracking engine finds it, and the
    character (and position) tests it made; raises TooManyTests past ``limit``.

    Every start position is tried, but only the first when the pattern begins with ``^`` (as
    ``re`` does); alternatives, quantifiers (greedy, lazy, possessive), atomic groups and
    lookaheads behave as in ``re``, including its rule that an empty round of a repetition ends
    it once the minimum is reached.
    """
    parsed = list(sre_parser.parse(pattern))
    size = len(text)
    tests = 0

    def test() -> None:
        nonlocal tests
        tests += 1
        if tests > limit:
            raise TooManyTests

    def match(items: list[Any], index: int, position: int, then: Callable[[int], bool]) -> bool:
        if index == len(items):
            return then(position)
        opcode, argument = items[index]
        char_test = _character_test(opcode, argument)

        def rest(at: int) -> bool:
            return match(items, index + 1, at, then)

        if char_test is not None:
            test()
            return position < size and char_test(text[position]) and rest(position + 1)
        if opcode is sre.AT:
            test()
            if argument in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
                return position == 0 and rest(position)
            assert argument in (sre.AT_END, sre.AT_END_STRING)
            return position == size and rest(position)
        if opcode is sre.SUBPATTERN:
            return match(list(argument[3]), 0, position, rest)
        if opcode is sre.BRANCH:
            return any(match(list(branch), 0, position, rest) for branch in argument[1])
        if opcode in (sre.ASSERT, sre.ASSERT_NOT):
            found = match(list(argument[1]), 0, position, lambda at: True)
            return (found if opcode is sre.ASSERT else not found) and rest(position)
        if opcode is sre.ATOMIC_GROUP:
            return first_end(lambda done: match(list(argument), 0, position, done), rest)
        low, high, body = argument
        body = list(body)

        def repeat(count: int, at: int, done: Callable[[int], bool]) -> bool:
            def more() -> bool:
                return count < high and match(
                    body,
                    0,
                    at,
                    lambda end: (end != at or count < low) and repeat(count + 1, end, done),
                )

            def stop() -> bool:
                return count >= low and done(at)

            return (stop() or more()) if opcode is sre.MIN_REPEAT else (more() or stop())

        if opcode is sre.POSSESSIVE_REPEAT:
            return first_end(lambda done: repeat(0, position, done), rest)
        return repeat(0, position, rest)

    def first_end(
        run: Callable[[Callable[[int], bool]], bool], rest: Callable[[int], bool]
    ) -> bool:
        ends: list[int] = []
        return run(lambda end: ends.append(end) is None) and rest(ends[0])

    anchored = parsed[:1] and parsed[0] == (sre.AT, sre.AT_BEGINNING)
    for start in range(1 if anchored else size + 1):
        if match(parsed, 0, start, lambda at: True):
            return True, tests
    return False, tests


# -- generated patterns -------------------------------------------------------------------------

ALPHABET = "ab-"
ATOMS = st.sampled_from(["a", "b", "-", ".", "[ab]", "[^a]", "[a-b]", "[^-]"])
QUANTIFIERS = st.sampled_from(
    ["", "", "", "*", "+", "?", "{0,2}", "{1,3}", "{2}", "{2,}", "*?", "+?", "*+", "++"]
)


def _groups(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # A group's body starts with an atom, so a round of a repetition always reads a character.
    body = st.tuples(ATOMS, st.lists(children, max_size=3).map("".join)).map("".join)
    return st.one_of(
        body.map(lambda inner: f"(?:{inner})"),
        st.tuples(body, body).map(lambda pair: f"(?:{pair[0]}|{pair[1]})"),
        body.map(lambda inner: f"(?={inner})"),
        body.map(lambda inner: f"(?!{inner})"),
        body.map(lambda inner: f"(?>{inner})"),
    )


ITEMS = st.recursive(ATOMS, _groups, max_leaves=6)
PATTERNS = st.tuples(
    st.sampled_from(["", "^"]),
    st.lists(st.tuples(ITEMS, QUANTIFIERS).map("".join), min_size=1, max_size=6).map("".join),
    st.sampled_from(["", "$"]),
).map("".join)


def hostile_texts(length: int) -> list[str]:
    """Texts that make backtracking work: runs of one character, with and without a different
    last one, and alternations of two."""
    texts = [char * length for char in ALPHABET]
    for first in ALPHABET:
        for second in ALPHABET:
            if first != second:
                texts.append(first * (length - 1) + second)
                texts.append((first + second) * (length // 2))
                texts.append((first + second) * (length // 2 - 1) + first + first)
    return texts


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=PATTERNS,
    length=st.integers(min_value=4, max_value=10),
    text=st.text(alphabet=ALPHABET, max_size=10),
)
def test_accepted_pattern__searches_any_short_text_within_the_tests_the_screen_counted(
    pattern: str, length: int, text: str
) -> None:
    # The screen's count is an upper bound for every input length; short inputs keep the
    # reference matcher fast. The budget scales with the square of the length, as it would be
    # chosen for that length.
    budget = 8 * (length + 1) ** 2
    verdict = screen(pattern, max_input=length, budget=budget)
    if verdict.problem:
        return
    assert verdict.steps <= budget
    for sample in [text[:length], *hostile_texts(length)]:
        try:
            found, tests = backtracking_search(pattern, sample, limit=verdict.steps)
        except TooManyTests:
            pytest.fail(f"{pattern!r} on {sample!r} took more than {verdict.steps} tests")
        assert found is (re.search(pattern, sample) is not None), (pattern, sample)
        assert tests <= verdict.steps


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.text(alphabet="ab-", max_size=3),
    atom=ATOMS,
    inner=st.sampled_from(["*", "+", "{1,5}", "*?", "+?"]),
    outer=st.sampled_from(["*", "+", "{2,}", "*?"]),
    suffix=st.text(alphabet="ab-$", max_size=3),
)
def test_unforced_quantifier_inside_an_unbounded_repetition__is_always_refused(
    prefix: str, atom: str, inner: str, outer: str, suffix: str
) -> None:
    pattern = f"{re.escape(prefix)}(?:{atom}{inner}){outer}{suffix}"

    with pytest.raises(UnsafeRegex, match="could take too long"):
        compile_screened(pattern)


OVERLAPPING = st.sampled_from(["a", ".", "[ab]", "[a-b]", "[^-]", r"\w", "(?:a)"])


@settings(max_examples=200, deadline=None)
@given(
    anchor=st.sampled_from(["", "^"]),
    first=OVERLAPPING,
    second=OVERLAPPING,
    third=OVERLAPPING,
    quantifiers=st.tuples(*[st.sampled_from(["*", "+", "*?", "{0,1000}"])] * 3),
    tail=st.sampled_from(["x", "$", "-x$", ""]),
)
def test_three_unbounded_quantifiers_that_overlap__are_refused_anchored_or_not(
    anchor: str, first: str, second: str, third: str, quantifiers: tuple[str, ...], tail: str
) -> None:
    # Each can match "a", so a search tries every way to share the text among them: cubic.
    one, two, three = quantifiers
    pattern = f"{anchor}{first}{one}{second}{two}{third}{three}{tail}"

    with pytest.raises(UnsafeRegex, match="too many ways to match"):
        compile_screened(pattern)


@settings(max_examples=300, deadline=None)
@given(pattern=PATTERNS)
def test_both_engines__refuse_what_the_screen_refuses__in_its_words(pattern: str) -> None:
    try:
        compile_screened(pattern, max_input=MAX_INPUT_LENGTH)
    except UnsafeRegex as error:
        with pytest.raises(InvalidRoutingDefinition) as routing:
            Condition("path", "regex", (pattern,), case_sensitive=True)
        assert (routing.value.field, routing.value.message) == ("values[0]", error.message)
    else:
        assert Condition("path", "regex", (pattern,), case_sensitive=True).matches is not None
    try:
        compile_screened(pattern, max_input=256)
    except UnsafeRegex as error:
        with pytest.raises(InvalidFlagDefinition) as flags:
            validate_constraint({"attribute": "a", "operator": "regex", "values": [pattern]})
        assert (flags.value.field, flags.value.message) == ("values[0]", error.message)
    else:
        validate_constraint({"attribute": "a", "operator": "regex", "values": [pattern]})


# -- examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a+)+$", "a quantifier inside a repeated group"),
        (r"(\w+\s?)+$", "a quantifier inside a repeated group"),
        (r"(a|ab)+c", "alternatives inside a repeated group"),
        (r"(a)\1", "backreferences are not allowed"),
        (r"(?P<x>a)(?(x)b|c)", "backreferences are not allowed"),
        (r".*.*.*x", "too many ways to match"),
        (r"^.*.*.*x", "too many ways to match"),
        (".*" + "a" * 200 + "b", "too many ways to match"),
        (r"\d+\.\d+", "too many ways to match"),
    ],
)
def test_compile_screened__refuses_backtracking_shapes_on_1024_characters(
    pattern: str, reason: str
) -> None:
    with pytest.raises(UnsafeRegex) as caught:
        compile_screened(pattern)

    assert caught.value.message.startswith("regex could take too long to match: " + reason)


@pytest.mark.parametrize(
    "pattern",
    [
        r"^/orders/\d+$",
        r"^/api/v[12]/",
        r"^/api/.*/v2$",
        r"Chrome/\d+",
        r"/v\d+/",
        r"(?i)mobile|android",
        r"^Mozilla/5\.0 .*Mobile",
        r"\.json$",
        r"^(?:foo|bar)+/\d+$",
        r"^\d{1,3}(\.\d{1,3}){3}$",
        r"^[a-f0-9]{8}-[a-f0-9]{4}-",
        r"^[^@]+@.*",
    ],
)
def test_compile_screened__accepts_patterns_that_cannot_rescan_1024_characters(
    pattern: str,
) -> None:
    compiled = compile_screened(pattern)

    assert compiled.pattern == pattern
    assert screen(pattern).steps <= MAX_BACKTRACKING


@pytest.mark.parametrize(
    "pattern",
    [r".*@example\.com$", r"\d+\.\d+", r"\w+@\w+\.com", r"^.*.*x", r"^([a-z]+\.)+[a-z]+$"],
)
def test_quadratic_patterns__pass_on_flags_256_characters_but_not_on_routings_1024(
    pattern: str,
) -> None:
    assert compile_screened(pattern, max_input=256).pattern == pattern
    with pytest.raises(UnsafeRegex, match="anchoring the pattern with \\^ helps"):
        compile_screened(pattern, max_input=1024)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("a" * (MAX_PATTERN_LENGTH + 1), f"regex is longer than {MAX_PATTERN_LENGTH} characters"),
        ("(unclosed", "invalid regex: missing ), unterminated subpattern at position 0"),
        ("a{2,1}", "invalid regex: min repeat greater than max repeat at position 2"),
    ],
)
def test_compile_screened__names_what_is_wrong(pattern: str, message: str) -> None:
    with pytest.raises(UnsafeRegex) as caught:
        compile_screened(pattern)

    assert caught.value.message == message


def test_routing_and_flags__report_the_same_sentence_on_their_own_fields() -> None:
    with pytest.raises(InvalidRoutingDefinition) as routing:
        Condition("header", "regex", ("^ok$", "(x+)+y"), name="x-user")
    with pytest.raises(InvalidFlagDefinition) as flags:
        validate_constraint({"attribute": "user", "operator": "regex", "values": ["(x+)+y"]})

    nested = "a quantifier inside a repeated group, such as (a+)+"
    assert routing.value.field == "values[1]" and flags.value.field == "values[0]"
    assert routing.value.message == flags.value.message
    assert routing.value.message == f"regex could take too long to match: {nested}"


def test_screen__reports_its_count_and_case_folding_keeps_the_verdict() -> None:
    plain = screen(r"^/api/.*/v2$")
    folded = screen(r"^/API/.*/V2$", ignore_case=True)

    assert plain.problem is None and plain.anchored and 0 < plain.steps <= plain.budget
    assert folded.problem is None
    assert screen(r".*.*x", budget=math.inf).steps > 100 * MAX_BACKTRACKING


def test_guard__loads_without_django_or_an_app() -> None:
    # From its file, in a fresh interpreter: the canary_site package itself loads Celery and
    # Django, and this interpreter has them already.
    program = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('guard', {regex_guard.__file__!r})\n"
        "module = sys.modules['guard'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.compile_screened('^/ok$')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'canary_site', 'flags', 'routing')))\n"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
