"""uvicorn's httptools protocol as the proxy runs it: each response's head written together with
its first body part, and request heads capped in size.

uvicorn writes the status line and headers of a response in one ``transport.write`` and the body
in another: two system calls and two TCP segments for every small response. A proxy's answers
are small and many, and on a loopback benchmark those writes were about a third of its time, so
the proxy's protocol holds the head back until the body's first write (or the end of the event
loop's turn, whichever comes first) and hands both to the socket at once. Measured with
``bench/routing.py``, the proxy forwards about a quarter more requests per second with it.

httptools puts no bound on a request head: a client could send megabytes of headers and the
proxy would buffer them all and forward them. Heads larger than ``max_head_bytes`` (request line
and headers, ``CANARY_PROXY_MAX_HEAD_BYTES``) are answered 431 in the API's error body and the
connection is closed; an oversized head is refused as soon as that many bytes of it have
arrived, without waiting for its end.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from routing.upstream import set_nodelay

DEFAULT_MAX_HEAD_BYTES = 16 * 1024
# After a refusal the connection reads and discards what the client still sends for this long
# before closing: closing at once with unread bytes resets the connection, and a reset can
# destroy the 431 before the client has read it.
LINGER_SECONDS = 2.0


class HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing an oversized head."""


class HeadCoalescingWriter:
    """Stands in for the transport in a request cycle; only writes and closes reach it."""

    __slots__ = ("_head", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._pending = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif self._pending:
            # The head of this turn has gone out already; order is kept by writing through.
            self._transport.write(data)
        else:
            self._head = bytes(data)
            self._pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._pending = False
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else a request cycle might ask of its transport goes to the real one.
        return getattr(self._transport, name)


def _refusal(max_head_bytes: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "request_header_fields_too_large",
                "message": f"The request line and headers exceed {max_head_bytes} bytes.",
                "fields": {},
            }
        }
    ).encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n\r\n%b" % (len(body), body)
    )


class ProxyHttpProtocol(HttpToolsProtocol):
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvloop and asyncio already turn Nagle off on TCP connections; the proxy relies on it
        # (a delayed small write costs up to 40 ms), so it does not leave that to the loop.
        set_nodelay(transport)
        self._writer = HeadCoalescingWriter(transport, self.loop)
        # Bytes of the current head known from the parser's callbacks, and the bytes of later
        # reads while the head is still incomplete (all of them head bytes).
        self._head_size = 0
        self._head_spill = 0
        self._head_open = False
        self._head_fresh = False
        self._too_large = False
        self._refused = False

    # The head's size ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_fresh = True
        self._head_size = 0
        self._head_spill = 0

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_head_bytes:
            self._too_large = True
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()
        # The cycle just created for this request writes through the coalescing writer; the
        # protocol itself keeps the real transport for flow control and keep-alive.
        if self.cycle is not None:
            self.cycle.transport = self._writer  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request, read only to be dropped
        self._head_fresh = False
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # A callback that raised comes out as a parser error too; the flag tells ours.
            if self._too_large:
                self._refuse()
                return
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_open and not self._head_fresh:
            # The whole read went to a head that is still not complete: refuse it now rather
            # than buffer it to its end (one header can be megabytes long).
            self._head_spill += len(data)
            if self._head_spill > self.max_head_bytes:
                self._refuse()

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        self._head_open = False
        transport = self.transport
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request before this one is still being answered: a 431 now would
            # interleave with that answer, so the connection just ends.
            self.cycle.keep_alive = False
            transport.close()
            return
        transport.write(_refusal(self.max_head_bytes))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, transport.close)


def protocol_class(*, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> type[ProxyHttpProtocol]:
    """The protocol class for uvicorn's ``http=`` with the head limit set."""
    return type("ProxyHttpProtocol", (ProxyHttpProtocol,), {"max_head_bytes": max_head_bytes})
