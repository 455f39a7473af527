"""Tests of the deployment configuration: parsing, errors by field path, round trips, helpers."""

from __future__ import annotations

import copy
import json
from itertools import pairwise
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments import choices
from deployments.config import (
    DEFAULT_MAX_DEPLOYMENT_TIME_MS,
    ConfigError,
    Criterion,
    DeploymentConfig,
    FieldError,
    Metric,
    Notifications,
    Operator,
    PhaseConfig,
    RollbackThresholds,
    TrafficShiftStrategy,
    dump_config,
    health_metric,
    is_metric,
    load_config,
    parse_config,
    read_config,
    simple_canary_config,
    traffic_steps,
)
from deployments.lifecycle import Action, Status
from tests.deployments.guide_examples import multi_phase_config, quick_start_config


def errors_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    return [(error.field, error.code) for error in raised.value.errors]


# --------------------------------------------------------------------------- the guide's examples


def test_quick_start_example__parses_with_the_guides_defaults() -> None:
    config = parse_config(quick_start_config())
    assert config.name == "My Service Canary"
    assert config.service_name == "my-service"
    assert (config.stable_version, config.canary_version) == ("1.0.0", "2.0.0")
    assert config.initial_traffic_percentage == 5
    assert config.traffic_shift_strategy == TrafficShiftStrategy.PHASED
    assert (config.auto_promote, config.auto_rollback) == (True, True)
    assert config.max_deployment_time_ms == DEFAULT_MAX_DEPLOYMENT_TIME_MS == 3_600_000
    assert config.notifications == Notifications()
    (phase,) = config.phases
    assert phase == PhaseConfig(
        id="phase-1",
        name="5% Traffic",
        traffic_percentage=5,
        duration_ms=300_000,
        success_criteria=(Criterion("availability", Operator.GREATER_THAN, 99, 180_000),),
        rollback_thresholds=RollbackThresholds(error_rate=5, latency_p95=1000, availability=95),
    )


def test_multi_phase_example__parses_its_strategy_and_takes_its_initial_share_from_phase_one() -> (
    None
):
    config = parse_config(multi_phase_config())
    assert config.traffic_shift_strategy == TrafficShiftStrategy.PHASED
    assert [p.traffic_percentage for p in config.phases] == [1, 5, 25, 100]
    assert config.initial_traffic_percentage == 1
    assert config.phases[1].success_criteria[2] == Criterion(
        "response_time", Operator.LESS_THAN, 200, 600_000
    )
    assert config.max_deployment_time_ms == 14_400_000


def test_multi_phase_example__comes_back_from_to_dict_with_defaults_and_without_phase_status() -> (
    None
):
    original = multi_phase_config()
    expected = copy.deepcopy(original)
    for phase in expected["phases"]:
        del phase["status"]
    expected["initialTrafficPercentage"] = 1
    assert parse_config(original).to_dict() == expected


# --------------------------------------------------------------------------- round trips


def test_to_dict__is_camel_case_in_the_vocabularys_order() -> None:
    data = simple_canary_config("Checkout canary", "checkout", "1.4.0", "1.5.0").to_dict()
    assert list(data) == [
        "name",
        "serviceName",
        "stableVersion",
        "canaryVersion",
        "initialTrafficPercentage",
        "trafficShiftStrategy",
        "phases",
        "autoPromote",
        "autoRollback",
        "maxDeploymentTimeMs",
        "notifications",
    ]
    assert list(data["phases"][0]) == [
        "id",
        "name",
        "trafficPercentage",
        "durationMs",
        "successCriteria",
        "rollbackThresholds",
    ]


def test_yaml_export__round_trips_and_keeps_numeric_looking_versions_as_strings() -> None:
    config = simple_canary_config("Checkout canary", "checkout", "1.0", "2.0")
    text = dump_config(config, "yaml")
    assert "stableVersion: '1.0'" in text
    assert load_config(text) == config
    assert load_config(text, "yaml") == config
    assert config.to_yaml() == text


