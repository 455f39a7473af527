"""The audit trail: who changed what, from where and why.

django-auditlog records every create, update and delete of a registered model with its diff.
Services wrap their writes in :func:`audit_context` to name the actor, the source (ui, api,
system), the reason and the verb of an action, which land on the same entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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


def audit_updates(rows: Iterable[tuple[Any, Any, Mapping[str, str]]]) -> int:
    """Audit entries for rows written in bulk, which send no signals to auditlog: one update
    entry per ``(old, new, attribution)`` whose registered fields differ, with the diff
    auditlog would have computed, attributed as the enclosing `audit_context` says (its
    ``reason`` and ``verb`` replaced by the attribution's, when given), in one INSERT.
    Returns the number of entries written."""
    from auditlog import get_logentry_model
    from auditlog.cid import get_cid
    from auditlog.diff import model_instance_diff
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.contenttypes.models import ContentType
    from django.utils.encoding import smart_str

    entry_model = get_logentry_model()
    context = auditlog_value.get(None) or {}
    actor = context.get("actor")
    if not isinstance(actor, get_user_model()):
        actor = None
    extra = {
        key: value
        for key, value in context.items()
        if key not in ("actor", "signal_duid") and hasattr(entry_model, key)
    }
    as_json = getattr(settings, "AUDITLOG_STORE_JSON_CHANGES", False)
    cid = get_cid()
    entries = []
    for old, new, attribution in rows:
        changes = model_instance_diff(old, new, use_json_for_changes=as_json)
        if not changes:
            continue
        entry = entry_model(
            content_type=ContentType.objects.get_for_model(new),
            object_pk=str(new.pk),
            object_id=new.pk if isinstance(new.pk, int) else None,
            object_repr=smart_str(new),
            action=entry_model.Action.UPDATE,
            changes=changes,
            cid=cid,
            actor=actor,
            actor_email=getattr(actor, "email", None) if actor is not None else None,
        )
        for key, value in {**extra, **attribution}.items():
            setattr(entry, key, value)
        entries.append(entry)
    entry_model.objects.bulk_create(entries)
    return len(entries)
