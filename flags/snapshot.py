"""Serving flags without a query per evaluation: each process keeps a snapshot of every flag,
segment and evaluation key in memory and reloads it when the flags version changes.

The flags version is a :class:`canary_site.versions.VersionToken`: a random token in the shared
cache (Redis in production, a file cache embedded) under :data:`VERSION_CACHE_KEY`, and a count
of changes in the database (:class:`flags.models.FlagsVersion`). Every write in
``flags.services`` adds to the count in its transaction and replaces the token once it has
committed, best effort: a write never fails because the cache is down.

On the hot path :meth:`FlagStore.current` compares a monotonic clock with the time of the next
check and returns the snapshot it holds: no cache read and no query. At most every
``CANARY_FLAGS_SNAPSHOT_CHECK_SECONDS`` (0.2 s) it reads the version: the token from the cache,
and at most every ``CANARY_FLAGS_DB_VERSION_SECONDS`` (2 s) the count from the database. Only if
the version changed does it load the rows. A change, a kill above all, is therefore served by
every process within the check interval plus one reload while the cache is up, and within the
database interval plus one reload while it is down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.db import transaction

from canary_site.versions import Outage, VersionToken, counter_value
from flags import conf
from flags.definition import DEFINITION_FIELDS, engine_flag
from flags.evaluation import (
    FlagSnapshot,
    InvalidFlagDefinition,
    SegmentSnapshot,
    build_flag_snapshot,
    build_segment_snapshot,
)

logger = logging.getLogger(__name__)

VERSION_CACHE_KEY = "flags:version"

# The stored fields build_flag_snapshot reads (through flags.definition.engine_flag).
FLAG_FIELDS = ("id", "key", "status", *DEFINITION_FIELDS, "version")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """What OFREP needs to know about an evaluation key, found by the digest of its secret."""

    id: int
    rate_key: str  # names the key in the shared rate-limit counters
    name: str
    prefix: str
    rate_limit: int | None
    revoked: bool


@dataclass(frozen=True)
class Snapshot:
    """Every flag, segment and evaluation key as one process serves them."""

    version: str | None
    flags: Mapping[str, FlagSnapshot] = field(default_factory=dict)
    # Flags whose stored definition no longer builds, with the reason: served as PARSE_ERROR.
    broken: Mapping[str, str] = field(default_factory=dict)
    segments: Mapping[str, SegmentSnapshot] = field(default_factory=dict)
    keys: Mapping[str, KeyEntry] = field(default_factory=dict)
    # Changes whenever any flag or segment changes: the part of a bulk ETag that is not context.
    etag_basis: str = ""
    flag_keys: tuple[str, ...] = ()
    loaded_at: float = 0.0


def _database_version() -> int:
    from flags.models import FlagsVersion

    return counter_value(FlagsVersion)


FLAGS_VERSION = VersionToken(
    name="flags",
    cache_key=VERSION_CACHE_KEY,
    database_version=_database_version,
    database_interval=conf.db_version_seconds,
    log=logger,
)


def read_version() -> str:
    """The flags version: the cache's token and the database's count (never raises)."""
    return FLAGS_VERSION.read()


def version_changed() -> None:
    """Inside the transaction of a write that has added to :class:`flags.models.FlagsVersion`:
    this process looks again on its next use (it reads its own transaction's count), and every
    process is told through the cache once the transaction commits."""
    FLAGS_VERSION.expire()
    store.expire()
    transaction.on_commit(bump_version)


def bump_version() -> None:
    """Tell every process now that flags, segments or keys changed (outside a transaction)."""
    FLAGS_VERSION.publish()
    store.expire()


def load_snapshot(version: str | None) -> Snapshot:
    """Read every flag, segment and evaluation key from the database and build them."""
    from flags.models import EvaluationKey, Flag, Segment

    started = time.monotonic()
    basis = hashlib.sha256()
    segments: dict[str, SegmentSnapshot] = {}
    segment_rows = Segment.objects.order_by("key").values(
        "id", "key", "name", "constraints", "version"
    )
    for row in segment_rows:
        basis.update(f"s{row['id']}:{row['key']}:{row['version']}\n".encode())
        try:
            segments[row["key"]] = build_segment_snapshot(row)
        except InvalidFlagDefinition as error:
            # A segment that no longer builds matches no one, so it cannot widen a rule.
            logger.error("Segment %r cannot be served: %s", row["key"], error)

    flags: dict[str, FlagSnapshot] = {}
    broken: dict[str, str] = {}
    for row in Flag.objects.order_by("key").values(*FLAG_FIELDS):
        basis.update(f"f{row['id']}:{row['key']}:{row['version']}\n".encode())
        try:
            flags[row["key"]] = build_flag_snapshot(engine_flag(row))
        except (InvalidFlagDefinition, TypeError, ValueError) as error:
            logger.error("Flag %r cannot be served: %s", row["key"], error)
            broken[row["key"]] = str(error)

    keys = {
        row["digest"]: KeyEntry(
            id=row["id"],
            rate_key=row["digest"][:16],
            name=row["name"],
            prefix=row["prefix"],
            rate_limit=row["rate_limit"],
            revoked=row["revoked_at"] is not None,
        )
        for row in EvaluationKey.objects.values(
            "id", "name", "prefix", "digest", "rate_limit", "revoked_at"
        )
    }
    snapshot = Snapshot(
        version=version,
        flags=flags,
        broken=broken,
        segments=segments,
        keys=keys,
        etag_basis=basis.hexdigest()[:32],
        flag_keys=tuple(sorted([*flags, *broken])),
        loaded_at=time.time(),
    )
    logger.info(
        "Flags snapshot loaded at version %s: %d flags, %d segments, %d keys in %.1f ms",
        version,
        len(flags) + len(broken),
        len(segments),
        len(keys),
        (time.monotonic() - started) * 1000,
    )
    return snapshot


class FlagStore:
    """This process's snapshot, checked against the shared version at most every interval."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.reload_outage = Outage("The database (for reloading flags)", logger)
        self.loads = 0
        """How many times this process has (re)loaded the snapshot, for tests and metrics."""

    def current(self) -> Snapshot:
        """The snapshot to serve from now; reloads first if the shared version has moved."""
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() < self._next_check:
            return snapshot
        return self._check()

    def expire(self) -> None:
        """Check the shared version on the next use, e.g. right after this process wrote."""
        self._next_check = 0.0

    def reset(self) -> None:
        """Forget the snapshot, so the next use loads afresh (tests roll the database back)."""
        with self._lock:
            self._snapshot = None
            self._next_check = 0.0
            self.loads = 0
        FLAGS_VERSION.reset()

    def _check(self) -> Snapshot:
        held = self._snapshot
        if held is None:  # nothing to serve yet: wait for whoever loads it
            with self._lock:
                return self._check_locked()
        if not self._lock.acquire(blocking=False):
            # Another thread is checking (or reloading): serve what we hold rather than wait,
            # so a slow cache or database never holds evaluations up.
            return held
        try:
            return self._check_locked()
        finally:
            self._lock.release()

    def _check_locked(self) -> Snapshot:
        snapshot = self._snapshot
        now = time.monotonic()
        # Another thread may have checked while this one waited for the lock.
        if snapshot is not None and now < self._next_check:
            return snapshot
        # Never raises: an unreachable cache or database leaves its part as last read.
        version = read_version()
        if snapshot is None or version != snapshot.version:
            previous = snapshot.version if snapshot is not None else None
            try:
                snapshot = load_snapshot(version)
            except Exception as error:
                if self._snapshot is None:
                    raise
                # Logged once per outage, not once per check.
                self.reload_outage.failed(error, f"serving the flags of version {previous}")
                snapshot = self._snapshot
            else:
                self.reload_outage.recovered()
                self.loads += 1
                if previous is not None:
                    logger.info(
                        "Flags snapshot reloaded because the version changed: %s -> %s",
                        previous,
                        version,
                    )
            self._snapshot = snapshot
        self._next_check = now + conf.snapshot_check_seconds()
        return snapshot


store = FlagStore()
"""The one store of this process."""
