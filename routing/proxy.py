"""The data plane: an ASGI reverse proxy that routes each request with ``routing.engine``.

Run it with ``python manage.py runproxy`` (uvicorn with uvloop and httptools, one process).

Which service a request belongs to: the ``X-Canary-Service`` header, else the first label of
the Host header when a service has that name (``checkout.example.com`` -> ``checkout``), else
the proxy's default service (``--service``). Anything else is a 404.

Per request, nothing touches the database or the cache: the proxy keeps every service's
compiled snapshot in memory and a :class:`~routing.engine.RuntimeState` per service (circuit
breakers, rate limiters, round robin turns, connections in flight). The event loop never waits
on the database or the cache either; each kind of background work has a thread of its own, so
none queues behind another:

- the poller reads the shared routing version every ``poll_interval`` seconds (0.25) and,
  only when its value changed, reloads every snapshot from the database (one consistent read,
  which gives up rather than wait on a lock); the current snapshots serve until the new ones
  are installed;
- the flusher hands the outcomes aggregated in memory (requests, 5xx, latency histogram per
  service, version and second) to the metric store every ``flush_interval`` seconds,
  and once more on shutdown (SIGTERM);
- the reporter publishes the breakers' states to the cache for the dashboard, best effort;
- the in-flight reporter publishes, best effort, the requests in flight per target with the
  routing version loaded and the targets it drains (``selectors.drain_status`` reads them):
  within a quarter of a second of a change for a draining target, every half second while one
  has requests in flight, and every two seconds otherwise;
- a watchdog logs when the event loop itself was held up (the time and for how long);
- with ``metrics`` (``runproxy --metrics-port``), the loop publishes the breakers, the requests
  in flight and the upstream pool to the metrics page once a second (``routing.metrics``); the
  counters of each request cost it a dictionary lookup and a few additions.

A dependency that fails (the database, the cache) is logged once when it starts failing and
once when it recovers, never once per attempt.

Forwarding: the method, path, query, headers and body go to the chosen target; hop-by-hop
headers and every ``X-Canary-*`` header a client sent are dropped, and ``X-Canary-Version``
is set by the proxy. ``X-Forwarded-For``/``-Proto``/``-Host`` (and ``Forwarded``,
``X-Real-IP``) are believed only from a peer in ``trusted_proxies``
(``CANARY_PROXY_TRUSTED_PROXIES``), whose chain is kept and extended; from anyone else they are
replaced by what the proxy saw. The target's status, headers and body come back streamed,
without any ``X-Canary-*`` header of the target's own, with the proxy's ``X-Canary-Version``
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
import ipaddress
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from canary_site.exceptions import CanaryError
from health.histogram import Histogram
from routing import metrics as proxy_metrics
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

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SERVICE_HEADER = "x-canary-service"
VERSION_HEADER = b"x-canary-version"
# Headers under this prefix are the proxy's to set: none from a client reaches a target, none
# from a target reaches a client.
OWN_PREFIX = "x-canary-"
_OWN_PREFIX_BYTES = OWN_PREFIX.encode()
# Finer than the metric store's buckets (which it floors into), so no outcome lands in a bucket
# that has already been judged.
OUTCOME_BUCKET_SECONDS = 1
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# A request body is kept for a retry only up to this size; larger ones stream through once.
REPLAYABLE_BODY_BYTES = 64 * 1024
# Responses up to this size are read whole and sent in one message: fewer event loop turns.
SMALL_RESPONSE_BYTES = 64 * 1024
# Outcomes that cannot be flushed are kept and retried, but not for ever.
MAX_UNFLUSHED_AGE_SECONDS = 300
BREAKER_PUBLISH_SECONDS = 5.0
# How often the in-flight reporter looks at the draining targets' counts; how often it
# publishes while one of them has requests in flight, and at the least.
IN_FLIGHT_CHECK_SECONDS = 0.25
DRAIN_PUBLISH_SECONDS = 0.5
IN_FLIGHT_PUBLISH_SECONDS = 2.0
# The last flush, on shutdown, waits this long for the metric store before giving up.
SHUTDOWN_FLUSH_SECONDS = 10.0
# The watchdog wakes this often and reports a wake-up this much later than it asked for.
WATCHDOG_SECONDS = 0.25
LOOP_LAG_WARNING_SECONDS = 0.5
# A reload or a flush slower than this is logged with its time.
SLOW_WORK_SECONDS = 1.0

# Headers a client's peer could use to claim another address, scheme or host.
FORWARDING_HEADERS = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# Framing (Content-Length, Transfer-Encoding) is the upstream client's to write, and the
# forwarding headers are rewritten.
_DROP_REQUEST = HOP_BY_HOP | FORWARDING_HEADERS | {"host", "content-length", "expect"}


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
    """Per (service, version, second) counts and latency histograms, in memory."""

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

    def pending(self) -> tuple[int, int]:
        """Buckets and requests not flushed yet."""
        return len(self._data), sum(entry[0] for entry in self._data.values())

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
    """The routing version and every snapshot, read consistently (``snapshot.load_snapshots``)."""
    from django.db import close_old_connections

    from routing import snapshot

    # No request cycle closes a broken or expired connection in the proxy's threads.
    close_old_connections()
    return snapshot.load_snapshots()


def read_routing_version() -> Any:
    from django.db import close_old_connections

    from routing import snapshot

    close_old_connections()
    return snapshot.read_version()


def record_outcomes_in_metric_store(items: list[Any]) -> None:
    from django.db import close_old_connections

    from health import services as health_services

    close_old_connections()
    health_services.metrics_record_outcomes(outcomes=items)


# The database connections of the proxy's threads, by thread name: how long a statement may wait
# for a lock, and run at all (milliseconds). A table lock (a migration's) would hold even plain
# reads; a reload gives up quickly instead and the current snapshots keep serving. A flush waits
# for rows a tick has locked, but not for ever: it is retried at the next flush.
DATABASE_TIMEOUTS_MS = {
    "routing-reload": (500, 10_000),
    "routing-flush": (5_000, 30_000),
}


def limit_database_waits(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: bound lock waits and statements of the proxy's own
    threads (set per connection, so a reconnect is bounded too)."""
    timeouts = DATABASE_TIMEOUTS_MS.get(threading.current_thread().name)
    if timeouts is None or connection.vendor != "postgresql":
        return
    lock_ms, statement_ms = timeouts
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {lock_ms}")
        cursor.execute(f"SET statement_timeout = {statement_ms}")


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


