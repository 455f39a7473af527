"""uvicorn's httptools protocol with a leaner response writer for the proxy.

uvicorn's request cycle writes the status line and headers of a response in one
``transport.write`` and the body in another: two system calls and two TCP segments for every
small response. A proxy's answers are small and many, so :class:`ProxyCycle` holds the head back
and writes it together with the first body part. When the application does not promise that
the body follows at once (``"canary.body_follows": True`` in ``http.response.start``), the head
goes out at the end of the event loop's turn if no body part came first, so a slow stream still
gets its head early.

:class:`ProxyHttpToolsProtocol` also runs a connection's requests in one task of its own rather
than a new task per request, and closes idle keep-alive connections with one sweep instead of a
timer per response (:class:`_IdleConnections`).

Everything else (pipelining, flow control, ``Expect: 100-continue``, the ASGI
receive side) is uvicorn's own.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

BODY_FOLLOWS = "canary.body_follows"


class ProxyCycle(RequestResponseCycle):
    """A request cycle whose ``send`` coalesces the head with the body (see the module)."""

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self._start(message)
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
            )
        self._body(message.get("body", b""), message.get("more_body", False))

    def _start(self, message: Any) -> None:
        # uvicorn's own checks and framing rules; only the write is deferred.
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        content = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in [*self.default_headers, *message.get("headers", ())]:
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            lowered = name.lower()
            if lowered == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value)
                self.chunked_encoding = False
            elif lowered == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif lowered == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                self.keep_alive = False
                has_connection_close = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self._head = b"".join(content)
        if not message.get(BODY_FOLLOWS):
            asyncio.get_running_loop().call_soon(self._flush_head)

    def _flush_head(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self.transport.is_closing():
                self.transport.write(head)

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            data = b""
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        if data:
            self.transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


class _IdleConnections:
    """Closes keep-alive connections that stayed idle too long, with one repeating timer.

    uvicorn arms a timer when each response completes and cancels it when the next request
    arrives: two timer-heap operations per request, for a timeout that almost never fires. Here
    a connection only notes when it went idle, and a sweep every ``timeout / 4`` seconds (at
    most one) closes those idle for ``timeout``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.every = min(1.0, max(0.05, timeout / 4))
        self.idle: set[ProxyHttpToolsProtocol] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, connection: ProxyHttpToolsProtocol) -> None:
        self.idle.add(connection)
        if self._handle is None:
            self._handle = self.loop.call_later(self.every, self._sweep)

    def _sweep(self) -> None:
        horizon = self.loop.time() - self.timeout
        for connection in [c for c in self.idle if c.idle_since <= horizon]:
            self.idle.discard(connection)
            connection.timeout_keep_alive_handler()
        self._handle = self.loop.call_later(self.every, self._sweep) if self.idle else None


_idle_by_server: weakref.WeakKeyDictionary[ServerState, _IdleConnections] = (
    weakref.WeakKeyDictionary()
)


class ProxyHttpToolsProtocol(HttpToolsProtocol):
    idle_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        watch = _idle_by_server.get(self.server_state)
        if watch is None:
            watch = _IdleConnections(self.loop, self.timeout_keep_alive)
            _idle_by_server[self.server_state] = watch
        self._idle = watch
        self._ready: deque[tuple[RequestResponseCycle, Any]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.idle.discard(self)
        self._lost = True
        self._wake_worker()
        super().connection_lost(exc)

    # uvicorn starts a task for every request: a Task, its first step, a done callback and a
    # weak reference each time. A connection answers its requests one after another anyway, so
    # here one task per connection runs them in turn and sleeps on a future in between.

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._ready.append((cycle, app))
        if self._worker is None:
            self._worker = task = self.loop.create_task(self._serve())
            # uvicorn's graceful shutdown waits for these; the task ends with its connection.
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self._wake_worker()

    def _wake_worker(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    async def _serve(self) -> None:
        ready = self._ready
        while True:
            while ready:
                cycle, app = ready.popleft()
                await cycle.run_asgi(app)
            if self._lost:
                return
            self._wake = self.loop.create_future()
            await self._wake

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn builds its own cycle for each request; this one only changes how it writes.
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = ProxyCycle

    def _unset_keepalive_if_required(self) -> None:
        self._idle.idle.discard(self)

    def on_response_complete(self) -> None:
        # uvicorn's, with the idle sweep instead of a keep-alive timer per response.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle.idle.discard(self)
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_since = self.loop.time()
            self._idle.add(self)
