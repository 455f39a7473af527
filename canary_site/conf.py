"""How every app reads its ``CANARY_*`` knobs: the setting if settings.py names it, else the
environment variable of the same name, else the default. Read when used, so a changed setting
(or a test's override) takes effect."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings


def setting(name: str, default: Any) -> Any:
    if hasattr(settings, name):
        return getattr(settings, name)
    return os.environ.get(name, default)