def publish_in_flight_report(proxy_id: str, report: dict[str, Any] | None) -> None:
    """Merge this proxy's in-flight report into the shared one the drain status reads; None
    withdraws it (the proxy is stopping, with nothing left in flight)."""
    from django.core.cache import cache

    from routing import selectors

    now = time.time()
    reports = cache.get(selectors.IN_FLIGHT_KEY) or {}
    reports = {
        key: value
        for key, value in reports.items()
        if key != proxy_id and now - float(value.get("at", 0)) <= selectors.IN_FLIGHT_REPORT_MAX_AGE
    }
    if report is not None:
        reports[proxy_id] = {**report, "at": now}
    cache.set(selectors.IN_FLIGHT_KEY, reports, timeout=int(selectors.IN_FLIGHT_REPORT_MAX_AGE * 4))


def close_database_connection() -> None:
    from django.db import connection

    connection.close()


def services_summary(snapshots: Iterable[ServiceSnapshot], limit: int = 20) -> str:
    """``a@3, b@7`` for a log line, the first ``limit`` of them (a reload of a thousand services
    must not write a line of a thousand names)."""
    items = [f"{snapshot.name}@{snapshot.version}" for snapshot in snapshots]
    shown = ", ".join(items[:limit])
    return f"{shown}, and {len(items) - limit} more" if len(items) > limit else shown


