"""What the API of rollback plans and of kill switches share for the definitions they take: a
body that is the definition itself (JSON or YAML) or the wrapper ``{definition, reason}``, and
the refusal of text PostgreSQL cannot store, wherever in the definition it is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rest_framework import serializers

from canary_site.api.actions import validated
from canary_site.exceptions import ValidationFailed
from canary_site.reading import index_path, key_path, unstorable


def definition_body(
    data: Any, *, wrapper: type[serializers.Serializer], noun: str
) -> tuple[dict[str, Any], str]:
    """The definition and the reason a body carries: the definition itself, or ``wrapper``'s
    fields (``{definition, reason}``); a 400 for anything else or for text that cannot be
    stored."""
    reason = ""
    if isinstance(data, dict) and data and set(data) <= set(wrapper().fields):
        values = validated(wrapper, data)
        data, reason = values["definition"], values["reason"]
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"Send the {noun} (an object, as JSON or YAML), or {{definition, reason}}.",
            field="definition",
        )
    refuse_unstorable(data)
    return data, reason


def unstorable_texts(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Each text in ``value`` (its keys too) the database cannot store, as (path, why): a NUL
    (PostgreSQL's text and jsonb refuse it) or a lone surrogate (no UTF-8 for it), which JSON
    and YAML escapes can both spell."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from unstorable_texts(str(key), path)
            yield from unstorable_texts(item, key_path(path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_texts(item, index_path(path, index))
    elif isinstance(value, str):
        problem = unstorable(value)
        if problem is not None:
            yield path, problem


def refuse_unstorable(value: Any) -> None:
    """A 400 naming the first text in ``value`` the database cannot store."""
    for path, problem in unstorable_texts(value):
        field = path or "definition"
        raise ValidationFailed(f"{field}: {problem}.", field=field)
