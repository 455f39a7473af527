"""Dashboard pages of the health app: the overview, a service's health page, alert buttons."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from canary_site.audit import writer
from canary_site.charts import Chart
from canary_site.exceptions import CanaryError
from canary_site.htmx import HtmxPartialMixin, partial_template
from canary_site.roles import RoleRequiredMixin
from health import charts, selectors, services
from health.charts import COMPARISON_CHARTS
from health.filtersets import AlertFilterSet, HealthCheckFilterSet
from health.ingest import NAME_PATTERN

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
