"""A scratch PostgreSQL database for a benchmark: created, migrated, and dropped afterwards."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


def create_database(server: str, name: str) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def drop_database(server: str, name: str) -> None:
    from django.db import connections

    connections.close_all()
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def setup_django(server: str, name: str, var_dir: str) -> None:
    """Point Django at the scratch database and migrate it. No worker runs beside a benchmark,
    so nothing is enqueued: the outbox and the tick keep their work for the bench to measure."""
    os.environ["DATABASE_URL"] = f"{server}/{name}"
    os.environ["CANARY_VAR_DIR"] = var_dir
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
    os.environ["CANARY_NOTIFY_ENQUEUE"] = "false"
    os.environ["CANARY_DEPLOYMENTS_ENQUEUE"] = "false"
    os.environ["DJANGO_SETTINGS_MODULE"] = "canary_site.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def add_scratch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--server`` (the PostgreSQL server, no database name) and ``--keep``."""
    parser.add_argument(
        "--server",
        default=os.environ.get("CANARY_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database name",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch database for a closer look"
    )


@contextmanager
def scratch_django(server: str, name: str, *, keep: bool = False) -> Iterator[None]:
    """Django on a fresh scratch database ``name`` (and a temporary var directory) for the
    block; the database is dropped afterwards unless ``keep``."""
    server = server.rstrip("/")
    create_database(server, name)
    try:
        with tempfile.TemporaryDirectory(prefix="canary-bench-") as var_dir:
            setup_django(server, name, var_dir)
            yield
    finally:
        if not keep:
            drop_database(server, name)
