"""Serving flags without a query per evaluation: each process keeps a snapshot of every flag,
segment and evaluation key in memory and reloads it when the shared flags version changes.

The version lives in the shared cache (Redis in production, a file cache embedded) under
:data:`VERSION_CACHE_KEY`. Every write in ``flags.services`` replaces it with a fresh random
token, once at once and once more after its transaction commits. A token rather than a counter:
two writers can never produce a value a reader has already seen (a counter's read-modify-write
can, on a cache without atomic increments), and a version lost to eviction or a flushed cache is
simply a new version, which costs one reload.

On the hot path :meth:`FlagStore.current` compares a monotonic clock with the time of the next
check and returns the snapshot it holds: no cache read and no query. At most every
``CANARY_FLAGS_SNAPSHOT_CHECK_SECONDS`` (0.2 s) it reads the version from the cache, and only if
the version changed does it query the database. A change, a kill above all, is therefore served
by every process within the check interval plus one reload.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.core.cache import cache

from flags import conf
from flags.definition import engine_flag
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
FLAG_FIELDS = (
    "id",
    "key",
    "status",
    "value_type",
    "variants",
    "off_variant",
    "rules",
    "default_rule",
    "targets",
    "stickiness",
    "salt",
    "version",
)


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


def new_version() -> str:
    return uuid.uuid4().hex


def read_version() -> str | None:
    """The shared flags version, creating one if the cache has none (first start, eviction)."""
    version = cache.get(VERSION_CACHE_KEY)
    if version is None:
        cache.add(VERSION_CACHE_KEY, new_version(), timeout=None)
        version = cache.get(VERSION_CACHE_KEY)
    return version


def bump_version() -> None:
    """Tell every process that flags, segments or keys changed."""
    cache.set(VERSION_CACHE_KEY, new_version(), timeout=None)
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

    def _check(self) -> Snapshot:
        with self._lock:
            snapshot = self._snapshot
            now = time.monotonic()
            # Another thread may have checked while this one waited for the lock.
            if snapshot is not None and now < self._next_check:
                return snapshot
            try:
                version = read_version()
            except Exception:
                # The cache is down: keep serving what we have rather than fail evaluations.
                logger.exception("Cannot read the flags version from the cache")
                version = snapshot.version if snapshot is not None else None
            if snapshot is None or version != snapshot.version:
                previous = snapshot.version if snapshot is not None else None
                try:
                    snapshot = load_snapshot(version)
                except Exception:
                    if self._snapshot is None:
                        raise
                    logger.exception("Cannot reload flags; serving version %s", previous)
                    snapshot = self._snapshot
                else:
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
