"""Dashboard pages of the routing app: services with their targets, health and data plane, a
service's traffic chart, circuit breakers, provider syncs and "test a request" panel, and the
rule editor with its weight slider. Regions that refresh are partials named after their element
ids."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from canary_site.audit import writer
from canary_site.exceptions import CanaryError
from canary_site.forms import add_error_fields
from canary_site.htmx import HtmxPartialMixin, partial_template
from canary_site.roles import RoleRequiredMixin
from routing import charts, selectors, services
from routing.choices import ProviderKind
from routing.forms import RULE_FIELDS, DecideForm, RuleForm, WeightsForm
from routing.models import RoutingRule, Service
from routing.snapshot import read_version

CHART_WINDOW_SECONDS = 15 * 60
PROVIDER_SYNCS_SHOWN = 10


class IndexView(RoleRequiredMixin, HtmxPartialMixin, TemplateView):
    template_name = "routing/index.html"
    htmx_targets = ("services-panel",)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        circuits = {(state.service, state.target): state for state in selectors.circuit_states()}
        service_list = list(selectors.service_list())
        syncs = selectors.provider_syncs_latest(
            service_ids=[
                service.pk for service in service_list if service.provider != ProviderKind.BUILTIN
            ]
        )
        rows = [
            (
                service,
                [
                    (target, circuits.get((service.name, target.name)))
                    for target in service.targets.all()
                ],
                syncs.get(service.pk),
            )
            for service in service_list
        ]
        return super().get_context_data(rows=rows, routing_version=read_version(), **kwargs)


def _service_or_404(name: str) -> Service:
    service = selectors.service_get(name=name)
    if service is None:
        raise Http404(f"No service named {name}.")
    return service


def service_context(service: Service, *, part: str | None = None) -> dict[str, Any]:
    """What the service page shows; ``part`` (a partial's name) limits it to that region, so a
    panel that polls does not pay for the others."""
    targets = list(service.targets.select_related("service").order_by("version", "name"))
    context: dict[str, Any] = {"service": service, "targets": targets}
    if part in (None, "service-targets"):
        # Only a draining target has a drain to show; the others cost no read of the cache.
        drains = selectors.drain_statuses(
            targets=[target for target in targets if target.draining_since is not None]
        )
        context["target_rows"] = [(target, drains.get(target.pk)) for target in targets]
    if part in (None, "traffic-chart"):
        versions: dict[str, list[str]] = {}
        for target in targets:
            versions.setdefault(target.version, []).append(target.name)
        labels = {version: f"v{version}: {', '.join(names)}" for version, names in versions.items()}
        series = selectors.outcome_series(
            service=service.name, versions=sorted(versions), window_seconds=CHART_WINDOW_SECONDS
        )
        context["chart"] = charts.traffic_chart(
            series=series, labels=labels, stable_version=service.stable_version
        )
        context["has_traffic"] = any(
            value for points in series.values() for value in points["rps"] if value
        )
    if part in (None, "breakers"):
        states = {state.target: state for state in selectors.circuit_states(service=service.name)}
        context["breakers"] = [(target, states.get(target.name)) for target in targets]
    if part in (None, "provider-panel") and service.provider != ProviderKind.BUILTIN:
        recent = list(selectors.provider_syncs(service=service)[:PROVIDER_SYNCS_SHOWN])
        context["sync"] = recent[0] if recent else None
        context["provider_syncs"] = recent
        context["provider_state"] = selectors.provider_state(service=service)
    if part is None:
        context["rules"] = selectors.rules_for_service(service=service)
    return context


class ServiceDetailView(RoleRequiredMixin, View):
    template_name = "routing/service.html"
    partials = ("service-targets", "traffic-chart", "breakers", "provider-panel")

    def get(self, request: HttpRequest, name: str) -> HttpResponse:
        service = _service_or_404(name)
        template = partial_template(request, self.template_name, targets=self.partials)
        part = template.partition("#")[2] or None
        context = service_context(service, part=part) | {"decide_form": DecideForm()}
        return render(request, template, context)


class DecideView(RoleRequiredMixin, View):
    """The "test a request" panel: where the described request goes, and why."""

    template_name = "routing/service.html"
    required_permission = "routing.view_routingrule"

    def post(self, request: HttpRequest, name: str) -> HttpResponse:
        service = _service_or_404(name)
        form = DecideForm(request.POST)
        decision = None
        status = 200
        if form.is_valid():
            try:
                decision = selectors.decision_summary(
                    selectors.decision_for(service=service.name, **form.cleaned_data)
                )
            except CanaryError as error:
                add_error_fields(form, error)
                status = 400
        else:
            status = 400
        context = {"service": service, "decide_form": form, "decision": decision}
        template = partial_template(request, self.template_name, "decide-panel")
        if template == self.template_name:
            context = service_context(service) | context
        return render(request, template, context, status=status)


def _rule_or_404(rule_id: int) -> RoutingRule:
    rule = selectors.rule_list().filter(pk=rule_id).first()
    if rule is None:
        raise Http404("No such rule.")
    return rule


def _weights_context(rule: RoutingRule, form: WeightsForm) -> dict[str, Any]:
    """The slider panel: one slider for a two-target rule (the canary's share), else one per
    target."""
    links = form.links
    stable = rule.service.stable_version
    slider = None
    rest = None
    if len(links) == 2:
        canary = [item for item in links if item.target.version != stable]
        slider = canary[0] if len(canary) == 1 else links[1]
        rest = links[0] if slider is links[1] else links[1]
    return {"rule": rule, "weights_form": form, "links": links, "slider": slider, "rest": rest}


class RuleEditView(RoleRequiredMixin, View):
    """A rule's settings, and its split with a slider that saves as it moves (htmx)."""

    template_name = "routing/rule.html"

    def render_page(
        self,
        request: HttpRequest,
        rule: RoutingRule,
        form: RuleForm,
        *,
        status: int = 200,
        saved: bool = False,
    ) -> HttpResponse:
        context = _weights_context(rule, WeightsForm(rule=rule)) | {"form": form, "saved": saved}
        partial = "rule-form" if request.method == "POST" else None
        return render(
            request, partial_template(request, self.template_name, partial), context, status=status
        )

    def get(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        rule = _rule_or_404(rule_id)
        return self.render_page(request, rule, RuleForm.for_rule(rule))

    def post(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        if not request.user.has_perm("routing.change_routingrule"):
            raise PermissionDenied
        rule = _rule_or_404(rule_id)
        form = RuleForm(request.POST)
        if not form.is_valid():
            return self.render_page(request, rule, form, status=400)
        changes = {name: form.cleaned_data[name] for name in RULE_FIELDS}
        try:
            services.rule_update(
                rule=rule, reason=form.cleaned_data["reason"], **changes, **writer(request)
            )
        except CanaryError as error:
            add_error_fields(form, error)
            return self.render_page(request, rule, form, status=400)
        if request.htmx:
            rule = _rule_or_404(rule_id)
            return self.render_page(request, rule, RuleForm.for_rule(rule), saved=True)
        messages.success(request, "Rule saved.")
        return redirect("routing:rule-edit", rule_id=rule.pk)


class RuleWeightsView(RoleRequiredMixin, View):
    """Saves a rule's split; over htmx answers the slider panel."""

    template_name = "routing/rule.html"
    required_permission = "routing.change_routingrule"

    def post(self, request: HttpRequest, rule_id: int) -> HttpResponse:
        rule = _rule_or_404(rule_id)
        form = WeightsForm(request.POST, rule=rule)
        status = 200
        saved = False
        if form.is_valid():
            try:
                services.rule_set_weights(
                    rule=rule,
                    weights=form.weights(),
                    reason=form.cleaned_data["reason"],
                    **writer(request),
                )
                saved = True
            except CanaryError as error:
                add_error_fields(
                    form, error, lambda path: "weight_" + path.removeprefix("weights.")
                )
                status = 400
        else:
            status = 400
        if not request.htmx:
            if saved:
                messages.success(request, "Split saved.")
                return redirect(reverse("routing:rule-edit", args=[rule.pk]))
            context = _weights_context(rule, form) | {"form": RuleForm.for_rule(rule)}
            return render(request, self.template_name, context, status=status)
        if saved:
            rule = _rule_or_404(rule_id)
            form = WeightsForm(rule=rule)
        context = _weights_context(rule, form) | {"saved": saved}
        template = partial_template(request, self.template_name, "weights-panel")
        return render(request, template, context, status=status)
