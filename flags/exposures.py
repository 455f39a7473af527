"""Exposure counts: which variant of which flag was served, aggregated in memory and written in
batches, so serving a flag never waits for a database write.

Each process adds one to a counter per (minute, flag, variant) for every result it serves over
OFREP. The counters are written as one bulk upsert (``count = count + new``) when
``CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS`` (5 s) have passed or
``CANARY_FLAGS_EXPOSURE_FLUSH_COUNT`` (10,000) evaluations are waiting, whichever comes first.
The check runs when a request has finished (Django's ``request_finished``, sent once the response
has gone out); a background timer of each process flushes whatever waits every
``CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS`` too, so a process that has gone idle does not hold its
last counts; and a last flush runs when the process exits. The timer starts with the first count
a process records (after a fork as well: a thread does not survive one). A flush that fails puts
its counts back, so they go out with the next one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.db import close_old_connections, connection, transaction

from flags import conf

logger = logging.getLogger(__name__)

# Counts kept for a database that stays down this long are dropped rather than grow forever.
MAX_PENDING_KEYS = 100_000

Key = tuple[int, str, str]  # (minute since the epoch, flag key, variant)


class ExposureRecorder:
    """Counts served variants in memory and writes them out in batches."""

    def __init__(self) -> None:
        self._counts: dict[Key, int] = {}
        self._pending = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._next_flush = time.monotonic() + conf.exposure_flush_seconds()
        self._flush_count = conf.exposure_flush_count()
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()

    def record(self, flag_key: str, variant: str | None) -> None:
        """Count one serving of ``variant`` of ``flag_key`` (nothing for a result without one)."""
        if variant is None:
            return
        if self._timer is None:
            self.start_timer()
        key = (int(time.time()) // 60, flag_key, variant)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self._pending += 1

    def record_many(self, served: Iterable[tuple[str, str | None]]) -> None:
        if self._timer is None:
            self.start_timer()
        minute = int(time.time()) // 60
        with self._lock:
            for flag_key, variant in served:
                if variant is None:
                    continue
                key = (minute, flag_key, variant)
                self._counts[key] = self._counts.get(key, 0) + 1
                self._pending += 1

    @property
    def pending(self) -> int:
        return self._pending

    def due(self) -> bool:
        return self._pending > 0 and (
            self._pending >= self._flush_count or time.monotonic() >= self._next_flush
        )

    def flush_if_due(self, **_: Any) -> None:
        """The ``request_finished`` receiver: a cheap test, and a flush when one is due."""
        if self.due():
            self.flush()

    def flush(self) -> int:
        """Write every waiting count now; returns how many rows were upserted."""
        # One flush at a time per process; a thread that finds one running leaves it to finish.
        if not self._flush_lock.acquire(blocking=False):
            return 0
        try:
            with self._lock:
                counts, self._counts = self._counts, {}
                self._pending = 0
                self._next_flush = time.monotonic() + conf.exposure_flush_seconds()
                self._flush_count = conf.exposure_flush_count()
            if not counts:
                return 0
            try:
                upsert_counts(counts)
            except Exception:
                logger.exception("Writing %d exposure counts failed; keeping them", len(counts))
                self._put_back(counts)
                return 0
            return len(counts)
        finally:
            self._flush_lock.release()

    def start_timer(self) -> None:
        """Start this process's flush timer, unless it runs already."""
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Thread(
                target=self._run_timer,
                args=(self._stop,),
                name="flags-exposure-flush",
                daemon=True,
            )
            timer = self._timer
        timer.start()

    def stop_timer(self) -> None:
        with self._lock:
            self._stop.set()
            self._stop = threading.Event()
            self._timer = None

    def _run_timer(self, stop: threading.Event) -> None:
        while not stop.wait(conf.exposure_flush_seconds()):
            if not self._pending:
                continue
            try:
                self.flush()
            finally:
                # This thread's own connection: closed when broken or past its age, as a
                # request's would be.
                close_old_connections()

    def after_fork(self) -> None:
        """In a forked child: no timer runs here yet, no other thread holds the locks, and the
        parent's waiting counts remain the parent's to write."""
        self._counts = {}
        self._pending = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = None

    def reset(self) -> None:
        """Drop every waiting count, stop the timer and re-read the settings (tests start from
        nothing)."""
        self.stop_timer()
        with self._lock:
            self._counts = {}
            self._pending = 0
            self._next_flush = time.monotonic() + conf.exposure_flush_seconds()
            self._flush_count = conf.exposure_flush_count()

    def _put_back(self, counts: dict[Key, int]) -> None:
        with self._lock:
            for key, count in counts.items():
                if len(self._counts) >= MAX_PENDING_KEYS and key not in self._counts:
                    continue
                self._counts[key] = self._counts.get(key, 0) + count
                self._pending += count


def upsert_counts(counts: dict[Key, int]) -> None:
    """Add ``counts`` to the stored exposure rows in one statement per batch.

    Django's ``bulk_create(update_conflicts=True)`` can only overwrite a column with the new
    value; adding to it needs ``ON CONFLICT ... DO UPDATE SET count = count + excluded.count``,
    which SQLite and PostgreSQL both understand.
    """
    from flags.models import FlagExposure

    table = connection.ops.quote_name(FlagExposure._meta.db_table)
    rows = [
        (flag_key, variant, datetime.fromtimestamp(minute * 60, tz=UTC), count)
        for (minute, flag_key, variant), count in counts.items()
    ]
    sql = (
        f"INSERT INTO {table} (flag_key, variant, bucket_start, count) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (flag_key, bucket_start, variant) "
        f"DO UPDATE SET count = {table}.count + excluded.count"
    )
    # The connection adapts aware datetimes for its backend (UTC text on SQLite).
    params = [
        (flag_key, variant, connection.ops.adapt_datetimefield_value(bucket), count)
        for flag_key, variant, bucket, count in rows
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, params)


recorder = ExposureRecorder()
"""The one recorder of this process."""

os.register_at_fork(after_in_child=recorder.after_fork)
