"""A backend for the closed loop and the live rollback benchmark: answers with its version after a
base delay, and can be told to fail a share of its requests or to slow down.

    python tests/deployments/fault_backend.py --port 9001 --version 2.0.0 [--delay-ms 2]

- any path: 200 with the version as the body and ``X-Backend-Version``, after the delay;
- ``/health``: 200 (a fault is in the answers, not in the health check) unless told otherwise;
- ``POST /_control/fault?error_rate=0.05&delay_ms=300``: from now on that share of requests
  answers 500 (spread evenly: with 0.05, one request in twenty) and every request waits
  ``delay_ms``; either parameter may be left out;
- ``POST /_control/slow?delay_ms=4000&count=1[&path=/validate]``: the next ``count``
  requests (to ``path`` only, when given) each wait ``delay_ms`` more; each one's start and
  end (epoch seconds) are kept in the state's ``slow``;
- ``POST /_control/health?status=500``: ``/health`` answers that status from now on;
- ``POST /_control/recover``: healthy again, at the base delay, its health check 200;
- ``GET /_control/state``: JSON with the fault and, in epoch seconds, when it began and when
  its first 500 was answered (null until then); ``served``, the requests answered on any path
  but ``/health`` and ``/_control``, and ``last_served_at``, when the latest began.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web


def build_app(version: str, delay_ms: float) -> web.Application:
    state: dict[str, Any] = {
        "error_rate": 0.0,
        "delay_ms": delay_ms,
        "since": None,
        "first_error_at": None,
        "debt": 0.0,
        "health_status": 200,
        "served": 0,
        "last_served_at": None,
        "slow_left": 0,
        "slow_ms": 0.0,
        "slow_path": None,
        "slow": [],
    }
    headers = {"X-Backend-Version": version}

    async def fault(request: web.Request) -> web.Response:
        query = request.query
        state["error_rate"] = min(1.0, max(0.0, float(query.get("error_rate", 0.0))))
        state["delay_ms"] = float(query.get("delay_ms", state["delay_ms"] or 0.0))
        state["since"] = time.time()
        state["first_error_at"] = None
        state["debt"] = 0.0
        return web.json_response(_public(state), headers=headers)

    async def slow(request: web.Request) -> web.Response:
        state["slow_ms"] = max(0.0, float(request.query.get("delay_ms", 0.0)))
        state["slow_left"] = max(0, int(request.query.get("count", 1)))
        state["slow_path"] = request.query.get("path") or None
        return web.json_response(_public(state), headers=headers)

    async def set_health(request: web.Request) -> web.Response:
        state["health_status"] = int(request.query.get("status", 200))
        return web.json_response(_public(state), headers=headers)

    async def recover(request: web.Request) -> web.Response:
        state.update(
            error_rate=0.0, delay_ms=delay_ms, since=None, debt=0.0, health_status=200, slow_left=0
        )
        return web.json_response(_public(state), headers=headers)

    async def show(request: web.Request) -> web.Response:
        return web.json_response(_public(state), headers=headers)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=state["health_status"], text=version, headers=headers)

    async def anything(request: web.Request) -> web.Response:
        await request.read()
        began = time.time()
        state["served"] += 1
        state["last_served_at"] = began
        wait = state["delay_ms"] or 0.0
        slow = None
        if state["slow_left"] > 0 and state["slow_path"] in (None, request.path):
            state["slow_left"] -= 1
            wait += state["slow_ms"]
            slow = {"start": began, "end": None}
            state["slow"].append(slow)
        if wait > 0:
            await asyncio.sleep(wait / 1000)
        if slow is not None:
            slow["end"] = time.time()
        rate = state["error_rate"] or 0.0
        if rate > 0:
            state["debt"] = (state["debt"] or 0.0) + rate
            if state["debt"] >= 1.0:
                state["debt"] -= 1.0
                if state["first_error_at"] is None:
                    state["first_error_at"] = time.time()
                return web.Response(status=500, text="injected fault", headers=headers)
        return web.Response(text=version, headers=headers)

    app = web.Application()
    app.router.add_post("/_control/fault", fault)
    app.router.add_post("/_control/slow", slow)
    app.router.add_post("/_control/health", set_health)
    app.router.add_post("/_control/recover", recover)
    app.router.add_get("/_control/state", show)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def _public(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "debt"}


def state_of(url: str) -> dict[str, Any]:
    """The backend's ``/_control/state`` (for the callers of this module)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/_control/state", timeout=5) as response:
        return json.loads(response.read())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    arguments = parser.parse_args()
    web.run_app(
        build_app(arguments.version, arguments.delay_ms),
        host="127.0.0.1",
        port=arguments.port,
        access_log=None,
        print=None,
    )
