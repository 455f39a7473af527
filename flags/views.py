"""Dashboard pages of the flags app: the flag list, a flag's page with its editors, segments and
evaluation keys.

Every write calls ``flags.services``. Forms post to their own URL; over htmx the answer is the
region that changed (the list row, or the flag page's ``#flag-page``), and without JavaScript a
success redirects back to the page. A 400 re-renders the form with each error next to its field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View

from canary_site.audit import writer
from canary_site.exceptions import CanaryError, NotFound
from canary_site.forms import add_error_fields
from canary_site.htmx import htmx_target, partial_template
from canary_site.htmx import redirect as htmx_redirect
from canary_site.roles import RoleRequiredMixin
from canary_site.views import CredentialRevokeView, CredentialsPageView
from flags import charts, selectors, services
from flags.choices import FlagStatus
from flags.definition import describe_constraint, describe_serve
from flags.filtersets import FlagFilterSet, SegmentFilterSet
from flags.forms import (
    DefaultRuleForm,
    EvaluationKeyForm,
    FlagCreateForm,
    FlagDetailsForm,
    KillForm,
    RolloutForm,
    RuleForm,
    SegmentForm,
    ServeFields,
    TargetsForm,
    TryForm,
    VariantsForm,
    constraint_formset,
    constraints_of,
)
from flags.models import EvaluationKey, Flag

CHANGE = "flags.change_flag"
HISTORY_LIMIT = 25
LIST_LIMIT = 500


def _variant_names(flag: Flag) -> list[str]:
    return [str(v.get("name")) for v in flag.variants if isinstance(v, dict) and v.get("name")]


def _page_url(flag: Flag, anchor: str = "") -> str:
    url = reverse("flags:flag-detail", args=[flag.key])
    return f"{url}#{anchor}" if anchor else url


# --- the list -----------------------------------------------------------------------------------


class FlagListView(RoleRequiredMixin, View):
    template_name = "flags/index.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        filterset = FlagFilterSet(request.GET, queryset=selectors.flags())
        flags = list(filterset.qs[:LIST_LIMIT]) if filterset.is_valid() else []
        for flag in flags:
            flag.rollout = selectors.flag_rollout_percentage(flag=flag)
        return render(
            request,
            partial_template(request, self.template_name, targets=("flag-table",)),
            {"filterset": filterset, "flags": flags, "can_change": request.user.has_perm(CHANGE)},
        )


class FlagCreateView(RoleRequiredMixin, View):
    template_name = "flags/create.html"
    required_permission = "flags.add_flag"

    def get(self, request: HttpRequest) -> HttpResponse:
        return render(request, self.template_name, {"form": FlagCreateForm()})

    def post(self, request: HttpRequest) -> HttpResponse:
        form = FlagCreateForm(request.POST)
        if form.is_valid():
            try:
                flag = services.flag_create(**form.cleaned_data, **writer(request))
            except CanaryError as error:
                add_error_fields(form, error)
            else:
                messages.success(
                    request, f"Flag '{flag.key}' created, disabled until you enable it."
                )
                return htmx_redirect(request, _page_url(flag))
        return render(request, self.template_name, {"form": form}, status=400)


# --- a flag's page ------------------------------------------------------------------------------


class FlagPageMixin(RoleRequiredMixin):
    """Renders a flag's page, or over htmx its ``#flag-page`` region, with any forms given."""

    template_name = "flags/detail.html"

    def get_flag(self, key: str) -> Flag:
        return _flag_or_404(key)

    def page_context(self, request: HttpRequest, flag: Flag, **forms: Any) -> dict[str, Any]:
        variants = _variant_names(flag)
        rollout = selectors.flag_rollout_percentage(flag=flag)
        rules = [
            {
                "index": index,
                "name": rule.get("name") or "",
                "segments": rule.get("segments") or [],
                "constraints": [describe_constraint(c) for c in rule.get("constraints") or []],
                "serve": describe_serve(rule.get("serve"), flag.off_variant),
            }
            for index, rule in enumerate(flag.rules)
        ]
        context = {
            "flag": flag,
            "variants": variants,
            "rules": rules,
            "rollout": rollout,
            "default_serve": describe_serve(flag.default_rule, flag.off_variant),
            "stale_reason": selectors.flag_stale_reason(flag=flag),
            "can_change": request.user.has_perm(CHANGE),
            "history": selectors.flag_history(flag=flag)[:HISTORY_LIMIT],
            "kill_form": forms.get("kill_form") or KillForm(prefix="kill"),
            "details_form": forms.get("details_form") or FlagDetailsForm.for_flag(flag),
            "variants_form": forms.get("variants_form") or VariantsForm.for_flag(flag),
            "rollout_form": forms.get("rollout_form")
            or RolloutForm(initial={"percentage": rollout or 0}, prefix="rollout"),
            "default_form": forms.get("default_form")
            or DefaultRuleForm(
                initial=ServeFields.initial_for(flag.default_rule, variants),
                variants=variants,
                prefix="default",
            ),
            "targets_form": forms.get("targets_form")
            or TargetsForm(
                initial=TargetsForm.initial_for(flag.targets, variants),
                variants=variants,
                prefix="targets",
            ),
            "try_form": forms.get("try_form") or TryForm(prefix="try"),
            "result": forms.get("result"),
            **exposure_context(flag, request.GET.get("window", "1h")),
        }
        return context

    def render_page(
        self, request: HttpRequest, flag: Flag, *, status: int = 200, **forms: Any
    ) -> HttpResponse:
        template = partial_template(request, self.template_name, "flag-page")
        return render(request, template, self.page_context(request, flag, **forms), status=status)


