"""The routing app's settings: the proxy's knobs, read when used so a changed setting (or a test)
takes effect.

Each is a ``CANARY_*`` setting with the default shown; none is required. A setting named in
``settings.py`` wins; otherwise the environment variable of the same name is read.
``runproxy`` takes its defaults from here and lets its command line override them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from canary_site.conf import setting

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_host() -> str:
    return str(setting("CANARY_PROXY_HOST", "127.0.0.1"))


def proxy_port() -> int:
    return int(setting("CANARY_PROXY_PORT", 8080))


def proxy_metrics_port() -> int:
    """The port of the proxy's own /metrics (on the proxy's host); 0, the default, serves none."""
    value = setting("CANARY_PROXY_METRICS_PORT", 0)
    try:
        port = int(value or 0)
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535:
        raise ImproperlyConfigured(
            f"CANARY_PROXY_METRICS_PORT must be a port number (0 for none); got {value!r}."
        )
    return port


def proxy_default_service() -> str | None:
    """The service for requests that name none (by header or Host)."""
    return str(setting("CANARY_PROXY_DEFAULT_SERVICE", "") or "") or None


def proxy_poll_seconds() -> float:
    """Seconds between reads of the routing version."""
    return float(setting("CANARY_PROXY_POLL_SECONDS", 0.25))


def proxy_flush_seconds() -> float:
    """Seconds between flushes of outcomes to the metric store."""
    return float(setting("CANARY_PROXY_FLUSH_SECONDS", 1.0))


def proxy_connect_timeout() -> float:
    return float(setting("CANARY_PROXY_CONNECT_TIMEOUT", 5.0))


def proxy_read_timeout() -> float:
    """Seconds a target may stay silent while answering."""
    return float(setting("CANARY_PROXY_READ_TIMEOUT", 60.0))


def proxy_pool_size() -> int:
    """Most idle connections kept open to one target endpoint."""
    return int(setting("CANARY_PROXY_POOL_SIZE", 512))


def proxy_upstream_client() -> str:
    """``fast`` (keep-alive pool on httptools) or ``aiohttp``."""
    return str(setting("CANARY_PROXY_UPSTREAM_CLIENT", "fast"))


def proxy_max_head_bytes() -> int:
    """Largest request head (request line and headers) the proxy reads; a larger one is
    answered 431. 16 KiB is above what browsers send (nginx's default buffers are 8 KiB) and
    keeps a hostile client from making the proxy hold megabytes per connection."""
    value = setting("CANARY_PROXY_MAX_HEAD_BYTES", 16 * 1024)
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1024:
        raise ImproperlyConfigured(
            f"CANARY_PROXY_MAX_HEAD_BYTES must be a whole number of bytes, at least 1024; "
            f"got {value!r}."
        )
    return size


def proxy_trusted_proxies() -> tuple[IPNetwork, ...]:
    """Peers whose ``X-Forwarded-For``/``-Proto``/``-Host`` the proxy believes (a load balancer
    in front of it): comma-separated addresses or CIDR networks, none by default. From any other
    peer those headers are replaced by what the proxy itself saw."""
    name = "CANARY_PROXY_TRUSTED_PROXIES"
    return parse_networks(setting(name, ""), name)


def parse_networks(value: Any, name: str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 192.0.2.7, ::1"`` (or a list of such items) as networks; a bad item is a
    configuration error naming the setting and the item."""
    items: Iterable[Any]
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    networks: list[IPNetwork] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {text!r} is not an IP address or CIDR network."
            ) from None
    return tuple(networks)
