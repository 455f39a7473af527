"""Celery tasks of the flags app, run as plain calls (the worker path is the site's test)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from flags import tasks
from flags.models import FlagExposure

pytestmark = pytest.mark.django_db


def test_flag_exposures_prune__twice__deletes_once_and_then_nothing():
    FlagExposure.objects.create(
        flag_key="a", variant="on", bucket_start=timezone.now() - timedelta(days=90), count=1
    )

    assert tasks.flag_exposures_prune() == 1
    assert tasks.flag_exposures_prune() == 0
