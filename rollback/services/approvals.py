"""Approvals: policies, the gate, requests and their decisions.

- `approval_policy_create`, `approval_policy_update`, `approval_policy_delete` (admins).
- `PolicyGate`, registered into `canary_site.gates` when the app is ready: a gated service
  called with a change that a policy covers opens a request (`approval_request_open`) and raises
  `ApprovalRequired` instead of acting.
- `approval_request_approve`, `approval_request_reject`, `approval_request_cancel`: each under
  the request's row lock. The approval that reaches the quorum applies the change in its own
  transaction, through the same service, inside `gates.applying`, so exactly one approval applies
  it and only at the version the approvers saw (a changed object supersedes the request).
- `approval_requests_expire` (beat): pending requests past their time expire.

Every state change and decision is on the audit trail; the approvers hear of a new request and
the requester of its end through the health app's outbox, queued in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from canary_site import gates
from canary_site.audit import audit_context
from canary_site.choices import Role, Source
from canary_site.exceptions import (
    CanaryError,
    Forbidden,
    NotFound,
    TransitionNotAllowed,
    ValidationFailed,
    full_clean,
)
from canary_site.roles import has_any_role
from health import conf as health_conf
from health import services as health_services
from rollback import conf, policies
from rollback.choices import ApproverKind, RequestState, ScopeKind, Verdict
from rollback.models import ApprovalDecision, ApprovalPolicy, ApprovalRequest

APPROVE_PERMISSION = "rollback.approve_approvalrequest"
POLICY_FIELDS = (
    "name",
    "description",
    "enabled",
    "scope_kind",
    "scope_value",
    "actions",
    "approver_kind",
    "approver_group",
    "approver_users",
    "quorum",
    "ttl_seconds",
    "one_rejection_rejects",
    "notify_via",
)
# Arguments of a gated call that are not kept with its request: the moment is the apply's own.
_NOT_KEPT = ("now",)


# --- policies ------------------------------------------------------------------------------------


def approval_policy_create(
    *, actor: Any = None, source: str = Source.SYSTEM, reason: str = "", **fields: Any
) -> ApprovalPolicy:
    """A new policy; 400 naming the field for actions that cannot be gated (emergencies), an
    approver list that is missing, or a quorum that is below 1 or more than can approve."""
    _check_names(fields)
    users = fields.pop("approver_users", None)
    policy = ApprovalPolicy(**fields)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        _validate_policy(policy, users if users is not None else [])
        policy.save()
        if users is not None:
            policy.approver_users.set(users)
    return policy


def approval_policy_update(
    *,
    policy: ApprovalPolicy,
    changes: Mapping[str, Any],
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> ApprovalPolicy:
    """Change the named fields; requests already open keep the terms they opened with."""
    changes = dict(changes)
    _check_names(changes)
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        current = ApprovalPolicy.objects.select_for_update().filter(pk=policy.pk).first()
        if current is None:
            raise NotFound(f"There is no approval policy {policy.pk}.")
        users = changes.pop("approver_users", None)
        for name, value in changes.items():
            setattr(current, name, value)
        current.updated_at = timezone.now()
        _validate_policy(
            current, users if users is not None else list(current.approver_users.all())
        )
        current.save()
        if users is not None:
            current.approver_users.set(users)
    return current


def approval_policy_delete(
    *, policy: ApprovalPolicy, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    """Delete a policy; its open requests stay open on the terms they opened with."""
    with transaction.atomic(), audit_context(actor=actor, source=source, reason=reason):
        policy.delete()


def approval_policy_validate(*, policy: ApprovalPolicy, users: Iterable[Any]) -> None:
    """Raise ValidationFailed if ``policy`` (saved or not) with these listed users could not be
    saved: for forms that validate before they call a write (the admin)."""
    _validate_policy(policy, users)


def _check_names(fields: Mapping[str, Any]) -> None:
    unknown = sorted(set(fields) - set(POLICY_FIELDS))
    if unknown:
        raise ValidationFailed(
            f"Unknown field: {unknown[0]}.", fields={name: ["Unknown field."] for name in unknown}
        )


def _validate_policy(policy: ApprovalPolicy, users: Iterable[Any]) -> None:
    problems = policies.action_problems(policy.actions)
    if problems:
        raise ValidationFailed(f"actions: {problems[0]}", fields={"actions": problems})
    if policy.scope_kind == ScopeKind.ALL:
        policy.scope_value = ""
    elif not (policy.scope_value or "").strip():
        label = (
            ScopeKind(policy.scope_kind).label.lower()
            if policy.scope_kind in ScopeKind.values
            else "scope"
        )
        raise ValidationFailed(f"scope_value: name {label}.", field="scope_value")
    if policy.approver_kind == ApproverKind.GROUP and policy.approver_group_id is None:
        raise ValidationFailed(
            "approver_group: name the group whose members approve.", field="approver_group"
        )
    users = list(users)
    if policy.approver_kind == ApproverKind.USERS and not users:
        raise ValidationFailed(
            "approver_users: list the people who approve.", field="approver_users"
        )
    problem = policies.ttl_problem(policy.ttl_seconds)
    if problem:
        raise ValidationFailed(f"ttl_seconds: {problem}", field="ttl_seconds")
    full_clean(policy, exclude=["quorum"])
    problem = policies.quorum_problem(
        policy.quorum, len(possible_approvers(policy, users=[_pk(user) for user in users]))
    )
    if problem:
        raise ValidationFailed(f"quorum: {problem}", field="quorum")


def _pk(user: Any) -> int:
    return int(getattr(user, "pk", user))


def role_approvers() -> list[int]:
    """The ids of the active people with the approver or admin role (and superusers) who hold
    the approve permission: who approves when nothing names the approvers."""
    return possible_approvers(ApprovalPolicy(approver_kind=ApproverKind.ROLE))


def possible_approvers(policy: ApprovalPolicy, *, users: list[int] | None = None) -> list[int]:
    """The ids of the active people who may approve under ``policy``: those it names who also
    hold the approve permission (the approver and admin roles, superusers)."""
    User = get_user_model()
    permission = Permission.objects.filter(
        content_type__app_label="rollback", codename="approve_approvalrequest"
    ).first()
    holders = Q(is_superuser=True)
    if permission is not None:
        holders |= Q(groups__permissions=permission) | Q(user_permissions=permission)
    people = User.objects.filter(holders, is_active=True)
    if policy.approver_kind == ApproverKind.ROLE:
        people = people.filter(
            Q(groups__name__in=[Role.APPROVER, Role.ADMIN]) | Q(is_superuser=True)
        )
    elif policy.approver_kind == ApproverKind.GROUP:
        people = people.filter(groups=policy.approver_group_id)
    else:
        chosen = (
            users if users is not None else list(policy.approver_users.values_list("pk", flat=True))
        )
        people = people.filter(pk__in=chosen)
    return sorted(set(people.values_list("pk", flat=True)))


# --- the gate ------------------------------------------------------------------------------------


class PolicyGate:
    """The backend of `canary_site.gates`: the enabled policies decide which changes wait."""

    def covers_action(self, action: str) -> bool:
        return any(action in view.actions for view in _policy_views())

    def check(self, attempt: gates.Attempt) -> None:
        change = attempt.change
        place = policies.Place(
            action=change.action,
            service=change.service,
            tags=tuple(change.tags),
            environment=conf.environment(),
        )
        view = policies.governing(_policy_views(), place)
        if view is None:
            return
        policy = ApprovalPolicy.objects.filter(pk=view.id).first()
        if policy is None:  # deleted since it was read
            return
        request = approval_request_open(attempt=attempt, policy=policy)
        raise gates.ApprovalRequired(
            f"Approval required: {policy.name} asks {request.quorum} approval"
            f"{'' if request.quorum == 1 else 's'} for this change. Approval request "
            f"#{request.pk} is open until {request.expires_at:%Y-%m-%d %H:%M} UTC.",
            request_id=request.pk,
            summary=request_summary(request),
        )


def _policy_views() -> list[policies.PolicyView]:
    return [
        policies.PolicyView(
            id=row["pk"],
            scope_kind=row["scope_kind"],
            scope_value=row["scope_value"],
            actions=tuple(row["actions"] or ()),
            quorum=row["quorum"],
            ttl_seconds=row["ttl_seconds"],
            one_rejection_rejects=row["one_rejection_rejects"],
        )
        for row in ApprovalPolicy.objects.filter(enabled=True).values(
            "pk",
            "scope_kind",
            "scope_value",
            "actions",
            "quorum",
            "ttl_seconds",
            "one_rejection_rejects",
        )
    ]


def request_summary(request: ApprovalRequest) -> dict[str, Any]:
    """What a client is told of a request it caused (the 202's body)."""
    return {
        "id": request.pk,
        "state": request.state,
        "action": request.action,
        "object": {
            "type": request.object_type,
            "id": request.object_id,
            "repr": request.object_repr,
        },
        "quorum": request.quorum,
        "expires_at": request.expires_at.isoformat(),
        "url": reverse("api:approval-detail", args=[request.pk]),
        "page": reverse("rollback:approval-detail", args=[request.pk]),
    }


# --- requests ------------------------------------------------------------------------------------


def approval_request_open(
    *, attempt: gates.Attempt, policy: ApprovalPolicy, now: datetime | None = None
) -> ApprovalRequest:
    """Open a request for ``attempt`` under ``policy`` and tell its approvers. The same change
    asked again by the same person while one is pending answers with that request."""
    now = now or timezone.now()
    change = attempt.change
    requester = attempt.actor if getattr(attempt.actor, "is_authenticated", False) else None
    arguments = {k: v for k, v in attempt.arguments.items() if k not in _NOT_KEPT}
    diff = {"before": change.before, "after": change.after}
    # What the request is about, and the version of it the requester saw.
    subject = {
        "action": change.action,
        "object_type": change.object_type,
        "object_id": change.object_id,
        "object_version": change.version,
    }
    with (
        transaction.atomic(),
        audit_context(
            actor=requester, source=attempt.source, reason=attempt.reason, verb="request"
        ),
    ):
        same = ApprovalRequest.objects.filter(
            **subject, state=RequestState.PENDING, requester=requester, expires_at__gt=now
        )
        for existing in same:
            if existing.arguments == arguments and existing.change == diff:
                return existing
        approvers = [
            pk for pk in possible_approvers(policy) if requester is None or pk != requester.pk
        ]
        request = ApprovalRequest(
            **subject,
            policy=policy,
            object_repr=change.object_repr[:300],
            change=diff,
            evidence=change.evidence,
            service=attempt.service,
            arguments=arguments,
            requester=requester,
            source=attempt.source,
            reason=attempt.reason,
            quorum=policy.quorum,
            one_rejection_rejects=policy.one_rejection_rejects,
            created_at=now,
            expires_at=now + timedelta(seconds=policy.ttl_seconds),
        )
        full_clean(request)
        request.save()
        request.approvers.set(approvers)
        _notify(request, "opened", now)
    return request


def open_request(
    *, attempt: gates.Attempt, approvers: list[int], now: datetime | None = None
) -> ApprovalRequest:
    """Open a request that no policy opened (a rollback plan that requires approval) for the
    people ``approvers`` names, one approval deciding, and tell them."""
    now = now or timezone.now()
    change = attempt.change
    requester = attempt.actor if getattr(attempt.actor, "is_authenticated", False) else None
    with audit_context(
        actor=requester, source=attempt.source, reason=attempt.reason, verb="request"
    ):
        request = ApprovalRequest(
            action=change.action,
            object_type=change.object_type,
            object_id=change.object_id,
            object_version=change.version,
            object_repr=change.object_repr[:300],
            change={"before": change.before, "after": change.after},
            evidence=change.evidence,
            service=attempt.service,
            arguments=gates.encode(dict(attempt.arguments)),
            requester=requester,
            source=attempt.source,
            reason=attempt.reason,
            quorum=1,
            created_at=now,
            expires_at=now + timedelta(seconds=conf.plan_approval_ttl_seconds()),
        )
        full_clean(request)
        request.save()
        request.approvers.set(approvers)
        _notify(request, "opened", now)
    return request


@dataclass
class _Outcome:
    request: ApprovalRequest
    error: CanaryError | None = None


def approval_request_approve(
    *,
    request_id: int,
    actor: Any,
    comment: str = "",
    source: str = Source.SYSTEM,
    now: datetime | None = None,
) -> ApprovalRequest:
    """Approve a pending request. The requester never approves their own (403), nobody counts
    twice (409), and a request that is no longer pending says what it is (409). The approval
    that reaches the quorum applies the change in this transaction: `applied`, or `superseded`
    when the object changed since the request was made."""
    return _decide(request_id, actor, Verdict.APPROVE, comment, source, now or timezone.now())


def approval_request_reject(
    *,
    request_id: int,
    actor: Any,
    comment: str = "",
    source: str = Source.SYSTEM,
    now: datetime | None = None,
) -> ApprovalRequest:
    """Reject a pending request: it is rejected at once when its policy says one rejection
    rejects, else once the approvals left cannot reach the quorum."""
    return _decide(request_id, actor, Verdict.REJECT, comment, source, now or timezone.now())


def _decide(
    request_id: int, actor: Any, verdict: str, comment: str, source: str, now: datetime
) -> ApprovalRequest:
    comment = (comment or "").strip()
    if len(comment) > 2000:
        raise ValidationFailed("comment: at most 2,000 characters.", field="comment")
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=comment, verb=verdict),
    ):
        outcome = _decide_locked(request_id, actor, verdict, comment, now)
    if outcome.error is not None:
        raise outcome.error
    return outcome.request


