"""A scratch PostgreSQL database for a benchmark: created, migrated, and dropped afterwards."""

from __future__ import annotations

import os

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