def exposure_context(flag: Flag, window: str) -> dict[str, Any]:
    if window not in selectors.EXPOSURE_WINDOWS:
        window = "1h"
    series = selectors.flag_exposure_series(flag_key=flag.key, window=window)
    label = selectors.EXPOSURE_WINDOWS[window][2]
    return {
        "window": window,
        "windows": [(name, spec[2]) for name, spec in selectors.EXPOSURE_WINDOWS.items()],
        "exposure_total": series.total,
        "exposure_totals": {variant: sum(counts) for variant, counts in series.counts.items()},
        "exposure_chart": charts.exposure_chart(
            series, title=f"Exposures: {label}", element_id=f"exposure-chart-{flag.pk}"
        ),
    }


class FlagDetailView(FlagPageMixin, View):
    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        return self.render_page(request, self.get_flag(key))


class FlagWriteView(FlagPageMixin, View):
    """A POST that changes the flag: on success the page (or its region) shows the new state."""

    required_permission = CHANGE
    anchor = ""

    def done(self, request: HttpRequest, flag: Flag, message: str) -> HttpResponse:
        if _swaps_row(request):
            return render_row(request, flag)
        messages.success(request, message)
        if request.htmx:
            return self.render_page(request, selectors.flag_get(key=flag.key))
        return redirect(_page_url(flag, self.anchor))

    def refused(self, request: HttpRequest, flag: Flag, error: CanaryError) -> HttpResponse:
        """A state error (409) over htmx or not: the page, with the reason as a message."""
        messages.error(request, error.message)
        if _swaps_row(request):
            return render_row(request, flag, status=error.status_code)
        if request.htmx:
            return self.render_page(request, flag, status=error.status_code)
        return redirect(_page_url(flag, self.anchor))


def render_row(request: HttpRequest, flag: Flag, *, status: int = 200) -> HttpResponse:
    flag = selectors.flag_get(key=flag.key)
    flag.rollout = selectors.flag_rollout_percentage(flag=flag)
    return render(
        request,
        "flags/index.html#flag-row",
        {"flag": flag, "can_change": request.user.has_perm(CHANGE), "row_messages": True},
        status=status,
    )


class FlagToggleView(FlagWriteView):
    """Enable or disable, after a confirmation: htmx asks with hx-confirm; without JavaScript
    the button leads to a confirmation page first."""

    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        target = FlagStatus.DISABLED if flag.status == FlagStatus.ENABLED else FlagStatus.ENABLED
        return render(request, "flags/confirm_toggle.html", {"flag": flag, "to": target})

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        wanted = request.POST.get("to")
        try:
            if wanted == FlagStatus.ENABLED:
                flag = services.flag_enable(flag=flag, **writer(request))
            elif wanted == FlagStatus.DISABLED:
                flag = services.flag_disable(flag=flag, **writer(request))
            else:
                messages.error(request, "Say whether to enable or disable the flag.")
                return self.render_page(request, flag, status=400)
        except CanaryError as error:
            return self.refused(request, flag, error)
        return self.done(request, flag, f"Flag '{flag.key}' is now {flag.status}.")