def _locked_request(request_id: int) -> ApprovalRequest:
    request = (
        ApprovalRequest.objects.select_for_update(of=("self",))
        .select_related("policy", "requester")
        .filter(pk=request_id)
        .first()
    )
    if request is None:
        raise NotFound(f"There is no approval request {request_id}.")
    return request


def _decide_locked(
    request_id: int, actor: Any, verdict: str, comment: str, now: datetime
) -> _Outcome:
    request = _locked_request(request_id)
    if request.requester_id is not None and request.requester_id == actor.pk:
        raise Forbidden(
            "You asked for this change; someone else must approve or reject it.",
            code="own_request",
        )
    if not actor.has_perm(APPROVE_PERMISSION):
        raise Forbidden("Your role does not allow approving or rejecting changes.")
    closed = _closed_error(request, now)
    if closed is not None:
        if closed.code == "expired" and request.state == RequestState.PENDING:
            _close(request, RequestState.EXPIRED, "Expired before it was decided.", now)
            return _Outcome(request, closed)
        raise closed
    if not request.approvers.filter(pk=actor.pk).exists():
        raise Forbidden(f"You are not one of the approvers of request #{request.pk}.")
    if request.decisions.filter(approver=actor).exists():
        raise TransitionNotAllowed(
            f"You have already decided request #{request.pk}; nobody counts twice.",
            code="already_decided",
        )
    stale = _stale(request)
    if stale is not None:
        _close(request, RequestState.SUPERSEDED, stale, now)
        return _Outcome(request, TransitionNotAllowed(stale, code="superseded"))
    decision = ApprovalDecision(
        request=request, approver=actor, verdict=verdict, comment=comment, at=now
    )
    full_clean(decision)
    decision.save()
    approvals = request.decisions.filter(verdict=Verdict.APPROVE).count()
    rejections = request.decisions.filter(verdict=Verdict.REJECT).count()
    undecided = request.approvers.count() - approvals - rejections
    if verdict == Verdict.REJECT and (
        request.one_rejection_rejects or approvals + undecided < request.quorum
    ):
        _close(request, RequestState.REJECTED, f"Rejected by {actor.get_username()}.", now)
    elif verdict == Verdict.APPROVE and approvals >= request.quorum:
        _apply(request, now)
    return _Outcome(request)


