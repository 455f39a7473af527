"""Exposure counts written by the recorder's own timer, so a process that has gone idle does not
hold its last counts."""

from __future__ import annotations

import pytest
from django.db.models import Sum

from flags.exposures import recorder
from flags.models import FlagExposure
from tests.conftest import wait_for


def stored() -> int:
    return FlagExposure.objects.aggregate(total=Sum("count"))["total"] or 0


@pytest.mark.django_db(transaction=True)
def test_timer__writes_the_counts_of_a_process_that_serves_nothing_more(settings):
    settings.CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS = 0.2
    recorder.reset()

    recorder.record("new-checkout", "on")
    recorder.record_many([("new-checkout", "on"), ("new-checkout", "off"), ("other", None)])

    # No request finishes and nothing calls flush: only the timer can write these.
    assert wait_for(lambda: stored() == 3, timeout=15, interval=0.05)
    assert dict(FlagExposure.objects.values_list("variant", "count")) == {"on": 2, "off": 1}
    assert recorder.pending == 0


@pytest.mark.django_db(transaction=True)
def test_timer__starts_with_the_first_count_and_stops_on_reset(settings):
    settings.CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS = 0.2
    recorder.reset()
    assert recorder._timer is None

    recorder.record("new-checkout", "on")
    timer = recorder._timer
    assert timer is not None and timer.is_alive()

    recorder.reset()
    timer.join(5)
    assert not timer.is_alive()