class FlagKillView(FlagWriteView):
    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = KillForm(request.POST, prefix="kill")
        if form.is_valid():
            try:
                flag = services.flag_kill(
                    flag=flag,
                    reason=form.cleaned_data["reason"],
                    **writer(request),
                )
            except CanaryError as error:
                add_error_fields(form, error)
            else:
                return self.done(
                    request, flag, f"Flag '{flag.key}' killed: everyone gets '{flag.off_variant}'."
                )
        if _swaps_row(request):
            messages.error(request, "Say why the flag is being killed.")
            return render_row(request, flag, status=400)
        return self.render_page(request, flag, status=400, kill_form=form)


class FlagUpdateView(FlagWriteView):
    """One editor of the flag's page that saves through ``flag_update``: its form is
    ``form_name`` in the page's context, and a 400 shows it again with its errors."""

    form_name = ""
    saved = ""

    def form(self, request: HttpRequest, flag: Flag) -> Any:
        raise NotImplementedError

    def changes(self, form: Any) -> dict[str, Any]:
        return form.cleaned_data

    def field_for(self, form: Any) -> Callable[[str], str | None] | None:
        """Which form field an error path goes to, when its first part does not say."""
        return None

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = self.form(request, flag)
        if form.is_valid():
            try:
                flag = services.flag_update(
                    flag=flag, changes=self.changes(form), **writer(request)
                )
            except CanaryError as error:
                add_error_fields(form, error, self.field_for(form))
            else:
                return self.done(request, flag, self.saved)
        return self.render_page(request, flag, status=400, **{self.form_name: form})


class FlagDetailsView(FlagUpdateView):
    anchor = "details-panel"
    form_name = "details_form"
    saved = "Details saved."

    def form(self, request: HttpRequest, flag: Flag) -> Any:
        return FlagDetailsForm(request.POST, prefix="details")


class FlagVariantsView(FlagUpdateView):
    anchor = "variants-panel"
    form_name = "variants_form"
    saved = "Variants saved."

    def form(self, request: HttpRequest, flag: Flag) -> Any:
        return VariantsForm(request.POST, prefix="variants")


class FlagRolloutView(FlagWriteView):
    anchor = "default-panel"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = RolloutForm(request.POST, prefix="rollout")
        if form.is_valid():
            try:
                flag = services.flag_set_rollout(
                    flag=flag,
                    percentage=form.cleaned_data["percentage"],
                    **writer(request),
                )
            except CanaryError as error:
                if error.status_code == 409:
                    return self.refused(request, flag, error)
                add_error_fields(form, error, lambda path: "percentage")
            else:
                return self.done(
                    request, flag, f"Rollout set to {form.cleaned_data['percentage']:g}%."
                )
        return self.render_page(request, flag, status=400, rollout_form=form)


class FlagDefaultRuleView(FlagUpdateView):
    anchor = "default-panel"
    form_name = "default_form"
    saved = "Default rule saved."

    def form(self, request: HttpRequest, flag: Flag) -> Any:
        return DefaultRuleForm(request.POST, variants=_variant_names(flag), prefix="default")

    def changes(self, form: Any) -> dict[str, Any]:
        return {"default_rule": form.serve()}

    def field_for(self, form: Any) -> Callable[[str], str | None]:
        return lambda path: form.serve_error_field(_after(path, "default_rule"))


class FlagTargetsView(FlagUpdateView):
    anchor = "targets-panel"
    form_name = "targets_form"
    saved = "Individual targets saved."

    def form(self, request: HttpRequest, flag: Flag) -> Any:
        return TargetsForm(request.POST, variants=_variant_names(flag), prefix="targets")

    def changes(self, form: Any) -> dict[str, Any]:
        return {"targets": form.targets()}

    def field_for(self, form: Any) -> Callable[[str], str | None]:
        return form.field_for


