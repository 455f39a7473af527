"""Pooled HTTP/1.1 clients that the proxy forwards requests with.

Two clients share one small interface (:class:`UpstreamClient` returning an
:class:`UpstreamResponse`):

- :class:`FastUpstreamClient`, the default: keep-alive connections on asyncio protocols (uvloop's
  under ``runproxy``) with httptools' llhttp parser. Per request it builds the request head with
  one join, writes it with one call and parses the answer in C; measured in ``bench/routing.py``
  it forwards about twice as many requests per second as aiohttp's client, whose per-request
  objects (request, response, stream reader, timers, multidicts) dominate a proxy's time.
- :class:`AiohttpUpstreamClient`: aiohttp's pooled ``ClientSession``, for comparison and as a
  fallback (``runproxy --upstream-client aiohttp``).

Both stream bodies both ways with flow control, keep the target's status and raw headers, and
raise :class:`UpstreamError` (:class:`UpstreamTimeout` for timeouts) when a target cannot be
reached or breaks off.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools

Body = bytes | AsyncIterator[bytes] | None

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that concern one connection, never forwarded (RFC 9110, section 7.6.1)."""

_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)

# Linux only; elsewhere the ACKs stay the kernel's business.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def set_nodelay(transport: asyncio.BaseTransport) -> Any:
    """Turn Nagle off on a TCP transport's socket (a small write leaves at once, not after the
    previous one's ACK); returns the socket, or None when there is none to tune."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        return None
    return sock


def connection_tokens(value: str | bytes) -> set[str]:
    """Extra hop-by-hop header names a Connection header lists (beyond close/keep-alive)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    tokens = {token.strip().lower() for token in text.split(",")}
    return tokens - {"", "close", "keep-alive"}


# Reading from a target pauses once this much of its answer waits for the client to take it.
HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The target could not be reached, or broke off its answer."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The target did not connect or answer in time."""


class UpstreamResponse(Protocol):
    status: int
    # End-to-end headers as the target sent them (names in their own case): hop-by-hop ones,
    # and any the Connection header names, are already left out.
    headers: list[tuple[bytes, bytes]]
    content_length: int | None

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None:
        """Done with the answer: a complete one frees its connection for the next request."""

    def close(self) -> None:
        """Abandon the answer and its connection."""