def test_json_export__round_trips() -> None:
    config = simple_canary_config("Checkout canary", "checkout", "1.0", "2.0")
    assert load_config(config.to_json()) == config
    assert json.loads(config.to_json()) == config.to_dict()


def test_optional_fields__appear_in_to_dict_only_when_set() -> None:
    data = quick_start_config()
    data["description"] = "A first try."
    data["canaryEndpoint"] = "https://canary.internal:8443"
    out = parse_config(data).to_dict()
    assert out["description"] == "A first try."
    assert out["canaryEndpoint"] == "https://canary.internal:8443"
    assert "stableEndpoint" not in out


def test_whole_numbers__are_written_without_a_decimal_point() -> None:
    text = dump_config(parse_config(quick_start_config()))
    assert "trafficPercentage: 5\n" in text
    assert "threshold: 99\n" in text


# --------------------------------------------------------------------------- errors by field


def test_unknown_keys__are_errors_naming_their_path() -> None:
    data = quick_start_config()
    data["owner"] = "me"
    data["phases"][0]["weight"] = 1
    data["phases"][0]["successCriteria"][0]["weight"] = 1
    data["phases"][0]["rollbackThresholds"]["latencyP99"] = 2000
    data["notifications"] = {"onStart": True, "onSuccess": True}
    assert errors_of(data) == [
        ("owner", "unknown_field"),
        ("notifications.onSuccess", "unknown_field"),
        ("phases[0].weight", "unknown_field"),
        ("phases[0].successCriteria[0].weight", "unknown_field"),
        ("phases[0].rollbackThresholds.latencyP99", "unknown_field"),
    ]


def test_missing_required_fields__are_each_named() -> None:
    assert errors_of({"phases": [{}]}) == [
        ("name", "required"),
        ("serviceName", "required"),
        ("stableVersion", "required"),
        ("canaryVersion", "required"),
        ("phases[0].trafficPercentage", "required"),
        ("phases[0].durationMs", "required"),
    ]


def test_no_phases__is_an_error() -> None:
    data = quick_start_config()
    data["phases"] = []
    assert errors_of(data) == [("phases", "required")]


@pytest.mark.parametrize(
    ("path", "value", "field", "code"),
    [
        (("name",), 7, "name", "invalid_type"),
        (("name",), "  ", "name", "invalid_value"),
        (("stableVersion",), 1.0, "stableVersion", "invalid_type"),
        (("autoPromote",), "yes", "autoPromote", "invalid_type"),
        (("autoRollback",), 1, "autoRollback", "invalid_type"),
        (("maxDeploymentTimeMs",), 1.5, "maxDeploymentTimeMs", "invalid_type"),
        (("maxDeploymentTimeMs",), True, "maxDeploymentTimeMs", "invalid_type"),
        (("initialTrafficPercentage",), "5", "initialTrafficPercentage", "invalid_type"),
        (("initialTrafficPercentage",), float("nan"), "initialTrafficPercentage", "invalid_value"),
        (("trafficShiftStrategy",), "rolling", "trafficShiftStrategy", "invalid_choice"),
        (("phases",), {"id": "x"}, "phases", "invalid_type"),
        (("notifications",), [], "notifications", "invalid_type"),
        (("phases", 0), "phase-1", "phases[0]", "invalid_type"),
        (("phases", 0, "trafficPercentage"), True, "phases[0].trafficPercentage", "invalid_type"),
        (("phases", 0, "durationMs"), "5m", "phases[0].durationMs", "invalid_type"),
        (("phases", 0, "status"), "active", "phases[0].status", "invalid_value"),
        (("phases", 0, "successCriteria"), {}, "phases[0].successCriteria", "invalid_type"),
        (
            ("phases", 0, "successCriteria", 0, "operator"),
            "greater_or_equal",
            "phases[0].successCriteria[0].operator",
            "invalid_choice",
        ),
        (
            ("phases", 0, "successCriteria", 0, "metric"),
            "happiness",
            "phases[0].successCriteria[0].metric",
            "invalid_choice",
        ),
        (
            ("phases", 0, "successCriteria", 0, "threshold"),
            None,
            "phases[0].successCriteria[0].threshold",
            "required",
        ),
        (
            ("phases", 0, "rollbackThresholds", "errorRate"),
            "5%",
            "phases[0].rollbackThresholds.errorRate",
            "invalid_type",
        ),
        (("notifications",), {"onStart": "no"}, "notifications.onStart", "invalid_type"),
    ],
)
def test_a_wrong_value__is_an_error_naming_its_field_and_code(
    path: tuple[Any, ...], value: Any, field: str, code: str
) -> None:
    data = quick_start_config()
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert errors_of(data) == [(field, code)]


