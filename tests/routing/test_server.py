"""The proxy's uvicorn protocol (routing/server.py), driven through an in-memory transport."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from routing.server import ProxyHttpProtocol, protocol_class


class MemoryTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def run(
    app: Any,
    requests: bytes | list[bytes],
    *,
    keep_alive: float = 5,
    settle: float = 0.05,
    protocol: type[ProxyHttpProtocol] = ProxyHttpProtocol,
) -> Any:
    """Feed ``requests`` (one read, or several in turn) to one connection of the protocol;
    returns the transport after the answers (and ``settle`` seconds more) have gone out."""

    async def main() -> MemoryTransport:
        config = Config(
            app, lifespan="off", access_log=False, log_level="warning", proxy_headers=False
        )
        config.timeout_keep_alive = keep_alive
        config.load()
        connection = protocol(
            config=config,
            server_state=ServerState(),
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        transport = MemoryTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        for data in [requests] if isinstance(requests, bytes) else requests:
            connection.data_received(data)
            await asyncio.sleep(0)
        await asyncio.sleep(settle)
        return transport

    # A thread of its own: browser tests leave an event loop running in the main thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: uvloop.run(main())).result()


def small_app(**extra: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        headers = [(b"Content-Length", str(len(body)).encode()), *extra.get("headers", [])]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def test_small_answer__head_and_body_leave_in_one_write():
    transport = run(small_app(), b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")

    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n/hello"]


def test_pipelined_requests__answered_in_order_each_in_one_write():
    transport = run(
        small_app(), b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /bb HTTP/1.1\r\nHost: x\r\n\r\n"
    )

    assert b"".join(transport.writes) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n/a"
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n/bb"
    )


def test_stream_without_length__is_chunked__and_its_head_leaves_before_the_first_part():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    transport = run(app, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", settle=0.1)

    # The head leaves alone, before the first part comes.
    assert transport.writes[0] == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert b"".join(transport.writes[1:]) == b"3\r\nabc\r\n0\r\n\r\n"


def test_head_request__sends_no_body__and_connection_close_closes():
    transport = run(
        small_app(headers=[(b"Connection", b"close")]),
        b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n",
    )

    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
    ]
    assert transport.closed


@pytest.mark.parametrize(
    "header",
    [
        (b"X-Evil", b"a\r\nSet-Cookie: stolen=1"),
        (b"X-Evil", b"bell\x07"),
        (b"X Evil", b"space in the name"),
        (b"X-Evil:", b"colon in the name"),
    ],
)
def test_header_that_would_break_the_head__is_never_written__the_connection_closes(header):
    # As uvicorn does: the response had started, so the connection is closed, not answered.
    transport = run(small_app(headers=[header]), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    assert transport.writes == []
    assert transport.closed


def test_idle_keep_alive_connection__is_closed_by_the_sweep_after_its_timeout():
    transport = run(small_app(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", keep_alive=0.2, settle=0.6)

    assert transport.writes and transport.closed


def test_busy_connection__is_not_closed_while_requests_keep_coming():
    transport = run(small_app(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", keep_alive=5, settle=0.3)

    assert transport.writes and not transport.closed


def refused(transport: MemoryTransport) -> dict[str, Any]:
    head, _, body = b"".join(transport.writes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), head
    assert b"connection: close" in head
    return json.loads(body)


def test_head_over_the_limit__is_answered_431__and_the_app_never_sees_it():
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await small_app()(scope, receive, send)

    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    transport = run(app, request, protocol=protocol_class(max_head_bytes=1024))

    body = refused(transport)
    assert body["error"]["code"] == "request_header_fields_too_large"
    assert "1024 bytes" in body["error"]["message"]
    assert seen == []
    # Half-closed: the client reads the 431; what it still sends is read and dropped.
    assert transport.eof


def test_head_arriving_in_pieces__is_refused_before_its_end():
    # One header that never ends: refused once more than the limit has arrived, not buffered on.
    pieces = [b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"a" * 512] * 40
    transport = run(small_app(), pieces, protocol=protocol_class(max_head_bytes=4096))

    refused(transport)
    assert len(transport.writes) == 1  # the pieces after the refusal are dropped


def test_head_within_the_limit__is_served():
    request = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 900 + b"\r\n\r\n"
    transport = run(small_app(), request, protocol=protocol_class(max_head_bytes=1024))

    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n/ok"]


def test_default_limit__is_16_kib():
    assert ProxyHttpProtocol.max_head_bytes == 16 * 1024
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 * 1024) + b"\r\n\r\n"

    refused(run(small_app(), request))
