"""Routing as it is served: every service compiled by the engine, and the routing version that
says when to compile again.

The routing version is a :class:`canary_site.versions.VersionToken`: a random token in the shared
cache under :data:`VERSION_CACHE_KEY`, and a digest of every service's id and ``routing_version``
column in the database. Every write in ``routing.services`` bumps its service's column in its
transaction and, through :func:`version_changed`, replaces the token once it has committed, best
effort: a write never fails because the cache is down. Because the token moves only after
commit, a process that sees it move always reads the committed rows; with the cache down it
still sees the change within ``CANARY_ROUTING_DB_VERSION_SECONDS`` (2 s).

The proxy (``routing.proxy``) polls :func:`read_version` and, only when it changed, reloads with
:func:`load_snapshots`; the decide endpoint and the dashboard compile the one service they show
(:func:`service_snapshot`). A service that does not compile is logged and left out, so one bad
row cannot take every service down.

A halt (``services.services_halt``) is part of the snapshot like any other routing change: the
service's definition carries it, so the proxy learns of it by the same version and no decision
reads the database.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from django.db import connection, transaction

from canary_site.conf import setting
from canary_site.versions import VersionToken
from routing.definition import all_service_definitions, service_definition
from routing.engine import InvalidRoutingDefinition, ServiceSnapshot, build_service_snapshot
from routing.models import Service

logger = logging.getLogger(__name__)

VERSION_CACHE_KEY = "routing:version"
"""Cache key every proxy polls; any change of its value means "reload your snapshots"."""


def _database_version() -> str:
    """Every service's id and ``routing_version``, digested: every routing write bumps its
    service's column in its transaction, and creating or deleting a service changes the ids."""
    digest = hashlib.blake2b(digest_size=8)
    for pk, version in Service.objects.order_by("pk").values_list("pk", "routing_version"):
        digest.update(f"{pk}:{version};".encode())
    return digest.hexdigest()


ROUTING_VERSION = VersionToken(
    name="routing",
    cache_key=VERSION_CACHE_KEY,
    database_version=_database_version,
    database_interval=lambda: float(setting("CANARY_ROUTING_DB_VERSION_SECONDS", 2)),
    log=logger,
)


def read_version() -> str:
    """The routing version as one string; any change means "reload your snapshots". Never
    raises: a cache or database outage leaves its part as last read, logged once."""
    return ROUTING_VERSION.read()


def version_changed() -> None:
    """Inside the transaction of a write that has bumped its services' ``routing_version``:
    every process is told through the cache once the transaction commits."""
    ROUTING_VERSION.changed()


def build_snapshots(definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, ServiceSnapshot]:
    """Compile definitions; a service that does not compile is left out and logged, so one bad
    row (written around the services, say by hand in SQL) cannot take every service down."""
    snapshots: dict[str, ServiceSnapshot] = {}
    for name, definition in definitions.items():
        try:
            snapshots[name] = build_service_snapshot(definition)
        except InvalidRoutingDefinition as error:
            logger.error("Routing for service %s does not compile: %s", name, error)
    return snapshots


def all_snapshots() -> dict[str, ServiceSnapshot]:
    """Every service that compiles, by name, in four queries."""
    return build_snapshots(all_service_definitions())


def service_snapshot(*, name: str) -> ServiceSnapshot | None:
    """One service compiled, or None when there is no such service."""
    definition = service_definition(name=name)
    return None if definition is None else build_service_snapshot(definition)


def load_snapshots() -> tuple[str, dict[str, ServiceSnapshot]]:
    """Read the routing version, then every snapshot (in this order: a change committed in
    between is seen now or by the next poll, never lost). Outside a transaction.

    On PostgreSQL the four reads share one snapshot of the database (REPEATABLE READ, read
    only), so a tick committing between two of them cannot hand the proxy half of its change.
    Plain reads never wait on the row locks a tick holds."""
    version = read_version()
    if connection.vendor != "postgresql":
        # SQLite: the project's transactions take the write lock (IMMEDIATE), which a reader
        # must not hold; its reads outside one each see a committed state.
        return version, all_snapshots()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return version, all_snapshots()
