"""Reads: staleness, evaluation from the saved state, segment usage and exposure series."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone

from flags import selectors, services
from flags.exposures import recorder
from flags.models import Flag, FlagExposure

pytestmark = pytest.mark.django_db


def test_flags__past_their_expiry__are_stale(make_flag):
    make_flag("old", expires_on=date.today() - timedelta(days=1))
    make_flag("fresh", expires_on=date.today() + timedelta(days=1))

    assert [flag.key for flag in selectors.stale_flags()] == ["old"]
    reason = selectors.flag_stale_reason(flag=Flag.objects.get(key="old"))
    assert reason.startswith("It expired on")


def test_flags__served_to_everyone_for_30_days__are_stale(make_flag):
    make_flag("done")  # enabled and serving "on" to everyone
    make_flag("recent")
    Flag.objects.filter(key="done").update(full_rollout_since=timezone.now() - timedelta(days=31))
    Flag.objects.filter(key="recent").update(full_rollout_since=timezone.now() - timedelta(days=29))

    assert [flag.key for flag in selectors.stale_flags()] == ["done"]
    assert "served everyone" in selectors.flag_stale_reason(flag=Flag.objects.get(key="done"))
    assert selectors.flag_stale_reason(flag=Flag.objects.get(key="recent")) is None


def test_flag_rollout_percentage__reads_the_default_rule(make_flag):
    assert selectors.flag_rollout_percentage(flag=make_flag("a")) == 100
    assert (
        selectors.flag_rollout_percentage(flag=make_flag("b", default_rule={"variant": "off"})) == 0
    )
    rollout = make_flag("c", default_rule={"rollout": {"percentage": 7.5, "variant": "on"}})
    assert selectors.flag_rollout_percentage(flag=rollout) == 7.5
    split = make_flag(
        "d",
        default_rule={"split": [{"variant": "on", "weight": 50}, {"variant": "off", "weight": 50}]},
    )
    assert selectors.flag_rollout_percentage(flag=split) is None


def test_flag_evaluate__uses_the_saved_flag_and_its_segments_and_counts_nothing(
    make_flag, make_segment
):
    make_segment("beta")
    flag = make_flag(
        default_rule={"variant": "off"}, rules=[{"segments": ["beta"], "serve": {"variant": "on"}}]
    )

    inside = selectors.flag_evaluate(flag=flag, context={"country": "BE"})
    outside = selectors.flag_evaluate(flag=flag, context={"country": "US"})

    assert (inside.value, inside.reason) == (True, "TARGETING_MATCH")
    assert (outside.value, outside.reason) == (False, "DEFAULT")
    assert recorder.pending == 0


def test_segment_usage__maps_each_segment_to_the_flags_that_name_it(make_flag, make_segment):
    make_segment("beta")
    make_segment("staff")
    make_flag("a", rules=[{"segments": ["beta", "staff"], "serve": {"variant": "on"}}])
    make_flag("b", rules=[{"segments": ["beta"], "serve": {"variant": "on"}}])

    assert selectors.segment_usage() == {"beta": ["a", "b"], "staff": ["a"]}


def test_kill_switch_flags__are_the_ones_that_opted_in(make_flag):
    make_flag("a", kill_switch_enabled=True)
    make_flag("b")

    assert [flag.key for flag in selectors.kill_switch_flags()] == ["a"]


def test_exposure_series__fills_every_bucket_of_the_window_per_variant():
    now = datetime(2026, 5, 1, 12, 30, 20, tzinfo=UTC)
    for minutes_ago, variant, count in [(0, "on", 3), (0, "off", 1), (5, "on", 2), (90, "on", 100)]:
        FlagExposure.objects.create(
            flag_key="f",
            variant=variant,
            bucket_start=now.replace(second=0) - timedelta(minutes=minutes_ago),
            count=count,
        )

    series = selectors.flag_exposure_series(flag_key="f", window="1h", now=now)

    assert len(series.buckets) == 60
    assert series.buckets[-1] == datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    assert series.counts["on"][-1] == 3 and series.counts["on"][-6] == 2
    assert series.counts["off"][-1] == 1
    assert series.total == 6  # the count from 90 minutes ago is outside the hour


def test_exposure_series__coarser_windows_sum_into_their_steps():
    now = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    for minute in (0, 5, 10):
        FlagExposure.objects.create(
            flag_key="f", variant="on", bucket_start=now - timedelta(minutes=minute), count=1
        )

    series = selectors.flag_exposure_series(flag_key="f", window="24h", now=now)

    assert len(series.buckets) == 96
    assert sum(series.counts["on"]) == 3


def test_exposure_totals__sum_per_variant(make_flag):
    FlagExposure.objects.create(flag_key="f", variant="on", bucket_start=timezone.now(), count=2)
    FlagExposure.objects.create(
        flag_key="f", variant="on", bucket_start=timezone.now() - timedelta(minutes=1), count=3
    )

    assert selectors.flag_exposure_totals(flag_key="f") == {"on": 5}


def test_flag_history__lists_the_flags_changes_newest_first(make_flag, engineer):
    flag = make_flag()
    services.flag_kill(flag=flag, reason="boom", actor=engineer)

    history = list(selectors.flag_history(flag=flag))

    assert [entry.action_name for entry in history] == ["kill", "create"]