def _closed_error(request: ApprovalRequest, now: datetime) -> CanaryError | None:
    """Why a request takes no decision now (409 saying which), or None for an open one."""
    if request.state == RequestState.PENDING and request.expires_at <= now:
        return TransitionNotAllowed(
            f"Approval request #{request.pk} has expired; ask again.", code="expired"
        )
    if request.state == RequestState.PENDING:
        return None
    words = {
        RequestState.APPLIED: "has been applied already",
        RequestState.SUPERSEDED: "is superseded: the object changed since it was asked",
        RequestState.EXPIRED: "has expired; ask again",
        RequestState.REJECTED: "has been rejected",
        RequestState.CANCELLED: "was cancelled by its requester",
        RequestState.APPROVED: "has been approved already",
    }
    return TransitionNotAllowed(
        f"Approval request #{request.pk} {words[RequestState(request.state)]}.",
        code=str(request.state),
    )


def _stale(request: ApprovalRequest) -> str | None:
    """Why the object is no longer what the request showed, or None while it still is."""
    try:
        service = import_string(request.service)
        arguments = gates.decode(request.arguments)
    except ImportError:
        return f"The service of request #{request.pk} no longer exists."
    except LookupError as error:
        return f"{error} The request is superseded."
    describer = gates.describer_of(service)
    if describer is None:
        return f"{request.service} no longer needs an approval."
    try:
        change = describer.describe(arguments)
    except CanaryError as error:
        return f"{error.message} The request is superseded."
    if change.version != request.object_version:
        return (
            f"{request.object_repr} has changed since request #{request.pk} was made (version "
            f"{request.object_version}, now {change.version}); the approval was for exactly what "
            "was shown."
        )
    return None