class UpstreamClient(Protocol):
    async def request(
        self,
        method: str,
        endpoint: str,
        path: str,
        headers: list[tuple[str, str]],
        body: Body,
        body_length: int | None,
        replayable: bool,
    ) -> UpstreamResponse:
        """Send a request. ``path`` is the raw path with its query; ``headers`` carry no Host
        and no framing (Content-Length, Transfer-Encoding): the client adds those, from
        ``body_length`` for a streamed body (chunked when None). ``replayable`` allows one
        silent retry on a fresh connection when a pooled one turns out to be closed."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# The fast client


class _Endpoint:
    __slots__ = ("base_path", "host", "host_header", "key", "port", "ssl")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.ssl = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.ssl else 80)
        default_port = 443 if self.ssl else 80
        netloc_host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (
            netloc_host if self.port == default_port else f"{netloc_host}:{self.port}"
        )
        self.base_path = parts.path.rstrip("/")
        self.key = (self.host, self.port, self.ssl)


class _Response:
    __slots__ = (
        "_buffered",
        "_chunks",
        "_error",
        "_waiter",
        "complete",
        "conn",
        "content_length",
        "head_request",
        "headers",
        "headers_done",
        "keep_alive",
        "status",
        "timeout",
        "until_close",
    )

    def __init__(self, conn: _Connection, head_request: bool, timeout: float) -> None:
        self.conn: _Connection | None = conn
        self.timeout = timeout
        self.head_request = head_request
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.headers_done = False
        self.complete = False
        self.until_close = False
        self.keep_alive = True
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None

    # Called by the connection.

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self.conn is not None:
            self.conn.pause_reading()
        self._wake()

    # Used by the proxy.

    async def _wait(self, timeout: float) -> None:
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait(self.timeout)

    async def read(self) -> bytes:
        while not self.complete:
            await self._wait(self.timeout)
        data = b"".join(self._chunks)
        self._chunks = []
        self._buffered = 0
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks = []
                self._buffered = 0
                if self.conn is not None:
                    self.conn.resume_reading()
                yield data
            elif self.complete:
                return
            else:
                await self._wait(self.timeout)

    def release(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        if self.complete and self.keep_alive and not self.head_request:
            conn.finished()
        else:
            conn.abort()

    def close(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("the target did not answer in time"))


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_drain",
        "_paused_reading",
        "_quickack",
        "_write_paused",
        "client",
        "closed",
        "endpoint",
        "got_bytes",
        "idle_since",
        "parser",
        "response",
        "transport",
    )

    def __init__(self, client: FastUpstreamClient, endpoint: _Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: _Response | None = None
        self.closed = False
        self.got_bytes = False
        self.idle_since = 0.0
        self._paused_reading = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._quickack: Any = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client._opened(self.endpoint.key, 1)
        sock = set_nodelay(transport)
        if sock is not None and _TCP_QUICKACK is not None:
            self._quickack = sock

    def quickack(self) -> None:
        """Ask the kernel to ACK the next segments at once instead of delaying the ACK.

        A target that writes its head and its body apart with Nagle on (Python's http.server)
        sends the body only once the head is acknowledged; on a keep-alive connection Linux
        delays that ACK by up to 40 ms, waiting for a reply to carry it, and nothing replies.
        The kernel clears the flag as it sees fit, so it is set again before every read."""
        sock = self._quickack
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._quickack = None

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self._quickack is not None:
            self.quickack()
        if self.response is None:
            # Bytes nobody asked for (a target talking out of turn): the connection is unusable.
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            response = self.response
            if response is not None:
                response._fail(UpstreamError(f"malformed answer from the target: {error}"))
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        self.client._opened(self.endpoint.key, -1)
        response = self.response
        if response is not None and not response.complete:
            if response.headers_done and response.until_close:
                # The answer had no length: the end of the connection is the end of the body.
                response.complete = True
                response.keep_alive = False
                response._wake()
            else:
                reason = f": {exc}" if exc else ""
                response._fail(UpstreamError(f"the target closed the connection{reason}"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("the target closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            response.headers = []
            return
        response.status = status
        response.keep_alive = self.parser.should_keep_alive()
        length: int | None = None
        chunked = False
        listed: set[str] = set()
        kept: list[tuple[bytes, bytes]] = []
        for name, value in response.headers:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP_BYTES:
                if lowered == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif lowered == b"connection" and value not in (b"keep-alive", b"close"):
                    listed = connection_tokens(value)
                continue
            if lowered == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            kept.append((name, value))
        if listed:
            kept = [(n, v) for n, v in kept if n.decode("latin-1").lower() not in listed]
        response.headers = kept
        response.content_length = None if chunked else length
        no_body = response.head_request or status in (204, 304)
        response.until_close = not no_body and not chunked and length is None
        response.headers_done = True
        if response.head_request:
            # llhttp cannot be told that a HEAD answer has no body; the connection is closed
            # after it rather than reused with a confused parser.
            response.complete = True
            response.keep_alive = False
        response._wake()

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or self.parser.get_status_code() < 200:
            return
        response.complete = True
        response._wake()

    # Pool bookkeeping

    def pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()

    def finished(self) -> None:
        self.response = None
        if self.closed:
            return
        self.resume_reading()
        self.client._park(self)

    def abort(self) -> None:
        self.response = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
            self.client._forget(self)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
        if self.closed:
            raise UpstreamError("the target closed the connection")


class FastUpstreamClient:
    """Keep-alive connection pool per (host, port, TLS), most recently used first."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_idle_per_endpoint: int = 512,
        idle_timeout: float = 30.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle_per_endpoint
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        # Connections open per endpoint, idle or not (for the proxy's metrics).
        self._open: dict[tuple[str, int, bool], int] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._ssl: ssl.SSLContext | None = None

    def _endpoint(self, url: str) -> _Endpoint:
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            if len(self._endpoints) > 4096:  # endpoints of deleted targets must not pile up
                self._endpoints.clear()
            endpoint = self._endpoints[url] = _Endpoint(url)
        return endpoint

    def _park(self, conn: _Connection) -> None:
        pool = self._idle.setdefault(conn.endpoint.key, [])
        if len(pool) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        pool.append(conn)

    def _opened(self, key: tuple[str, int, bool], change: int) -> None:
        count = self._open.get(key, 0) + change
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def pool_counts(self) -> dict[str, tuple[int, int]]:
        """Connections open and idle per endpoint (``http://host:port``), on the event loop."""
        counts: dict[str, tuple[int, int]] = {}
        for key, count in self._open.items():
            host, port, tls = key
            netloc = f"[{host}]" if ":" in host else host
            scheme = "https" if tls else "http"
            counts[f"{scheme}://{netloc}:{port}"] = (count, len(self._idle.get(key, ())))
        return counts

    def _forget(self, conn: _Connection) -> None:
        pool = self._idle.get(conn.endpoint.key)
        if pool and conn in pool:
            pool.remove(conn)

    def _take_idle(self, endpoint: _Endpoint) -> _Connection | None:
        pool = self._idle.get(endpoint.key)
        if not pool:
            return None
        horizon = time.monotonic() - self.idle_timeout
        while pool:
            conn = pool.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.idle_since < horizon:
                conn.abort()
                continue
            return conn
        return None

    async def _connect(self, endpoint: _Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if endpoint.ssl:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, endpoint),
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=endpoint.host if context else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to {endpoint.host_header} within {self.connect_timeout:g} s"
            ) from None
        except OSError as error:
            raise UpstreamError(f"cannot connect to {endpoint.host_header}: {error}") from None
        return conn

    async def request(
        self,
        method: str,
        endpoint: str,
        path: str,
        headers: list[tuple[str, str]],
        body: Body,
        body_length: int | None,
        replayable: bool,
    ) -> _Response:
        target = self._endpoint(endpoint)
        streamed = body is not None and not isinstance(body, bytes)
        if body is None:
            framing = ""
        elif not streamed:
            framing = f"Content-Length: {len(body)}\r\n"  # type: ignore[arg-type]
        elif body_length is not None:
            framing = f"Content-Length: {body_length}\r\n"
        else:
            framing = "Transfer-Encoding: chunked\r\n"
        head = (
            f"{method} {target.base_path}{path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            + "".join([f"{name}: {value}\r\n" for name, value in headers])
            + framing
            + "\r\n"
        ).encode("latin-1")
        if isinstance(body, bytes) and body:
            head += body
        for attempt in (0, 1):
            conn = self._take_idle(target)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target)
            response = _Response(conn, method == "HEAD", self.read_timeout)
            conn.response = response
            conn.got_bytes = False
            assert conn.transport is not None
            conn.transport.write(head)
            conn.quickack()
            try:
                if streamed:
                    await _send_stream(conn, body, chunked=body_length is None)  # type: ignore[arg-type]
                await response.wait_headers()
            except UpstreamTimeout:
                response.close()
                raise
            except UpstreamError:
                response.close()
                # A pooled connection the target had already closed: nothing reached it.
                if reused and not conn.got_bytes and replayable and attempt == 0:
                    continue
                raise
            except BaseException:
                # The client went away mid-upload, or the task was cancelled: this connection
                # is mid-request and cannot be reused.
                response.close()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        for pool in list(self._idle.values()):
            for conn in list(pool):
                conn.abort()
        self._idle.clear()


