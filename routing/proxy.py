"""The data plane: an ASGI reverse proxy that routes each request with ``routing.engine``.

Run it with ``python manage.py runproxy`` (uvicorn with uvloop and httptools, one process).

Which service a request belongs to: the ``X-Canary-Service`` header, else the first label of
the Host header when a service has that name (``checkout.example.com`` -> ``checkout``), else
the proxy's default service (``--service``). Anything else is a 404.

Per request, nothing touches the database or the cache: the proxy keeps every service's
compiled snapshot in memory and a :class:`~routing.engine.RuntimeState` per service (circuit
breakers, rate limiters, round robin turns, connections in flight). Background tasks:

- the poller reads the shared routing version key every ``poll_interval`` seconds (0.25) and,
  only when its value changed, reloads every snapshot from the database in a worker thread;
- the flusher hands the outcomes aggregated in memory (requests, 5xx, latency histogram per
  service, version and 10-second bucket) to the metric store every ``flush_interval`` seconds,
  and publishes the breakers' states to the cache for the dashboard.

Forwarding: the method, path, query, headers and body go to the chosen target; hop-by-hop
headers are dropped, ``X-Forwarded-For``/``-Proto``/``-Host`` and ``X-Canary-Version`` are
added, and the target's status, headers and body come back streamed, with ``X-Canary-Version``
and, for a newcomer on a cookie-affinity rule, its ``Set-Cookie``. A connection error, a
timeout or a 5xx counts as a failure for the target's circuit breaker; idempotent requests
whose body is small enough to replay are retried on another target (``failover.retries`` times,
``failover.retry_delay_ms`` apart). A rate-limited rule answers 429 with ``Retry-After``; no
available target answers 503. Error bodies are the API's one error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from asgiref.sync import sync_to_async

from canary_site.exceptions import CanaryError
from health.histogram import Histogram
from routing.engine import (
    Decision,
    Reason,
    RequestContext,
    RuntimeState,
    ServiceSnapshot,
    TargetSnapshot,
    decide,
)
from routing.upstream import (
    HOP_BY_HOP,
    AiohttpUpstreamClient,
    FastUpstreamClient,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    connection_tokens,
)

logger = logging.getLogger("routing.proxy")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SERVICE_HEADER = "x-canary-service"
VERSION_HEADER = b"x-canary-version"
OUTCOME_BUCKET_SECONDS = 10
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# A request body is kept for a retry only up to this size; larger ones stream through once.
REPLAYABLE_BODY_BYTES = 64 * 1024
# Responses up to this size are read whole and sent in one message: fewer event loop turns.
SMALL_RESPONSE_BYTES = 64 * 1024
# Outcomes that cannot be flushed are kept and retried, but not for ever.
MAX_UNFLUSHED_AGE_SECONDS = 300
BREAKER_PUBLISH_SECONDS = 5.0

# Framing (Content-Length, Transfer-Encoding) is the upstream client's to write, and the
# forwarding headers are rewritten.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    SERVICE_HEADER,
    "x-forwarded-for",
    "x-forwarded-host",
    "expect",
}


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


def resolve_service(
    headers: Mapping[str, str], snapshots: Mapping[str, ServiceSnapshot], default: str | None
) -> str | None:
    """The service a request names: header, else Host's first label, else the default."""
    named = headers.get(SERVICE_HEADER)
    if named:
        return named.strip()
    host = headers.get("host")
    if host:
        label = host.split(".", 1)[0].split(":", 1)[0].lower()
        if label in snapshots:
            return label
    return default


def parse_cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, sep, value = chunk.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def parse_query(query_string: bytes) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        query.setdefault(name, value)
    return query


def error_response_body(code: str, message: str) -> bytes:
    """The API's one error body, so a client of the proxy reads errors the same way."""
    return json.dumps({"error": {"code": code, "message": message, "fields": {}}}).encode()


