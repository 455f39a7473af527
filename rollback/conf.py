"""The rollback app's settings, read when used so a changed setting (or a test) takes effect.

Each is a ``CANARY_*`` setting with the default shown; none is required.
"""

from __future__ import annotations

from datetime import timedelta

from canary_site.conf import setting


def tick_seconds() -> float:
    """The control loop's tick (``CANARY_TICK_SECONDS``)."""
    return float(setting("CANARY_TICK_SECONDS", 5.0))


def lease() -> timedelta:
    """How long a worker holds an execution while it runs its steps
    (``CANARY_ROLLBACK_LEASE_SECONDS``, 30): a worker that dies lets it go after this, and a
    step that may take longer (a webhook's answer) renews it."""
    return timedelta(seconds=float(setting("CANARY_ROLLBACK_LEASE_SECONDS", 30)))


def plan_approval_ttl_seconds() -> int:
    """How long a rollback waiting for its plan's approvers may wait before it expires."""
    return int(setting("CANARY_ROLLBACK_APPROVAL_TTL_SECONDS", 3600))


def environment() -> str:
    """This install's environment label (``production``, ``staging``): the approval policies
    scoped to an environment cover every change here when it is theirs. Blank: none."""
    return str(setting("CANARY_ENVIRONMENT", "") or "").strip()
