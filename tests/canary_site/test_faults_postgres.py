"""PostgreSQL going away and coming back, with real processes: a PostgreSQL cluster of the test's
own (initdb in a temporary directory, stopped and started with pg_ctl), a real gunicorn and a
real Celery worker pointed at it. While the database is down the web answers 503 with
``Retry-After`` and the error body, never a 500; when it is back the same requests succeed, and
a task that ran during the outage is retried until it has done its work, exactly once.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from canary_site import tasks
from tests.conftest import BASE_DIR, ManagedProcess, celery_args, wait_for

pytestmark = pytest.mark.processes

# Run in the cluster's database: an admin with an API token and a signed-in session.
SETUP_SCRIPT = """
import json
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from canary_site import services
from canary_site.choices import Role

user = get_user_model().objects.create_user(username="ops", password="pw-Canary-123")
services.user_set_roles(user=user, roles=[Role.ADMIN])
_token, secret = services.api_token_create(user=user, name="faults")
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(json.dumps({"token": secret, "session": session.session_key}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major_version)
    path = found[-1] if found else shutil.which(name)
    assert path, f"PostgreSQL's {name} is needed for these tests (apt-get install postgresql)"
    return path


def _major_version(path: str) -> int:
    return int(Path(path).parts[-3])


class Cluster:
    """A throw-away PostgreSQL cluster on a free port, owned by the ``postgres`` user when the
    tests run as root (the server refuses to run as root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.log = root / "postgres.log"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(root, user="postgres", group="postgres")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/canary"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_owner, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        # Fast shutdown: open connections are cut, as when the server restarts or fails over.
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=canary"
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


def site_env(cluster: Cluster, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=cluster.url,
        DJANGO_SETTINGS_MODULE="canary_site.settings",
        DJANGO_DEBUG="false",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="canary-pg-"))
    cluster = Cluster(root)
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(
            f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE canary")
        env = site_env(cluster)
        manage = [sys.executable, "manage.py"]
        subprocess.run(
            [*manage, "migrate", "--noinput"], cwd=BASE_DIR, env=env, check=True,
            capture_output=True, timeout=300,
        )  # fmt: skip
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, up at the start of the test and again at its end, whatever the test did."""
    if not cluster.is_running():
        cluster.start()
    yield cluster
    if not cluster.is_running():
        cluster.start()


@pytest.fixture
def credentials(running: Cluster) -> dict[str, str]:
    """An admin's API token and signed-in session, made in the cluster's database."""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SETUP_SCRIPT],
        cwd=BASE_DIR, env=site_env(running), check=True, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for process in reversed(started):
        process.stop()


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str, **headers: str) -> Answer:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def test_web__while_postgres_is_down__answers_503_with_retry_after__then_200_when_back(
    running, credentials, processes, tmp_path
):
    port = free_port()
    web = ManagedProcess(
        [
            sys.executable, "-m", "gunicorn", "canary_site.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2",
            "--no-control-socket",
        ],
        site_env(running),
        tmp_path / "web.log",
    )  # fmt: skip
    processes.append(web)
    base = f"http://127.0.0.1:{port}"
    api = {"Authorization": f"Bearer {credentials['token']}"}
    page = {"Cookie": f"sessionid={credentials['session']}"}
    up = wait_for(lambda: _healthz(base), timeout=60)
    assert up, web.output()
    assert get(f"{base}/api/v1/me/", **api).status == 200
    assert get(f"{base}/audit/", **page).status == 200

    running.stop()
    answers = {
        "api": get(f"{base}/api/v1/me/", **api),
        "api-list": get(f"{base}/api/v1/audit/", **api),
        "page": get(f"{base}/audit/", **page),
        "page-again": get(f"{base}/audit/", **page),
    }

    for name, answer in answers.items():
        assert answer.status == 503, (name, answer.body[:500], web.output())
        assert int(answer.headers["Retry-After"]) >= 1, name
    for name in ("api", "api-list"):
        error = answers[name].json()["error"]
        assert error["code"] == "unavailable"
        assert "database" in error["message"]
    assert answers["page"].headers["Content-Type"].startswith("text/html")
    assert b"The database is unavailable" in answers["page"].body
    assert "Traceback" not in web.output()
    assert web.output().count("The database is unavailable") == 1

    running.start()
    back = wait_for(lambda: get(f"{base}/api/v1/me/", **api).status == 200, timeout=30)

    assert back, web.output()
    assert get(f"{base}/api/v1/me/", **api).json()["username"] == "ops"
    assert get(f"{base}/audit/", **page).status == 200
    assert "The database is available again" in web.output()


def _healthz(base: str) -> bool:
    try:
        return get(f"{base}/healthz").status == 200
    except OSError:
        return False


def test_worker__a_task_run_while_postgres_is_down__is_retried_and_done_once_it_is_back(
    running, processes, task_queue, tmp_path
):
    worker = ManagedProcess(
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        site_env(running, CANARY_TASK_QUEUE=task_queue),
        tmp_path / "worker.log",
    )
    processes.append(worker)
    assert wait_for(lambda: "ready." in worker.output(), timeout=60), worker.output()

    running.stop()
    tasks.heartbeat_record.apply_async(kwargs={"name": "during-outage"}, queue=task_queue)
    retried = wait_for(lambda: "Retry in" in worker.output(), timeout=60)
    assert retried, worker.output()
    running.start()

    def heartbeat() -> list[tuple[Any, ...]]:
        return running.query(
            "SELECT count FROM canary_site_heartbeat WHERE name = %s", "during-outage"
        )

    done = wait_for(heartbeat, timeout=120, interval=0.5)

    assert done == [(1,)], worker.output()
    assert "OperationalError" in worker.output()


def test_every_task__retries_on_a_lost_connection__and_keeps_delay_on_commit():
    from django.db import InterfaceError, OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from canary_site.celery import app

    app.loader.import_default_modules()
    ours = [task for name, task in app.tasks.items() if not name.startswith("celery.")]

    assert len(ours) >= 10
    for task in ours:
        assert {OperationalError, InterfaceError, RedisConnectionError} <= set(task.autoretry_for)
        assert task.retry_backoff and task.retry_jitter and task.max_retries >= 10, task.name
        assert hasattr(task, "delay_on_commit"), task.name
