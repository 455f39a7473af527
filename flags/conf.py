"""The flags app's settings.

Each is a ``CANARY_*`` setting with the default shown; none is required. A setting named in
``settings.py`` wins; otherwise the environment variable of the same name is read. Values are
read on first use and read again after Django's ``setting_changed`` (``override_settings``).
"""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed

from canary_site.conf import setting

# Read once per process (some are read on every OFREP request) and forgotten when a setting
# changes, which is how tests override them.
_values: dict[str, Any] = {}


def _get(name: str, default: Any) -> Any:
    try:
        return _values[name]
    except KeyError:
        pass
    # Settings first; the environment next, so a knob works before settings.py names it.
    value = setting(name, default)
    _values[name] = value
    return value


def _forget(**_: Any) -> None:
    _values.clear()


setting_changed.connect(_forget, dispatch_uid="flags_conf_forget")


def ofrep_rate_limit() -> int:
    """OFREP evaluations per second allowed to one evaluation key (unless the key sets its own)."""
    return int(_get("CANARY_OFREP_RATE_LIMIT", 1000))


def snapshot_check_seconds() -> float:
    """How often a process asks the shared cache whether the flags have changed.

    A change is served everywhere within this interval plus one reload; 0.2 s keeps a kill well
    inside one second while costing at most five cache reads a second per process.
    """
    return float(_get("CANARY_FLAGS_SNAPSHOT_CHECK_SECONDS", 0.2))


def db_version_seconds() -> float:
    """How often a process also reads the flags version from the database.

    The cache announces changes within the snapshot check; the database is the backstop that
    still works when the cache is down or missed a change, and bounds how late a kill can be
    served then. One small query per process every 2 s, never one per evaluation.
    """
    return float(_get("CANARY_FLAGS_DB_VERSION_SECONDS", 2))


def exposure_flush_seconds() -> float:
    """Longest time exposure counts wait in a process's memory before they are written."""
    return float(_get("CANARY_FLAGS_EXPOSURE_FLUSH_SECONDS", 5))


def exposure_flush_count() -> int:
    """Evaluations after which exposure counts are written even if the time has not come."""
    return int(_get("CANARY_FLAGS_EXPOSURE_FLUSH_COUNT", 10_000))


def exposure_retention_days() -> int:
    """Exposure counts older than this are deleted by ``flag_exposures_prune``."""
    return int(_get("CANARY_FLAGS_EXPOSURE_RETENTION_DAYS", 30))


def stale_after_days() -> int:
    """A flag served to everyone for this many days is marked stale."""
    return int(_get("CANARY_FLAGS_STALE_DAYS", 30))
