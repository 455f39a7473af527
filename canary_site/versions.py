"""Version tokens that tell every process when shared state has changed (the flags and routing
snapshots): kept in the database, mirrored in the cache.

A process that serves from an in-memory snapshot asks often whether the snapshot is still
current. The cache answers that cheaply: after a write commits, the writer replaces a random
token there. The cache is neither durable nor always reachable, so the database keeps a version
too, written in the transaction of the change, and every process reads it as well, at most every
``database_interval`` seconds (about 2). :meth:`VersionToken.read` returns both as one string:

- with the cache up, a change is seen within the caller's own check interval, and the database
  part is re-read together with the token that announced it, so one change costs one reload;
- with the cache down, a change is seen within the database interval, and a failing cache is
  tried again only at that interval, so an outage costs no connection attempt per request;
- a bump the cache missed (it was down during the commit, or flushed) is caught by the database
  part, so every process converges once the cache is back.

Publishing the token is best effort: a cache error is logged, never raised, so a write that has
committed (a kill above all) never turns into an error for want of the cache. Outages are logged
once when they start (a warning) and once when they end (info), not once per failed call.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import connection, models, transaction
from django.db.models import F, Sum

logger = logging.getLogger(__name__)


def new_token() -> str:
    # Random rather than a counter: two writers can never produce a value a reader has already
    # seen, and a token lost to eviction or a flushed cache is simply a new version.
    return uuid.uuid4().hex


class Outage:
    """Whether one dependency answers, as this process sees it, logged once per outage."""

    def __init__(self, what: str, log: logging.Logger = logger) -> None:
        self.what = what
        self._log = log
        self._since: float | None = None
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, meanwhile: str) -> None:
        """Note a failure; the first of an outage is logged, saying what happens ``meanwhile``."""
        if self._since is not None:  # the common case during an outage, without the lock
            return
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        self._log.warning(
            "%s is unreachable (%s: %s); %s.", self.what, type(error).__name__, error, meanwhile
        )

    def recovered(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            self._log.info(
                "%s is reachable again after %.1f s.", self.what, time.monotonic() - since
            )


class VersionToken:
    """One named version: a token in the cache and a version in the database, read as one.

    ``database_version`` returns the database's version (any value that changes with every
    committed write, such as :func:`counter_value` of a counter model); ``database_interval``
    returns how many seconds a database version read stays good.
    """

    def __init__(
        self,
        *,
        name: str,
        cache_key: str,
        database_version: Callable[[], Any],
        database_interval: Callable[[], float],
        log: logging.Logger = logger,
    ) -> None:
        self.name = name
        self.cache_key = cache_key
        self._database_version = database_version
        self._database_interval = database_interval
        self._log = log
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget what this process has read (tests roll the database back)."""
        with self._lock:
            self._token: str | None = None
            self._database: Any = None
            self._database_read_at = -math.inf
            self._cache_retry_at = 0.0
            self.cache_outage = Outage(f"The cache (for the {self.name} version)", self._log)
            self.database_outage = Outage(f"The database (for the {self.name} version)", self._log)

    def read(self) -> str:
        """The version now, as one string; never raises."""
        token = self._read_cache()
        with self._lock:
            now = time.monotonic()
            due = now - self._database_read_at >= self._database_interval()
            if token is not None and token != self._token:
                # A write announced itself: read the database part with it, so that the change
                # does not look like a second one when the database is next read.
                self._token = token
                due = True
            if due:
                self._read_database(now)
            return f"{self._token or '-'}/{self._database if self._database is not None else '-'}"

    def expire(self) -> None:
        """Read both parts on the next :meth:`read`, e.g. after this process wrote."""
        with self._lock:
            self._database_read_at = -math.inf
            self._cache_retry_at = 0.0

    def changed(self) -> None:
        """Announce a change once the caller's transaction commits (at once outside one). The
        caller writes the database version in that transaction itself."""
        transaction.on_commit(self.publish)

    def publish(self) -> None:
        """Replace the cache's token now, best effort, and look again on the next read."""
        self.expire()
        try:
            cache.set(self.cache_key, new_token(), timeout=None)
        except Exception as error:
            # The write has committed; the other processes see it through the database part.
            self._cache_failed(error)
        else:
            self.cache_outage.recovered()

    def _read_cache(self) -> str | None:
        if time.monotonic() < self._cache_retry_at:
            return None
        try:
            token = cache.get(self.cache_key)
            if token is None:  # first start, eviction, a flushed or restarted cache
                cache.add(self.cache_key, new_token(), timeout=None)
                token = cache.get(self.cache_key)
        except Exception as error:
            self._cache_failed(error)
            return None
        self.cache_outage.recovered()
        return token if isinstance(token, str) else None

    def _cache_failed(self, error: BaseException) -> None:
        interval = self._database_interval()
        self._cache_retry_at = time.monotonic() + interval
        self.cache_outage.failed(
            error, f"{self.name} changes are read from the database every {interval:g} s meanwhile"
        )

    def _read_database(self, now: float) -> None:
        try:
            self._database = self._database_version()
        except Exception as error:
            self.database_outage.failed(
                error, f"serving the {self.name} version as last read from it"
            )
            if not connection.in_atomic_block:
                # A broken connection stays broken in a thread that no request cycle closes.
                connection.close()
        else:
            self.database_outage.recovered()
        self._database_read_at = now


# --- counters -----------------------------------------------------------------------------------


def counter_bump(model: type[models.Model]) -> None:
    """Add one to the counter kept as the rows of ``model`` (a ``value`` column), in the caller's
    transaction.

    The counter is the sum of its rows. A write adds one to a row no other open transaction
    holds (``FOR UPDATE SKIP LOCKED``), or to a new row when every row is held, so writers never
    wait for one another here, and lock no row in an order that could deadlock with the rows
    they lock themselves. Every commit still raises the sum by what it added.
    """
    with transaction.atomic(savepoint=False):
        rows = model._default_manager.order_by("pk")
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        slot = rows.values_list("pk", flat=True).first()
        if slot is None:
            model._default_manager.create(value=1)
        else:
            model._default_manager.filter(pk=slot).update(value=F("value") + 1)


def counter_value(model: type[models.Model]) -> int:
    """The committed sum of a counter that :func:`counter_bump` keeps."""
    return int(model._default_manager.aggregate(total=Sum("value"))["total"] or 0)
