"""A small real backend for the proxy and nginx tests: answers with its version, and can be
told to fail.

    python tests/routing/backend.py --port 9001 --version 1.0.0

- any path: 200 with the version as the body and ``X-Backend-Version``;
- ``/echo``: JSON with the method, path, raw request target, headers, and the body's length
  and SHA-256;
- ``/status/<code>``: answers that status;
- ``/bytes/<n>``: streams n bytes in chunks (no Content-Length);
- ``/slow/<ms>``: answers after that many milliseconds;
- ``/health``: 200, or 503 while failing;
- ``/canary-headers``: 200 with ``X-Canary-*`` headers of its own (which the proxy must not
  relay);
- ``POST /_control/fail`` makes every other path answer 500; ``POST /_control/recover`` undoes it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

from aiohttp import web


def build_app(version: str) -> web.Application:
    state = {"failing": False}
    headers = {"X-Backend-Version": version}

    async def control(request: web.Request) -> web.Response:
        state["failing"] = request.match_info["action"] == "fail"
        return web.Response(text="failing" if state["failing"] else "ok", headers=headers)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=503 if state["failing"] else 200, text=version, headers=headers)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        payload = {
            "version": version,
            "method": request.method,
            "path": request.path,
            "target": request.raw_path,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        return web.Response(
            text=json.dumps(payload), content_type="application/json", headers=headers
        )

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text=version, headers=headers)

    async def stream(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text=version, headers=headers)

    async def canary_headers(request: web.Request) -> web.Response:
        forged = {**headers, "X-Canary-Version": "forged", "X-Canary-Debug": "leak"}
        return web.Response(text=version, headers=forged)

    async def anything(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=version, headers=headers)

    @web.middleware
    async def failing(request: web.Request, handler: object) -> web.StreamResponse:
        if state["failing"] and not request.path.startswith(("/_control/", "/health")):
            await request.read()
            return web.Response(status=500, text="failing", headers=headers)
        return await handler(request)  # type: ignore[operator]

    app = web.Application(middlewares=[failing], client_max_size=16 * 1024 * 1024)
    app.router.add_post("/_control/{action}", control)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/status/{code:\\d+}", status)
    app.router.add_get("/bytes/{size:\\d+}", stream)
    app.router.add_get("/slow/{ms:\\d+}", slow)
    app.router.add_get("/canary-headers", canary_headers)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    arguments = parser.parse_args()
    web.run_app(
        build_app(arguments.version),
        host="127.0.0.1",
        port=arguments.port,
        access_log=None,
        print=None,
    )
