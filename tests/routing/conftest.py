"""Fixtures of the routing tests: real backend processes, the real proxy, a pooled client."""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ManagedProcess, wait_for

BACKEND = Path(__file__).with_name("backend.py")
STABLE = "1.0.0"
CANARY = "2.0.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, *, headers: dict[str, str] | None = None, timeout: float = 5) -> Any:
    """One GET with the standard library: (status, headers, body), or None if unreachable."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
    except OSError:
        return None


def http_post(url: str, data: bytes = b"") -> Any:
    request = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


@pytest.fixture
def clean_breaker_reports() -> Iterator[None]:
    """The proxies' breaker reports live in the shared cache: no test may see another's."""
    from django.core.cache import cache

    from routing.selectors import BREAKERS_KEY

    cache.delete(BREAKERS_KEY)
    yield
    cache.delete(BREAKERS_KEY)


@dataclass
class Backend:
    version: str
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self) -> None:
        http_post(f"{self.url}/_control/fail")

    def recover(self) -> None:
        http_post(f"{self.url}/_control/recover")


@pytest.fixture
def start_backend(spawn: Callable[..., ManagedProcess]) -> Callable[[str], Backend]:
    def start(version: str) -> Backend:
        port = free_port()
        process = spawn(
            f"backend-{version}",
            [sys.executable, str(BACKEND), "--port", str(port), "--version", version],
        )
        backend = Backend(version, port, process)
        ready = wait_for(lambda: http_get(f"{backend.url}/health", timeout=1), timeout=20)
        assert ready, process.output()
        return backend

    return start


@pytest.fixture
def backends(start_backend: Callable[[str], Backend]) -> tuple[Backend, Backend]:
    """A stable and a canary backend, each a real process on its own port."""
    return start_backend(STABLE), start_backend(CANARY)


@dataclass
class Proxy:
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def start_proxy(spawn: Callable[..., ManagedProcess]) -> Callable[..., Proxy]:
    """``manage.py runproxy`` as a real process; returns once it routes ``service``."""

    def start(service: str, *extra: str, **env: str) -> Proxy:
        port = free_port()
        process = spawn(
            "proxy",
            [
                sys.executable,
                "manage.py",
                "runproxy",
                "--port",
                str(port),
                "--service",
                service,
                "--log-level",
                "info",
                *extra,
            ],
            **env,
        )
        proxy = Proxy(port, process)

        def routed() -> bool:
            answer = http_get(f"{proxy.url}/", timeout=1)
            return answer is not None and "x-canary-version" in answer[1]

        assert wait_for(routed, timeout=30), process.output()
        return proxy

    return start


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def version(self) -> str:
        return self.headers.get("x-canary-version", "")


def fetch_many(
    url: str,
    requests: Iterable[dict[str, Any]],
    *,
    concurrency: int = 32,
    timeout: float = 90,
) -> list[Answer]:
    """Send many requests over one pooled aiohttp session; each item holds ``headers``,
    optionally ``method``, ``path`` and ``data``. Answers come back in order."""
    import aiohttp

    items = list(requests)

    async def run() -> list[Answer]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        answers: list[Answer | None] = [None] * len(items)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(items)):
            queue.put_nowait(index)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    item = items[index]
                    async with session.request(
                        item.get("method", "GET"),
                        url + item.get("path", "/"),
                        headers=item.get("headers", {}),
                        data=item.get("data"),
                    ) as response:
                        body = await response.read()
                        answers[index] = Answer(
                            response.status,
                            {name.lower(): value for name, value in response.headers.items()},
                            body,
                        )

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return [answer for answer in answers if answer is not None]

    # A thread of its own: Playwright's sync API may keep an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, asyncio.wait_for(run(), timeout)).result()