class FlagTryView(FlagPageMixin, View):
    """Evaluate a context against the saved flag and say why; nothing is recorded."""

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = TryForm(request.POST, prefix="try")
        result = None
        status = 400
        if form.is_valid():
            result = selectors.flag_evaluate(flag=flag, context=form.context())
            status = 200
        if request.htmx:
            context = {"flag": flag, "try_form": form, "result": result}
            template = partial_template(request, self.template_name, "try-panel")
            return render(request, template, context, status=status)
        return self.render_page(request, flag, status=status, try_form=form, result=result)


class FlagExposuresView(FlagPageMixin, View):
    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        if request.htmx:
            context = {"flag": flag, **exposure_context(flag, request.GET.get("window", "1h"))}
            return render(
                request, partial_template(request, self.template_name, "exposure-panel"), context
            )
        return self.render_page(request, flag)


class FlagDeleteView(FlagWriteView):
    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        try:
            services.flag_delete(flag=flag, **writer(request))
        except CanaryError as error:
            return self.refused(request, flag, error)
        messages.success(request, f"Flag '{flag.key}' deleted.")
        return htmx_redirect(request, reverse("flags:index"))


# --- rules --------------------------------------------------------------------------------------


class RuleEditView(RoleRequiredMixin, View):
    """Add (``index`` None) or change one rule: segments, constraints and what it serves."""

    template_name = "flags/rule.html"
    required_permission = CHANGE

    def get(self, request: HttpRequest, key: str, index: int | None = None) -> HttpResponse:
        flag = _flag_or_404(key)
        rule = self._rule(flag, index)
        variants = _variant_names(flag)
        initial = {
            "name": rule.get("name", ""),
            "segments": rule.get("segments", []),
            "version": flag.version,
        }
        initial.update(ServeFields.initial_for(rule.get("serve"), variants))
        form = RuleForm(
            initial=initial, variants=variants, segment_keys=self._segment_keys(), prefix="rule"
        )
        formset = constraint_formset(constraints=rule.get("constraints"), extra=1)
        return self._render(request, flag, index, form, formset)

    def post(self, request: HttpRequest, key: str, index: int | None = None) -> HttpResponse:
        # Whether the rule still exists is for the service to say, under its lock, after the
        # version: a list that changed since the page opened is a 409, not a 404.
        flag = _flag_or_404(key)
        form = RuleForm(
            request.POST,
            variants=_variant_names(flag),
            segment_keys=self._segment_keys(),
            prefix="rule",
        )
        formset = constraint_formset(request.POST)
        if "add_constraint" in request.POST:
            # Another empty row, keeping what was typed: works without JavaScript.
            data = request.POST.copy()
            data["constraints-TOTAL_FORMS"] = str(formset.total_form_count() + 1)
            return self._render(request, flag, index, form, constraint_formset(data))
        status = 400
        if form.is_valid() and formset.is_valid():
            kept = [f for f in formset.forms if not f.cleaned_data.get("DELETE") and f.constraint()]
            rule = {
                "name": form.cleaned_data["name"],
                "segments": form.cleaned_data["segments"],
                "constraints": constraints_of(formset),
                "serve": form.serve(),
            }
            position = len(flag.rules) if index is None else index
            expected = form.cleaned_data["version"]
            try:
                if index is None:
                    services.flag_rule_add(
                        flag=flag, rule=rule, expected_version=expected, **writer(request)
                    )
                else:
                    services.flag_rule_update(
                        flag=flag,
                        index=index,
                        rule=rule,
                        expected_version=expected,
                        **writer(request),
                    )
            except CanaryError as error:
                if error.status_code in (404, 409):
                    # Kept as typed, with the old version, so that saving again is refused
                    # again: what changed must be looked at first.
                    form.add_error(None, f"{error.message} What you typed is kept below.")
                    status = error.status_code
                else:
                    self._place_errors(error, form, kept)
            else:
                messages.success(request, f"Rule {position + 1} saved.")
                return htmx_redirect(request, _page_url(flag, "rules-panel"))
        elif "version" in form.errors:
            form.add_error(None, "This page is out of date; open the rule again.")
        return self._render(request, flag, index, form, formset, status=status)

    def _place_errors(self, error: CanaryError, form: RuleForm, kept: list[Any]) -> None:
        """The service names the rule's fields ``rule.<field>``; its constraints go to their
        rows, in the order the kept rows were sent."""

        def field_for(path: str) -> str | None:
            inner = _after(path, "rule")
            if inner.startswith("serve"):
                return form.serve_error_field(_after(inner, "serve"))
            return _after(path, "rule")

        add_error_fields(form, error, field_for, rows=kept, rows_at="rule.constraints")

    def _rule(self, flag: Flag, index: int | None) -> dict[str, Any]:
        if index is None:
            return {}
        if not 0 <= index < len(flag.rules):
            raise Http404(f"Flag '{flag.key}' has no rule {index + 1}.")
        return flag.rules[index]

    def _segment_keys(self) -> list[str]:
        return list(selectors.segments().values_list("key", flat=True))

    def _render(
        self,
        request: HttpRequest,
        flag: Flag,
        index: int | None,
        form: RuleForm,
        formset: Any,
        *,
        status: int = 200,
    ) -> HttpResponse:
        context = {
            "flag": flag,
            "index": index,
            "number": (index + 1) if index is not None else len(flag.rules) + 1,
            "form": form,
            "formset": formset,
        }
        return render(request, self.template_name, context, status=status)


