"""Fixtures shared by the whole suite: users with roles, API clients, real processes, Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent

ROLE_NAMES = ["viewer", "engineer", "approver", "admin"]


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    from canary_site import services

    def make(
        username: str | None = None,
        *,
        roles: list[str] | None = None,
        password: str = "pw-Canary-123",
    ) -> Any:
        user = django_user_model.objects.create_user(
            username=username or f"user-{uuid.uuid4().hex[:8]}", password=password
        )
        services.user_set_roles(user=user, roles=list(roles or []))
        return user

    return make


@pytest.fixture
def engineer(make_user: Callable[..., Any]) -> Any:
    return make_user("erin", roles=["engineer"])


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A local HTTP server standing in for Slack or a webhook receiver (tests/health/receiver.py),
    stopped after the test."""
    from tests.health.receiver import Receiver

    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def api_client() -> Any:
    from rest_framework.test import APIClient

    return APIClient()


def process_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process that must share this test run's database and broker."""
    from django.db import connection

    env = dict(os.environ)
    settings = connection.settings_dict
    if settings["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{settings['NAME']}"
    else:
        user = settings.get("USER") or ""
        password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        env["DATABASE_URL"] = (
            f"postgres://{auth}{settings.get('HOST') or '127.0.0.1'}:{settings.get('PORT') or 5432}"
            f"/{settings['NAME']}"
        )
    env["DJANGO_SETTINGS_MODULE"] = "canary_site.settings"
    env.update(overrides)
    return env


class ManagedProcess:
    """A child process whose output is kept in a file, so a failing test can show it."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=BASE_DIR, env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._file.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """Start real processes for a test; all are stopped when it ends."""
    started: list[ManagedProcess] = []

    def start(name: str, args: list[str], **env: str) -> ManagedProcess:
        process = ManagedProcess(args, process_env(**env), tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def task_queue() -> str:
    """A queue of this test's own, so no stale message or other worker interferes."""
    return f"test-{uuid.uuid4().hex[:10]}"


def celery_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "canary_site", *args]


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2) -> Any:
    """Poll until ``predicate`` returns something truthy; the value, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (which cannot download its own browsers here)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # around it are still synchronous, so Django's async guard is lifted for browser tests.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    executable = os.environ.get("CANARY_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


def login(page: Any, username: str, password: str = "pw-Canary-123") -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture(autouse=True)
def _fast_password_hashing(request: pytest.FixtureRequest) -> None:
    # Real hashing is deliberately slow; tests create many users and check no hash strength.
    # Pure-engine tests may run without Django at all (-p no:django).
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