class Outcomes:
    """Per (service, version, 10-second bucket) counts and latency histograms, in memory."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[tuple[str, str, int], list[Any]] = {}

    def record(self, service: str, version: str, latency_ms: float, error: bool) -> None:
        key = (service, version, int(time.time()) // OUTCOME_BUCKET_SECONDS)
        entry = self._data.get(key)
        if entry is None:
            entry = self._data[key] = [0, 0, Histogram()]
        entry[0] += 1
        if error:
            entry[1] += 1
        entry[2].record(latency_ms)

    def drain(self) -> dict[tuple[str, str, int], list[Any]]:
        data, self._data = self._data, {}
        return data

    def restore(self, data: dict[tuple[str, str, int], list[Any]]) -> None:
        """Put back outcomes a failed flush could not store, dropping those too old to matter."""
        oldest = (time.time() - MAX_UNFLUSHED_AGE_SECONDS) // OUTCOME_BUCKET_SECONDS
        for key, (requests, errors, histogram) in data.items():
            if key[2] < oldest:
                continue
            entry = self._data.get(key)
            if entry is None:
                self._data[key] = [requests, errors, histogram]
            else:
                entry[0] += requests
                entry[1] += errors
                entry[2].update(histogram)

    def __len__(self) -> int:
        return len(self._data)


def load_snapshots_from_database() -> tuple[Any, dict[str, ServiceSnapshot]]:
    """Read the routing version, then every snapshot (in this order: a change committed in
    between is seen now or by the next poll, never lost)."""
    from django.db import close_old_connections

    from routing import selectors

    close_old_connections()
    version = selectors.routing_version()
    return version, selectors.all_snapshots()


def read_routing_version() -> Any:
    from routing import selectors

    return selectors.routing_version()


def record_outcomes_in_metric_store(items: list[Any]) -> None:
    from django.db import close_old_connections

    from health import services as health_services

    close_old_connections()
    health_services.metrics_record_outcomes(outcomes=items)


def publish_breakers(proxy_id: str, services: dict[str, dict[str, str]]) -> None:
    """Merge this proxy's breaker states into the shared report the dashboard reads."""
    from django.core.cache import cache

    from routing import selectors

    now = time.time()
    reports = cache.get(selectors.BREAKERS_KEY) or {}
    reports = {
        key: value
        for key, value in reports.items()
        if now - float(value.get("at", 0)) <= selectors.BREAKER_REPORT_MAX_AGE
    }
    reports[proxy_id] = {"at": now, "services": services}
    cache.set(selectors.BREAKERS_KEY, reports, timeout=int(selectors.BREAKER_REPORT_MAX_AGE * 4))


