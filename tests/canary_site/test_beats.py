"""Two real beats against the real Redis: exactly one ticks, and when it is killed the other takes
over; the heartbeat says which one ticks, to /readyz and the overview. Without Redis the one beat
keeps its schedule in a file."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client

from canary_site.models import Heartbeat
from tests.conftest import BASE_DIR, ManagedProcess, celery_args, wait_for

TICK_SECONDS = 1
LOCK_SECONDS = 3
HEARTBEAT_TASK = "canary_site.tasks.heartbeat_record"


def identity_of(process: ManagedProcess) -> str:
    """What a beat signs its heartbeats with."""
    return f"{socket.gethostname()}:{process.proc.pid}"


@dataclass(frozen=True)
class Tick:
    """One heartbeat a beat sent, as the broker holds it."""

    beat: str
    sent_at: datetime


def redis_urls() -> dict[str, str]:
    """The suite's Redis for the beats' schedule and lock, and its Redis broker."""
    assert settings.REDIS_URL and settings.CELERY_BROKER_URL.startswith("redis://"), (
        "two beats need Redis: set REDIS_URL and a redis:// CELERY_BROKER_URL"
    )
    return {"REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}


@pytest.fixture
def beat_env(task_queue: str) -> dict[str, str]:
    """Beats on a queue of their own, ticking every second, with a lock of a few seconds under
    a key prefix of their own (the beats' cache prefix), so no other beat of the suite is their
    rival."""
    return {
        **redis_urls(),
        "CANARY_TASK_QUEUE": task_queue,
        "CANARY_TICK_SECONDS": str(TICK_SECONDS),
        "CANARY_BEAT_LOCK_SECONDS": str(LOCK_SECONDS),
        "CANARY_CACHE_PREFIX": f"beats-{uuid.uuid4().hex[:10]}",
    }


@pytest.fixture
def two_beats(spawn: Any, beat_env: dict[str, str]) -> Iterator[dict[str, ManagedProcess]]:
    """Two beats started together, by the identity they sign with; the one that gets the lock
    first ticks. Once they are stopped, their keys and their queue go."""
    beats = {}
    for name in ("beat-a", "beat-b"):
        process = spawn(name, celery_args("beat", "--loglevel", "INFO"), **beat_env)
        beats[identity_of(process)] = process
    yield beats
    for process in beats.values():
        process.stop()
    schedule = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(schedule.scan_iter(f"{beat_env['CANARY_CACHE_PREFIX']}:*"))
    if keys:
        schedule.delete(*keys)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(beat_env["CANARY_TASK_QUEUE"])


def heartbeats_sent(queue: str) -> list[Tick]:
    """Every heartbeat waiting in ``queue``, oldest first, with the beat that signed it. A tick
    carries its expiry, set when it is sent to one tick later, so the sending moment is on the
    sending beat's own clock."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    ticks = []
    for raw in reversed(broker.lrange(queue, 0, -1)):  # kombu pushes on the left
        message = json.loads(raw)
        if message["headers"]["task"] != HEARTBEAT_TASK:
            continue
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        expires = datetime.fromisoformat(message["headers"]["expires"])
        ticks.append(Tick(kwargs["beat"], expires - timedelta(seconds=TICK_SECONDS)))
    return ticks


def logs(*processes: ManagedProcess) -> str:
    return "\n".join(process.output() for process in processes)


def assert_one_after_the_other(ticks: list[Tick], first: str, then: str) -> int:
    """The ticks of ``first``, then those of ``then``, never interleaved and never two at once;
    the position of the first tick of ``then``."""
    signers = [tick.beat for tick in ticks]
    switch = signers.index(then)
    assert signers == [first] * switch + [then] * (len(signers) - switch), signers
    # Never two ticks at once: each heartbeat is at least most of a tick after the one before.
    gaps = [(later.sent_at - earlier.sent_at).total_seconds() for earlier, later in pairwise(ticks)]
    assert min(gaps) >= TICK_SECONDS / 2, gaps
    return switch


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_two_beats__only_one_ticks__and_when_it_is_killed_the_other_takes_over(
    two_beats, task_queue
):
    beats = two_beats

    first = wait_for(lambda: len(ticks := heartbeats_sent(task_queue)) >= 4 and ticks, timeout=60)
    assert first, logs(*beats.values())
    holder = first[0].beat
    assert holder in beats, (holder, list(beats))
    assert {tick.beat for tick in first} == {holder}, logs(*beats.values())

    # The holder dies without a word: its lock is left to lapse.
    beats[holder].proc.send_signal(signal.SIGKILL)
    beats[holder].proc.wait(timeout=10)
    (survivor,) = set(beats) - {holder}

    taken_over = wait_for(
        lambda: sum(tick.beat == survivor for tick in heartbeats_sent(task_queue)) >= 3,
        timeout=60,
    )
    assert taken_over, logs(*beats.values())
    beats[survivor].stop()
    ticks = heartbeats_sent(task_queue)

    switch = assert_one_after_the_other(ticks, holder, survivor)
    assert switch >= 4
    # The survivor's first tick came within twice the lock's timeout of the holder's last one.
    takeover = (ticks[switch].sent_at - ticks[switch - 1].sent_at).total_seconds()
    assert takeover <= 2 * LOCK_SECONDS, (takeover, logs(*beats.values()))
    assert "Acquired lock" in beats[survivor].output()


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_two_beats__when_redis_loses_schedule_and_lock__the_waiting_one_writes_it_again_and_ticks(
    two_beats, beat_env, task_queue
):
    beats = two_beats
    first = wait_for(lambda: len(ticks := heartbeats_sent(task_queue)) >= 2 and ticks, timeout=60)
    assert first, logs(*beats.values())
    holder = first[0].beat
    (survivor,) = set(beats) - {holder}

    # As after a restart of a Redis that keeps nothing: the schedule and the lock are gone.
    schedule = redis.Redis.from_url(settings.REDIS_URL)
    schedule.delete(*schedule.scan_iter(f"{beat_env['CANARY_CACHE_PREFIX']}:*"))

    taken_over = wait_for(
        lambda: sum(tick.beat == survivor for tick in heartbeats_sent(task_queue)) >= 3,
        timeout=60,
    )
    assert taken_over, logs(*beats.values())
    # The holder found its lock gone and stopped rather than tick beside the survivor.
    assert beats[holder].proc.wait(timeout=30) != 0
    assert "LockNotOwnedError" in beats[holder].output()
    beats[survivor].stop()
    assert_one_after_the_other(heartbeats_sent(task_queue), holder, survivor)


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_two_beats_and_a_worker__the_heartbeat_names_the_beat_that_ticks__in_readyz_and_overview(
    spawn, two_beats, beat_env, task_queue, engineer
):
    beats = two_beats
    # The worker keeps the suite's cache prefix; only the beats have one of their own.
    env = {key: value for key, value in beat_env.items() if key != "CANARY_CACHE_PREFIX"}
    worker = spawn("worker", celery_args("worker", "-Q", task_queue, "--pool", "solo"), **env)

    ticking = wait_for(
        lambda: (
            (beat := Heartbeat.objects.filter(name="beat", count__gte=2).first()) and beat.identity
        ),
        timeout=60,
    )
    assert ticking in beats, (ticking, list(beats), logs(worker, *beats.values()))
    ready = Client().get("/readyz").json()
    assert ready["beat"]["identity"] == ticking
    assert ready["beat"]["last_tick_seconds_ago"] >= 0

    beats[ticking].proc.send_signal(signal.SIGKILL)
    beats[ticking].proc.wait(timeout=10)
    (survivor,) = set(beats) - {ticking}

    taken_over = wait_for(
        lambda: Heartbeat.objects.filter(name="beat", identity=survivor).exists(), timeout=60
    )
    assert taken_over, logs(worker, *beats.values())
    assert Client().get("/readyz").json()["beat"]["identity"] == survivor
    client = Client()
    client.force_login(engineer)
    overview = client.get("/").content.decode()
    assert f'<code data-testid="beat-identity">{survivor}</code>' in overview


# --- which scheduler the settings choose ------------------------------------------------------

PROBE = (
    "import json, sys, django; django.setup(); from canary_site.celery import app; c = app.conf; "
    "print(json.dumps({'scheduler': c.beat_scheduler, 'redis': c.get('redbeat_redis_url'), "
    "'lock_key': c.get('redbeat_lock_key'), 'lock_timeout': c.get('redbeat_lock_timeout'), "
    "'loop': c.beat_max_loop_interval, 'redbeat_imported': 'redbeat' in sys.modules}))"
)


def beat_settings(tmp_path: Any, **env: str) -> dict[str, Any]:
    """The beat settings of a fresh process with only ``env`` for a broker and Redis."""
    clean = {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "CANARY_TICK_SECONDS"}
    base = {key: value for key, value in os.environ.items() if key not in clean}
    base.update(DJANGO_SETTINGS_MODULE="canary_site.settings", CANARY_VAR_DIR=str(tmp_path), **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=BASE_DIR, env=base, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_beat__without_redis__keeps_the_simple_file_scheduler(tmp_path):
    loaded = beat_settings(tmp_path)

    assert loaded["scheduler"] == "canary_site.celery:FileBeatScheduler"
    assert loaded["redis"] is None
    assert loaded["redbeat_imported"] is False


def test_beat__with_redis__takes_turns_through_a_lock_under_the_install_prefix(tmp_path):
    loaded = beat_settings(
        tmp_path,
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        REDIS_URL="redis://127.0.0.1:6379/1",
        CANARY_CACHE_PREFIX="shop",
        CANARY_TICK_SECONDS="4",
    )

    assert loaded["scheduler"] == "canary_site.redis_beat:RedisBeatScheduler"
    assert loaded["redis"] == "redis://127.0.0.1:6379/1"
    assert loaded["lock_key"] == "shop:beat::lock"
    assert loaded["lock_timeout"] == 12
    # The holder renews its lock, and the others try it, several times per lock period.
    assert loaded["loop"] == 4


def test_beat__with_only_a_redis_broker__keeps_the_lock_there(tmp_path):
    loaded = beat_settings(
        tmp_path, CELERY_BROKER_URL="redis://127.0.0.1:6379/0", CANARY_BEAT_LOCK_SECONDS="9"
    )

    assert loaded["scheduler"] == "canary_site.redis_beat:RedisBeatScheduler"
    assert loaded["redis"] == "redis://127.0.0.1:6379/0"
    assert loaded["lock_timeout"] == 9
    assert loaded["loop"] == 3


def test_file_scheduler__signs_the_heartbeat_it_sends_with_its_own_identity(tmp_path, task_queue):
    from celery import Celery

    from canary_site.celery import FileBeatScheduler

    redis_urls()
    app = Celery("beat-file", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.update(task_default_queue=task_queue)
    schedule_file = str(tmp_path / "schedule")
    try:
        scheduler = FileBeatScheduler(app=app, schedule_filename=schedule_file)
        scheduler.apply_async(scheduler.schedule["control-heartbeat"], producer=scheduler.producer)
        scheduler.close()
        assert [tick.beat for tick in heartbeats_sent(task_queue)] == [
            f"{socket.gethostname()}:{os.getpid()}"
        ]
        # Started again, the beat takes the entry from the settings, not the last signature.
        again = FileBeatScheduler(app=app, schedule_filename=schedule_file)
        entry = again.schedule["control-heartbeat"]
        again.close()
        assert entry.kwargs == {}
        assert entry.total_run_count == 1
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(task_queue)


def test_redis_schedule__follows_the_settings_each_time_a_beat_starts():
    """Every beat writes the static schedule into Redis when it starts: a changed entry is
    changed there (its last run kept), a removed one removed."""
    from celery import Celery
    from redbeat import RedBeatSchedulerEntry

    from canary_site.redis_beat import RedisBeatScheduler

    redis_urls()
    prefix = f"beats-{uuid.uuid4().hex[:10]}:beat:"

    def start_beat(schedule: dict[str, Any]) -> Celery:
        app = Celery("beat-settings", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.conf.update(
            redbeat_key_prefix=prefix, redbeat_lock_key=f"{prefix}:lock", beat_schedule=schedule
        )
        RedisBeatScheduler(app=app)
        return app

    def entry(app: Celery, name: str) -> RedBeatSchedulerEntry:
        return RedBeatSchedulerEntry.from_key(f"{prefix}{name}", app=app)

    before = dict(settings.CELERY_BEAT_SCHEDULE)
    try:
        app = start_beat(before)
        entry(app, "control-heartbeat").reschedule()
        ran_at = entry(app, "control-heartbeat").last_run_at

        after = {name: value for name, value in before.items() if name != "flags-exposures-prune"}
        after["control-heartbeat"] = {**before["control-heartbeat"], "schedule": 7.0}
        app = start_beat(after)

        heartbeat = entry(app, "control-heartbeat")
        assert heartbeat.schedule.run_every == timedelta(seconds=7)
        assert heartbeat.last_run_at == ran_at
        with pytest.raises(KeyError):
            entry(app, "flags-exposures-prune")
        assert entry(app, "deployments-tick").task == "deployments.tasks.deployments_tick"
    finally:
        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
