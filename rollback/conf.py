"""The rollback app's settings, read when used so a changed setting (or a test) takes effect.

Each is a ``CANARY_*`` setting with the default shown; none is required.
"""

from __future__ import annotations

from canary_site.conf import setting


def environment() -> str:
    """This install's environment label (``production``, ``staging``): the approval policies
    scoped to an environment cover every change here when it is theirs. Blank: none."""
    return str(setting("CANARY_ENVIRONMENT", "") or "").strip()
