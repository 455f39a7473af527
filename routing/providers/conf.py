"""Knobs of the traffic providers, read when used so a changed setting (or a test) takes effect.

Each is a ``CANARY_*`` setting with the default shown; none is required. A setting named in
``settings.py`` wins; otherwise the environment variable of the same name is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from canary_site.conf import setting


def _float(name: str, default: float) -> float:
    try:
        return float(setting(name, default))
    except (TypeError, ValueError):
        return default


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    else:
        items = value or []
    return [str(item).strip() for item in items if str(item).strip()]


def enqueue() -> bool:
    """Whether a routing change enqueues ``providers_apply`` after commit (tests without a
    worker turn it off; the beat's sync applies the change anyway)."""
    value = setting("CANARY_PROVIDERS_ENQUEUE", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def socket_timeout() -> float:
    """Seconds to connect to, and wait for an answer from, HAProxy's Runtime API."""
    return _float("CANARY_PROVIDER_TIMEOUT_SECONDS", 3.0)


def command_timeout() -> float:
    """Seconds an nginx test or reload command may run."""
    return _float("CANARY_PROVIDER_COMMAND_TIMEOUT_SECONDS", 30.0)


def failure_limit() -> int:
    """Failures in a row after which a critical alert is raised."""
    return max(1, int(_float("CANARY_PROVIDER_FAILURE_LIMIT", 5)))


def retry_base_seconds() -> float:
    """The first wait after a failure (the tick period by default); it doubles with each
    failure in a row up to `retry_max_seconds`."""
    return max(0.0, _float("CANARY_PROVIDER_RETRY_SECONDS", _float("CANARY_TICK_SECONDS", 5.0)))


def retry_max_seconds() -> float:
    return _float("CANARY_PROVIDER_RETRY_MAX_SECONDS", 300.0)


def lease_seconds() -> float:
    """How long a worker holds a service's data plane at most; a worker that dies lets it go
    after this long."""
    return _float("CANARY_PROVIDER_LEASE_SECONDS", 120.0)


def retention_days() -> float:
    """How long sync records are kept."""
    return _float("CANARY_PROVIDER_SYNC_RETENTION_DAYS", 7.0)


def alert_policy_name() -> str:
    """A health policy whose alerting channels hear of an unreachable data plane; none: the
    alert is on the alerts page only."""
    return str(setting("CANARY_PROVIDER_ALERT_POLICY", "") or "")


def nginx_directories() -> list[str]:
    """Directories under which an nginx provider may write its file and read its access log:
    whoever may change a service's provider settings chooses the path, so it is bounded here."""
    return _words(setting("CANARY_NGINX_DIRS", "/etc/nginx/conf.d,/var/log/nginx"))


def nginx_commands() -> list[str]:
    """Executables an nginx provider's test and reload commands may start (their first word):
    the commands run as the worker's user, so only these are allowed."""
    return _words(setting("CANARY_NGINX_COMMANDS", "nginx,/usr/sbin/nginx,/usr/bin/nginx"))


def nginx_log_max_bytes() -> int:
    """At most this much of an access log is read in one tick; the rest waits for the next."""
    return max(4096, int(_float("CANARY_NGINX_LOG_MAX_BYTES", 16 * 1024 * 1024)))