def test_error_messages__name_their_field_and_read_as_sentences() -> None:
    data = quick_start_config()
    data["phases"][0]["durationMs"] = "5m"
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    (error,) = raised.value.errors
    assert error.message == (
        "phases[0].durationMs must be a whole number of milliseconds, got '5m'."
    )
    assert str(raised.value) == error.message
    assert raised.value.field == "phases[0].durationMs"


def test_every_problem__is_reported_at_once() -> None:
    data = quick_start_config()
    del data["name"]
    data["phases"][0]["trafficPercentage"] = "five"
    data["phases"][0]["successCriteria"][0]["operator"] = "above"
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert len(raised.value.errors) == 3
    assert str(raised.value).endswith("(and 2 more)")


def test_read_config__keeps_what_it_could_read_of_a_broken_configuration() -> None:
    data = multi_phase_config()
    del data["serviceName"]
    data["phases"][2]["durationMs"] = "1h"
    reading = read_config(data)
    assert reading.config is None
    assert reading.errors == (
        FieldError("serviceName", "required", "serviceName is required."),
        FieldError(
            "phases[2].durationMs",
            "invalid_type",
            "phases[2].durationMs must be a whole number of milliseconds, got '1h'.",
        ),
    )
    assert [phase is None for phase in reading.phases] == [False, False, True, False]
    assert reading.fields["name"] == "Progressive Service Rollout"
    assert "serviceName" not in reading.fields


def test_not_a_mapping__is_an_error_on_config() -> None:
    assert errors_of([1, 2]) == [("config", "invalid_type")]


def test_defaults__fill_what_a_phase_leaves_out() -> None:
    data = quick_start_config()
    data["phases"] = [{"trafficPercentage": 12.5, "durationMs": 60000}]
    data["initialTrafficPercentage"] = 12.5
    (phase,) = parse_config(data).phases
    assert (phase.id, phase.name) == ("phase-1", "12.5% traffic")
    assert phase.success_criteria == ()
    assert phase.rollback_thresholds == RollbackThresholds()
    assert not phase.rollback_thresholds


def test_criterion_without_duration__must_hold_for_one_observation() -> None:
    data = quick_start_config()
    del data["phases"][0]["successCriteria"][0]["durationMs"]
    assert parse_config(data).phases[0].success_criteria[0].duration_ms == 0


def test_whole_float_milliseconds__are_accepted_as_integers() -> None:
    data = quick_start_config()
    data["phases"][0]["durationMs"] = 300000.0
    assert parse_config(data).phases[0].duration_ms == 300_000


# --------------------------------------------------------------------------- text formats


def test_json_and_yaml__give_the_same_configuration() -> None:
    data = multi_phase_config()
    assert load_config(json.dumps(data)) == load_config(yaml.safe_dump(data)) == parse_config(data)


def test_bytes__are_read_as_utf8() -> None:
    assert load_config(json.dumps(quick_start_config()).encode()) == parse_config(
        quick_start_config()
    )