class Worker:
    """One daemon thread running blocking calls in order for the event loop.

    Each kind of background work (reloads, flushes, cache reports) has its own, so a flush
    waiting on the metric store never delays a reload. The thread is a daemon: a call stuck on
    a dead cache or database cannot keep the process from exiting on SIGTERM."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._calls.put((loop, future, function, args))
        return await future

    def _serve(self) -> None:
        while True:
            loop, future, function, args = self._calls.get()
            try:
                result = function(*args)
            except BaseException as error:  # handed to the awaiting task, whatever it is
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a background future's failure as seen (it was logged where it happened)."""
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class OutageLog:
    """Logs a dependency that fails once when it starts failing (a warning) and once when it
    works again (an info), however many attempts fail in between."""

    __slots__ = ("_failures", "_since", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self._since: float | None = None
        self._failures = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, consequence: str) -> None:
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
            logger.warning(
                "%s failed (%s: %s); %s. Logged once until it recovers.",
                self.what,
                type(error).__name__,
                str(error).strip().splitlines()[0] if str(error).strip() else "no message",
                consequence,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )

    def succeeded(self) -> None:
        if self._since is not None:
            logger.info(
                "%s works again after %.1f s (%d failed attempt(s)).",
                self.what,
                time.monotonic() - self._since,
                self._failures,
            )
            self._since = None
            self._failures = 0


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
        trusted_proxies: Iterable[IPNetwork] = (),
        load_snapshots: Callable[[], tuple[Any, dict[str, ServiceSnapshot]]] | None = None,
        read_version: Callable[[], Any] | None = None,
        record_outcomes: Callable[[list[Any]], None] | None = None,
        publish: Callable[[str, dict[str, dict[str, str]]], None] | None = None,
        publish_in_flight: Callable[[str, dict[str, Any] | None], None] | None = None,
        metrics: proxy_metrics.ProxyMetrics | None = None,
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
        self.trusted_proxies = tuple(trusted_proxies)
        self._trusted_peers: dict[str, bool] = {}
        self._load = load_snapshots or load_snapshots_from_database
        self._read_version = read_version or read_routing_version
        self._record = record_outcomes or record_outcomes_in_metric_store
        self._publish = publish if publish is not None else publish_breakers
        self._publish_in_flight = (
            publish_in_flight if publish_in_flight is not None else publish_in_flight_report
        )
        self.snapshots: dict[str, ServiceSnapshot] = {}
        self.states: dict[str, RuntimeState] = {}
        self.outcomes = Outcomes()
        # This proxy's own Prometheus metrics, when a port serves them.
        self.metrics = metrics
        self.version: Any = None
        self.loaded = False
        self.client: UpstreamClient | None = None
        self.proxy_id = f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing: asyncio.Future[None] | None = None
        self._last_breakers: dict[str, dict[str, str]] | None = None
        self._breakers_published_at = 0.0
        # The ids of the targets each service's snapshot drains, from the last install.
        self._draining: dict[str, tuple[str, ...]] = {}
        self._last_drain_watch: Any = None
        self._in_flight_published_at = 0.0
        self._loader = Worker("routing-reload")
        self._flusher = Worker("routing-flush")
        self._reporter = Worker("routing-report")
        self._in_flight_reporter = Worker("routing-in-flight")
        self._database = OutageLog("Reading the routing from the database")
        self._store = OutageLog("Flushing outcomes to the metric store")
        self._cache = OutageLog("Publishing circuit breaker states to the cache")
        self._in_flight_cache = OutageLog("Publishing requests in flight to the cache")

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
        if self._load is load_snapshots_from_database:
            from django.db.backends.signals import connection_created

            connection_created.connect(
                limit_database_waits, dispatch_uid="routing_proxy_database_waits"
            )
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
        # The database may come up after the proxy: until it does, requests are answered 503
        # and the poller keeps trying.
        await self._reload_quietly()
        # Everything loaded so far (Django, the snapshots) lives as long as the process: keep it
        # out of the garbage collector's scans, which otherwise stall requests now and then.
        gc.collect()
        gc.freeze()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="routing-poll"),
            asyncio.create_task(self._flush_loop(), name="routing-flush"),
            asyncio.create_task(self._report_loop(), name="routing-report"),
            asyncio.create_task(self._in_flight_loop(), name="routing-in-flight"),
            asyncio.create_task(self._watchdog(), name="routing-watchdog"),
        ]
        if self.metrics is not None:
            self._tasks.append(asyncio.create_task(self._metrics_loop(), name="routing-metrics"))

    async def shutdown(self) -> None:
        """Stop the background work, then flush what the last requests left (uvicorn calls
        this once every request in flight has been answered)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flushing is not None and not self._flushing.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flushing), SHUTDOWN_FLUSH_SECONDS)
        pending = self.outcomes.pending()
        if pending[0]:
            try:
                await asyncio.wait_for(self.flush(), SHUTDOWN_FLUSH_SECONDS)
            except Exception as error:
                logger.error(
                    "Shutting down: %d outcome bucket(s) (%d requests) could not be flushed "
                    "to the metric store and are lost: %s: %s",
                    *pending,
                    type(error).__name__,
                    error,
                )
            else:
                logger.info(
                    "Shutting down: flushed %d outcome bucket(s) (%d requests) to the metric "
                    "store.",
                    *pending,
                )
        # Every request has been answered by now: this proxy no longer holds any drain back.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._in_flight_reporter.run(self._publish_in_flight, self.proxy_id, None), 1.0
            )
        if self.client is not None:
            await self.client.close()
        for worker in (self._loader, self._flusher):
            if not worker.started:
                continue
            # Their database connections end cleanly rather than with the process.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.run(close_database_connection), 1.0)

    # -- Background work -------------------------------------------------------------------

    async def reload(self) -> None:
        started = time.perf_counter()
        version, snapshots = await self._loader.run(self._load)
        self.install(snapshots, version, time.perf_counter() - started)

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except Exception as error:
            self._database.failed(
                error,
                "keeping the current snapshots" if self.loaded else "answering 503 until it works",
            )
        else:
            self._database.succeeded()

    def install(
        self, snapshots: dict[str, ServiceSnapshot], version: Any, took: float = 0.0
    ) -> None:
        """Swap in new snapshots; breakers and limiters of the services that remain carry over
        (the engine resyncs a state when it first sees the new snapshot)."""
        self.states = {name: self.states.get(name) or RuntimeState() for name in snapshots}
        self.snapshots = snapshots
        self._draining = {
            name: draining
            for name, snapshot in snapshots.items()
            if (draining := tuple(target.id for target in snapshot.targets if target.draining))
        }
        self.version = version
        self.loaded = True
        if self.metrics is not None:
            self.metrics.retain(
                (name, target.version, target.id)
                for name, snapshot in snapshots.items()
                for target in snapshot.targets
            )
            self.metrics.publish(self.metrics_gauges())
        log = logger.warning if took > SLOW_WORK_SECONDS else logger.info
        log(
            "Routing version %s loaded in %.0f ms: %d service(s) %s",
            version,
            took * 1000,
            len(snapshots),
            services_summary(snapshots.values()),
        )

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                version = await self._loader.run(self._read_version)
            except Exception as error:
                self._database.failed(error, "keeping the current snapshots")
                continue
            if version != self.version or not self.loaded or self._database.failing:
                await self._reload_quietly()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            # Shielded: stopping this loop must not abandon a batch half-way; shutdown waits
            # for it instead.
            self._flushing = asyncio.ensure_future(self.flush())
            self._flushing.add_done_callback(_retrieve)
            with contextlib.suppress(Exception):  # logged by flush, retried next time
                await asyncio.shield(self._flushing)

    async def flush(self) -> None:
        """Hand the outcomes aggregated so far to the metric store. A failure keeps them for
        the next flush (raised after it is logged); a batch the store refuses is dropped."""
        drained = self.outcomes.drain()
        if not drained:
            return
        items = outcome_items(drained)
        started = time.perf_counter()
        try:
            await self._flusher.run(self._record, items)
        except CanaryError:
            # The store refused the batch itself (not an outage): retrying cannot help.
            logger.exception("The metric store refused %d outcome bucket(s)", len(items))
            return
        except Exception as error:
            self.outcomes.restore(drained)
            self._store.failed(error, "keeping the outcomes in memory to retry")
            raise
        # Cancelled (a shutdown that could wait no longer): the worker thread may still write
        # the batch, so it is not put back to be written twice.
        self._store.succeeded()
        took = time.perf_counter() - started
        if took > SLOW_WORK_SECONDS:
            logger.warning("Flushing %d outcome bucket(s) took %.1f s", len(items), took)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self._publish_breakers()

    async def _publish_breakers(self) -> None:
        """Best effort: the report is for the dashboard; a cache outage loses nothing else."""
        if self._publish is None:
            return
        states = self.breaker_states()
        now = time.monotonic()
        if (
            states == self._last_breakers
            and now - self._breakers_published_at < BREAKER_PUBLISH_SECONDS
        ):
            return
        try:
            await self._reporter.run(self._publish, self.proxy_id, states)
        except Exception as error:
            self._cache.failed(error, "the dashboard shows this proxy's breakers as stale")
            return
        self._cache.succeeded()
        self._last_breakers = states
        self._breakers_published_at = now

    async def _in_flight_loop(self) -> None:
        while True:
            await asyncio.sleep(IN_FLIGHT_CHECK_SECONDS)
            await self.report_in_flight()

    async def report_in_flight(self) -> None:
        """Best effort, and only when due: at once when a draining target's count, the drains
        or the routing version changed since the last report, every half second while a
        draining target has requests in flight (so a report lost to another proxy's write is
        soon replaced), and every two seconds to stay fresh. Nothing per request: the counts
        are the engine's state, read here."""
        now = time.monotonic()
        watch = self._drain_watch()
        elapsed = now - self._in_flight_published_at
        busy = any(count for _service, _target, count in watch[1])
        if (
            watch == self._last_drain_watch
            and elapsed < IN_FLIGHT_PUBLISH_SECONDS
            and not (busy and elapsed >= DRAIN_PUBLISH_SECONDS)
        ):
            return
        report = self.in_flight_report()
        try:
            await self._in_flight_reporter.run(self._publish_in_flight, self.proxy_id, report)
        except Exception as error:
            self._in_flight_cache.failed(
                error, "drains this proxy serves are not seen to finish until it works"
            )
            return
        self._in_flight_cache.succeeded()
        self._last_drain_watch = watch
        self._in_flight_published_at = now

    def _drain_watch(self) -> tuple[Any, tuple[tuple[str, str, int], ...]]:
        """The routing version and each draining target's count: what, changed, is told soon."""
        states = self.states
        return (
            self.version,
            tuple(
                (name, target_id, states[name].in_flight(target_id))
                for name, draining in self._draining.items()
                for target_id in draining
            ),
        )

    def in_flight_report(self) -> dict[str, Any]:
        """This proxy's report: the routing version it has loaded and, per service it serves,
        the targets its snapshot drains and the requests in flight per target that has any."""
        services: dict[str, Any] = {}
        for name in self.snapshots:
            state = self.states.get(name)
            services[name] = {
                "draining": list(self._draining.get(name, ())),
                "in_flight": state.in_flight_counts() if state is not None else {},
            }
        return {"version": str(self.version), "services": services}

    async def _watchdog(self) -> None:
        """Report the event loop being held up: requests wait for as long as it is."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(WATCHDOG_SECONDS)
            lag = loop.time() - before - WATCHDOG_SECONDS
            if lag > LOOP_LAG_WARNING_SECONDS:
                logger.warning("The event loop was held up for %.2f s", lag)

    async def _metrics_loop(self) -> None:
        metrics = self.metrics
        assert metrics is not None
        while True:
            await asyncio.sleep(proxy_metrics.PUBLISH_SECONDS)
            metrics.publish(self.metrics_gauges())

    def metrics_gauges(self) -> proxy_metrics.Gauges:
        """The gauges of the metrics page, read on the event loop that owns the breakers, the
        in-flight counts and the upstream pool."""
        breakers: list[tuple[str, str, int]] = []
        in_flight: list[tuple[str, str, int]] = []
        for name, snapshot in self.snapshots.items():
            state = self.states.get(name)
            if state is None:
                continue
            now = state.clock()
            for target in snapshot.targets:
                circuit = str(state.circuit_state(target.id, now))
                breakers.append((name, target.id, proxy_metrics.breaker_value(circuit)))
                in_flight.append((name, target.id, state.in_flight(target.id)))
        pool_counts = getattr(self.client, "pool_counts", None)
        pools = pool_counts() if pool_counts is not None else {}
        return proxy_metrics.Gauges(
            breakers=tuple(breakers),
            in_flight=tuple(in_flight),
            upstreams=tuple((name, opened, idle) for name, (opened, idle) in sorted(pools.items())),
            services=len(self.snapshots),
            loaded=self.loaded,
        )

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

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (an address) is one of the trusted proxies."""
        known = self._trusted_peers.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self.trusted_proxies)
            if len(self._trusted_peers) > 4096:  # peers come and go; the memo must not grow
                self._trusted_peers.clear()
            self._trusted_peers[peer] = known
        return known

    def client_address(self, peer: str, chain: str | None) -> str:
        """The address a request comes from: for a trusted peer, the right-most address in its
        ``X-Forwarded-For`` that is not itself a trusted proxy (as nginx's real_ip_recursive
        reads it); otherwise the peer."""
        address = peer
        if not chain:
            return address
        for item in reversed(chain.split(",")):
            candidate = item.strip()
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                break  # not an address: the chain cannot be followed further
            address = candidate
            if not self.trusts(candidate):
                break
        return address

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
            if name not in drop and not name.startswith(OWN_PREFIX):
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
            if self.metrics is not None:
                self.metrics.refused("", "not_found" if self.loaded else "not_loaded")
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
        peer = client[0] if client else ""
        trusted = bool(self.trusted_proxies) and self.trusts(peer)
        context = RequestContext(
            scope["method"],
            scope["path"],
            headers,
            parse_cookies(cookie_header) if cookie_header else {},
            parse_query(query_string) if query_string else {},
            self.client_address(peer, headers.get("x-forwarded-for")) if trusted else peer,
        )
        decision = decide(snapshot, context, state=state)
        target = decision.target
        if target is None:
            if self.metrics is not None:
                self.metrics.refused(
                    snapshot.name,
                    "rate_limited"
                    if decision.reason is Reason.RATE_LIMITED
                    else "no_healthy_target",
                )
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
        upstream_headers = forward_headers(scope, headers, forwarded, trusted=trusted)
        await self.forward(
            scope, receive, send, headers, upstream_headers, snapshot, state, context, decision
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
        target: TargetSnapshot = decision.target  # type: ignore[assignment]
        # The target whose in-flight count this request holds. Counted from the decision on,
        # so a request whose body is still arriving holds a drain back too; each count ends
        # exactly once (a failed try ends its own, the finally below the last one), whatever
        # is raised meanwhile, since a drain waits for these counts to reach zero.
        counted: str | None = target.id
        state.begin(target.id)
        try:
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

            upstream_headers = forwarded
            path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            query_string = scope.get("query_string")
            if query_string:
                path = f"{path}?{query_string.decode('latin-1')}"

            excluded: list[str] = []
            attempt = 0
            while True:
                upstream_headers[-1] = ("X-Canary-Version", target.version)
                if counted is None:
                    counted = target.id
                    state.begin(target.id)
                started = time.perf_counter()
                response: UpstreamResponse | None = None
                failure: UpstreamError | None = None
                try:
                    response = await client.request(
                        method,
                        target.endpoint,
                        path,
                        upstream_headers,
                        body,
                        body_length,
                        replayable,
                    )
                except ClientDisconnected:
                    return
                except UpstreamError as error:
                    failure = error
                if response is not None and (response.status < 500 or attempt >= retries):
                    await self.relay(
                        send, response, method, snapshot, target, state, started, set_cookie
                    )
                    return
                # This target failed; another one may not.
                counted = None
                state.end(target.id)
                state.record_failure(target.id, state.clock())
                took = time.perf_counter() - started
                self.outcomes.record(snapshot.name, target.version, took * 1000, True)
                if self.metrics is not None:
                    self.metrics.observe(snapshot.name, target.version, target.id, took, True)
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
                        send,
                        502,
                        "upstream_failed",
                        f"No target left to retry on; last: {problem}.",
                    )
                    return
                target = retry.target
        finally:
            if counted is not None:
                state.end(counted)

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
        out_headers = [
            (name, value)
            for name, value in response.headers
            if not name.lower().startswith(_OWN_PREFIX_BYTES)
        ]
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
            took = time.perf_counter() - started
            if failed:
                state.record_failure(target.id, state.clock())
            else:
                state.record_success(target.id)
            self.outcomes.record(snapshot.name, target.version, took * 1000, failed)
            if self.metrics is not None:
                self.metrics.observe(snapshot.name, target.version, target.id, took, failed)


