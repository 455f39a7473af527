"""Dashboard pages of the deployments app: the list, the creation wizard, a deployment's page
with its live panels and action buttons, and the statistics.

Live regions are named partials of their page template; a poll of a deployment that has ended
answers with `HttpResponseStopPolling`, so the browser stops asking. Buttons call the same
service as the REST actions.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView
from django_htmx.http import HttpResponseStopPolling

from canary_site import htmx
from canary_site.audit import writer
from canary_site.exceptions import CanaryError, or_404
from canary_site.gates import ApprovalRequired
from canary_site.htmx import partial_template
from canary_site.roles import RoleRequiredMixin
from deployments import charts, selectors, services, webhooks
from deployments.choices import DeploymentAction
from deployments.filtersets import DeploymentFilterSet
from deployments.forms import (
    HOOK_TYPES,
    MAX_HOOKS,
    ActionForm,
    WizardForm,
    attach_row_errors,
    editor_config,
    hook_rows,
    phase_rows,
)
from deployments.lifecycle import PERSON_ACTIONS
from deployments.models import Deployment

LIST_SIZE = 100
TIMELINE_SIZE = 100
DETAIL_PARTIALS = {
    "deployment-summary",
    "phase-panel",
    "webhook-panel",
    "deployment-charts",
    "deployment-timeline",
}
ACTION_LABELS = {str(verb): DeploymentAction(verb).label for verb in PERSON_ACTIONS}


def _deployment(deployment_id: int) -> Deployment:
    return or_404(selectors.deployment_get, deployment_id=deployment_id)


class IndexView(RoleRequiredMixin, TemplateView):
    """Every deployment with its status and progress; running ones refresh themselves."""

    template_name = "deployments/index.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        filterset = DeploymentFilterSet(self.request.GET, queryset=selectors.deployments())
        rows = list(filterset.qs[:LIST_SIZE]) if filterset.is_valid() else []
        return super().get_context_data(
            filterset=filterset,
            rows=[_row(deployment) for deployment in rows],
            can_create=self.request.user.has_perm("deployments.add_deployment"),
            **kwargs,
        )


def _row(deployment: Deployment) -> dict[str, Any]:
    return {
        "deployment": deployment,
        "progress": selectors.progress_percent(deployment),
        "phase_total": len(deployment.phases.all()),
    }


class RowView(RoleRequiredMixin, View):
    """One row of the list, for its own poll; stops the poll once the deployment has ended."""

    def get(self, request: HttpRequest, deployment_id: int) -> HttpResponse:
        deployment = _deployment(deployment_id)
        html = render_to_string(
            "deployments/index.html#deployment-row", {"row": _row(deployment)}, request=request
        )
        if deployment.is_terminal:
            return HttpResponseStopPolling(html)
        return HttpResponse(html)


class DetailView(RoleRequiredMixin, View):
    """A deployment: its phases and their criteria, live charts, the timeline, the buttons."""

    template_name = "deployments/detail.html"

    def get(self, request: HttpRequest, deployment_id: int) -> HttpResponse:
        deployment = _deployment(deployment_id)
        context = detail_context(request, deployment)
        template = partial_template(request, self.template_name, targets=DETAIL_PARTIALS)
        if template == self.template_name:
            return render(request, template, context)
        if template.endswith("#deployment-summary"):
            # The buttons come along only when what they depend on has changed.
            context["state_changed"] = request.GET.get("seen") != context["state"]
            template = f"{self.template_name}#summary-response"
        html = render_to_string(template, context, request=request)
        if deployment.is_terminal:
            return HttpResponseStopPolling(html)
        return HttpResponse(html)


def detail_context(request: HttpRequest, deployment: Deployment, **extra: Any) -> dict[str, Any]:
    views = selectors.phase_views(deployment)
    current = next((view for view in views if view.is_current), None)
    series = selectors.health_series(deployment)
    chart_list = charts.deployment_charts(
        deployment_id=deployment.pk,
        planned=selectors.planned_share(deployment),
        series=series,
        canary_version=deployment.canary_version,
        stable_version=deployment.stable_version,
    )
    allowed = selectors.actions_for(deployment, request.user)
    return {
        "deployment": deployment,
        "phases": views,
        "current": current,
        "progress": selectors.progress_percent(deployment),
        "charts": chart_list,
        "events": list(selectors.events(deployment=deployment)[:TIMELINE_SIZE]),
        "actions": [(verb, ACTION_LABELS[verb]) for verb in allowed],
        "problems": selectors.start_problems(deployment) if deployment.status == "pending" else [],
        "tick_interval": selectors.tick_interval(),
        "live": not deployment.is_terminal,
        "state": f"{deployment.status}-{deployment.current_phase or 0}",
        "provider_sync": selectors.provider_sync(deployment),
        "gates": webhooks.gate_views(deployment),
        "news_hooks": webhooks.news_views(deployment),
        "start_waiting": webhooks.start_waiting_reason(deployment),
        "can_open_gates": request.user.has_perm("deployments.change_deployment"),
        **extra,
    }


class ActionView(RoleRequiredMixin, View):
    """A lifecycle button: the same service as the REST action. Over htmx it answers with the
    summary and, out of band, the phase panel and the timeline."""

    required_permission = "deployments.change_deployment"

    def post(self, request: HttpRequest, deployment_id: int) -> HttpResponse:
        deployment = _deployment(deployment_id)
        form = ActionForm(request.POST)
        error = ""
        status = 200
        waiting: ApprovalRequired | None = None
        if not form.is_valid():
            error = "; ".join(
                f"{name}: {' '.join(problems)}" for name, problems in form.errors.items()
            )
            status = 400
        else:
            try:
                services.deployment_transition(
                    deployment_id=deployment.pk,
                    action=form.cleaned_data["action"],
                    reason=form.cleaned_data["reason"],
                    expected_phase=form.cleaned_data["phase"],
                    **writer(request),
                )
            except ApprovalRequired as held:
                waiting, status = held, held.status_code
            except CanaryError as failure:
                error = failure.message
                status = failure.status_code
        deployment = _deployment(deployment_id)
        if request.htmx:
            context = detail_context(
                request,
                deployment,
                action_error=error,
                reason=request.POST.get("reason", ""),
                approval=waiting,
            )
            template = partial_template(request, "deployments/detail.html", "action-response")
            return render(request, template, context, status=status)
        start_waiting = webhooks.start_waiting_reason(deployment)
        if error:
            messages.error(request, error)
        elif waiting is not None:
            messages.warning(request, waiting.message)
        elif start_waiting:
            messages.warning(request, f"The start is asked for. {start_waiting}")
        else:
            messages.success(
                request, f"{ACTION_LABELS.get(form.cleaned_data['action'], 'Done')}: done."
            )
        return redirect(reverse("deployments:deployment-detail", args=[deployment.pk]))


class GateOpenView(RoleRequiredMixin, View):
    """The "Open gate" button: the same service as ``POST
    /api/v1/deployments/{id}/gates/{name}/open/``. Over htmx it answers with the webhook panel
    and, out of band, the timeline."""

    required_permission = "deployments.change_deployment"

    def post(self, request: HttpRequest, deployment_id: int, name: str) -> HttpResponse:
        deployment = _deployment(deployment_id)
        error, status = "", 200
        try:
            webhooks.webhook_gate_open(
                deployment_id=deployment.pk,
                name=name,
                reason=request.POST.get("reason", "")[:5000],
                **writer(request),
            )
        except CanaryError as failure:
            error, status = failure.message, failure.status_code
        deployment = _deployment(deployment_id)
        if request.htmx:
            context = detail_context(request, deployment, gate_error=error)
            template = partial_template(request, "deployments/detail.html", "gate-response")
            return render(request, template, context, status=status)
        if error:
            messages.error(request, error)
        else:
            messages.success(request, f"Gate '{name}' is open for this phase.")
        return redirect(reverse("deployments:deployment-detail", args=[deployment.pk]))


class WizardView(RoleRequiredMixin, View):
    """Create a deployment: the phase editor, or a pasted configuration, validated as you type."""

    required_permission = "deployments.add_deployment"
    template_name = "deployments/wizard.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        form = WizardForm(initial={"phase_count": 3})
        service = request.GET.get("service")
        if service:
            form.initial["service"] = service
        rows = phase_rows(None)
        return render(request, self.template_name, self._context(form, rows, [], None))

    def post(self, request: HttpRequest) -> HttpResponse:
        op = request.POST.get("op", "create")
        form = WizardForm(request.POST)
        form.is_valid()
        rows = phase_rows(request.POST)
        hooks = hook_rows(request.POST)
        if op == "add-hook" and len(hooks) < MAX_HOOKS:
            hooks = hook_rows(request.POST, count=len(hooks) + 1)
        elif op.startswith("remove-hook-"):
            index = int(op.removeprefix("remove-hook-") or -1)
            kept = [row for row in hooks if row.index != index]
            data = request.POST.copy()
            for new, row in enumerate(kept):
                for name, value in row.values.items():
                    data[f"hook-{new}-{name}"] = value
            hooks = hook_rows(data, count=len(kept))
        elif op == "add-phase" and len(rows) < 12:
            rows = phase_rows(request.POST, count=len(rows) + 1)
        elif op.startswith("remove-phase-") and len(rows) > 1:
            index = int(op.removeprefix("remove-phase-") or -1)
            kept = [row for row in rows if row.index != index]
            data = request.POST.copy()
            for new, row in enumerate(kept):
                for name, value in row.values.items():
                    data[f"phase-{new}-{name}"] = value
            rows = phase_rows(data, count=len(kept))
        if op != "create":
            return self._form(request, form, rows, hooks, None)
        config = _wizard_config(form, rows, hooks)
        try:
            deployment = services.deployment_create(
                config=config,
                health_policy=form.cleaned_data.get("health_policy"),
                flags=form.cleaned_data.get("linked_flags") or [],
                **writer(request),
            )
        except CanaryError as error:
            report = services.configuration_report(config)
            return self._form(
                request, form, rows, hooks, report, error=error, status=error.status_code
            )
        messages.success(request, f"Deployment '{deployment.name}' created; start it when ready.")
        return htmx.redirect(request, "deployments:deployment-detail", deployment.pk)

    def _form(
        self,
        request: HttpRequest,
        form: WizardForm,
        rows: list[Any],
        hooks: list[Any],
        report: Any,
        *,
        error: CanaryError | None = None,
        status: int = 200,
    ) -> HttpResponse:
        template = partial_template(request, self.template_name, "wizard-form")
        context = self._context(form, rows, hooks, report, error=error)
        return render(request, template, context, status=status)

    def _context(
        self,
        form: WizardForm,
        rows: list[Any],
        hooks: list[Any],
        report: Any,
        *,
        error: CanaryError | None = None,
    ) -> dict[str, Any]:
        if report is not None and hooks:
            attach_row_errors([], report.to_dict()["errors"], hooks)
        return {
            "form": form,
            "rows": rows,
            "phase_count": len(rows),
            "hooks": hooks,
            "hook_count": len(hooks),
            "hook_types": HOOK_TYPES,
            "max_hooks": MAX_HOOKS,
            "report": report.to_dict() if report is not None else None,
            "create_error": error,
        }


class WizardValidateView(RoleRequiredMixin, View):
    """The wizard's live validation: the report on what the form says now (nothing stored)."""

    def post(self, request: HttpRequest) -> HttpResponse:
        form = WizardForm(request.POST)
        form.is_valid()
        rows = phase_rows(request.POST)
        hooks = hook_rows(request.POST)
        config = _wizard_config(form, rows, hooks)
        report = services.configuration_report(config).to_dict()
        attach_row_errors(rows, report["errors"], hooks)
        context = {
            "report": report,
            "rows": rows,
            "hooks": hooks,
            "source": "yaml" if isinstance(config, str) else "editor",
        }
        return render(request, "deployments/wizard.html#wizard-validation", context)


def _wizard_config(form: WizardForm, rows: list[Any], hooks: list[Any]) -> Any:
    text = (form.data.get("config_text") or "").strip()
    if text:
        return text
    return editor_config(form, rows, hooks)


class StatisticsView(RoleRequiredMixin, TemplateView):
    """Success rate, time per phase and time from a breach to the rollback."""

    template_name = "deployments/statistics.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        stats = selectors.statistics()
        return super().get_context_data(
            stats=stats, charts=charts.statistics_charts(stats), **kwargs
        )
