"""The audit trail: who changed what, from where and why.

django-auditlog records every create, update and delete of a registered model with its diff.
Services wrap their writes in :func:`audit_context` to name the actor, the source (ui, api,
system), the reason and the verb of an action, which land on the same entries. Views hand a
service who is writing and from where with :func:`writer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from auditlog.context import auditlog_value, set_extra_data
from auditlog.registry import auditlog

from canary_site.bulk import insert_rows
from canary_site.choices import Source

API_PREFIXES = ("/api/", "/ofrep/")


def request_source(request: Any) -> str:
    """Where a request's writes come from: the API under its prefixes, the dashboard elsewhere
    (the admin included)."""
    return Source.API if request.path.startswith(API_PREFIXES) else Source.UI


def writer(request: Any) -> dict[str, Any]:
    """A service's ``actor`` and ``source`` for the writes a request asks for. ``request`` may be
    DRF's, whose ``user`` is the one its authentication found (a bearer token's)."""
    return {"actor": request.user, "source": request_source(request)}


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
    related_as_text = getattr(settings, "AUDITLOG_USE_FK_STRING_REPRESENTATION", False)
    cid = get_cid()
    entries = []
    for old, new, attribution in rows:
        fields = _maybe_changed(old, new, related_as_text=related_as_text)
        if not fields:
            continue
        changes = model_instance_diff(
            old, new, fields_to_check=fields, use_json_for_changes=as_json
        )
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
    insert_rows(entry_model, entries)
    return len(entries)


_MISSING = object()
# Equal values of these types are written alike by auditlog's diff (unlike floats, decimals or
# JSON, whose equal values may print differently: 0.0 and -0.0, 1.0 and 1.00, 1 and true).
_PLAIN = (str, int, bool, type(None), datetime)


def _maybe_changed(old: Any, new: Any, *, related_as_text: bool) -> set[str]:
    """The fields auditlog's diff could find changed between two copies of a row: all but those
    holding the very same object in both (a copy taken before a change shares every value it
    did not change) or an equal plain value. Its diff of these alone is its diff of them all,
    without printing every other field of every row twice (a deployment's whole configuration
    among them)."""
    names: set[str] = set()
    before, after = old.__dict__, new.__dict__
    for field in new._meta.fields:
        if related_as_text and field.is_relation:
            # Its text is the related object's, which the row's id alone does not tell.
            names.add(field.name)
            continue
        was = before.get(field.attname, _MISSING)
        now = after.get(field.attname, _MISSING)
        if was is not _MISSING and (
            was is now or (type(was) is type(now) and type(was) in _PLAIN and was == now)
        ):
            continue
        names.add(field.name)
    return names