class RoutingProxy:
    """The ASGI application. Hooks are injectable so tests and benchmarks can run it without a
    database; the defaults read Django's database, cache and metric store."""

    def __init__(
        self,
        *,
        default_service: str | None = None,
        poll_interval: float = 0.25,
        flush_interval: float = 1.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        pool_size: int = 512,
        upstream_client: str = "fast",
        load_snapshots: Callable[[], tuple[Any, dict[str, ServiceSnapshot]]] | None = None,
        read_version: Callable[[], Any] | None = None,
        record_outcomes: Callable[[list[Any]], None] | None = None,
        publish: Callable[[str, dict[str, dict[str, str]]], None] | None = None,
    ) -> None:
        self.default_service = default_service
        self.poll_interval = poll_interval
        self.flush_interval = flush_interval
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_size = pool_size
        if upstream_client not in ("fast", "aiohttp"):
            raise ValueError("upstream_client must be fast or aiohttp")
        self.upstream_client = upstream_client
        self._load = load_snapshots or load_snapshots_from_database
        self._read_version = read_version or read_routing_version
        self._record = record_outcomes or record_outcomes_in_metric_store
        self._publish = publish if publish is not None else publish_breakers
        self.snapshots: dict[str, ServiceSnapshot] = {}
        self.states: dict[str, RuntimeState] = {}
        self.outcomes = Outcomes()
        self.version: Any = None
        self.loaded = False
        self.client: UpstreamClient | None = None
        self.proxy_id = f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._last_breakers: dict[str, dict[str, str]] | None = None
        self._breakers_published_at = 0.0

    # -- ASGI entry points ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        else:  # websockets are not proxied
            await send({"type": "websocket.close", "code": 1003})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    logger.exception("Proxy start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.upstream_client == "aiohttp":
            self.client = AiohttpUpstreamClient(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                pool_size=self.pool_size,
            )
        else:
            self.client = FastUpstreamClient(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                max_idle_per_endpoint=self.pool_size,
            )
        try:
            await self.reload()
        except Exception:
            # The database may come up after the proxy; the poller keeps trying.
            logger.exception("Could not load routing snapshots; will retry")
        # Everything loaded so far (Django, the snapshots) lives as long as the process: keep it
        # out of the garbage collector's scans, which otherwise stall requests now and then.
        gc.collect()
        gc.freeze()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="routing-poll"),
            asyncio.create_task(self._flush_loop(), name="routing-flush"),
        ]

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.flush()
        if self.client is not None:
            await self.client.close()

    # -- Background work -------------------------------------------------------------------

    async def reload(self) -> None:
        version, snapshots = await sync_to_async(self._load, thread_sensitive=True)()
        self.install(snapshots, version)

    def install(self, snapshots: dict[str, ServiceSnapshot], version: Any) -> None:
        """Swap in new snapshots; breakers and limiters of the services that remain carry over
        (the engine resyncs a state when it first sees the new snapshot)."""
        self.states = {name: self.states.get(name) or RuntimeState() for name in snapshots}
        self.snapshots = snapshots
        self.version = version
        self.loaded = True
        logger.info(
            "Routing version %s: %d service(s) %s",
            version,
            len(snapshots),
            ", ".join(f"{s.name}@{s.version}" for s in snapshots.values()),
        )

    async def _poll_loop(self) -> None:
        read = sync_to_async(self._read_version, thread_sensitive=False)
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                version = await read()
                if version != self.version or not self.loaded:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Routing reload failed; keeping the current snapshots")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Outcome flush failed")

    async def flush(self) -> None:
        drained = self.outcomes.drain()
        if drained:
            items = outcome_items(drained)
            try:
                await sync_to_async(self._record, thread_sensitive=True)(items)
            except CanaryError:
                # The store refused the batch itself (not an outage): retrying cannot help.
                logger.exception("The metric store refused %d outcome bucket(s)", len(items))
            except Exception:
                self.outcomes.restore(drained)
                raise
        await self._publish_breakers()

    async def _publish_breakers(self) -> None:
        if self._publish is None:
            return
        states = self.breaker_states()
        now = time.monotonic()
        if states == self._last_breakers and now - self._breakers_published_at < (
            BREAKER_PUBLISH_SECONDS
        ):
            return
        await sync_to_async(self._publish, thread_sensitive=False)(self.proxy_id, states)
        self._last_breakers = states
        self._breakers_published_at = now

    def breaker_states(self) -> dict[str, dict[str, str]]:
        states: dict[str, dict[str, str]] = {}
        for name, snapshot in self.snapshots.items():
            state = self.states.get(name)
            if state is None:
                continue
            now = state.clock()
            states[name] = {
                target.id: str(state.circuit_state(target.id, now)) for target in snapshot.targets
            }
        return states

    # -- Requests ----------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One pass over the request's headers builds both what the engine reads and what the
        # target gets (repeated headers stay repeated there).
        headers: dict[str, str] = {}
        forwarded: list[tuple[str, str]] = []
        drop = _DROP_REQUEST
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name not in drop:
                forwarded.append((name, value))
            if name in headers:
                # Repeated headers combine as HTTP defines it; cookies with their own separator.
                value = f"{headers[name]}{'; ' if name == 'cookie' else ', '}{value}"
            headers[name] = value
        if "connection" in headers:
            listed = connection_tokens(headers["connection"])
            if listed:
                forwarded = [(name, value) for name, value in forwarded if name not in listed]
        snapshots = self.snapshots
        service_name = resolve_service(headers, snapshots, self.default_service)
        snapshot = snapshots.get(service_name) if service_name else None
        if snapshot is None:
            if not self.loaded:
                await respond(send, 503, "unavailable", "The proxy has not loaded its routing.")
            else:
                await respond(
                    send,
                    404,
                    "not_found",
                    f"No service named {service_name!r}." if service_name else "No service named.",
                )
            return
        state = self.states[snapshot.name]
        cookie_header = headers.get("cookie")
        query_string = scope.get("query_string", b"")
        client = scope.get("client")
        context = RequestContext(
            scope["method"],
            scope["path"],
            headers,
            parse_cookies(cookie_header) if cookie_header else {},
            parse_query(query_string) if query_string else {},
            client[0] if client else "",
        )
        decision = decide(snapshot, context, state=state)
        target = decision.target
        if target is None:
            if decision.reason is Reason.RATE_LIMITED:
                retry_after = max(1, math.ceil(decision.retry_after))
                await respond(
                    send,
                    429,
                    "rate_limited",
                    "Too many requests for this route; retry later.",
                    extra=[(b"retry-after", str(retry_after).encode())],
                )
            else:
                await respond(
                    send,
                    503,
                    "no_healthy_target",
                    f"No available target for service {snapshot.name}: {decision.explain()}",
                )
            return
        await self.forward(
            scope, receive, send, headers, forwarded, snapshot, state, context, decision
        )

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        forwarded: list[tuple[str, str]],
        snapshot: ServiceSnapshot,
        state: RuntimeState,
        context: RequestContext,
        decision: Decision,
    ) -> None:
        client = self.client
        assert client is not None
        method: str = scope["method"]
        rule = decision.rule
        retries = rule.failover.retries if rule is not None else 0
        delay = rule.failover.retry_delay_ms / 1000 if rule is not None else 0.0
        set_cookie = decision.set_cookie_header()
        idempotent = method in IDEMPOTENT_METHODS

        body: bytes | AsyncIterator[bytes] | None = None
        body_length: int | None = None
        length = headers.get("content-length")
        chunked = "transfer-encoding" in headers
        if chunked or length is not None:
            body_length = int(length) if length is not None and length.isdigit() else None
            if body_length == 0 and not chunked:
                body = b""
            elif (
                idempotent
                and retries
                and body_length is not None
                and body_length <= REPLAYABLE_BODY_BYTES
            ):
                body = await read_body(receive)
            else:
                # Too big to keep for a retry (or not idempotent): it streams through once.
                body = stream_body(receive)
                retries = 0
        replayable = idempotent and not isinstance(body, AsyncIterator)
        if not idempotent:
            retries = 0

        upstream_headers = forward_headers(scope, headers, forwarded)
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query_string = scope.get("query_string")
        if query_string:
            path = f"{path}?{query_string.decode('latin-1')}"

        excluded: list[str] = []
        target: TargetSnapshot = decision.target  # type: ignore[assignment]
        attempt = 0
        while True:
            upstream_headers[-1] = ("X-Canary-Version", target.version)
            state.begin(target.id)
            started = time.perf_counter()
            response: UpstreamResponse | None = None
            failure: UpstreamError | None = None
            try:
                response = await client.request(
                    method, target.endpoint, path, upstream_headers, body, body_length, replayable
                )
            except ClientDisconnected:
                state.end(target.id)
                return
            except UpstreamError as error:
                failure = error
            if response is not None and (response.status < 500 or attempt >= retries):
                try:
                    await self.relay(
                        send, response, method, snapshot, target, state, started, set_cookie
                    )
                finally:
                    state.end(target.id)
                return
            # This target failed; another one may not.
            state.end(target.id)
            state.record_failure(target.id, state.clock())
            self.outcomes.record(
                snapshot.name, target.version, (time.perf_counter() - started) * 1000, True
            )
            if response is not None:
                problem = f"{target.name} answered HTTP {response.status}"
                response.close()
            else:
                problem = f"{target.name} failed: {failure}"
            if attempt >= retries:
                if isinstance(failure, UpstreamTimeout):
                    await respond(send, 504, "upstream_timeout", f"Target {problem}.")
                else:
                    await respond(send, 502, "upstream_failed", f"Target {problem}.")
                return
            attempt += 1
            excluded.append(target.id)
            if delay:
                await asyncio.sleep(delay)
            retry = decide(
                snapshot, self._retry_context(context, decision), state=state, exclude=excluded
            )
            if retry.target is None:
                await respond(
                    send, 502, "upstream_failed", f"No target left to retry on; last: {problem}."
                )
                return
            target = retry.target

    @staticmethod
    def _retry_context(context: RequestContext, decision: Decision) -> RequestContext:
        """A retry keeps the sticky key that the first decision issued to a newcomer."""
        rule = decision.rule
        if not decision.key_issued or rule is None or rule.affinity is None:
            return context
        return RequestContext(
            context.method,
            context.path,
            context.headers,
            {**context.cookies, rule.affinity.name: decision.sticky_key or ""},
            context.query,
            context.client_ip,
        )

    async def relay(
        self,
        send: Send,
        response: UpstreamResponse,
        method: str,
        snapshot: ServiceSnapshot,
        target: TargetSnapshot,
        state: RuntimeState,
        started: float,
        set_cookie: str | None,
    ) -> None:
        """Send the target's answer to the client, streamed, and record its outcome."""
        status = response.status
        out_headers = response.headers
        out_headers.append((VERSION_HEADER, target.version.encode("latin-1")))
        if set_cookie is not None:
            out_headers.append((b"set-cookie", set_cookie.encode("latin-1")))
        failed = status >= 500
        start = {"type": "http.response.start", "status": status, "headers": out_headers}
        sent = False
        try:
            length = response.content_length
            if method == "HEAD" or status in (204, 304):
                sent = True
                await send(start)
                await send({"type": "http.response.body", "body": b""})
            elif length is not None and length <= SMALL_RESPONSE_BYTES:
                data = await response.read()
                sent = True
                await send(start)
                await send({"type": "http.response.body", "body": data})
            else:
                sent = True
                await send(start)
                async for chunk in response.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except UpstreamError as error:
            # The target broke off mid-answer: the client's response ends where it stopped (a
            # 502 when nothing was sent yet), and the target has failed.
            failed = True
            response.close()
            with contextlib.suppress(Exception):
                if sent:
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await respond(send, 502, "upstream_failed", f"Target {target.name}: {error}.")
        finally:
            response.release()
            latency = (time.perf_counter() - started) * 1000
            if failed:
                state.record_failure(target.id, state.clock())
            else:
                state.record_success(target.id)
            self.outcomes.record(snapshot.name, target.version, latency, failed)


def forward_headers(
    scope: Scope, headers: Mapping[str, str], forwarded: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Add the forwarding headers to the request's end-to-end ones; the last slot is kept for
    X-Canary-Version."""
    client = scope.get("client")
    prior = headers.get("x-forwarded-for")
    if client:
        forwarded.append(("X-Forwarded-For", f"{prior}, {client[0]}" if prior else client[0]))
    elif prior:
        forwarded.append(("X-Forwarded-For", prior))
    if "x-forwarded-proto" not in headers:
        forwarded.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
    host = headers.get("host")
    if host:
        forwarded.append(("X-Forwarded-Host", host))
    forwarded.append(("X-Canary-Version", ""))
    return forwarded


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def respond(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = error_response_body(code, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def outcome_items(drained: dict[tuple[str, str, int], list[Any]]) -> list[Any]:
    from health.ingest import OutcomeBatchItem

    return [
        OutcomeBatchItem(
            service=service,
            version=version,
            bucket_start=datetime.fromtimestamp(bucket * OUTCOME_BUCKET_SECONDS, tz=UTC),
            requests=requests,
            errors=errors,
            latency=histogram,
        )
        for (service, version, bucket), (requests, errors, histogram) in sorted(drained.items())
    ]
