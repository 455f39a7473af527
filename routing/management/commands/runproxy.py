"""Runs the routing proxy: ``routing.proxy.RoutingProxy`` on uvicorn with uvloop and httptools."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing import conf

BACKLOG = 2048


class UTCFormatter(logging.Formatter):
    """Log times in UTC with milliseconds (``2026-01-31T12:00:00.123Z``), so the proxy's lines
    line up with the worker's and the database's whatever the machine's zone."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{time.strftime('%Y-%m-%dT%H:%M:%S', self.converter(record.created))}." + (
            f"{int(record.msecs):03d}Z"
        )


# Replaces uvicorn's and Django's console set-up for this process: every line (the proxy's,
# uvicorn's) goes to stderr once, with its time, level, process and logger. Levels stay as
# Django's LOGGING set them (CANARY_LOG_LEVEL) and --log-level sets uvicorn's.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "timestamped": {
            "()": f"{__name__}.UTCFormatter",
            "format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "timestamped",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["console"]},
    "loggers": {
        "uvicorn": {"handlers": [], "propagate": True},
        "uvicorn.error": {"handlers": [], "propagate": True},
        "uvicorn.access": {"handlers": [], "propagate": True},
    },
}


class Command(BaseCommand):
    help = (
        "Run the routing proxy (the data plane). Requests name their service with the "
        "X-Canary-Service header or the Host's first label, else --service."
    )
    # Django's checks import every URL, view and admin module: about a second of start-up
    # that a restarted proxy would spend refusing requests. The web process runs them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=conf.proxy_host())
        parser.add_argument("--port", type=int, default=conf.proxy_port())
        parser.add_argument(
            "--service",
            default=conf.proxy_default_service(),
            help="Service for requests that name none.",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=conf.proxy_poll_seconds(),
            help="Seconds between reads of the routing version.",
        )
        parser.add_argument(
            "--flush-interval",
            type=float,
            default=conf.proxy_flush_seconds(),
            help="Seconds between flushes of outcomes to the metric store.",
        )
        parser.add_argument("--connect-timeout", type=float, default=conf.proxy_connect_timeout())
        parser.add_argument(
            "--read-timeout",
            type=float,
            default=conf.proxy_read_timeout(),
            help="Seconds a target may stay silent while answering.",
        )
        parser.add_argument(
            "--pool-size",
            type=int,
            default=conf.proxy_pool_size(),
            help="Most idle connections kept open to one target endpoint.",
        )
        parser.add_argument(
            "--upstream-client",
            choices=["fast", "aiohttp"],
            default=conf.proxy_upstream_client(),
            help="fast: keep-alive pool on httptools (default); aiohttp: aiohttp's ClientSession.",
        )
        parser.add_argument(
            "--trusted-proxies",
            default=None,
            help="Comma-separated addresses or CIDR networks whose X-Forwarded-* headers are "
            "believed (default: CANARY_PROXY_TRUSTED_PROXIES, none).",
        )
        parser.add_argument(
            "--max-head-bytes",
            type=int,
            default=None,
            help="Largest request line and headers read; larger ones are answered 431 "
            "(default: CANARY_PROXY_MAX_HEAD_BYTES, 16384).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve the proxy's own Prometheus metrics at /metrics on this port, on the "
            "proxy's host (default: CANARY_PROXY_METRICS_PORT; 0, none).",
        )
        parser.add_argument("--log-level", default="warning", help="uvicorn's log level.")

    def handle(self, *args: Any, **options: Any) -> None:
        import uvicorn
        from django.core.exceptions import ImproperlyConfigured

        from routing.metrics import ProxyMetrics
        from routing.proxy import RoutingProxy
        from routing.server import protocol_class

        try:
            trusted = (
                conf.parse_networks(options["trusted_proxies"], "--trusted-proxies")
                if options["trusted_proxies"] is not None
                else conf.proxy_trusted_proxies()
            )
            max_head = (
                options["max_head_bytes"]
                if options["max_head_bytes"] is not None
                else conf.proxy_max_head_bytes()
            )
            metrics_port = (
                options["metrics_port"]
                if options["metrics_port"] is not None
                else conf.proxy_metrics_port()
            )
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
        if max_head < 1024:
            raise CommandError("--max-head-bytes must be at least 1024.")
        if not 0 <= metrics_port <= 65535:
            raise CommandError("--metrics-port must be a port number (0 for none).")
        if metrics_port and metrics_port == options["port"]:
            raise CommandError("--metrics-port must differ from --port.")
        metrics = ProxyMetrics() if metrics_port else None

        app = RoutingProxy(
            default_service=options["service"],
            poll_interval=options["poll_interval"],
            flush_interval=options["flush_interval"],
            connect_timeout=options["connect_timeout"],
            read_timeout=options["read_timeout"],
            pool_size=options["pool_size"],
            upstream_client=options["upstream_client"],
            trusted_proxies=trusted,
            metrics=metrics,
        )
        config = uvicorn.Config(
            app,
            host=options["host"],
            port=options["port"],
            loop="uvloop",
            # httptools, writing each response's head with its body and capping request heads
            # (see routing/server.py).
            http=protocol_class(max_head_bytes=max_head),
            lifespan="on",
            access_log=False,
            log_config=LOG_CONFIG,
            log_level=options["log_level"],
            # The target's own Server and Date headers pass through untouched.
            server_header=False,
            date_header=False,
            # Forwarded headers are the proxy's business (trusted_proxies), not uvicorn's.
            proxy_headers=False,
            timeout_keep_alive=30,
            backlog=BACKLOG,
        )
        # Listen before the start-up work (loading the routing, freezing the garbage collector):
        # a restarted proxy's first clients wait in the kernel's queue rather than being refused.
        sock = config.bind_socket()
        sock.listen(BACKLOG)
        if metrics is not None:
            # A thread of its own: a scrape never waits behind the proxy's requests.
            try:
                metrics.serve(host=options["host"], port=metrics_port)
            except OSError as error:
                sock.close()
                raise CommandError(
                    f"Cannot serve the proxy's metrics on port {metrics_port}: {error}"
                ) from None
            self.stdout.write(f"Proxy metrics on http://{options['host']}:{metrics_port}/metrics")
        self.stdout.write(f"Routing proxy on http://{options['host']}:{options['port']}/")
        self.stdout.flush()
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        if not server.started:
            sys.exit(3)  # uvicorn's start-up failure status
