"""`mirror`: an app's TextChoices derived from an engine's StrEnum."""

from __future__ import annotations

from enum import StrEnum

import pytest
from django.db import models

from canary_site.choices import mirror


class Light(StrEnum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"


def test_mirror__has_the_engines_members_values_and_order_with_the_labels_given():
    choices = mirror(Light, name="Signal", GREEN="Go", AMBER="Wait", RED="Stop")

    assert issubclass(choices, models.TextChoices)
    assert choices.__name__ == "Signal"
    assert choices.choices == [("green", "Go"), ("amber", "Wait"), ("red", "Stop")]
    assert choices.RED == Light.RED == "red"
    assert choices(Light.AMBER).label == "Wait"
    assert choices.__module__ == __name__


def test_mirror__without_a_label_for_every_member__is_refused():
    with pytest.raises(TypeError, match=r"missing \['RED'\]"):
        mirror(Light, GREEN="Go", AMBER="Wait")


def test_mirror__with_a_label_for_no_member__is_refused():
    with pytest.raises(TypeError, match=r"unknown \['BLUE'\]"):
        mirror(Light, GREEN="Go", AMBER="Wait", RED="Stop", BLUE="Huh")


def test_every_mirrored_choice__matches_its_engine_enum():
    from deployments import choices as deployment_choices
    from deployments import config, lifecycle
    from flags import choices as flag_choices
    from flags import evaluation
    from health import alerting, analysis
    from health import choices as health_choices
    from routing import choices as routing_choices
    from routing import engine

    pairs = [
        (flag_choices.FlagStatus, evaluation.FlagStatus),
        (flag_choices.ValueType, evaluation.ValueType),
        (flag_choices.Operator, evaluation.Operator),
        (routing_choices.Strategy, engine.Strategy),
        (routing_choices.ConditionSource, engine.Source),
        (routing_choices.ConditionOperator, engine.Operator),
        (routing_choices.CircuitState, engine.CircuitState),
        (health_choices.Verdict, analysis.Verdict),
        (health_choices.AlertSeverity, alerting.Severity),
        (health_choices.AlertStatus, alerting.Status),
        (health_choices.NotificationChannel, alerting.Channel),
        (health_choices.NotificationEvent, alerting.Event),
        (deployment_choices.DeploymentStatus, lifecycle.Status),
        (deployment_choices.DeploymentAction, lifecycle.Action),
        (deployment_choices.TrafficShiftStrategy, config.TrafficShiftStrategy),
        (deployment_choices.CriterionOperator, config.Operator),
    ]
    for choices, enum in pairs:
        assert [(member.name, member.value) for member in choices] == [
            (member.name, member.value) for member in enum
        ], choices
