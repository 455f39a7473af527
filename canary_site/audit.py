"""The audit trail: who changed what, from where and why.

django-auditlog records every create, update and delete of a registered model with its diff.
Services wrap their writes in :func:`audit_context` to name the actor, the source (ui, api,
system), the reason and the verb of an action, which land on the same entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from auditlog.context import auditlog_value, set_extra_data
from auditlog.registry import auditlog

from canary_site.choices import Source


@contextmanager
def audit_context(
    *, actor: Any = None, source: str = Source.SYSTEM, reason: str = "", verb: str = ""
) -> Iterator[None]:
    """Attribute every audited write inside the block to ``actor`` from ``source``.

    Nesting is allowed: a service called from a request overrides the request's context for its
    own writes, and the outer context is restored afterwards.
    """
    outer = auditlog_value.get(None)
    data: dict[str, Any] = {"source": str(source), "reason": reason or "", "verb": verb or ""}
    if actor is not None and getattr(actor, "is_authenticated", False):
        data["actor"] = actor
    elif outer and outer.get("actor") is not None:
        data["actor"] = outer["actor"]
    if outer and outer.get("remote_addr"):
        data["remote_addr"] = outer["remote_addr"]
    try:
        with set_extra_data(context_data=data):
            yield
    finally:
        # auditlog leaves its context variable set after the block; restoring it keeps this
        # actor from being attributed to later writes in the same thread.
        auditlog_value.set(outer)


def register(model: type, **options: Any) -> type:
    """Put a model on the audit trail (a thin alias so apps need not import auditlog)."""
    return auditlog.register(model, **options)