def forward_headers(
    scope: Scope,
    headers: Mapping[str, str],
    forwarded: list[tuple[str, str]],
    *,
    trusted: bool,
) -> list[tuple[str, str]]:
    """Add the forwarding headers to the request's end-to-end ones; the last slot is kept for
    X-Canary-Version.

    From a trusted proxy its ``X-Forwarded-For`` chain is extended with its address and its
    ``X-Forwarded-Proto``/``-Host``, ``Forwarded`` and ``X-Real-IP`` pass as they came; from
    anyone else those are what this proxy saw: the peer's address, the scheme it spoke, the
    Host it asked for."""
    client = scope.get("client")
    peer = client[0] if client else None
    scheme = scope.get("scheme", "http")
    host = headers.get("host")
    if trusted:
        prior = headers.get("x-forwarded-for")
        chain = f"{prior}, {peer}" if prior and peer else prior or peer
        if chain:
            forwarded.append(("X-Forwarded-For", chain))
        forwarded.append(("X-Forwarded-Proto", headers.get("x-forwarded-proto") or scheme))
        host = headers.get("x-forwarded-host") or host
        for name in ("forwarded", "x-real-ip"):
            value = headers.get(name)
            if value is not None:
                forwarded.append((name, value))
    else:
        if peer:
            forwarded.append(("X-Forwarded-For", peer))
        forwarded.append(("X-Forwarded-Proto", scheme))
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