@pytest.mark.parametrize(
    "text",
    [
        "name: a\nname: b\n",
        '{"name": "a", "name": "b"}',
        "name: [unclosed\n",
        '{"name": ',
    ],
    ids=["yaml-duplicate-key", "json-duplicate-key", "broken-yaml", "broken-json"],
)
def test_unreadable_text__is_an_unparseable_error_on_config(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(text)
    (error,) = raised.value.errors
    assert (error.field, error.code) == ("config", "unparseable")


def test_yaml_with_python_tags__is_refused() -> None:
    with pytest.raises(ConfigError):
        load_config("name: !!python/object/apply:os.system ['true']\n")


def test_unquoted_yaml_version__is_a_type_error_with_a_hint() -> None:
    text = dump_config(parse_config(quick_start_config()))
    text = text.replace("stableVersion: 1.0.0", "stableVersion: 1.0")
    with pytest.raises(ConfigError, match=r"quote it in YAML"):
        load_config(text)


# --------------------------------------------------------------------------- simple config


def test_simple_canary_config__keeps_the_guides_defaults() -> None:
    config = simple_canary_config("Checkout canary", "checkout", "1.4.0", "1.5.0")
    first = config.phases[0]
    assert config.initial_traffic_percentage == first.traffic_percentage == 5
    assert first.duration_ms == 300_000
    assert first.success_criteria == (
        Criterion("availability", Operator.GREATER_THAN, 99, 180_000),
    )
    assert first.rollback_thresholds == RollbackThresholds(
        error_rate=5, latency_p95=1000, availability=95
    )
    assert (config.auto_promote, config.auto_rollback) == (True, True)
    assert config.max_deployment_time_ms == 3_600_000
    assert config.notifications == Notifications()
    assert config.traffic_shift_strategy == TrafficShiftStrategy.LINEAR


def test_simple_canary_config__builds_phases_rising_to_full_traffic() -> None:
    config = simple_canary_config("c", "checkout", "1", "2", steps=4)
    assert [p.traffic_percentage for p in config.phases] == [5, 36.67, 68.33, 100]
    assert [p.id for p in config.phases] == ["phase-1", "phase-2", "phase-3", "phase-4"]
    assert [p.name for p in config.phases][-1] == "100% traffic"


def test_simple_canary_config__exponential_keeps_early_steps_small() -> None:
    config = simple_canary_config(
        "c", "checkout", "1", "2", initial_percentage=1, steps=5, strategy="exponential"
    )
    assert [p.traffic_percentage for p in config.phases] == [1, 3.16, 10, 31.62, 100]


def test_simple_canary_config__scales_holds_and_maximum_time_with_long_phases() -> None:
    config = simple_canary_config("c", "checkout", "1", "2", steps=3, phase_duration_ms=3_600_000)
    assert config.phases[0].success_criteria[0].duration_ms == 2_160_000
    assert config.max_deployment_time_ms == 2 * 3 * 3_600_000


def test_simple_canary_config__takes_given_criteria_and_thresholds() -> None:
    criterion = Criterion("error_rate", Operator.LESS_THAN, 1, 60_000)
    thresholds = RollbackThresholds(error_rate=2)
    config = simple_canary_config(
        "c",
        "checkout",
        "1",
        "2",
        criteria=[criterion],
        rollback_thresholds=thresholds,
        auto_promote=False,
        max_deployment_time_ms=900_000,
    )
    assert all(p.success_criteria == (criterion,) for p in config.phases)
    assert all(p.rollback_thresholds == thresholds for p in config.phases)
    assert (config.auto_promote, config.max_deployment_time_ms) == (False, 900_000)


@pytest.mark.parametrize(
    ("initial", "steps", "strategy"),
    [
        (0, 4, "linear"),
        (101, 4, "linear"),
        (5, 1, "linear"),
        (100, 2, "linear"),
        (5, 4, "manual"),
        (99.99, 50, "linear"),
        (5, 0, "linear"),
    ],
)
def test_traffic_steps__refuses_what_cannot_rise_to_100(
    initial: float, steps: int, strategy: str
) -> None:
    with pytest.raises(ValueError):
        traffic_steps(initial, steps, strategy)


def test_traffic_steps__from_100_is_one_step() -> None:
    assert traffic_steps(100, 1) == [100]


@given(
    initial=st.floats(min_value=0.5, max_value=50),
    steps=st.integers(min_value=2, max_value=12),
    strategy=st.sampled_from(["linear", "exponential"]),
)
def test_traffic_steps__rise_strictly_from_the_initial_share_to_100(
    initial: float, steps: int, strategy: str
) -> None:
    values = traffic_steps(initial, steps, strategy)
    assert len(values) == steps
    assert values[0] == round(initial, 2)
    assert values[-1] == 100
    assert all(later > earlier for earlier, later in pairwise(values))
    assert all(round(value, 2) == value for value in values)


# --------------------------------------------------------------------------- vocabulary


def test_metric_names__are_the_guides_and_the_health_apps() -> None:
    from health.analysis import is_metric as health_knows

    for metric in Metric:
        assert is_metric(metric)
        assert health_knows(health_metric(metric)), metric
    assert health_metric("response_time") == "latency_p50"
    assert is_metric("custom:checkout.orders")
    assert not is_metric("custom:")
    assert not is_metric("happiness")


@pytest.mark.parametrize(
    ("choice", "enum"),
    [
        (choices.DeploymentStatus, Status),
        (choices.DeploymentAction, Action),
        (choices.TrafficShiftStrategy, TrafficShiftStrategy),
        (choices.CriterionOperator, Operator),
    ],
)
def test_choices__mirror_the_engine_enums(choice: Any, enum: Any) -> None:
    assert list(choice.values) == [str(member) for member in enum]
    assert list(choice.names) == [member.name for member in enum]


# --------------------------------------------------------------------------- generated configs

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20
).filter(str.strip)
percent = st.decimals(min_value=0, max_value=100, places=2).map(float)
millis = st.integers(min_value=0, max_value=10**9)
criteria = st.builds(
    Criterion,
    metric=st.sampled_from([*(str(m) for m in Metric), "custom:orders"]),
    operator=st.sampled_from(list(Operator)),
    threshold=st.floats(allow_nan=False, allow_infinity=False, width=32),
    duration_ms=millis,
)
thresholds = st.builds(
    RollbackThresholds,
    error_rate=st.none() | percent,
    latency_p95=st.none() | st.integers(min_value=0, max_value=10_000).map(float),
    availability=st.none() | percent,
)
phases = st.builds(
    PhaseConfig,
    id=names,
    name=names,
    traffic_percentage=percent,
    duration_ms=millis,
    success_criteria=st.lists(criteria, max_size=3).map(tuple),
    rollback_thresholds=thresholds,
)
configs = st.builds(
    DeploymentConfig,
    name=names,
    service_name=names,
    stable_version=names,
    canary_version=names,
    phases=st.lists(phases, min_size=1, max_size=4).map(tuple),
    initial_traffic_percentage=percent,
    traffic_shift_strategy=st.sampled_from(list(TrafficShiftStrategy)),
    auto_promote=st.booleans(),
    auto_rollback=st.booleans(),
    max_deployment_time_ms=millis,
    notifications=st.builds(Notifications),
    description=st.just("") | names,
    stable_endpoint=st.none() | st.just("https://stable.internal:8443"),
    canary_endpoint=st.none() | st.just("http://canary.internal:8080"),
)


@settings(max_examples=150, deadline=None)
@given(configs)
def test_any_configuration__survives_dict_json_and_yaml_round_trips(
    config: DeploymentConfig,
) -> None:
    assert parse_config(config.to_dict()) == config
    assert load_config(config.to_json()) == config
    assert load_config(config.to_yaml()) == config
