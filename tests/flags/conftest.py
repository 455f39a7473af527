"""Fixtures of the flags tests: a clean per-process state, flags, segments and keys."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for


@pytest.fixture(autouse=True)
def _fresh_flag_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with no snapshot, no waiting exposures and no held rate tokens: the
    database is rolled back between tests, and these live in the process."""
    if not request.config.pluginmanager.hasplugin("django"):
        yield
        return
    from flags.exposures import recorder
    from flags.ratelimit import limiter
    from flags.snapshot import store

    store.reset()
    recorder.reset()
    limiter.reset()
    yield
    store.reset()
    recorder.reset()
    limiter.reset()


@pytest.fixture
def make_segment(db: Any) -> Callable[..., Any]:
    from flags import services

    def make(key: str = "beta", constraints: list[Any] | None = None, **fields: Any) -> Any:
        if constraints is None:
            constraints = [{"attribute": "country", "operator": "in", "values": ["NL", "BE"]}]
        return services.segment_create(key=key, constraints=constraints, **fields)

    return make


@pytest.fixture
def make_flag(db: Any) -> Callable[..., Any]:
    from flags import services

    def make(key: str = "new-checkout", **fields: Any) -> Any:
        fields.setdefault("status", "enabled")
        return services.flag_create(key=key, **fields)

    return make


@pytest.fixture
def evaluation_key(db: Any) -> str:
    """The secret of a fresh evaluation key."""
    from flags import services

    _key, secret = services.evaluation_key_create(name="checkout-service")
    return secret


@pytest.fixture
def viewer(make_user: Callable[..., Any]) -> Any:
    return make_user("vic", roles=["viewer"])


@pytest.fixture
def approver(make_user: Callable[..., Any]) -> Any:
    return make_user("ava", roles=["approver"])


class RedisServer:
    """A Redis server of the test's own on a free port, without persistence, that the test can
    stop and start again (empty, as a restarted cache is)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def caches(self) -> dict[str, Any]:
        """A ``CACHES`` setting that points this process's cache at the server."""
        return {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": self.url,
                "KEY_PREFIX": "canary-test",
            }
        }

    def start(self) -> RedisServer:
        self.starts += 1
        log = (self.directory / f"redis-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if not wait_for(self.answers, timeout=15, interval=0.05):
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