class RuleChangeView(RoleRequiredMixin, View):
    """Move a rule up or down, or delete it, as the page showed the rules (its ``version``)."""

    required_permission = CHANGE

    def post(self, request: HttpRequest, key: str, index: int) -> HttpResponse:
        flag = _flag_or_404(key)
        operation = request.POST.get("operation")
        try:
            expected = int(request.POST.get("version", ""))
        except ValueError:
            messages.error(request, "This page is out of date; reload it and try again.")
            return htmx_redirect(request, _page_url(flag, "rules-panel"))
        writing = {"expected_version": expected, **writer(request)}
        try:
            if operation == "delete":
                services.flag_rule_delete(flag=flag, index=index, **writing)
                messages.success(request, f"Rule {index + 1} deleted.")
            elif operation in ("up", "down"):
                to = index - 1 if operation == "up" else index + 1
                services.flag_rule_move(flag=flag, index=index, to=to, **writing)
                messages.success(request, f"Rule {index + 1} moved to {to + 1}.")
            else:
                messages.error(request, "Say whether to move the rule up or down, or delete it.")
        except CanaryError as error:
            messages.error(request, error.message)
        return htmx_redirect(request, _page_url(flag, "rules-panel"))


# --- segments -----------------------------------------------------------------------------------


class SegmentListView(RoleRequiredMixin, View):
    template_name = "flags/segments.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        filterset = SegmentFilterSet(request.GET, queryset=selectors.segments())
        segments = list(filterset.qs) if filterset.is_valid() else []
        usage = selectors.segment_usage()
        rows = [
            {
                "segment": segment,
                "constraints": [describe_constraint(c) for c in segment.constraints],
                "used_by": usage.get(segment.key, []),
            }
            for segment in segments
        ]
        return render(
            request,
            self.template_name,
            {
                "filterset": filterset,
                "rows": rows,
                "can_change": request.user.has_perm("flags.change_segment"),
            },
        )


