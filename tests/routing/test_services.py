"""Writes and reads of the routing app: validation through the engine, the routing version,
the audit trail, and snapshots in a constant number of queries."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache

from canary_site.choices import Source
from canary_site.exceptions import TransitionNotAllowed, ValidationFailed
from canary_site.models import AuditEntry
from routing import definition, selectors, services
from routing import snapshot as routing_snapshot
from routing.engine import Reason
from routing.models import RoutingRule, RuleTarget, Service, Target

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop() -> Service:
    service = services.service_create(name="shop", stable_version="1.0.0")
    services.target_create(
        service=service, name="stable", endpoint="http://stable.internal:8080", version="1.0.0"
    )
    services.target_create(
        service=service, name="canary", endpoint="http://canary:8080", version="2.0.0"
    )
    return service


def split(service: Service, canary: float = 10, **options: Any) -> RoutingRule:
    return services.rule_create(
        service=service, name="split", targets={"stable": 100 - canary, "canary": canary}, **options
    )


def refused(call: Any, **kwargs: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        call(**kwargs)
    return caught.value


def test_rule_create__compiles_into_the_engine_snapshot(shop):
    rule = split(shop, canary=12.5, affinity={"type": "cookie", "name": "s", "ttl_s": 60})

    snapshot = routing_snapshot.service_snapshot(name="shop")

    assert snapshot is not None
    assert [t.weight for t in snapshot.rules[0].targets] == [8750, 1250]
    assert snapshot.rules[0].id == rule.pk
    assert snapshot.version == Service.objects.get().routing_version
    decision = selectors.decision_for(service="shop", cookies={"s": "user-1"})
    assert decision.reason == Reason.STICKY


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"targets": {"stable": 90, "canary": 5}}, "targets"),
        ({"targets": {"stable": 90, "nope": 10}}, "targets[1].target"),
        ({"targets": {"stable": 90.001, "canary": 9.999}}, "targets[0].weight"),
        ({"targets": {"stable": 120, "canary": -20}}, "targets[0].weight"),
        (
            {"conditions": [{"source": "path", "operator": "regex", "values": ["(a+)+$"]}]},
            "conditions[0].values[0]",
        ),
        (
            {"conditions": [{"source": "path", "operator": "regex", "values": ["[unclosed"]}]},
            "conditions[0].values[0]",
        ),
        ({"affinity": {"type": "cookie", "name": "s", "ttl_s": -5}}, "affinity.ttl_s"),
        ({"rate_limit": {"rps": 0, "burst": 1}}, "rate_limit.rps"),
        ({"failover": {"fallback_target_ids": ["ghost"]}}, "failover.fallback_target_ids[0]"),
        ({"health_check": {"path": "/h", "interval_s": -1}}, "health_check.interval_s"),
        ({"strategy": "header"}, "strategy_key"),
        ({"affinity": {"type": "cookie", "name": "a b"}}, "affinity.name"),
        ({"conditions": {"source": "path"}}, "conditions"),
    ],
    ids=[
        "sum",
        "unknown-target",
        "three-decimals",
        "over-100",
        "nested-regex",
        "invalid-regex",
        "negative-ttl",
        "zero-rps",
        "ghost-fallback",
        "negative-interval",
        "missing-strategy-key",
        "cookie-name",
        "conditions-not-a-list",
    ],
)
def test_rule_create__with_bad_input__is_refused_naming_the_field(shop, options, field):
    arguments = {"targets": {"stable": 90, "canary": 10}} | options

    error = refused(services.rule_create, service=shop, **arguments)

    assert field in error.fields, error.fields
    assert not RoutingRule.objects.exists()


def test_target_create__with_a_bad_url__is_refused_naming_endpoint(shop):
    for endpoint in ["ftp://x.internal", "not a url", "http://:80", "http://h:99999"]:
        error = refused(
            services.target_create, service=shop, name="x", endpoint=endpoint, version="1.0.0"
        )
        assert "endpoint" in error.fields, (endpoint, error.fields)


def test_target_create__version_outside_the_metric_alphabet__is_refused(shop):
    error = refused(
        services.target_create, service=shop, name="x", endpoint="http://x:1", version="1.0 beta"
    )

    assert "version" in error.fields


def test_every_write__bumps_the_service_column_and_the_shared_cache_key(
    shop, django_capture_on_commit_callbacks
):
    before_column = Service.objects.get().routing_version
    before_key = cache.get(routing_snapshot.VERSION_CACHE_KEY)

    with django_capture_on_commit_callbacks(execute=True):
        rule = split(shop)
    with django_capture_on_commit_callbacks(execute=True):
        services.rule_set_weights(rule=rule, weights={"canary": 20, "stable": 80})

    assert Service.objects.get().routing_version == before_column + 2
    assert cache.get(routing_snapshot.VERSION_CACHE_KEY) != before_key
    assert routing_snapshot.service_snapshot(name="shop").version == before_column + 2


def test_cache_key__is_bumped_only_after_commit(shop, django_capture_on_commit_callbacks):
    before = cache.get(routing_snapshot.VERSION_CACHE_KEY)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        split(shop)

    assert cache.get(routing_snapshot.VERSION_CACHE_KEY) == before
    assert len(callbacks) >= 1


def test_rule_set_weights__that_do_not_sum_to_100__are_refused_naming_weights(shop):
    rule = split(shop, canary=10)

    error = refused(services.rule_set_weights, rule=rule, weights={"canary": 25})

    assert "weights" in error.fields
    assert RuleTarget.objects.get(target__name="canary").weight == Decimal("10.00")


def test_rule_set_weights__is_audited_with_actor_source_reason_and_verb(shop, engineer):
    rule = split(shop, canary=10)

    services.rule_set_weights(
        rule=rule,
        weights={"canary": 25, "stable": 75},
        actor=engineer,
        source=Source.API,
        reason="phase 2",
    )

    entry = AuditEntry.objects.filter(verb="set_weights").latest("timestamp")
    assert entry.actor == engineer
    assert (entry.source, entry.reason) == (Source.API, "phase 2")
    assert entry.changes["weight"] == ["10.00", "25.00"]


def test_rule_set_weights__naming_a_target_outside_the_rule__is_refused(shop):
    rule = services.rule_create(service=shop, targets={"stable": 100})

    error = refused(services.rule_set_weights, rule=rule, weights={"canary": 0})

    assert "weights.canary" in error.fields


def test_target_delete__while_a_rule_uses_it__is_a_conflict(shop):
    split(shop)

    with pytest.raises(TransitionNotAllowed):
        services.target_delete(target=Target.objects.get(name="canary"))

    assert Target.objects.count() == 2


def test_target_rename__follows_into_rules__but_not_into_fallback_lists(shop):
    rule = split(shop)
    canary = Target.objects.get(name="canary")

    services.target_update(target=canary, name="canary-a")

    assert routing_snapshot.service_snapshot(name="shop").rules[0].targets[1].id == "canary-a"
    services.rule_update(rule=rule, failover={"fallback_target_ids": ["stable"]})
    stable = Target.objects.get(name="stable")
    error = refused(services.target_update, target=stable, name="stable-a")
    assert "rule" in error.message


def test_target_update__marking_unhealthy__moves_traffic_off_it(shop):
    split(shop, canary=50)
    services.target_set_health(target=Target.objects.get(name="canary"), healthy=False)

    decisions = [selectors.decision_for(service="shop") for _ in range(50)]

    assert {decision.target.name for decision in decisions} == {"stable"}


def test_service_update__renaming__keeps_its_routing(shop):
    split(shop)

    services.service_update(service=shop, name="store")

    snapshot = routing_snapshot.service_snapshot(name="store")
    assert snapshot is not None and len(snapshot.rules) == 1


def test_service_delete__removes_rules_and_targets(shop):
    split(shop)

    services.service_delete(service=shop)

    assert not (Service.objects.exists() or Target.objects.exists() or RoutingRule.objects.exists())


def test_all_service_definitions__take_four_queries_whatever_the_number_of_services(
    django_assert_num_queries,
):
    for index in range(6):
        service = services.service_create(name=f"svc-{index}", stable_version="1")
        for name in ("a", "b"):
            services.target_create(
                service=service, name=name, endpoint=f"http://{name}:1", version="1"
            )
        services.rule_create(service=service, targets={"a": 50, "b": 50})

    with django_assert_num_queries(4):
        data = definition.all_service_definitions()

    assert len(data) == 6
    assert len(routing_snapshot.all_snapshots()) == 6


def test_decision_for__an_unknown_service__is_not_found():
    from canary_site.exceptions import NotFound

    with pytest.raises(NotFound):
        selectors.decision_for(service="nope")


def test_default_route__spreads_over_stable_targets_by_their_weight(shop):
    services.target_update(target=Target.objects.get(name="stable"), weight=100)
    services.target_create(
        service=shop, name="stable-b", endpoint="http://b:1", version="1.0.0", weight=0
    )

    decisions = [selectors.decision_for(service="shop") for _ in range(100)]

    assert {decision.target.name for decision in decisions} == {"stable"}
    assert {decision.reason for decision in decisions} == {Reason.NO_RULE}


def _fill(value: Any, character: str) -> Any:
    """``value`` with every ``{c}`` in its strings replaced by ``character``."""
    if isinstance(value, str):
        return value.replace("{c}", character)
    if isinstance(value, list):
        return [_fill(item, character) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, character) for key, item in value.items()}
    return value


@pytest.mark.parametrize("character", ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"name": "split{c}server"}, "name"),
        ({"strategy": "cookie", "strategy_key": "pin{c}"}, "strategy_key"),
        (
            {
                "conditions": [
                    {"source": "cookie", "name": "b{c}", "operator": "in", "values": ["1"]}
                ]
            },
            "conditions[0].name",
        ),
        (
            {"conditions": [{"source": "path", "operator": "contains", "values": ["/", "a{c}b"]}]},
            "conditions[0].values[1]",
        ),
        (
            {"conditions": [{"source": "path", "operator": "regex", "values": ["^/a{c}"]}]},
            "conditions[0].values[0]",
        ),
    ],
    ids=["rule-name", "strategy-key", "condition-name", "condition-value", "regex"],
)
def test_rule_create__with_a_control_character__is_refused_naming_the_field(
    shop, options, field, character
):
    filled = _fill(options, character)

    error = refused(
        services.rule_create, service=shop, targets={"stable": 90, "canary": 10}, **filled
    )

    assert field in error.fields, error.fields
    assert "control characters" in error.message
    assert not RoutingRule.objects.exists()


def test_rule_check__with_a_line_break__refuses_it_for_the_forms(shop):
    rule = split(shop)
    rule.conditions = [{"source": "path", "operator": "prefix", "values": ["/a\n}"]}]

    with pytest.raises(ValidationFailed) as caught:
        services.rule_check(rule=rule)

    assert "conditions[0].values[0]" in caught.value.fields


@pytest.mark.parametrize(
    ("call", "options", "field"),
    [
        ("target", {"version": "3.0.0\n"}, "version"),
        ("target", {"endpoint": "http://x:1\n"}, "endpoint"),
        ("target", {"endpoint": "http://x{y}:1"}, "endpoint"),
        ("target", {"metadata": {"note": "a\nb"}}, "metadata"),
        ("service", {"stable_version": "1.0.0\n"}, "stable_version"),
    ],
    ids=["version", "endpoint", "endpoint-host", "metadata", "stable-version"],
)
def test_target_and_service_writes__with_a_control_character__are_refused(
    shop, call, options, field
):
    if call == "target":
        arguments = {"name": "x", "endpoint": "http://x:1", "version": "3.0.0"} | options
        error = refused(services.target_create, service=shop, **arguments)
    else:
        error = refused(services.service_update, service=shop, **options)

    assert field in error.fields, error.fields
