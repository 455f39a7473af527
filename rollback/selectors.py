"""Reads of the rollback app."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone

from canary_site.exceptions import NotFound
from rollback.choices import RequestState, Verdict
from rollback.models import ApprovalDecision, ApprovalPolicy, ApprovalRequest


def approval_requests() -> QuerySet[ApprovalRequest]:
    """Every request, newest first, with what a list shows of it."""
    return (
        ApprovalRequest.objects.select_related("requester", "policy")
        .prefetch_related(
            Prefetch("decisions", queryset=ApprovalDecision.objects.select_related("approver"))
        )
        .annotate(
            approval_count=Count("decisions", filter=Q(decisions__verdict=Verdict.APPROVE)),
        )
        .order_by("-created_at", "-id")
    )


def approval_request_get(*, request_id: int) -> ApprovalRequest:
    found = approval_requests().filter(pk=request_id).first()
    if found is None:
        raise NotFound(f"There is no approval request {request_id}.")
    return found


def awaiting(
    user: Any, queryset: QuerySet[ApprovalRequest] | None = None, *, now: datetime | None = None
) -> QuerySet[ApprovalRequest]:
    """The pending requests ``user`` may still decide: open, named among the approvers, not
    their own and not decided by them yet."""
    queryset = approval_requests() if queryset is None else queryset
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    return (
        queryset.filter(
            state=RequestState.PENDING,
            expires_at__gt=now or timezone.now(),
            approvers=user,
        )
        .exclude(requester=user)
        .exclude(decisions__approver=user)
    )


def awaiting_count(user: Any) -> int:
    return awaiting(user, ApprovalRequest.objects.all()).count()


def approval_policies() -> QuerySet[ApprovalPolicy]:
    return ApprovalPolicy.objects.select_related("approver_group", "notify_via").prefetch_related(
        "approver_users"
    )


@dataclass(frozen=True)
class DiffRow:
    field: str
    before: str
    after: str
    changed: bool


def diff_rows(change: Mapping[str, Any]) -> list[DiffRow]:
    """A request's before and after, field by field, for a person to read."""
    before = change.get("before") or {}
    after = change.get("after") or {}
    names = list(dict.fromkeys([*before, *after]))
    return [
        DiffRow(
            field=name,
            before=_shown(before.get(name, MISSING)),
            after=_shown(after.get(name, MISSING)),
            changed=before.get(name, MISSING) != after.get(name, MISSING),
        )
        for name in names
    ]


MISSING = object()


def _shown(value: Any) -> str:
    if value is MISSING:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)
