"""Template filters of the deployments pages."""

from __future__ import annotations

from typing import Any

from django import template

from deployments.config import format_duration

register = template.Library()


@register.filter
def duration_ms(value: Any) -> str:
    """Milliseconds as people read them: ``2m 30s``; a dash for nothing."""
    if value in (None, ""):
        return "—"
    try:
        return format_duration(int(value))
    except (TypeError, ValueError):
        return "—"
