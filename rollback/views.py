"""Dashboard pages of the rollback app: the approver's inbox, the requester's own requests, one
request with its decisions, and the navigation's live count of requests awaiting the viewer;
rollback plans (list, editor, detail with rehearsal and impact preview), executions (live page,
history, statistics) and the Roll back panel of a deployment's page.

The buttons call the same services as ``POST /api/v1/approvals/{id}/approve/`` and its twins,
and as the rollback API. A live execution polls its steps every second and stops once it has
ended; the deployment page loads its Roll back panel from here, so the deployments app never
imports this one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView
from django_htmx.http import HttpResponseStopPolling

from canary_site.audit import writer
from canary_site.exceptions import CanaryError, NotFound, ValidationFailed, or_404
from canary_site.gates import ApprovalRequired
from canary_site.htmx import HtmxPartialMixin, partial_template, redirect
from canary_site.roles import RoleRequiredMixin
from deployments import selectors as deployment_selectors
from deployments import validation
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from rollback import charts, plans, selectors, services
from rollback.api.definitions import unstorable_texts
from rollback.api.serializers import SECRET_MASK, masked, unmasked
from rollback.choices import RequestState, Verdict
from rollback.editing import DefinitionEditorView, editor_mode, text_definition, text_findings
from rollback.filtersets import (
    ApprovalRequestFilterSet,
    RollbackExecutionFilterSet,
    RollbackPlanFilterSet,
)
from rollback.forms import (
    MAX_ACTIONS,
    STARTER,
    ActionRowForm,
    PlanForm,
    PlanTextForm,
    ReasonForm,
    action_rows,
    initial_rows,
    plan_definition,
    plan_form_field,
    plan_initial,
    plan_yaml,
    show_plan_error,
)
from rollback.models import ApprovalRequest, RollbackExecution, RollbackPlan
from rollback.services.plans import plans_for

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


# --------------------------------------------------------------------------------- plans

PLAN_VIEW = "rollback.view_rollbackplan"
PLAN_ADD = "rollback.add_rollbackplan"
PLAN_CHANGE = "rollback.change_rollbackplan"
PLAN_DELETE = "rollback.delete_rollbackplan"
EXECUTION_VIEW = "rollback.view_rollbackexecution"
EXECUTION_ADD = "rollback.add_rollbackexecution"
EXECUTION_CHANGE = "rollback.change_rollbackexecution"
# The share a plan's steps are shown for when no deployment is at hand.
PREVIEW_SHARE = Decimal(10)
HISTORY_PAGE_SIZE = 25
STEPS_POLL_SECONDS = 1
PANEL_POLL_SECONDS = 5
ROLLBACKABLE = (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED)
CHOICE_LIMIT = 50


def _plans() -> QuerySet[RollbackPlan]:
    return RollbackPlan.objects.select_related("service", "deployment", "created_by").order_by(
        "name"
    )


def _plan(plan_id: int) -> RollbackPlan:
    plan = _plans().filter(pk=plan_id).first()
    if plan is None:
        raise Http404(f"There is no rollback plan {plan_id}.")
    return plan


def plan_summary(plan: RollbackPlan) -> dict[str, Any]:
    """A plan's steps for a canary at 10% and their worst case; a plan that no longer reads
    says why instead."""
    try:
        spec = plan.spec
    except plans.InvalidPlan as error:
        return {"plan": plan, "steps": [], "worst_case_ms": None, "problem": str(error)}
    steps = plans.expand(spec, share=PREVIEW_SHARE)
    return {
        "plan": plan,
        "spec": spec,
        "steps": steps,
        "worst_case_ms": plans.worst_case_ms(steps),
        "problem": "",
    }


class PlanListView(RoleRequiredMixin, TemplateView):
    """Every plan with where it applies and its worst case."""

    template_name = "rollback/plans.html"
    required_permission = PLAN_VIEW

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        filterset = RollbackPlanFilterSet(self.request.GET, queryset=_plans())
        found = list(filterset.qs[: PAGE_SIZE * 4]) if filterset.is_valid() else []
        return super().get_context_data(
            filterset=filterset,
            rows=[plan_summary(plan) for plan in found],
            can_create=self.request.user.has_perm(PLAN_ADD),
            **kwargs,
        )


def plan_findings(definition: Any) -> dict[str, Any]:
    """What the validator says of a plan: errors, warnings and the worst case of its steps for
    a canary at 10%. The plan's reader answers where the validator does not know the type."""
    report = validation.validate(definition, type="rollback").to_dict()
    if any(issue.get("code") == "unsupported_type" for issue in report["errors"]):
        report = _plan_check(definition)
    worst = report.get("worstCaseTimeToRollbackMs")
    if worst is None and report["valid"]:
        worst = _plan_check(definition).get("worstCaseTimeToRollbackMs")
    return {
        "valid": report["valid"],
        "errors": [_where(issue) for issue in report["errors"]],
        "warnings": [_where(issue) for issue in report["warnings"]],
        "recommendations": report.get("recommendations", []),
        "worstCaseMs": worst,
    }