async def _send_stream(conn: _Connection, body: AsyncIterator[bytes], *, chunked: bool) -> None:
    transport = conn.transport
    assert transport is not None
    async for chunk in body:
        if conn.closed:
            raise UpstreamError("the target closed the connection")
        if chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)
        await conn.drain()
    if chunked:
        transport.write(b"0\r\n\r\n")


# ---------------------------------------------------------------------------------------------
# aiohttp


class _AiohttpResponse:
    __slots__ = ("_response", "content_length", "headers", "status")

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = response.status
        listed: set[str] = set()
        for name, value in response.raw_headers:
            if name.lower() == b"connection":
                listed |= connection_tokens(value)
        self.headers: list[tuple[bytes, bytes]] = [
            (name, value)
            for name, value in response.raw_headers
            if name.lower() not in _HOP_BY_HOP_BYTES
            and (not listed or name.decode("latin-1").lower() not in listed)
        ]
        self.content_length: int | None = response.content_length

    async def read(self) -> bytes:
        import aiohttp

        try:
            return await self._response.read()
        except TimeoutError as error:
            raise UpstreamTimeout(str(error) or "the target did not answer in time") from None
        except aiohttp.ClientError as error:
            raise UpstreamError(str(error)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as error:
            raise UpstreamTimeout(str(error) or "the target did not answer in time") from None
        except aiohttp.ClientError as error:
            raise UpstreamError(str(error)) from None

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class AiohttpUpstreamClient:
    """aiohttp's pooled ``ClientSession`` behind the same interface."""

    def __init__(
        self, *, connect_timeout: float = 5.0, read_timeout: float = 60.0, pool_size: int = 512
    ) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=pool_size, limit_per_host=0, ttl_dns_cache=10, keepalive_timeout=30
            ),
            # Bodies pass through byte for byte, and no cookie of one client may leak into
            # another client's request.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=connect_timeout, sock_read=read_timeout
            ),
            trust_env=False,
        )

    async def request(
        self,
        method: str,
        endpoint: str,
        path: str,
        headers: list[tuple[str, str]],
        body: Body,
        body_length: int | None,
        replayable: bool,
    ) -> _AiohttpResponse:
        aiohttp = self._aiohttp
        if body is not None and not isinstance(body, bytes) and body_length is not None:
            headers = [*headers, ("Content-Length", str(body_length))]
        try:
            response = await self.session.request(
                method,
                endpoint.rstrip("/") + path,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except TimeoutError as error:
            raise UpstreamTimeout(str(error) or "the target did not answer in time") from None
        except (aiohttp.ClientError, ValueError) as error:
            raise UpstreamError(f"{error.__class__.__name__}: {error}") from None
        return _AiohttpResponse(response)

    async def close(self) -> None:
        await self.session.close()
