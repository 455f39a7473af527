"""Dashboard pages of the health app: the overview, a service's health page, alert buttons, and
health policies (list, detail with where their news goes, the editor checked as you type,
delete).

The policy editor saves through ``health_policy_create`` and ``health_policy_update``, the
services the REST API and the admin call, and its live check runs the same readers."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from canary_site.audit import writer
from canary_site.charts import Chart
from canary_site.exceptions import CanaryError
from canary_site.htmx import HtmxPartialMixin, partial_template
from canary_site.htmx import redirect as htmx_redirect
from canary_site.roles import RoleRequiredMixin
from health import charts, selectors, services
from health.charts import COMPARISON_CHARTS
from health.filtersets import AlertFilterSet, HealthCheckFilterSet
from health.forms import (
    KINDS,
    Built,
    PolicyForm,
    Rows,
    edited_rows,
    place_of,
    policy_arguments,
    policy_initial,
    policy_problems,
    posted_rows,
    show_policy_error,
    where,
)
from health.ingest import NAME_PATTERN
from health.models import HealthPolicy

CHECKS_PAGE_SIZE = 20
WINDOWS = [(900, "15 minutes"), (3600, "1 hour"), (6 * 3600, "6 hours"), (24 * 3600, "24 hours")]
DEFAULT_WINDOW = 900


class IndexView(RoleRequiredMixin, HtmxPartialMixin, TemplateView):
    """Services with recent checks, worst first, and every open alert."""

    template_name = "health/index.html"
    htmx_targets = ("health-overview",)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(
            overview=selectors.services_overview(),
            open_alerts=selectors.alerts_open()[:50],
            policies=selectors.policies(),
            **kwargs,
        )


class ServiceHealthView(RoleRequiredMixin, HtmxPartialMixin, TemplateView):
    """One service: live charts of canary against stable, its checks and its alerts.

    ``?canary=&stable=`` choose the versions (default: those of the latest check) and
    ``?window=`` the charts' time span in seconds.
    """

    template_name = "health/service.html"
    htmx_targets = ("health-charts", "health-checks", "health-alerts")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        service = kwargs.pop("service")
        if not NAME_PATTERN.fullmatch(service):
            raise Http404("No such service.")
        return super().get_context_data(**service_context(self.request, service), **kwargs)


def service_context(request: HttpRequest, service: str) -> dict[str, Any]:
    latest_canary, latest_stable = selectors.versions_of(service=service)
    canary = _version(request.GET.get("canary")) or latest_canary
    stable = _version(request.GET.get("stable")) or latest_stable
    try:
        window = int(request.GET.get("window", DEFAULT_WINDOW))
    except ValueError:
        window = DEFAULT_WINDOW
    if window not in dict(WINDOWS):
        window = DEFAULT_WINDOW

    chart_list: list[Chart] = []
    if canary:
        versions = [canary] + ([stable] if stable and stable != canary else [])
        series = selectors.series_many(
            service=service,
            versions=versions,
            metrics=[metric for metric, _title, _unit in COMPARISON_CHARTS],
            window_seconds=window,
        )
        chart_list = charts.comparison_charts(
            series=series, canary_version=canary, stable_version=stable
        )

    check_filter = HealthCheckFilterSet(
        request.GET, queryset=selectors.checks_for_service(service=service)
    )
    checks = check_filter.qs[:CHECKS_PAGE_SIZE] if check_filter.is_valid() else []
    alert_filter = AlertFilterSet(
        {"service": service}, queryset=selectors.alerts().filter(service=service)
    )
    alerts = alert_filter.qs[:20]
    query = {"canary": canary or "", "stable": stable or "", "window": window}
    return {
        "service": service,
        "canary": canary,
        "stable": stable,
        "window": window,
        "windows": WINDOWS,
        "charts": chart_list,
        "check_filter": check_filter,
        "checks": checks,
        "alerts": alerts,
        "can_change_alerts": request.user.has_perm("health.change_alert"),
        "query": query,
    }


def _version(value: str | None) -> str | None:
    if value and NAME_PATTERN.fullmatch(value):
        return value
    return None


class AlertActionView(RoleRequiredMixin, View):
    """Acknowledge or resolve an alert (engineers); answers with the alerts panel over htmx."""

    required_permission = "health.change_alert"
    action = ""

    def post(self, request: HttpRequest, alert_id: int) -> HttpResponse:
        alert = selectors.alert_by_id(alert_id=alert_id)
        if alert is None:
            raise Http404("No such alert.")
        note = request.POST.get("note", "").strip()[:1000]
        status = 200
        error = ""
        try:
            if self.action == "acknowledge":
                services.alert_acknowledge(alert=alert, note=note, **writer(request))
            else:
                services.alert_resolve(alert=alert, note=note, **writer(request))
        except CanaryError as failure:
            status = failure.status_code
            error = failure.message
        if request.htmx:
            context = service_context(request, alert.service) | {"alert_error": error}
            template = partial_template(request, "health/service.html", "health-alerts")
            return render(request, template, context, status=status)
        if error:
            messages.error(request, error)
        else:
            done = "acknowledged" if self.action == "acknowledge" else "resolved"
            messages.success(request, f"Alert {done}.")
        return redirect(reverse("health:service-detail", args=[alert.service]))


# ------------------------------------------------------------------------------- policies

POLICY_VIEW = "health.view_healthpolicy"
POLICY_ADD = "health.add_healthpolicy"
POLICY_CHANGE = "health.change_healthpolicy"
POLICY_DELETE = "health.delete_healthpolicy"
# The deployments app's words for a deployment whose canary may hold traffic. The reverse
# relation is read by its name, so this app imports nothing of that one.
ACTIVE_DEPLOYMENTS = ("running", "paused", "rolling_back")


def _policies() -> QuerySet[HealthPolicy]:
    """Every policy with the number of deployments it judges."""
    return selectors.policies().annotate(used_by=Count("deployments", distinct=True))


def _policy(policy_id: int) -> HealthPolicy:
    policy = _policies().filter(pk=policy_id).first()
    if policy is None:
        raise Http404(f"There is no health policy {policy_id}.")
    return policy


def _users(policy: HealthPolicy) -> list[Any]:
    """The deployments a policy judges, those whose canary may hold traffic first."""
    found = list(policy.deployments.select_related("service").order_by("-created_at")[:100])
    return sorted(found, key=lambda deployment: deployment.status not in ACTIVE_DEPLOYMENTS)


class PolicyListView(RoleRequiredMixin, TemplateView):
    """Every policy: alerting, channels, auto-rollback and how many deployments it judges."""

    template_name = "health/policies.html"
    required_permission = POLICY_VIEW

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(
            policies=list(_policies()),
            can_create=self.request.user.has_perm(POLICY_ADD),
            **kwargs,
        )


class PolicyDetailView(RoleRequiredMixin, View):
    """A policy read as sentences, where its news goes, and the deployments it judges."""

    required_permission = POLICY_VIEW

    def get(self, request: HttpRequest, policy_id: int) -> HttpResponse:
        policy = _policy(policy_id)
        users = _users(policy)
        spec = policy.spec
        context = {
            "policy": policy,
            "spec": spec,
            "document_json": json.dumps(spec.to_dict(), indent=2),
            "users": users,
            "active": [d for d in users if d.status in ACTIVE_DEPLOYMENTS],
            "may_edit": request.user.has_perm(POLICY_CHANGE),
            "may_delete": request.user.has_perm(POLICY_DELETE),
        }
        return render(request, "health/policy_detail.html", context)


def _findings(
    form: PolicyForm, rows: Rows, built: Built, problems: list[tuple[str, str]]
) -> dict[str, Any]:
    """The editor's live check: what the form could not read, then what the readers refuse,
    each named by the words of the field it is about."""
    errors = [
        {"field": name, "where": str(form[name].label), "message": message}
        for name, problems_of in form.errors.items()
        if name in form.fields
        for message in problems_of
    ]
    for kind in KINDS:
        for index, row in enumerate(rows[kind.prefix]):
            for name, problems_of in row.errors.items():
                label = str(row[name].label) if name in row.fields else ""
                errors += [
                    {
                        "field": f"{kind.prefix}-{index}-{name}",
                        "where": f"{kind.noun} {index + 1}" + (f": {label}" if label else ""),
                        "message": message,
                    }
                    for message in problems_of
                ]
    for path, message in problems:
        place = place_of(path, rows, built)
        shown = message if place.whole or place.kind is None else f"{place.inner}: {message}"
        errors.append({"field": path, "where": where(place, form, rows), "message": shown})
    return {"valid": not errors, "errors": errors}


class PolicyEditorView(RoleRequiredMixin, View):
    """Create or edit a policy: its sections as fields, thresholds, rollback thresholds and
    escalation rules as rows added and removed by posting the form back; checked as you type,
    saved by ``health_policy_create`` / ``health_policy_update``."""

    template_name = "health/policy_form.html"
    required_permission = POLICY_ADD

    def _policy(self, policy_id: int | None) -> HealthPolicy | None:
        return _policy(policy_id) if policy_id is not None else None

    def get(self, request: HttpRequest, policy_id: int | None = None) -> HttpResponse:
        policy = self._policy(policy_id)
        initial, rows = policy_initial(policy)
        return self._render(request, policy, PolicyForm(initial=initial), rows)

    def post(self, request: HttpRequest, policy_id: int | None = None) -> HttpResponse:
        policy = self._policy(policy_id)
        op = request.POST.get("op", "save")
        form = PolicyForm(request.POST)
        rows = posted_rows(request.POST)
        if op != "save":
            form.is_valid()
            return self._render(request, policy, form, edited_rows(request.POST, rows, op))
        built = policy_arguments(form, rows)
        if form.errors or any(row.errors for kind in KINDS for row in rows[kind.prefix]):
            return self._render(request, policy, form, rows, status=400)
        try:
            if policy is None:
                saved = services.health_policy_create(
                    policy=built.document, **built.settings, **writer(request)
                )
            else:
                saved = services.health_policy_update(
                    policy=policy, document=built.document, **built.settings, **writer(request)
                )
        except CanaryError as error:
            show_policy_error(form, rows, error, built)
            policy = self._policy(policy_id)  # as stored: the failed update changed the copy
            return self._render(request, policy, form, rows, status=error.status_code)
        messages.success(request, f"Health policy '{saved.name}' saved.")
        return htmx_redirect(request, "health:policy-detail", saved.pk)

    def _render(
        self,
        request: HttpRequest,
        policy: HealthPolicy | None,
        form: PolicyForm,
        rows: Rows,
        *,
        status: int = 200,
    ) -> HttpResponse:
        context = {
            "policy": policy,
            "form": form,
            "thresholds": rows["threshold"],
            "rollbacks": rows["rollback"],
            "escalations": rows["escalation"],
            "action": request.path,
        }
        template = partial_template(request, self.template_name, "policy-editor")
        return render(request, template, context, status=status)


class PolicyUpdateView(PolicyEditorView):
    required_permission = POLICY_CHANGE


class PolicyValidateView(RoleRequiredMixin, View):
    """The editor's live check: the readers' findings on what the form says now; saves
    nothing."""

    required_permission = POLICY_ADD

    def post(self, request: HttpRequest) -> HttpResponse:
        form = PolicyForm(request.POST)
        rows = posted_rows(request.POST)
        built = policy_arguments(form, rows)
        policy = None
        if str(request.POST.get("policy_id") or "").isdecimal():
            policy = selectors.policy_by_id(policy_id=int(request.POST["policy_id"]))
        findings = _findings(form, rows, built, policy_problems(built, policy))
        return render(request, "health/policy_form.html#policy-findings", {"findings": findings})


class PolicyDeleteView(RoleRequiredMixin, View):
    """Delete a policy after a confirmation that names the deployments it judges; a refusal
    (409) is said on the page."""

    required_permission = POLICY_DELETE
    template_name = "health/policy_delete.html"

    def _context(self, policy: HealthPolicy, **extra: Any) -> dict[str, Any]:
        users = _users(policy)
        active = [d for d in users if d.status in ACTIVE_DEPLOYMENTS]
        return {"policy": policy, "users": users, "active": active, **extra}

    def get(self, request: HttpRequest, policy_id: int) -> HttpResponse:
        return render(request, self.template_name, self._context(_policy(policy_id)))

    def post(self, request: HttpRequest, policy_id: int) -> HttpResponse:
        policy = _policy(policy_id)
        name = policy.name
        try:
            services.health_policy_delete(policy=policy, **writer(request))
        except CanaryError as error:
            context = self._context(policy, error=error.message)
            return render(request, self.template_name, context, status=error.status_code)
        messages.success(request, f"Health policy '{name}' deleted.")
        return htmx_redirect(request, "health:policy-list")
