"""The Celery application: workers run the tasks, beat is the control loop's clock."""

import os
import socket
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler, ScheduleEntry
from celery.contrib.django.task import DjangoTask
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "canary_site.settings")

# A database or Redis that is restarting, failing over or briefly unreachable. A task that
# meets one is tried again later instead of being lost; any other exception is a bug and fails.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


class CanaryTask(DjangoTask):
    """The base of every task (Celery's Django task, so ``delay_on_commit`` stays): retried on
    a transient error with exponential backoff (1 s, 2 s, 4 s, ... up to 5 minutes) and full
    jitter, so workers that all lost the database at once do not all come back at the same
    moment. Twelve retries wait about twelve minutes in all on average (23 at most). Retrying
    is safe because every task re-reads its rows and returns early when their state has moved
    on, and a try that failed rolled back its open transaction. A periodic tick carries its
    expiry into the retry, so a tick that could not run is dropped once the next one is due
    instead of piling up behind it."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 1
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 12


app = Celery("canary", task_cls=CanaryTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# The entry whose task records that the loop is alive; the beat adds who sent it.
HEARTBEAT_TASK = "canary_site.tasks.heartbeat_record"


def beat_identity() -> str:
    """The sending beat as ``hostname:pid``: which of several beats ticks, and whether it is the
    same one as before."""
    return f"{socket.gethostname()}:{os.getpid()}"


class IdentifyingScheduler:
    """Signs the heartbeat with the identity of the beat that sends it. It has to happen at send
    time, in the beat itself: with Redis the schedule's definitions are shared by every beat, and
    each beat writes them when it starts, so an identity written into the schedule would be the
    last beat started, not the one ticking."""

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if entry.task == HEARTBEAT_TASK:
            # Redis entries are read afresh every tick and the file schedule takes its kwargs
            # from the settings again at start, so nothing keeps this beyond the send.
            entry.kwargs = {**(entry.kwargs or {}), "beat": beat_identity()}
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)  # type: ignore[misc]


class FileBeatScheduler(IdentifyingScheduler, PersistentScheduler):
    """The embedded default: one beat, its schedule in a file under ``CANARY_VAR_DIR``. With
    Redis, ``canary_site.redis_beat.RedisBeatScheduler`` lets several beats take turns."""
