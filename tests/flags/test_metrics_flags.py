"""The flags app's collector on /metrics: flags by status, and the evaluations served over OFREP
per flag and variant from the stored exposure counts, in two queries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from flags import services
from flags.exposures import recorder
from flags.metrics import collector
from tests.canary_site.exposition import page_samples, samples_of, value

pytestmark = pytest.mark.django_db


def evaluate(key: str, secret: str, user: str) -> str:
    response = Client().post(
        f"/ofrep/v1/evaluate/flags/{key}",
        data=json.dumps({"context": {"targetingKey": user}}),
        content_type="application/json",
        HTTP_X_API_KEY=secret,
    )
    assert response.status_code == 200, response.content
    return response.json()["variant"]


def evaluations(samples: Any) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["flag"], dict(labels)["variant"]): sample
        for (name, labels), sample in samples.items()
        if name == "canary_flag_evaluations_total"
    }


def test_collector__counts_served_variants_of_the_flags_that_exist(make_flag, evaluation_key):
    make_flag("new-checkout")
    gone = make_flag("old-banner")
    make_flag(
        "split",
        variants=[{"name": "a", "value": True}, {"name": "b", "value": False}],
        default_rule={"split": [{"variant": "a", "weight": 50}, {"variant": "b", "weight": 50}]},
    )
    served = [evaluate("split", evaluation_key, f"user-{index}") for index in range(40)]
    for _ in range(3):
        evaluate("new-checkout", evaluation_key, "u1")
    evaluate("old-banner", evaluation_key, "u1")
    recorder.flush()
    services.flag_delete(flag=gone, reason="retired")

    with CaptureQueriesContext(connection) as queries:
        samples = samples_of(collector.collect())

    assert len(queries) == 2
    assert evaluations(samples) == {
        ("new-checkout", "on"): 3,
        ("split", "a"): served.count("a"),
        ("split", "b"): served.count("b"),
    }
    assert served.count("a") and served.count("b")
    assert value(samples, "canary_flags", status="enabled") == 2
    assert value(samples, "canary_flags", status="killed") == 0


def test_metrics_page__shows_a_killed_flag(make_flag, client: Client):
    flag = make_flag("payments")
    services.flag_kill(flag=flag, reason="errors in payments")

    samples = page_samples(client.get("/metrics").content.decode())

    assert value(samples, "canary_flags", status="killed") == 1
    assert value(samples, "canary_flags", status="enabled") == 0
