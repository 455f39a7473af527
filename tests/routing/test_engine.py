"""Tests of the routing decision engine: pure, no database, runnable with ``-p no:django``."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.engine import (
    BUCKETS,
    CircuitBreaker,
    CircuitBreakerSettings,
    CircuitState,
    Condition,
    InvalidRoutingDefinition,
    Reason,
    RequestContext,
    RuntimeState,
    TokenBucket,
    build_service_snapshot,
    decide,
)

STABLE = "1.4.0"
CANARY = "1.5.0"


def _target(target_id: str, version: str = STABLE, **extra: Any) -> dict[str, Any]:
    return {
        "id": target_id,
        "endpoint": f"http://{target_id}.internal:8080",
        "version": version,
        **extra,
    }


def _service(
    *,
    canary_share: int = 1000,
    affinity: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    healthy: tuple[bool, bool] = (True, True),
    **rule: Any,
) -> Any:
    """A checkout service with one rule splitting stable-1 and canary-1."""
    return build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "version": 3,
            "targets": [
                _target("stable-1", healthy=healthy[0]),
                _target("canary-1", CANARY, healthy=healthy[1]),
            ],
            "rules": [
                {
                    "id": 1,
                    "name": "split",
                    "conditions": conditions or [],
                    "targets": [
                        {"id": "stable-1", "weight": BUCKETS - canary_share},
                        {"id": "canary-1", "weight": canary_share},
                    ],
                    "affinity": affinity,
                    **rule,
                }
            ],
        }
    )


COOKIE = {"type": "cookie", "name": "canary_session", "ttl_s": 3600, "secure": True}


def _request(
    *,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    client_ip: str = "192.0.2.10",
) -> RequestContext:
    return RequestContext(
        method=method,
        path=path,
        headers=headers or {},
        cookies=cookies or {},
        query=query or {},
        client_ip=client_ip,
    )


def _sticky(key: str) -> RequestContext:
    return _request(cookies={"canary_session": key})


# ---------------------------------------------------------------------------------------------
# Weights and stickiness


def test_decide__with_weighted_rule__honours_weights_within_one_percent() -> None:
    service = build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "rules": [
                {
                    "id": 1,
                    "targets": [
                        _target("stable-1", weight=7000),
                        _target("stable-2", weight=2000),
                        _target("canary-1", CANARY, weight=1000),
                    ],
                }
            ],
        }
    )
    state = RuntimeState(rng=random.Random(20240501))
    request = _request()
    total = 100_000

    counts = Counter(decide(service, request, state=state).target.id for _ in range(total))

    assert abs(counts["stable-1"] / total - 0.70) < 0.01
    assert abs(counts["stable-2"] / total - 0.20) < 0.01
    assert abs(counts["canary-1"] / total - 0.10) < 0.01


def test_decide__with_sticky_cookie__spreads_users_by_weight_within_one_percent() -> None:
    service = _service(canary_share=2500, affinity=COOKIE)
    total = 100_000

    canary = sum(
        decide(service, _sticky(f"user-{index}")).target.id == "canary-1" for index in range(total)
    )

    assert abs(canary / total - 0.25) < 0.01


@given(key=st.text(min_size=1, max_size=40), share=st.integers(0, BUCKETS))
def test_decide__with_sticky_cookie__keeps_user_on_same_target_across_calls(
    key: str, share: int
) -> None:
    service = _service(canary_share=share, affinity=COOKIE)
    state = RuntimeState(rng=random.Random(1))

    first = decide(service, _sticky(key), state=state)
    again = [decide(service, _sticky(key), state=state) for _ in range(5)]

    assert first.reason == Reason.STICKY
    assert {decision.target.id for decision in again} == {first.target.id}
    assert {decision.bucket for decision in again} == {first.bucket}


@given(key=st.text(min_size=1, max_size=40))
def test_decide__with_sticky_header__keeps_user_on_same_target(key: str) -> None:
    service = _service(canary_share=5000, affinity={"type": "header", "name": "X-User-Id"})

    targets = {decide(service, _request(headers={"x-user-id": key})).target.id for _ in range(5)}

    assert len(targets) == 1


@given(
    shares=st.tuples(st.integers(0, BUCKETS), st.integers(0, BUCKETS)).map(sorted),
    keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=30),
)
def test_decide__when_canary_share_raised__never_moves_canary_users_back(
    shares: list[int], keys: list[str]
) -> None:
    lower, higher = shares
    before = _service(canary_share=lower, affinity=COOKIE)
    after = _service(canary_share=higher, affinity=COOKIE)

    for key in keys:
        if decide(before, _sticky(key)).target.id == "canary-1":
            assert decide(after, _sticky(key)).target.id == "canary-1"


def test_decide__with_canary_share__lays_canary_on_the_lowest_buckets() -> None:
    service = _service(canary_share=1000, affinity=COOKIE)

    for index in range(2000):
        decision = decide(service, _sticky(f"user-{index}"))
        expected = "canary-1" if decision.bucket < 1000 else "stable-1"
        assert decision.target.id == expected


def test_decide__for_newcomer_on_cookie_affinity__issues_a_key_that_keeps_it_sticky() -> None:
    service = _service(canary_share=5000, affinity=COOKIE)
    state = RuntimeState(rng=random.Random(3))

    first = decide(service, _request(), state=state)
    header = first.set_cookie_header()
    back = decide(service, _sticky(first.sticky_key), state=state)

    assert first.key_issued and first.reason == Reason.STICKY
    assert header == (
        f"canary_session={first.sticky_key}; Path=/; SameSite=Lax; Max-Age=3600; Secure; HttpOnly"
    )
    assert back.target == first.target and not back.key_issued
    assert back.set_cookie_header() is None


def test_decide__without_sticky_header__picks_at_random_by_weight() -> None:
    service = _service(canary_share=5000, affinity={"type": "header", "name": "x-user-id"})
    state = RuntimeState(rng=random.Random(5))

    decisions = [decide(service, _request(), state=state) for _ in range(200)]

    assert {decision.reason for decision in decisions} == {Reason.WEIGHTED}
    assert {decision.target.id for decision in decisions} == {"stable-1", "canary-1"}
    assert not any(decision.key_issued for decision in decisions)


# ---------------------------------------------------------------------------------------------
# Health, failover and circuit breakers


@given(
    health=st.lists(st.booleans(), min_size=1, max_size=6),
    data=st.data(),
    key=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
    strategy=st.sampled_from(["weighted", "round_robin", "least_connections"]),
)
@settings(max_examples=200)
def test_decide__when_some_targets_unavailable__never_picks_one_while_an_available_one_exists(
    health: list[bool], data: st.DataObject, key: str | None, strategy: str
) -> None:
    count = len(health)
    cuts = data.draw(st.lists(st.integers(0, BUCKETS), min_size=count - 1, max_size=count - 1))
    circuit_open = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
    edges = [0, *sorted(cuts), BUCKETS]
    targets = [
        _target(
            f"t{index}",
            STABLE if index % 2 else CANARY,
            healthy=healthy,
            weight=edges[index + 1] - edges[index],
        )
        for index, healthy in enumerate(health)
    ]
    rule: dict[str, Any] = {"id": 1, "strategy": strategy, "targets": targets}
    if strategy == "weighted":
        rule["affinity"] = {"type": "header", "name": "x-user-id"}
    service = build_service_snapshot(
        {"name": "checkout", "stable_version": STABLE, "rules": [rule]}
    )
    state = RuntimeState(
        rng=random.Random(11),
        default_breaker=CircuitBreakerSettings(failure_threshold=1, recovery_timeout_s=3600),
    )
    for index, is_open in enumerate(circuit_open):
        if is_open:
            state.record_failure(f"t{index}", now=0.0)
    available = {f"t{index}" for index in range(count) if health[index] and not circuit_open[index]}
    request = _request(headers={"x-user-id": key} if key else {})

    for _ in range(10):
        decision = decide(service, request, state=state, now=1.0)
        if available:
            assert decision.target is not None and decision.target.id in available
        else:
            assert decision.reason == Reason.FAIL_OPEN


def test_decide__when_sticky_target_unhealthy__fails_over_and_stays_on_the_substitute() -> None:
    service = build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "rules": [
                {
                    "id": 1,
                    "targets": [
                        _target("canary-1", CANARY, weight=5000, healthy=False),
                        _target("stable-1", weight=2500),
                        _target("stable-2", weight=2500),
                    ],
                    "affinity": COOKIE,
                }
            ],
        }
    )
    canary_users = [
        key
        for key in (f"user-{index}" for index in range(200))
        if decide(service, _sticky(key)).reason == Reason.FAILOVER
    ]

    assert canary_users
    for key in canary_users:
        first = decide(service, _sticky(key))
        assert first.target.id in {"stable-1", "stable-2"}
        assert decide(service, _sticky(key)).target == first.target
        assert "canary-1 is marked unhealthy, so it failed over to" in first.explain()


def test_decide__when_no_target_healthy_and_failing_open__picks_by_weight() -> None:
    service = _service(healthy=(False, False), failover={"fail_open": True})

    decision = decide(service, _request())

    assert decision.reason == Reason.FAIL_OPEN
    assert decision.target is not None


def test_decide__when_no_target_healthy_and_failing_closed__answers_no_target() -> None:
    service = _service(healthy=(False, False), failover={"fail_open": False})

    decision = decide(service, _request())

    assert decision.reason == Reason.NO_HEALTHY_TARGET
    assert decision.target is None
    assert decision.rule_id == 1
    assert "fails closed" in decision.explain()


def test_decide__when_no_target_healthy__uses_first_healthy_fallback_before_failing() -> None:
    service = build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "targets": [
                _target("stable-1", healthy=False),
                _target("spare-1", healthy=False),
                _target("spare-2"),
            ],
            "rules": [
                {
                    "id": 1,
                    "targets": [{"id": "stable-1", "weight": BUCKETS}],
                    "failover": {"fail_open": False, "fallback_target_ids": ["spare-1", "spare-2"]},
                }
            ],
        }
    )

    decision = decide(service, _request())

    assert decision.reason == Reason.FAILOVER
    assert decision.target.id == "spare-2"


def test_decide__with_excluded_target__picks_another() -> None:
    service = _service(canary_share=BUCKETS)

    decision = decide(service, _request(), exclude={"canary-1"})

    assert decision.target.id == "stable-1"
    assert decision.reason == Reason.FAILOVER


def test_decide__when_circuit_open__avoids_target_until_recovery_allows_a_trial() -> None:
    service = _service(
        canary_share=BUCKETS,
        circuit_breaker={"failure_threshold": 2, "recovery_timeout_s": 30, "half_open_requests": 1},
    )
    state = RuntimeState(rng=random.Random(2))
    assert decide(service, _request(), state=state, now=0.0).target.id == "canary-1"

    state.record_failure("canary-1", now=1.0)
    state.record_failure("canary-1", now=2.0)

    assert decide(service, _request(), state=state, now=3.0).target.id == "stable-1"
    assert decide(service, _request(), state=state, now=32.0).target.id == "canary-1"
    # The single trial slot is taken until its outcome is known.
    assert decide(service, _request(), state=state, now=32.5).target.id == "stable-1"
    state.record_success("canary-1")
    assert state.circuit_state("canary-1", now=33.0) is CircuitState.CLOSED
    assert decide(service, _request(), state=state, now=33.0).target.id == "canary-1"


def test_circuit_breaker__moves_closed_open_half_open_closed_on_an_injected_clock() -> None:
    breaker = CircuitBreaker(
        CircuitBreakerSettings(failure_threshold=3, recovery_timeout_s=10, half_open_requests=2)
    )

    breaker.record_failure(now=0.0)
    breaker.record_failure(now=1.0)
    assert breaker.state(now=1.0) is CircuitState.CLOSED
    breaker.record_failure(now=2.0)
    assert breaker.state(now=2.0) is CircuitState.OPEN
    assert not breaker.allow(now=11.9)

    assert breaker.state(now=12.0) is CircuitState.HALF_OPEN
    assert breaker.allow(now=12.0) and breaker.allow(now=12.1)
    assert not breaker.allow(now=12.2)
    breaker.record_success()
    assert breaker.state(now=12.3) is CircuitState.HALF_OPEN
    breaker.record_success()
    assert breaker.state(now=12.4) is CircuitState.CLOSED
    assert breaker.allow(now=12.5)


def test_circuit_breaker__when_trial_fails__opens_again_for_a_full_timeout() -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(failure_threshold=1, recovery_timeout_s=10))
    breaker.record_failure(now=0.0)
    assert breaker.allow(now=10.0)

    breaker.record_failure(now=10.5)

    assert breaker.state(now=20.0) is CircuitState.OPEN
    assert breaker.state(now=20.5) is CircuitState.HALF_OPEN


def test_circuit_breaker__when_success_while_closed__resets_the_failure_count() -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(failure_threshold=2))

    breaker.record_failure(now=0.0)
    breaker.record_success()
    breaker.record_failure(now=1.0)

    assert breaker.state(now=1.0) is CircuitState.CLOSED


def test_circuit_breaker__when_trial_never_reports__admits_a_new_trial_after_timeout() -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(failure_threshold=1, recovery_timeout_s=5))
    breaker.record_failure(now=0.0)
    assert breaker.allow(now=5.0)
    assert not breaker.allow(now=6.0)

    assert breaker.allow(now=10.0)


def test_runtime_state__with_default_breaker__opens_circuits_of_any_target() -> None:
    state = RuntimeState(default_breaker=CircuitBreakerSettings(failure_threshold=1))

    state.record_failure("stable-1", now=0.0)

    assert not state.allow("stable-1", now=1.0)
    assert state.allow("canary-1", now=1.0)


# ---------------------------------------------------------------------------------------------
# Rate limiting


def test_token_bucket__allows_a_burst_then_refuses_with_positive_retry_after() -> None:
    limiter = TokenBucket(rate=10, burst=3)

    results = [limiter.take(now=0.0) for _ in range(4)]

    assert results[:3] == [(True, 0.0)] * 3
    allowed, retry_after = results[3]
    assert not allowed
    assert retry_after == pytest.approx(0.1)


def test_token_bucket__refills_at_its_rate_up_to_the_burst() -> None:
    limiter = TokenBucket(rate=2, burst=2)
    limiter.take(now=0.0)
    limiter.take(now=0.0)

    assert limiter.take(now=0.5) == (True, 0.0)
    assert not limiter.take(now=0.5)[0]
    assert [limiter.take(now=100.0)[0] for _ in range(3)] == [True, True, False]


def test_decide__when_rule_rate_limit_exhausted__refuses_with_retry_after() -> None:
    service = _service(rate_limit={"rps": 4, "burst": 2})
    state = RuntimeState()

    decisions = [decide(service, _request(), state=state, now=0.0) for _ in range(3)]

    assert [decision.target is not None for decision in decisions] == [True, True, False]
    assert decisions[2].reason == Reason.RATE_LIMITED
    assert decisions[2].retry_after == pytest.approx(0.25)
    assert "rate limit of 4 requests per second (burst 2)" in decisions[2].explain()
    assert decide(service, _request()).target is not None


# ---------------------------------------------------------------------------------------------
# Strategies and rule order


def _pool(strategy: str, **rule: Any) -> Any:
    return build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "rules": [
                {
                    "id": 7,
                    "strategy": strategy,
                    "targets": [_target("a"), _target("b"), _target("c", healthy=False)],
                    **rule,
                }
            ],
        }
    )


def test_decide__with_round_robin__cycles_over_healthy_targets() -> None:
    service = _pool("round_robin")
    state = RuntimeState()

    picks = [decide(service, _request(), state=state).target.id for _ in range(6)]

    assert picks == ["a", "b", "a", "b", "a", "b"]


def test_decide__with_least_connections__picks_the_target_with_fewest_in_flight() -> None:
    service = _pool("least_connections")
    state = RuntimeState()
    state.begin("a")
    state.begin("a")
    state.begin("b")

    decision = decide(service, _request(), state=state)
    state.end("a")
    state.end("a")

    assert decision.target.id == "b"
    assert decision.reason == Reason.LEAST_CONNECTIONS
    assert decide(service, _request(), state=state).target.id == "a"


@pytest.mark.parametrize(
    ("strategy", "request_kwargs"),
    [
        ("header", {"headers": {"x-canary": CANARY}}),
        ("cookie", {"cookies": {"X-Canary": "canary-1"}}),
        ("query", {"query": {"X-Canary": CANARY}}),
    ],
)
def test_decide__with_pinning_strategy__routes_to_the_named_target(
    strategy: str, request_kwargs: dict[str, Any]
) -> None:
    service = _service(canary_share=0, strategy=strategy, strategy_key="X-Canary")

    decision = decide(service, _request(**request_kwargs))

    assert decision.target.id == "canary-1"
    assert decision.reason == Reason.PINNED


def test_decide__with_pinning_strategy_and_no_pin__splits_by_weight() -> None:
    service = _service(canary_share=0, strategy="header", strategy_key="x-canary")

    decision = decide(service, _request(headers={"x-canary": "nonexistent"}))

    assert decision.target.id == "stable-1"
    assert decision.reason == Reason.WEIGHTED


def test_decide__with_several_rules__takes_first_enabled_match_by_priority() -> None:
    service = build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "targets": [_target("stable-1"), _target("canary-1", CANARY)],
            "rules": [
                {
                    "id": "everyone",
                    "priority": 50,
                    "targets": [{"id": "stable-1", "weight": BUCKETS}],
                },
                {
                    "id": "off",
                    "priority": 1,
                    "enabled": False,
                    "targets": [{"id": "stable-1", "weight": BUCKETS}],
                },
                {
                    "id": "beta",
                    "priority": 10,
                    "conditions": [
                        {
                            "source": "header",
                            "name": "x-beta",
                            "operator": "equals",
                            "values": ["1"],
                        }
                    ],
                    "targets": [{"id": "canary-1", "weight": BUCKETS}],
                },
            ],
        }
    )

    beta = decide(service, _request(headers={"x-beta": "1"}))
    others = decide(service, _request())

    assert (beta.rule_id, beta.target.id, beta.reason) == ("beta", "canary-1", Reason.RULE_MATCH)
    assert (others.rule_id, others.target.id) == ("everyone", "stable-1")
    assert [rule.id for rule in service.rules] == ["off", "beta", "everyone"]


def test_decide__when_no_rule_matches__routes_to_a_healthy_stable_target() -> None:
    service = _service(
        conditions=[{"source": "path", "operator": "prefix", "values": ["/beta"]}],
    )

    decision = decide(service, _request(path="/shop"))

    assert decision.reason == Reason.NO_RULE
    assert decision.target.id == "stable-1"
    assert decision.rule_id is None
    assert "No enabled rule matched" in decision.explain()


def test_decide__when_no_rule_matches_and_stable_unhealthy__answers_no_target() -> None:
    service = _service(
        conditions=[{"source": "path", "operator": "prefix", "values": ["/beta"]}],
        healthy=(False, True),
    )

    decision = decide(service, _request(path="/shop"))

    assert (decision.target, decision.reason) == (None, Reason.NO_RULE)


# ---------------------------------------------------------------------------------------------
# Conditions


@pytest.mark.parametrize(
    ("condition", "matching", "other"),
    [
        (
            {"source": "header", "name": "X-Beta", "operator": "equals", "values": ["Yes"]},
            _request(headers={"x-beta": "yes"}),
            _request(headers={"x-beta": "no"}),
        ),
        (
            {"source": "cookie", "name": "plan", "operator": "in", "values": ["gold", "silver"]},
            _request(cookies={"plan": "SILVER"}),
            _request(cookies={"plan": "bronze"}),
        ),
        (
            {"source": "query", "name": "v", "operator": "prefix", "values": ["2", "3"]},
            _request(query={"v": "3.1"}),
            _request(query={"v": "1.9"}),
        ),
        (
            {"source": "path", "operator": "prefix", "values": ["/api/"]},
            _request(path="/API/orders"),
            _request(path="/web/api/"),
        ),
        (
            {"source": "path", "operator": "contains", "values": ["/checkout/"]},
            _request(path="/eu/checkout/pay"),
            _request(path="/eu/cart"),
        ),
        (
            {"source": "path", "operator": "regex", "values": [r"^/orders/\d+$"]},
            _request(path="/orders/42"),
            _request(path="/orders/42/items"),
        ),
        (
            {"source": "method", "operator": "in", "values": ["post", "put"]},
            _request(method="POST"),
            _request(method="GET"),
        ),
        (
            {"source": "client_ip", "operator": "cidr", "values": ["10.0.0.0/8", "2001:db8::/32"]},
            _request(client_ip="10.20.30.40"),
            _request(client_ip="192.0.2.1"),
        ),
        (
            {"source": "client_ip", "operator": "cidr", "values": ["2001:db8::/32"]},
            _request(client_ip="2001:db8::1"),
            _request(client_ip="not an address"),
        ),
        (
            {"source": "client_ip", "operator": "cidr", "values": ["10.0.0.0/8"]},
            _request(client_ip="::ffff:10.1.2.3"),
            _request(client_ip="::ffff:11.1.2.3"),
        ),
        (
            {"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]},
            _request(headers={"x-beta": "1"}),
            _request(),
        ),
    ],
    ids=lambda value: f"{value['source']}-{value['operator']}" if isinstance(value, dict) else None,
)
def test_condition__matches_its_source_with_its_operator(
    condition: dict[str, Any], matching: RequestContext, other: RequestContext
) -> None:
    compiled = Condition(**{**condition, "values": tuple(condition["values"])})

    assert compiled.matches(matching)
    assert not compiled.matches(other)


def test_condition__when_case_sensitive__tells_case_apart() -> None:
    sensitive = Condition("header", "equals", ("Yes",), name="x-beta", case_sensitive=True)
    sensitive_regex = Condition("path", "regex", ("^/API",), case_sensitive=True)
    insensitive_regex = Condition("path", "regex", ("^/API",))

    assert sensitive.matches(_request(headers={"x-beta": "Yes"}))
    assert not sensitive.matches(_request(headers={"x-beta": "yes"}))
    assert not sensitive_regex.matches(_request(path="/api"))
    assert insensitive_regex.matches(_request(path="/api"))


def test_condition__when_negated__inverts_the_match_including_absence() -> None:
    condition = Condition("header", "equals", ("1",), name="x-beta", negate=True)

    assert not condition.matches(_request(headers={"x-beta": "1"}))
    assert condition.matches(_request(headers={"x-beta": "0"}))
    assert condition.matches(_request())


def test_condition__with_regex__looks_only_at_a_bounded_prefix_of_the_value() -> None:
    condition = Condition("path", "regex", ("tail$",))

    assert condition.matches(_request(path="/" + "a" * 100 + "tail"))
    assert not condition.matches(_request(path="/" + "a" * 5000 + "tail"))


@given(
    conditions=st.lists(
        st.sampled_from(
            [
                {"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]},
                {"source": "path", "operator": "prefix", "values": ["/api"]},
                {"source": "method", "operator": "in", "values": ["GET", "HEAD"]},
            ]
        ),
        max_size=3,
    ),
    beta=st.booleans(),
    api=st.booleans(),
    get=st.booleans(),
)
def test_decide__applies_a_rule_only_when_all_its_conditions_hold(
    conditions: list[dict[str, Any]], beta: bool, api: bool, get: bool
) -> None:
    service = _service(conditions=conditions, canary_share=BUCKETS)
    request = _request(
        headers={"x-beta": "1"} if beta else {},
        path="/api/x" if api else "/web",
        method="GET" if get else "POST",
    )
    holds = {"header": beta, "path": api, "method": get}

    decision = decide(service, request)

    assert (decision.rule_id == 1) == all(holds[c["source"]] for c in conditions)


def test_request_context__from_http__lowercases_headers_and_parses_cookies_and_query() -> None:
    request = RequestContext.from_http(
        "get",
        "/api",
        [("X-Beta", "1"), ("Cookie", 'a=1; canary_session="k42"'), ("x-beta", "2")],
        query_string="v=2&v=3&flag=",
        client_ip="10.0.0.1",
    )

    assert request.method == "GET"
    assert request.headers["x-beta"] == "1, 2"
    assert request.cookies == {"a": "1", "canary_session": "k42"}
    assert request.query == {"v": "2", "flag": ""}


# ---------------------------------------------------------------------------------------------
# Explanations


def test_decision__explain__names_rule_conditions_bucket_and_layout() -> None:
    service = _service(
        canary_share=1000,
        affinity=COOKIE,
        name="beta users",
        conditions=[
            {"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]},
            {"source": "path", "operator": "prefix", "values": ["/api"]},
            {"source": "method", "operator": "in", "values": ["GET", "POST"]},
        ],
    )
    request = _request(
        headers={"x-beta": "1"}, path="/api/cart", cookies={"canary_session": "user-1"}
    )

    decision = decide(service, request)
    text = decision.explain()

    assert text.startswith(
        'Rule 1 \'beta users\' matched header x-beta equals "1", path starts with "/api" '
        'and method is one of "GET", "POST"; '
        f"sticky bucket {decision.bucket} of 10000 (from cookie canary_session) falls in "
        f"{decision.target.name}'s share"
    )
    assert "(0-999 -> canary-1 (v1.5.0), 1000-9999 -> stable-1 (v1.4.0))" in text
    assert text.endswith(".")


# ---------------------------------------------------------------------------------------------
# Validation


def _with_rule(**rule: Any) -> dict[str, Any]:
    return {
        "name": "checkout",
        "stable_version": STABLE,
        "targets": [_target("stable-1"), _target("canary-1", CANARY)],
        "rules": [
            {
                "id": 1,
                "targets": [
                    {"id": "stable-1", "weight": 9000},
                    {"id": "canary-1", "weight": 1000},
                ],
                **rule,
            }
        ],
    }


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (
            _with_rule(
                conditions=[
                    {"source": "path", "operator": "prefix", "values": ["/"]},
                    {"source": "path", "operator": "regex", "values": ["(unclosed"]},
                ]
            ),
            "rules[0].conditions[1].values[0]",
        ),
        (
            _with_rule(conditions=[{"source": "path", "operator": "regex", "values": ["(a+)+$"]}]),
            "rules[0].conditions[0].values[0]",
        ),
        (
            _with_rule(conditions=[{"source": "path", "operator": "regex", "values": ["(a|ab)*"]}]),
            "rules[0].conditions[0].values[0]",
        ),
        (
            _with_rule(conditions=[{"source": "path", "operator": "regex", "values": ["x" * 300]}]),
            "rules[0].conditions[0].values[0]",
        ),
        (
            _with_rule(
                conditions=[{"source": "client_ip", "operator": "cidr", "values": ["10.0.0/33"]}]
            ),
            "rules[0].conditions[0].values",
        ),
        (
            _with_rule(
                conditions=[{"source": "header", "name": "a", "operator": "equals", "values": []}]
            ),
            "rules[0].conditions[0].values",
        ),
        (
            _with_rule(conditions=[{"source": "header", "operator": "equals", "values": ["1"]}]),
            "rules[0].conditions[0].name",
        ),
        (
            _with_rule(conditions=[{"source": "body", "operator": "equals", "values": ["1"]}]),
            "rules[0].conditions[0].source",
        ),
        (
            _with_rule(
                targets=[{"id": "stable-1", "weight": 9000}, {"id": "canary-1", "weight": 900}]
            ),
            "rules[0].targets",
        ),
        (_with_rule(targets=[]), "rules[0].targets"),
        (
            _with_rule(
                targets=[{"id": "stable-1", "weight": 9000}, {"id": "gone", "weight": 1000}]
            ),
            "rules[0].targets[1].id",
        ),
        (
            _with_rule(
                targets=[{"id": "stable-1", "weight": 12000}, {"id": "canary-1", "weight": -2000}]
            ),
            "rules[0].targets[0].weight",
        ),
        (
            _with_rule(affinity={"type": "cookie", "name": "s", "ttl_s": -5}),
            "rules[0].affinity.ttl_s",
        ),
        (_with_rule(affinity={"type": "ip", "name": "s"}), "rules[0].affinity.type"),
        (_with_rule(affinity={"type": "cookie", "secure": True}), "rules[0].affinity.name"),
        (
            _with_rule(strategy="round_robin", affinity={"type": "header", "name": "x-user"}),
            "rules[0].affinity",
        ),
        (_with_rule(strategy="header"), "rules[0].strategy_key"),
        (_with_rule(strategy="random"), "rules[0].strategy"),
        (
            _with_rule(failover={"fallback_target_ids": ["nowhere"]}),
            "rules[0].failover.fallback_target_ids[0]",
        ),
        (
            _with_rule(circuit_breaker={"failure_threshold": 0}),
            "rules[0].circuit_breaker.failure_threshold",
        ),
        (_with_rule(rate_limit={"rps": 0, "burst": 1}), "rules[0].rate_limit.rps"),
        (_with_rule(rate_limit={"rps": 10}), "rules[0].rate_limit.burst"),
        (_with_rule(wieght=3), "rules[0].wieght"),
        (_with_rule(enabled="yes"), "rules[0].enabled"),
        (
            {
                "name": "checkout",
                "stable_version": STABLE,
                "targets": [_target("stable-1", endpoint="ftp://stable.internal")],
            },
            "targets[0].endpoint",
        ),
        (
            {
                "name": "checkout",
                "stable_version": STABLE,
                "targets": [_target("stable-1", endpoint="http://:8080")],
            },
            "targets[0].endpoint",
        ),
        (
            {
                "name": "checkout",
                "stable_version": STABLE,
                "rules": [
                    {
                        "id": 1,
                        "targets": [
                            _target("stable-1", weight=5000),
                            _target("canary-1", CANARY, weight=5000, endpoint="canary:8080"),
                        ],
                    }
                ],
            },
            "rules[0].targets[1].endpoint",
        ),
        (
            {
                "name": "checkout",
                "stable_version": STABLE,
                "rules": [
                    {"id": 1, "targets": [_target("stable-1", weight=BUCKETS)]},
                    {"id": 1, "targets": [_target("stable-1", weight=BUCKETS)]},
                ],
            },
            "rules[1].id",
        ),
        ({"name": "", "stable_version": STABLE}, "name"),
        ({"name": "checkout"}, "stable_version"),
    ],
)
def test_build_service_snapshot__when_definition_invalid__names_the_field(
    definition: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRoutingDefinition) as caught:
        build_service_snapshot(definition)

    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"{field}: ")


def test_build_service_snapshot__with_inline_targets__collects_all_targets() -> None:
    service = build_service_snapshot(
        {
            "name": "checkout",
            "stable_version": STABLE,
            "version": 9,
            "rules": [
                {
                    "id": 1,
                    "targets": [
                        _target("stable-1", weight=9000, name="Stable"),
                        _target("canary-1", CANARY, weight=1000),
                    ],
                    "metadata": {"owner": "payments"},
                },
                {"id": 2, "priority": 5, "targets": [{"id": "canary-1", "weight": BUCKETS}]},
            ],
        }
    )

    assert [target.id for target in service.targets] == ["stable-1", "canary-1"]
    assert service.targets_by_id["stable-1"].name == "Stable"
    assert service.version == 9
    assert [rule.id for rule in service.rules] == [1, 2]


# -- text that reaches exported configuration and headers --------------------------------------


@pytest.mark.parametrize("character", ["\n", "\r", "\x00", "\t", "\x1f", "\x7f", "\x80", "\x9f"])
@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: {"name": f"checkout{c}"}, "name"),
        (lambda c: {"stable_version": f"{STABLE}{c}"}, "stable_version"),
        (lambda c: {"targets": [_target("stable-1", name=f"s{c}")]}, "targets[0].name"),
        (lambda c: {"targets": [_target("stable-1", version=f"1{c}")]}, "targets[0].version"),
        (lambda c: {"rules": [_rule(name=f"r{c}")]}, "rules[0].name"),
        (
            lambda c: {"rules": [_rule(strategy="header", strategy_key=f"x{c}")]},
            "rules[0].strategy_key",
        ),
        (
            lambda c: {"rules": [_rule(conditions=[_prefix("/", f"/a{c}b")])]},
            "rules[0].conditions[0].values[1]",
        ),
        (
            lambda c: {
                "rules": [
                    _rule(
                        conditions=[
                            {
                                "source": "header",
                                "name": f"x{c}",
                                "operator": "equals",
                                "values": ["1"],
                            }
                        ]
                    )
                ]
            },
            "rules[0].conditions[0].name",
        ),
    ],
    ids=[
        "service",
        "stable-version",
        "target-name",
        "target-version",
        "rule-name",
        "strategy-key",
        "condition-value",
        "condition-name",
    ],
)
def test_build_service_snapshot__with_a_control_character__names_the_field(
    change: Any, field: str, character: str
) -> None:
    definition = _with_rule() | change(character)

    with pytest.raises(InvalidRoutingDefinition) as caught:
        build_service_snapshot(definition)

    assert caught.value.field == field
    assert "control characters" in caught.value.message


def _rule(**rule: Any) -> dict[str, Any]:
    return {"id": 1, "targets": [{"id": "stable-1", "weight": BUCKETS}], **rule}


def _prefix(*values: str) -> dict[str, Any]:
    return {"source": "path", "operator": "prefix", "values": list(values)}


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://a\n:80",
        "http://a:80/\tx",
        "http://a b:80",
        "http://x;}server{listen:80",
        'http://a"b:80',
        "http://a{b}:80",
        "http://-a:80",
    ],
)
def test_target__whose_endpoint_host_is_not_a_name_or_an_address__is_refused(
    endpoint: str,
) -> None:
    with pytest.raises(InvalidRoutingDefinition) as caught:
        build_service_snapshot(
            _with_rule()
            | {"targets": [_target("stable-1", endpoint=endpoint), _target("canary-1", CANARY)]}
        )

    assert caught.value.field == "targets[0].endpoint"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://10.0.0.5:8080",
        "https://[fd00::1]:8443/base",
        "http://checkout_canary-2.svc.:80",
        "http://localhost",
    ],
)
def test_target__with_a_host_name_or_an_address__is_accepted(endpoint: str) -> None:
    snapshot = build_service_snapshot(
        _with_rule()
        | {"targets": [_target("stable-1", endpoint=endpoint), _target("canary-1", CANARY)]}
    )

    assert snapshot.targets_by_id["stable-1"].endpoint == endpoint


def test_condition__regex_that_backtracks_polynomially_on_1024_characters__is_refused() -> None:
    # Flags refused it already; the proxy hands a routing regex up to 1,024 client characters.
    with pytest.raises(InvalidRoutingDefinition) as caught:
        Condition("header", "regex", ("^/ok", ".*.*.*x"), name="x-user")

    assert caught.value.field == "values[1]"
    assert caught.value.message.startswith("regex could take too long to match")


def test_condition__regex_whose_repetition_cannot_backtrack__is_accepted() -> None:
    condition = Condition("path", "regex", (r"^/(?:foo|bar)+/\d+$",))

    assert condition.matches(_request(path="/foobarfoo/42"))
    assert not condition.matches(_request(path="/foobaz/42"))