def _apply(request: ApprovalRequest, now: datetime) -> None:
    """Apply the approved change with the requester's arguments, in the caller's transaction."""
    grant = gates.Grant(
        request_id=request.pk,
        action=request.action,
        object_type=request.object_type,
        object_id=request.object_id,
        version=request.object_version,
    )
    try:
        service = import_string(request.service)
        arguments = gates.decode(request.arguments)
    except (ImportError, LookupError) as error:
        _close(request, RequestState.SUPERSEDED, str(error), now)
        return
    arguments.update(
        actor=request.requester,
        source=request.source,
        reason=_applied_reason(request),
    )
    try:
        with transaction.atomic(), gates.applying(grant):
            service(**arguments)
    except gates.ApprovalSuperseded as error:
        _close(request, RequestState.SUPERSEDED, error.message, now)
    except CanaryError as error:
        _close(
            request,
            RequestState.APPROVED,
            f"Approved, but the change could not be applied: {error.message}",
            now,
        )
    else:
        _close(request, RequestState.APPLIED, "Approved and applied.", now)


def _applied_reason(request: ApprovalRequest) -> str:
    names = ", ".join(
        request.decisions.filter(verdict=Verdict.APPROVE).values_list(
            "approver__username", flat=True
        )
    )
    suffix = f"approved in request #{request.pk} by {names}"
    return f"{request.reason} ({suffix})" if request.reason else suffix.capitalize()