def _plan_check(definition: Any) -> dict[str, Any]:
    try:
        spec = services.rollback_plan_validate(definition=definition)
    except CanaryError as error:
        errors = [
            {"field": path, "message": message.removeprefix(f"{path}: ")}
            for path, messages_of in error.fields.items()
            for message in messages_of
        ] or [{"field": "", "message": error.message}]
        return {"valid": False, "errors": errors, "warnings": []}
    steps = plans.expand(spec, share=PREVIEW_SHARE)
    return {
        "valid": True,
        "errors": [],
        "warnings": [],
        "worstCaseTimeToRollbackMs": plans.worst_case_ms(steps),
    }


def _where(issue: dict[str, Any]) -> dict[str, Any]:
    """An issue with the form's words for the field it names (``Action 2: timeout (s)``)."""
    path = str(issue.get("field") or "")
    name = plan_form_field(path)
    where = ""
    if path.startswith("actions["):
        index = path[len("actions[") :].split("]", 1)[0]
        where = f"Action {int(index) + 1}" if index.isdigit() else ""
    elif name is not None:
        where = str(PlanForm.base_fields[name].label or name.replace("_", " ").capitalize())
    return {**issue, "where": where}


def _form_error(form: forms.Form) -> str:
    return "; ".join(f"{name}: {' '.join(problems)}" for name, problems in form.errors.items())


def _show_text_error(text_form: PlanTextForm, error: CanaryError) -> None:
    """A service's errors on the text field, each saying the path it is about."""
    said = [message for messages_of in error.fields.values() for message in messages_of]
    for message in said or [error.message]:
        text_form.add_error("definition_text", message)


def _edited_rows(data: Any, rows: list[ActionRowForm], op: str) -> list[ActionRowForm]:
    """The rows after "Add an action" or "Remove"; a type changed re-renders them as they are."""
    if op == "add-action" and len(rows) < MAX_ACTIONS:
        return action_rows(data, count=len(rows) + 1)
    if op.startswith("remove-action-"):
        index = op.removeprefix("remove-action-")
        if not index.isdigit():
            return rows
        kept = [position for position in range(len(rows)) if position != int(index)]
        shifted = data.copy()
        for new, old in enumerate(kept):
            for name in ActionRowForm.base_fields:
                source, target = f"action-{old}-{name}", f"action-{new}-{name}"
                if source in data:
                    shifted.setlist(target, data.getlist(source))
                else:
                    shifted.pop(target, None)
        return action_rows(shifted, count=len(kept))
    return rows


