"""Template filters of the rollback pages."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def as_json(value: Any) -> str:
    """A step's output or an execution's evidence as compact, readable JSON (escaped by the
    template like any text)."""
    if value in (None, "", {}, []):
        return ""
    return json.dumps(value, indent=None, sort_keys=True, default=str, ensure_ascii=False)


@register.filter
def as_pretty_json(value: Any) -> str:
    """The same, one key a line, for the evidence blocks."""
    if value in (None, "", {}, []):
        return ""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