def approval_request_cancel(
    *,
    request_id: int,
    actor: Any,
    comment: str = "",
    source: str = Source.SYSTEM,
    now: datetime | None = None,
) -> ApprovalRequest:
    """Withdraw a pending request: its requester may, and an admin."""
    now = now or timezone.now()
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=comment, verb="cancel"),
    ):
        request = _locked_request(request_id)
        if request.requester_id != actor.pk and not has_any_role(actor, [Role.ADMIN]):
            raise Forbidden("Only the requester (or an admin) may cancel a request.")
        closed = _closed_error(request, now)
        if closed is not None:
            raise closed
        who = actor.get_username()
        _close(
            request,
            RequestState.CANCELLED,
            f"Cancelled by {who}." + (f" {comment}" if comment else ""),
            now,
        )
    return request


def approval_requests_expire(*, now: datetime | None = None) -> int:
    """Expire the pending requests whose time is up (the beat); returns how many."""
    now = now or timezone.now()
    expired = 0
    due = list(
        ApprovalRequest.objects.filter(state=RequestState.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:500]
    )
    for pk in due:
        with transaction.atomic(), audit_context(source=Source.SYSTEM, verb="expire"):
            request = (
                ApprovalRequest.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(pk=pk, state=RequestState.PENDING, expires_at__lte=now)
                .select_related("policy")
                .first()
            )
            if request is None:
                continue
            _close(request, RequestState.EXPIRED, "Expired before it was decided.", now)
            expired += 1
    return expired


def _close(request: ApprovalRequest, state: str, outcome: str, now: datetime) -> None:
    request.state = state
    request.outcome = outcome
    request.closed_at = now
    request.save(update_fields=["state", "outcome", "closed_at"])
    _notify(request, state, now)


# --- news ----------------------------------------------------------------------------------------


def _notify(request: ApprovalRequest, event: str, now: datetime) -> None:
    """Queue the news of ``request`` (its opening to the approvers, its end to the requester)
    through the alerting its policy names, in the caller's transaction."""
    policy = request.policy
    if policy is None or policy.notify_via_id is None:
        return
    url = health_conf.site_url() + reverse("rollback:approval-detail", args=[request.pk])
    if event == "opened":
        to = list(request.approvers.values_list("username", flat=True))
        who = request.requester.get_username() if request.requester else "the system"
        subject = f"[Canary] Approval needed: {request.action} {request.object_repr} (by {who})"
    else:
        to = [request.requester.get_username()] if request.requester else []
        subject = f"[Canary] Approval request #{request.pk} {event}: {request.object_repr}"
    text = "\n".join(part for part in (subject, request.reason, request.outcome, url) if part)
    health_services.notifications_queue(
        key=f"approval:{request.pk}:{event}",
        policy=policy.notify_via,
        subject=subject,
        payload={
            "event": f"approval.{event}",
            "sent_at": now.isoformat(),
            "text": text,
            "to": to,
            "approval_request": {
                **request_summary(request),
                "url": url,
                "requester": request.requester.get_username() if request.requester else None,
                "reason": request.reason,
                "change": request.change,
                "outcome": request.outcome,
            },
        },
        now=now,
    )
