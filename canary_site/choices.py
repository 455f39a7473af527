"""Choices shared by the whole site, and the helpers that build an app's TextChoices: `mirror`
derives them from a pure engine's StrEnum so the two cannot drift, `worded` from a list of words
that are their own labels."""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum

from django.db import models


def words(value: str) -> str:
    """A stored word as a label reads it: ``rolled_back`` and ``kill-switch`` become "Rolled back"
    and "Kill switch"."""
    text = phrase(value)
    return text[:1].upper() + text[1:]


def phrase(value: str) -> str:
    """A stored word as it reads inside a sentence: ``greater_than`` is "greater than" (as in
    "latency greater than 300")."""
    return value.replace("_", " ").replace("-", " ")


def mirror(
    engine: type[StrEnum],
    /,
    *,
    name: str = "",
    doc: str = "",
    label: Callable[[str], str] | None = None,
    **labels: str,
) -> type[models.TextChoices]:
    """A TextChoices with the members, values and order of ``engine`` and these ``labels``
    (by member name), so a stored value feeds the engine without translation.

    Every member needs a label and every label a member: an engine that gains a word fails at
    import until the dashboard has a label for it. With ``label`` (`words` or `phrase`) a member
    without one reads as its value so written, for the enums whose words are their own labels.
    ``name`` defaults to the engine's.
    """
    members = [member.name for member in engine]
    missing = [] if label is not None else [member for member in members if member not in labels]
    unknown = sorted(set(labels) - set(members))
    if missing or unknown:
        raise TypeError(
            f"labels of {engine.__qualname__}: missing {missing or 'none'}, "
            f"unknown {unknown or 'none'}"
        )
    if label is not None:
        labels = {member.name: label(member.value) for member in engine} | labels
    choices = _choices(
        name or engine.__name__,
        [(member.name, member.value, labels[member.name]) for member in engine],
        sys._getframe(1).f_globals.get("__name__", __name__),
    )
    choices.__doc__ = doc or f"The words of `{engine.__module__}.{engine.__qualname__}`."
    return choices


def worded(name: str, values: str, /, *, doc: str = "") -> type[models.TextChoices]:
    """A TextChoices of words that are their own labels, in this order: ``values`` split on
    spaces, each a member named by the word in capitals (``kill-switch`` is ``KILL_SWITCH``)
    and labelled in `words`."""
    choices = _choices(
        name,
        [(value.upper().replace("-", "_"), value, words(value)) for value in values.split()],
        sys._getframe(1).f_globals.get("__name__", __name__),
    )
    choices.__doc__ = doc or None
    return choices


def _choices(
    name: str, members: list[tuple[str, str, str]], module: str
) -> type[models.TextChoices]:
    return models.TextChoices(  # type: ignore[misc]
        name, [(member, (value, label)) for member, value, label in members], module=module
    )


class Source(models.TextChoices):
    """Where a change came from: a person in the dashboard, a REST client, or the control loop."""

    UI = "ui", "Dashboard"
    API = "api", "API"
    SYSTEM = "system", "System"


Role = worded("Role", "viewer engineer approver admin")
