"""The beat scheduler for production: any number of beats, exactly one of them ticking.

They share the schedule in Redis and one lock (celery-redbeat). The holder extends the lock on
every tick, at most ``beat_max_loop_interval`` apart; the others try it as often. When the holder
dies the lock lapses after ``redbeat_lock_timeout`` and one of the others takes it and ticks from
where the schedule stands, each entry's last run kept in Redis. A holder that finds its lock
gone (it stalled past the timeout, or Redis lost it) fails its tick instead of ticking beside
the new holder; a supervisor starts it again as one that waits.

Only a beat configured for Redis imports this module: importing redbeat connects its
``beat_init`` receiver, which takes the lock.
"""

from typing import Any

from celery import Celery
from redbeat import RedBeatScheduler

from canary_site.celery import IdentifyingScheduler

# redbeat tells a setting that is given from one that is not by its bare name, which Django's
# ``CELERY_`` namespace hides, and then falls back to the broker's URL and transport options.
REDBEAT_SETTINGS = (
    "redbeat_redis_url",
    "redbeat_redis_options",
    "redbeat_key_prefix",
    "redbeat_lock_key",
    "redbeat_lock_timeout",
)


class RedisBeatScheduler(IdentifyingScheduler, RedBeatScheduler):
    # Whether this beat wrote the schedule since it took the lock.
    _schedule_written = False

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        given = {name: app.conf.get(name) for name in REDBEAT_SETTINGS}
        app.conf.update({name: value for name, value in given.items() if value is not None})
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # Every beat writes the schedule when it starts, but a beat may wait for the lock far
        # longer than Redis keeps what it wrote: a Redis that restarted empty loses the schedule
        # with the lock, the holder fails on it, and the beat that takes over would find nothing
        # to send. So the first tick after taking the lock writes the schedule again.
        if not self._schedule_written:
            self.setup_schedule()
            self._schedule_written = True
        return super().tick(*args, **kwargs)