class PlanEditorView(DefinitionEditorView):
    """Create or edit a plan: the form with its action rows, or the plan as YAML; checked as
    you type, saved by ``rollback_plan_create`` / ``rollback_plan_update``."""

    template_name = "rollback/plan_form.html"
    fragment = "plan-editor"
    required_permission = PLAN_ADD
    form_class = PlanForm
    text_form_class = PlanTextForm
    noun = "plan"
    title = "Rollback plan"
    pk_kwarg = "plan_id"
    detail_route = "rollback:plan-detail"

    def found(self, pk: int) -> RollbackPlan:
        return _plan(pk)

    def get(self, request: HttpRequest, plan_id: int | None = None) -> HttpResponse:
        plan = self._object(plan_id)
        definition = masked(plan.definition) if plan is not None else {}
        form = PlanForm(initial=plan_initial(definition)) if plan is not None else PlanForm()
        text_form = PlanTextForm(
            initial={"definition_text": plan_yaml(definition if plan is not None else STARTER)}
        )
        rows = initial_rows(definition)
        return self.render_editor(request, plan, form, rows, text_form)

    def posted_rows(self, data: Any) -> list[ActionRowForm]:
        return action_rows(data)

    def edited_rows(self, data: Any, rows: list[Any], op: str) -> list[ActionRowForm]:
        return _edited_rows(data, rows, op)

    def built(self, form: Any, rows: list[Any]) -> Any:
        return plan_definition(form, rows)

    def reason_of(self, request: HttpRequest, form: Any, text_form: Any, mode: str) -> str | None:
        reason_form = ReasonForm(request.POST)
        if not reason_form.is_valid():
            target = text_form if mode == "yaml" else form
            target.add_error(None, _form_error(reason_form))
            return None
        return reason_form.cleaned_data["reason"]

    def save(self, request: HttpRequest, obj: Any, definition: Any, reason: str) -> RollbackPlan:
        definition = _kept_secrets(definition, obj)
        if obj is None:
            return services.rollback_plan_create(
                definition=definition, reason=reason, **writer(request)
            )
        return services.rollback_plan_update(
            plan=obj, definition=definition, reason=reason, **writer(request)
        )

    def show_text_error(self, text_form: Any, error: CanaryError) -> None:
        _show_text_error(text_form, error)

    def show_form_error(self, form: Any, rows: list[Any], error: CanaryError, row_of: Any) -> None:
        show_plan_error(form, rows, error, row_of)

    def extra_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        return {"plan": obj}


def _kept_secrets(definition: Any, plan: RollbackPlan | None) -> Any:
    """The definition with each webhook secret shown masked put back as stored (a plan is
    never shown with its secrets, yet saving it keeps them); 400 for a mask with nothing
    behind it, or for text the database cannot store."""
    for found, _ in unstorable_texts(definition):
        raise ValidationFailed(
            f"{found}: holds a character that cannot be stored (NUL or a lone surrogate).",
            field=found or "definition",
        )
    definition = unmasked(definition, plan.definition if plan is not None else {})
    actions = definition.get("actions") if isinstance(definition, dict) else None
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        config = action.get("config") if isinstance(action, dict) else None
        if isinstance(config, dict) and config.get("secret") == SECRET_MASK:
            path = f"actions[{index}].config.secret"
            raise ValidationFailed(
                f"{path}: there is no secret to keep here; type the secret itself.", field=path
            )
    return definition


class PlanUpdateView(PlanEditorView):
    required_permission = PLAN_CHANGE


class PlanValidateView(RoleRequiredMixin, View):
    """The editor's live check: the findings on what the form (or the YAML) says now."""

    required_permission = PLAN_ADD

    def post(self, request: HttpRequest) -> HttpResponse:
        if editor_mode(request) == "yaml":
            text_form = PlanTextForm(request.POST)
            definition = text_definition(text_form, noun="plan")
            if definition is None:
                findings = text_findings(text_form, warnings=[], worstCaseMs=None)
            else:
                findings = plan_findings(definition)
        else:
            form = PlanForm(request.POST)
            rows = action_rows(request.POST)
            built = plan_definition(form, rows)
            findings = plan_findings(built.definition)
            # What the form itself could not read (a service that is not there, say).
            findings["errors"] = [
                {"field": name, "where": str(form.fields[name].label or name), "message": m}
                for name, problems in form.errors.items()
                if name in form.fields
                for m in problems
            ] + _row_issues(rows, built.row_of, findings["errors"])
            findings["valid"] = not findings["errors"]
        return render(request, "rollback/plan_form.html#plan-findings", {"findings": findings})


