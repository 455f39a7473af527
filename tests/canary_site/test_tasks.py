"""A real Celery worker and a real beat, as separate processes against the configured broker."""

from __future__ import annotations

import pytest

from canary_site import tasks
from canary_site.models import Heartbeat
from tests.conftest import celery_args, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def test_worker__runs_a_queued_task__and_its_effect_is_in_the_database(spawn, task_queue):
    worker = spawn(
        "worker",
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        CANARY_TASK_QUEUE=task_queue,
    )
    tasks.heartbeat_record.apply_async(kwargs={"name": "from-test"}, queue=task_queue)

    beat = wait_for(lambda: Heartbeat.objects.filter(name="from-test").first(), timeout=60)

    assert beat is not None, worker.output()
    assert beat.count == 1


def test_beat__schedules_the_control_tick__which_a_worker_runs(spawn, task_queue, tmp_path):
    env = {"CANARY_TASK_QUEUE": task_queue, "CANARY_TICK_SECONDS": "1"}
    worker = spawn("worker", celery_args("worker", "-Q", task_queue, "--pool", "solo"), **env)
    beat_process = spawn(
        "beat", celery_args("beat", "-s", str(tmp_path / "schedule"), "--loglevel", "INFO"), **env
    )

    beat = wait_for(lambda: Heartbeat.objects.filter(name="beat", count__gte=2).first(), timeout=60)

    assert beat is not None, beat_process.output() + worker.output()
    assert beat.count >= 2
