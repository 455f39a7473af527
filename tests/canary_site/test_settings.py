"""Settings load on embedded defaults and on PostgreSQL/Redis, and pass Django's deploy check."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import BASE_DIR

PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], "
    "'db_options': s.DATABASES['default'].get('OPTIONS', {}), "
    "'broker': s.CELERY_BROKER_URL, 'cache': s.CACHES['default']['BACKEND'], "
    "'embedded': s.EMBEDDED, 'debug': s.DEBUG}))"
)

CLEAN = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "REDIS_URL",
    "DJANGO_DEBUG",
    "CANARY_HTTPS",
    "DJANGO_ALLOW_ASYNC_UNSAFE",  # set by the browser tests in this process
)


def load_settings(tmp_path, **env: str) -> dict:
    import os

    base = {k: v for k, v in os.environ.items() if k not in CLEAN}
    base.update(DJANGO_SETTINGS_MODULE="canary_site.settings", CANARY_VAR_DIR=str(tmp_path), **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=BASE_DIR,
        env=base,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_settings__with_no_environment__run_embedded_on_sqlite_filesystem_broker_and_file_cache(
    tmp_path,
):
    loaded = load_settings(tmp_path)
    assert loaded["embedded"] is True
    assert loaded["db"] == "django.db.backends.sqlite3"
    assert "journal_mode=WAL" in loaded["db_options"]["init_command"]
    assert loaded["db_options"]["timeout"] > 0
    assert loaded["broker"] == "filesystem://"
    assert loaded["cache"].endswith("FileBasedCache")
    assert (tmp_path / "secret_key").exists()


def test_settings__with_database_and_redis_urls__use_postgresql_and_redis(tmp_path):
    loaded = load_settings(
        tmp_path,
        DATABASE_URL="postgres://canary@127.0.0.1:5432/canary",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        REDIS_URL="redis://127.0.0.1:6379/1",
    )
    assert loaded["embedded"] is False
    assert loaded["db"] == "django.db.backends.postgresql"
    assert loaded["broker"] == "redis://127.0.0.1:6379/0"
    assert loaded["cache"] == "django.core.cache.backends.redis.RedisCache"


def test_check_deploy__with_production_settings__reports_no_issue(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(
        DJANGO_SETTINGS_MODULE="canary_site.settings",
        CANARY_VAR_DIR=str(tmp_path),
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="x7!" + "k2Pq9ZrT4w" * 6,
        DJANGO_ALLOWED_HOSTS="canary.example.com",
        CANARY_HTTPS="true",
        DATABASE_URL="postgres://canary@127.0.0.1:5432/canary",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        REDIS_URL="redis://127.0.0.1:6379/1",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