class SegmentEditView(RoleRequiredMixin, View):
    """Create (no key) or change a segment; GET is open to every role, POST needs the perm."""

    template_name = "flags/segment.html"

    def get(self, request: HttpRequest, key: str | None = None) -> HttpResponse:
        segment = _segment_or_404(key) if key else None
        form = SegmentForm(
            initial={
                "key": segment.key if segment else "",
                "name": segment.name if segment else "",
                "description": segment.description if segment else "",
            }
        )
        formset = constraint_formset(constraints=segment.constraints if segment else [], extra=1)
        return self._render(request, segment, form, formset)

    def post(self, request: HttpRequest, key: str | None = None) -> HttpResponse:
        permission = "flags.change_segment" if key else "flags.add_segment"
        if not request.user.has_perm(permission):
            return self.handle_no_permission()
        segment = _segment_or_404(key) if key else None
        data = request.POST.copy()
        if segment is not None:
            data["key"] = segment.key
        form = SegmentForm(data)
        formset = constraint_formset(data)
        if "add_constraint" in request.POST:
            data["constraints-TOTAL_FORMS"] = str(formset.total_form_count() + 1)
            return self._render(request, segment, SegmentForm(data), constraint_formset(data))
        if form.is_valid() and formset.is_valid():
            kept = [f for f in formset.forms if not f.cleaned_data.get("DELETE") and f.constraint()]
            fields = {
                "name": form.cleaned_data["name"],
                "description": form.cleaned_data["description"],
                "constraints": constraints_of(formset),
            }
            try:
                if segment is None:
                    segment = services.segment_create(
                        key=form.cleaned_data["key"],
                        **fields,
                        **writer(request),
                    )
                else:
                    segment = services.segment_update(
                        segment=segment, changes=fields, **writer(request)
                    )
            except CanaryError as error:
                add_error_fields(form, error, rows=kept, rows_at="constraints")
            else:
                messages.success(request, f"Segment '{segment.key}' saved.")
                return htmx_redirect(request, reverse("flags:segment-detail", args=[segment.key]))
        return self._render(request, segment, form, formset, status=400)

    def _render(
        self,
        request: HttpRequest,
        segment: Any,
        form: SegmentForm,
        formset: Any,
        *,
        status: int = 200,
    ) -> HttpResponse:
        context = {
            "segment": segment,
            "form": form,
            "formset": formset,
            "used_by": selectors.segment_usage().get(segment.key, []) if segment else [],
            "history": selectors.segment_history(segment=segment)[:HISTORY_LIMIT]
            if segment
            else [],
            "can_change": request.user.has_perm(
                "flags.change_segment" if segment else "flags.add_segment"
            ),
        }
        return render(request, self.template_name, context, status=status)


class SegmentDeleteView(RoleRequiredMixin, View):
    required_permission = "flags.delete_segment"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        segment = _segment_or_404(key)
        try:
            services.segment_delete(segment=segment, **writer(request))
        except CanaryError as error:
            messages.error(request, error.message)
            return htmx_redirect(request, reverse("flags:segment-detail", args=[key]))
        messages.success(request, f"Segment '{key}' deleted.")
        return htmx_redirect(request, reverse("flags:segment-list"))


# --- evaluation keys ----------------------------------------------------------------------------


class EvaluationKeyListView(CredentialsPageView):
    """OFREP evaluation keys. A new key's secret is shown once, here."""

    template_name = "flags/keys.html"
    partial = "key-panel"
    form_class = EvaluationKeyForm
    issued_as = "new_key"

    def page_context(self, request: HttpRequest) -> dict[str, Any]:
        return {
            "keys": selectors.evaluation_keys(),
            "can_change": request.user.has_perm("flags.add_evaluationkey"),
        }

    def may_issue(self, request: HttpRequest) -> bool:
        return request.user.has_perm("flags.add_evaluationkey")

    def issue(self, request: HttpRequest, data: dict[str, Any]) -> tuple[Any, str]:
        return services.evaluation_key_create(
            name=data["name"], rate_limit=data["rate_limit"], **writer(request)
        )


class EvaluationKeyRevokeView(CredentialRevokeView):
    required_permission = "flags.change_evaluationkey"
    noun = "Evaluation key"
    page = "flags:key-list"

    def revoke(self, request: HttpRequest, credential_id: int) -> EvaluationKey:
        return services.evaluation_key_revoke(key_id=credential_id, **writer(request))


# --- helpers ------------------------------------------------------------------------------------


def _flag_or_404(key: str) -> Flag:
    try:
        return selectors.flag_get(key=key)
    except NotFound as error:
        raise Http404(error.message) from None


def _segment_or_404(key: str) -> Any:
    try:
        return selectors.segment_get(key=key)
    except NotFound as error:
        raise Http404(error.message) from None


def _after(path: str, prefix: str) -> str:
    """``path`` without ``prefix`` and the dot after it: ``rules[0].serve`` -> ``serve``."""
    if path.startswith(prefix):
        return path[len(prefix) :].lstrip(".")
    return path


def _swaps_row(request: HttpRequest) -> bool:
    """Whether htmx asks for one row of the list (its buttons) rather than the flag's page."""
    return (htmx_target(request) or "").startswith("flag-row-")
