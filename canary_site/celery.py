"""The Celery application: workers run the tasks, beat is the control loop's clock."""

import os

from celery import Celery
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
