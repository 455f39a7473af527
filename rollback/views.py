"""Dashboard pages of the rollback app: the approver's inbox, the requester's own requests, one
request with its decisions, and the navigation's live count of requests awaiting the viewer.

The buttons call the same services as ``POST /api/v1/approvals/{id}/approve/`` and its twins.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from canary_site.audit import writer
from canary_site.exceptions import CanaryError, NotFound, or_404
from canary_site.htmx import HtmxPartialMixin, partial_template, redirect
from canary_site.roles import RoleRequiredMixin
from rollback import selectors, services
from rollback.choices import RequestState, Verdict
from rollback.filtersets import ApprovalRequestFilterSet
from rollback.models import ApprovalRequest

PAGE_SIZE = 50
VIEW = "rollback.view_approvalrequest"
APPROVE = "rollback.approve_approvalrequest"
BADGE_POLL_SECONDS = 5


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Verdict.choices)
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)


class CommentForm(forms.Form):
    comment = forms.CharField(required=False, max_length=2000)


def card_context(request: HttpRequest, approval: ApprovalRequest, **extra: Any) -> dict[str, Any]:
    user = request.user
    now = timezone.now()
    decided = any(decision.approver_id == user.pk for decision in approval.decisions.all())
    open_now = approval.state == RequestState.PENDING and approval.expires_at > now
    return {
        "approval": approval,
        "diff": selectors.diff_rows(approval.change),
        "time_left": approval.expires_at - now if open_now else None,
        "may_decide": open_now
        and user.has_perm(APPROVE)
        and approval.requester_id != user.pk
        and not decided
        and approval.approvers.filter(pk=user.pk).exists(),
        "own": approval.requester_id == user.pk,
        "may_cancel": open_now and approval.requester_id == user.pk,
        **extra,
    }


class InboxView(RoleRequiredMixin, HtmxPartialMixin, TemplateView):
    """Pending requests, newest first: those awaiting the viewer's decision, then the others."""

    template_name = "rollback/index.html"
    required_permission = VIEW
    htmx_partial = "approval-inbox"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        user = self.request.user
        awaiting = list(selectors.awaiting(user)[:PAGE_SIZE])
        waiting_ids = {approval.pk for approval in awaiting}
        others = [
            approval
            for approval in selectors.approval_requests().filter(
                state=RequestState.PENDING, expires_at__gt=timezone.now()
            )[:PAGE_SIZE]
            if approval.pk not in waiting_ids
        ]
        return super().get_context_data(
            awaiting=[card_context(self.request, approval) for approval in awaiting],
            others=[card_context(self.request, approval) for approval in others],
            awaiting_count=len(awaiting),
            **kwargs,
        )


class MineView(RoleRequiredMixin, TemplateView):
    """The viewer's own requests in every state, with Cancel on the pending ones."""

    template_name = "rollback/mine.html"
    required_permission = VIEW

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        filterset = ApprovalRequestFilterSet(
            {**self.request.GET.dict(), "mine": "true"},
            queryset=selectors.approval_requests(),
            request=self.request,
        )
        found = filterset.qs[:PAGE_SIZE] if filterset.is_valid() else []
        return super().get_context_data(
            filterset=filterset,
            requests=[card_context(self.request, approval) for approval in found],
            **kwargs,
        )


class DetailView(RoleRequiredMixin, View):
    required_permission = VIEW

    def get(self, request: HttpRequest, request_id: int) -> HttpResponse:
        approval = _found(request_id)
        template = partial_template(request, "rollback/detail.html", "approval-card")
        return render(request, template, {"card": card_context(request, approval, detail=True)})


class DecideView(RoleRequiredMixin, View):
    """Approve or reject with a comment. Over htmx it answers with the request's card and, out
    of band, the navigation's count."""

    required_permission = APPROVE

    def post(self, request: HttpRequest, request_id: int) -> HttpResponse:
        form = DecisionForm(request.POST)
        error, status = "", 200
        if not form.is_valid():
            error = "; ".join(f"{name}: {' '.join(p)}" for name, p in form.errors.items())
            status = 400
        else:
            service = (
                services.approval_request_approve
                if form.cleaned_data["verdict"] == Verdict.APPROVE
                else services.approval_request_reject
            )
            try:
                service(
                    request_id=request_id,
                    comment=form.cleaned_data["comment"],
                    **writer(request),
                )
            except NotFound as missing:
                raise Http404(missing.message) from None
            except CanaryError as failure:
                error, status = failure.message, failure.status_code
        return _answer(request, request_id, error, status, "Decision recorded.")


class CancelView(RoleRequiredMixin, View):
    required_permission = VIEW

    def post(self, request: HttpRequest, request_id: int) -> HttpResponse:
        form = CommentForm(request.POST)
        error, status = "", 200
        if not form.is_valid():
            error, status = "comment: at most 2,000 characters.", 400
        else:
            try:
                services.approval_request_cancel(
                    request_id=request_id, comment=form.cleaned_data["comment"], **writer(request)
                )
            except NotFound as missing:
                raise Http404(missing.message) from None
            except CanaryError as failure:
                error, status = failure.message, failure.status_code
        return _answer(request, request_id, error, status, "Request cancelled.")


def _answer(
    request: HttpRequest, request_id: int, error: str, status: int, done: str
) -> HttpResponse:
    approval = _found(request_id)
    if request.htmx:
        context = {
            "card": card_context(request, approval, error=error),
            "badge_oob": True,
            "awaiting_count": selectors.awaiting_count(request.user),
        }
        return render(request, "rollback/detail.html#approval-card", context, status=status)
    if error:
        messages.error(request, error)
    else:
        state = approval.get_state_display().lower()
        messages.success(request, f"#{approval.pk}: {done} It is {state}.")
    return redirect(request, "rollback:approval-detail", approval.pk)


def _found(request_id: int) -> ApprovalRequest:
    return or_404(selectors.approval_request_get, request_id=request_id)


class BadgeView(LoginRequiredMixin, View):
    """The navigation's count of requests awaiting the viewer, polled by every page a signed-in
    person sees (one without a role awaits nothing, and is told so rather than refused)."""

    def get(self, request: HttpRequest) -> HttpResponse:
        context = {"awaiting_count": selectors.awaiting_count(request.user)}
        return render(request, "rollback/_badge.html", context)
