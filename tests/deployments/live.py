"""Parts of the closed loop with real processes, shared by its tests and by
``bench/rollback_live.py``: the fault-injecting backend's handle and a paced load generator."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULT_BACKEND = Path(__file__).with_name("fault_backend.py")


def fault_backend_args(port: int, version: str, delay_ms: float = 2.0) -> list[str]:
    return [
        sys.executable,
        str(FAULT_BACKEND),
        "--port",
        str(port),
        "--version",
        version,
        "--delay-ms",
        str(delay_ms),
    ]


@dataclass
class FaultyBackend:
    """A running ``fault_backend.py``; ``process`` is whatever started it."""

    version: str
    port: int
    process: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault(self, *, error_rate: float = 0.0, delay_ms: float | None = None) -> None:
        query = f"error_rate={error_rate}"
        if delay_ms is not None:
            query += f"&delay_ms={delay_ms}"
        _post(f"{self.url}/_control/fault?{query}")

    def slow_next(self, *, delay_ms: float, count: int = 1, path: str = "") -> None:
        """The next ``count`` requests (to ``path`` only, if given) each wait ``delay_ms`` more
        (``state()["slow"]``)."""
        query = f"delay_ms={delay_ms}&count={count}" + (f"&path={path}" if path else "")
        _post(f"{self.url}/_control/slow?{query}")

    def answer_health(self, status: int) -> None:
        """``/health`` answers ``status`` until ``recover``."""
        _post(f"{self.url}/_control/health?status={status}")

    def recover(self) -> None:
        _post(f"{self.url}/_control/recover")

    def state(self) -> dict[str, Any]:
        from tests.deployments.fault_backend import state_of

        return state_of(self.url)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when sent
    wall: float  # time.time() when sent
    status: int  # 0: no answer
    version: str


@dataclass
class PacedLoad:
    """An open-loop load: ``rate`` requests a second through ``url`` whatever their latency
    (a slow canary does not slow the load down), until stopped or for ``limit`` seconds."""

    url: str
    rate: float = 50.0
    limit: float = 300.0
    timeout: float = 10.0
    answers: list[Answer] = field(default_factory=list)
    # Sent with every request, e.g. ``X-Canary-Service`` to load a service other than the
    # proxy's default.
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> PacedLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    async def _run(self) -> None:
        import aiohttp

        deadline = time.monotonic() + self.limit
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def one(sent: float, wall: float) -> None:
                try:
                    async with session.get(self.url + "/", headers=self.headers) as response:
                        await response.read()
                        version = response.headers.get("x-canary-version", "")
                        self.answers.append(Answer(sent, wall, response.status, version))
                except (TimeoutError, aiohttp.ClientError):
                    self.answers.append(Answer(sent, wall, 0, ""))

            pending: set[asyncio.Task[None]] = set()
            step = 1.0 / self.rate
            next_at = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < deadline:
                task = asyncio.create_task(one(time.monotonic(), time.time()))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += step
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if pending:
                await asyncio.wait(pending, timeout=self.timeout)

    def since(self, moment: float) -> Counter[tuple[int, str]]:
        """(status, version) counts of the requests sent at ``moment`` (monotonic) or later."""
        return Counter((a.status, a.version) for a in list(self.answers) if a.sent >= moment)

    def last_sent_to(self, version: str) -> Answer | None:
        """The latest request that the proxy sent to ``version``."""
        found = [a for a in list(self.answers) if a.version == version]
        return max(found, key=lambda a: a.sent) if found else None