def _row_issues(
    rows: list[ActionRowForm], row_of: list[int], issues: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The validator's issues with ``actions[i]`` named by the row the person sees."""
    named = []
    for issue in issues:
        path = str(issue.get("field") or "")
        if path.startswith("actions["):
            index = path[len("actions[") :].split("]", 1)[0]
            if index.isdigit() and int(index) < len(row_of):
                issue = {**issue, "where": f"Action {row_of[int(index)] + 1}"}
        named.append(issue)
    return named


def _deployment_choices(plan: RollbackPlan) -> list[Deployment]:
    """The running or paused deployments a plan may be rehearsed on or previewed for."""
    found = deployment_selectors.deployments().filter(status__in=ROLLBACKABLE)
    if plan.deployment_id:
        found = found.filter(pk=plan.deployment_id)
    elif plan.service_id:
        found = found.filter(service_id=plan.service_id)
    return list(found.order_by("-created_at")[:CHOICE_LIMIT])


class PlanDetailView(RoleRequiredMixin, View):
    """A plan: its definition, the steps it expands to, Preview and Rehearse."""

    required_permission = PLAN_VIEW

    def get(self, request: HttpRequest, plan_id: int) -> HttpResponse:
        plan = _plan(plan_id)
        summary = plan_summary(plan)
        spec = summary.get("spec") or plans.BUILTIN
        user = request.user
        context = {
            "plan": plan,
            "row": summary,
            "max_rollback_ms": spec.safety.max_rollback_time_ms,
            "definition_yaml": plan_yaml(masked(plan.definition)),
            "deployments": _deployment_choices(plan),
            "may_edit": user.has_perm(PLAN_CHANGE),
            "may_delete": user.has_perm(PLAN_DELETE),
            "may_rehearse": user.has_perm(EXECUTION_ADD),
        }
        return render(request, "rollback/plan_detail.html", context)


class PlanDeleteView(RoleRequiredMixin, View):
    """Delete a plan after a confirmation; refused (409, said on the page) while one of its
    rollbacks runs."""

    required_permission = PLAN_DELETE
    template_name = "rollback/plan_delete.html"

    def get(self, request: HttpRequest, plan_id: int) -> HttpResponse:
        return render(request, self.template_name, {"plan": _plan(plan_id)})

    def post(self, request: HttpRequest, plan_id: int) -> HttpResponse:
        plan = _plan(plan_id)
        form = ReasonForm(request.POST)
        reason = form.cleaned_data["reason"] if form.is_valid() else ""
        try:
            services.rollback_plan_delete(plan=plan, reason=reason, **writer(request))
        except CanaryError as error:
            context = {"plan": plan, "error": error.message}
            return render(request, self.template_name, context, status=error.status_code)
        messages.success(request, f"Rollback plan '{plan.name}' deleted.")
        return redirect(request, "rollback:plan-list")


def _posted_deployment(value: Any) -> Deployment | None:
    try:
        return deployment_selectors.deployments().filter(pk=int(value)).first()
    except (TypeError, ValueError):
        return None


class PlanRehearseView(RoleRequiredMixin, View):
    """Rehearse a plan on a deployment (``rollback_rehearse``), then watch it run."""

    required_permission = EXECUTION_ADD

    def post(self, request: HttpRequest, plan_id: int) -> HttpResponse:
        plan = _plan(plan_id)
        deployment = _posted_deployment(request.POST.get("deployment"))
        form = ReasonForm(request.POST)
        if deployment is None or not form.is_valid():
            problem = _form_error(form) or "deployment: choose a deployment to rehearse on."
            messages.error(request, problem)
            return redirect(request, "rollback:plan-detail", plan.pk)
        try:
            execution = services.rollback_rehearse(
                plan=plan,
                deployment=deployment,
                reason=form.cleaned_data["reason"],
                **writer(request),
            )
        except CanaryError as error:
            messages.error(request, error.message)
            return redirect(request, "rollback:plan-detail", plan.pk)
        messages.success(request, f"Rehearsing '{plan.name}' on {deployment.name}.")
        return redirect(request, "rollback:execution-detail", execution.pk)


class ImpactView(RoleRequiredMixin, View):
    """What rolling a deployment back (by a plan, or the one that covers it) would change now:
    the impact analysis, as a partial over htmx and a page otherwise."""

    required_permission = EXECUTION_VIEW

    def get(self, request: HttpRequest) -> HttpResponse:
        deployment = _posted_deployment(request.GET.get("deployment"))
        if deployment is None:
            return HttpResponseBadRequest(
                render_to_string(
                    "rollback/impact.html#rollback-impact",
                    {"impact_error": "deployment: choose a deployment."},
                    request=request,
                )
            )
        plan = None
        if request.GET.get("plan"):
            plan = RollbackPlan.objects.filter(pk=_integer(request.GET.get("plan"))).first()
            if plan is None:
                raise Http404("There is no such rollback plan.")
        impact = selectors.rollback_impact(deployment=deployment, plan=plan)
        context = {"impact": impact, "deployment": deployment, "plan": plan}
        template = partial_template(request, "rollback/impact.html", "rollback-impact")
        return render(request, template, context)


def _integer(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- executions


def _execution(execution_id: int) -> RollbackExecution:
    execution = selectors.execution_detail(execution_id=execution_id)
    if execution is None:
        raise Http404(f"There is no rollback {execution_id}.")
    return execution


def _signature(execution: RollbackExecution) -> str:
    """What a poll compares: the execution's state and each step's progress."""
    steps = ".".join(f"{step.state[:2]}{step.attempts}" for step in execution.steps.all())
    return f"{execution.state}-{steps}"


def execution_context(
    request: HttpRequest, execution: RollbackExecution, **extra: Any
) -> dict[str, Any]:
    return {
        "execution": execution,
        "steps": list(execution.steps.all()),
        "charts": charts.execution_timeline(execution),
        "live": not execution.ended,
        "signature": _signature(execution),
        "poll_seconds": STEPS_POLL_SECONDS,
        "may_cancel": not execution.ended and request.user.has_perm(EXECUTION_CHANGE),
        **extra,
    }


class ExecutionDetailView(RoleRequiredMixin, View):
    """A rollback as it runs. Its steps poll every second while it has not ended: a poll that
    finds nothing new answers 204 (nothing swapped), one that finds the end answers
    `HttpResponseStopPolling` with the final steps, which carry no polling attributes."""

    required_permission = EXECUTION_VIEW
    template_name = "rollback/execution.html"

    def get(self, request: HttpRequest, execution_id: int) -> HttpResponse:
        execution = _execution(execution_id)
        template = partial_template(request, self.template_name, targets={"execution-steps"})
        if template == self.template_name:
            return render(request, template, execution_context(request, execution))
        if request.GET.get("seen") == _signature(execution) and not execution.ended:
            return HttpResponse(status=204)
        html = render_to_string(
            f"{self.template_name}#execution-poll",
            execution_context(request, execution),
            request=request,
        )
        if execution.ended:
            return HttpResponseStopPolling(html)
        return HttpResponse(html)


class ExecutionCancelView(RoleRequiredMixin, View):
    """Cancel a rollback that has not ended (``rollback_execution_cancel``)."""

    required_permission = EXECUTION_CHANGE

    def post(self, request: HttpRequest, execution_id: int) -> HttpResponse:
        execution = _execution(execution_id)
        form = ReasonForm(request.POST)
        error, status = "", 200
        if not form.is_valid():
            error, status = _form_error(form), 400
        else:
            try:
                services.rollback_execution_cancel(
                    execution=execution, reason=form.cleaned_data["reason"], **writer(request)
                )
            except CanaryError as failure:
                error, status = failure.message, failure.status_code
        if not error:
            messages.success(request, f"Rollback #{execution.pk} cancelled.")
            return redirect(request, "rollback:execution-detail", execution.pk)
        if request.htmx:
            context = execution_context(request, _execution(execution_id), cancel_error=error)
            return render(
                request, "rollback/execution.html#execution-cancel", context, status=status
            )
        messages.error(request, error)
        return redirect(request, "rollback:execution-detail", execution.pk)


class ExecutionListView(RoleRequiredMixin, TemplateView):
    """Every rollback and rehearsal, newest first, filtered and a page at a time."""

    template_name = "rollback/executions.html"
    required_permission = EXECUTION_VIEW

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        filterset = RollbackExecutionFilterSet(
            self.request.GET, queryset=selectors.execution_history(limit=None)
        )
        found = filterset.qs if filterset.is_valid() else RollbackExecution.objects.none()
        page = Paginator(found, HISTORY_PAGE_SIZE).get_page(self.request.GET.get("page"))
        query = self.request.GET.copy()
        query.pop("page", None)
        return super().get_context_data(
            filterset=filterset,
            page_obj=page,
            query=f"{query.urlencode()}&" if query else "",
            **kwargs,
        )


class StatisticsView(RoleRequiredMixin, TemplateView):
    """How rollbacks went: counts by trigger and state, the success rate, how fast the canary
    left traffic, per service."""

    template_name = "rollback/statistics.html"
    required_permission = EXECUTION_VIEW
    CHART_ROWS = 500

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        service = self.request.GET.get("service") or None
        stats = selectors.rollback_statistics(service=service)
        recent = list(selectors.execution_history(limit=self.CHART_ROWS, service=service))
        return super().get_context_data(
            stats=stats,
            service=service or "",
            charts=charts.statistics_charts(stats, recent),
            **kwargs,
        )


# ------------------------------------------------------------------ a deployment's panel


def panel_context(request: HttpRequest, deployment: Deployment, **extra: Any) -> dict[str, Any]:
    plan = plans_for([deployment]).get(deployment.pk)
    return {
        "deployment": deployment,
        "plan": plan,
        "executions": list(selectors.execution_history(limit=5, deployment=deployment)),
        "rollbackable": deployment.status in ROLLBACKABLE,
        "may_roll_back": request.user.has_perm(EXECUTION_ADD),
        "live": not deployment.is_terminal,
        "poll_seconds": PANEL_POLL_SECONDS,
        **extra,
    }


def _deployment(deployment_id: int) -> Deployment:
    return or_404(deployment_selectors.deployment_get, deployment_id=deployment_id)


class DeploymentPanelView(RoleRequiredMixin, View):
    """The Roll back panel of a deployment's page, loaded by that page. It polls for the
    deployment's status and is sent again only when that has changed, so a reason being typed
    survives; once the deployment has ended it stops polling."""

    required_permission = EXECUTION_VIEW

    def get(self, request: HttpRequest, deployment_id: int) -> HttpResponse:
        deployment = _deployment(deployment_id)
        if (
            request.htmx
            and request.GET.get("seen") == deployment.status
            and not deployment.is_terminal
        ):
            return HttpResponse(status=204)
        html = render_to_string(
            "rollback/_deployment_panel.html", panel_context(request, deployment), request=request
        )
        if request.htmx and deployment.is_terminal:
            return HttpResponseStopPolling(html)
        return HttpResponse(html)


class DeploymentRollbackView(RoleRequiredMixin, View):
    """Roll back by hand (``rollback_request``): to the execution's page when it runs, the
    panel with "waiting for approval" when its plan asks one, the panel with the reason when
    refused (a cooldown, a deployment that is not running)."""

    required_permission = EXECUTION_ADD

    def post(self, request: HttpRequest, deployment_id: int) -> HttpResponse:
        deployment = _deployment(deployment_id)
        form = ReasonForm(request.POST)
        error, status, waiting = "", 200, None
        reason = request.POST.get("reason", "")
        if not form.is_valid():
            error, status = _form_error(form), 400
        else:
            try:
                execution = services.rollback_request(
                    deployment_id=deployment.pk,
                    reason=form.cleaned_data["reason"],
                    **writer(request),
                )
            except ApprovalRequired as held:
                waiting, status = held, held.status_code
            except CanaryError as failure:
                error, status = failure.message, failure.status_code
            else:
                return redirect(request, "rollback:execution-detail", execution.pk)
        deployment = _deployment(deployment_id)
        if not request.htmx:
            if waiting is not None:
                messages.warning(request, waiting.message)
            else:
                messages.error(request, error)
            return redirect(request, "deployments:deployment-detail", deployment.pk)
        context = panel_context(
            request, deployment, error=error, approval=waiting, reason="" if waiting else reason
        )
        return render(request, "rollback/_deployment_panel.html", context, status=status)
