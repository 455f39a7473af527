"""Runs the routing proxy: ``routing.proxy.RoutingProxy`` on uvicorn with uvloop and httptools."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from canary_site.conf import setting


class Command(BaseCommand):
    help = (
        "Run the routing proxy (the data plane). Requests name their service with the "
        "X-Canary-Service header or the Host's first label, else --service."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=setting("CANARY_PROXY_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=setting("CANARY_PROXY_PORT", 8080))
        parser.add_argument(
            "--service",
            default=setting("CANARY_PROXY_DEFAULT_SERVICE", "") or None,
            help="Service for requests that name none.",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=setting("CANARY_PROXY_POLL_SECONDS", 0.25),
            help="Seconds between reads of the routing version key.",
        )
        parser.add_argument(
            "--flush-interval",
            type=float,
            default=setting("CANARY_PROXY_FLUSH_SECONDS", 1.0),
            help="Seconds between flushes of outcomes to the metric store.",
        )
        parser.add_argument(
            "--connect-timeout",
            type=float,
            default=setting("CANARY_PROXY_CONNECT_TIMEOUT", 5.0),
        )
        parser.add_argument(
            "--read-timeout",
            type=float,
            default=setting("CANARY_PROXY_READ_TIMEOUT", 60.0),
            help="Seconds a target may stay silent while answering.",
        )
        parser.add_argument(
            "--pool-size",
            type=int,
            default=setting("CANARY_PROXY_POOL_SIZE", 512),
            help="Most connections to targets kept open at once.",
        )
        parser.add_argument(
            "--upstream-client",
            choices=["fast", "aiohttp"],
            default=setting("CANARY_PROXY_UPSTREAM_CLIENT", "fast"),
            help="fast: keep-alive pool on httptools (default); aiohttp: aiohttp's ClientSession.",
        )
        parser.add_argument("--log-level", default="warning")

    def handle(self, *args: Any, **options: Any) -> None:
        import uvicorn

        from routing.proxy import RoutingProxy
        from routing.server import CoalescingHttpToolsProtocol

        app = RoutingProxy(
            default_service=options["service"],
            poll_interval=options["poll_interval"],
            flush_interval=options["flush_interval"],
            connect_timeout=options["connect_timeout"],
            read_timeout=options["read_timeout"],
            pool_size=options["pool_size"],
            upstream_client=options["upstream_client"],
        )
        self.stdout.write(f"Routing proxy on http://{options['host']}:{options['port']}/")
        self.stdout.flush()
        uvicorn.run(
            app,
            host=options["host"],
            port=options["port"],
            loop="uvloop",
            # httptools, writing each response's head with its body (see routing/server.py).
            http=CoalescingHttpToolsProtocol,
            lifespan="on",
            access_log=False,
            log_level=options["log_level"],
            # The target's own Server and Date headers pass through untouched.
            server_header=False,
            date_header=False,
            # X-Forwarded-For from a client is data, not a trusted source of its address.
            proxy_headers=False,
            timeout_keep_alive=30,
            backlog=2048,
        )
