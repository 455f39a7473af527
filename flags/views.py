"""Dashboard pages of the flags app: the flag list, a flag's page with its editors, segments and
evaluation keys.

Every write calls ``flags.services``. Forms post to their own URL; over htmx the answer is the
region that changed (the list row, or the flag page's ``#flag-page``), and without JavaScript a
success redirects back to the page. A 400 re-renders the form with each error next to its field.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from canary_site.choices import Source
from canary_site.exceptions import CanaryError, NotFound
from canary_site.roles import RoleRequiredMixin
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
    add_service_errors,
    constraint_formset,
    constraints_of,
)
from flags.models import Flag

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
        template = self.template_name
        if request.htmx and request.htmx.target == "flag-table":
            template = f"{template}#flag-table"
        return render(
            request,
            template,
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
            data = form.cleaned_data
            try:
                flag = services.flag_create(
                    key=data["key"],
                    name=data["name"],
                    description=data["description"],
                    flag_type=data["flag_type"],
                    value_type=data["value_type"],
                    variants=data["variants"],
                    tags=data["tags"],
                    expires_on=data["expires_on"],
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                add_service_errors(form, error)
            else:
                messages.success(
                    request, f"Flag '{flag.key}' created, disabled until you enable it."
                )
                return _redirect(request, _page_url(flag))
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
        template = self.template_name
        if request.htmx:
            template = f"{template}#flag-page"
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
        "exposure_figure": charts.exposure_figure_json(series, title=f"Exposures: {label}"),
    }


class FlagDetailView(FlagPageMixin, View):
    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        return self.render_page(request, self.get_flag(key))


class FlagWriteView(FlagPageMixin, View):
    """A POST that changes the flag: on success the page (or its region) shows the new state."""

    required_permission = CHANGE
    anchor = ""

    def done(self, request: HttpRequest, flag: Flag, message: str) -> HttpResponse:
        if request.htmx:
            if request.htmx.target and request.htmx.target.startswith("flag-row-"):
                return render_row(request, flag)
            messages.success(request, message)
            return self.render_page(request, selectors.flag_get(key=flag.key))
        messages.success(request, message)
        return redirect(_page_url(flag, self.anchor))

    def refused(self, request: HttpRequest, flag: Flag, error: CanaryError) -> HttpResponse:
        """A state error (409) over htmx or not: the page, with the reason as a message."""
        messages.error(request, error.message)
        if request.htmx:
            if request.htmx.target and request.htmx.target.startswith("flag-row-"):
                return render_row(request, flag, status=error.status_code)
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
                flag = services.flag_enable(flag=flag, actor=request.user, source=Source.UI)
            elif wanted == FlagStatus.DISABLED:
                flag = services.flag_disable(flag=flag, actor=request.user, source=Source.UI)
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
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                add_service_errors(form, error)
            else:
                return self.done(
                    request, flag, f"Flag '{flag.key}' killed: everyone gets '{flag.off_variant}'."
                )
        if request.htmx and request.htmx.target and request.htmx.target.startswith("flag-row-"):
            messages.error(request, "Say why the flag is being killed.")
            return render_row(request, flag, status=400)
        return self.render_page(request, flag, status=400, kill_form=form)


class FlagDetailsView(FlagWriteView):
    anchor = "details-panel"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = FlagDetailsForm(request.POST, prefix="details")
        if form.is_valid():
            try:
                flag = services.flag_update(
                    flag=flag,
                    changes=form.cleaned_data,
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                add_service_errors(form, error)
            else:
                return self.done(request, flag, "Details saved.")
        return self.render_page(request, flag, status=400, details_form=form)


class FlagVariantsView(FlagWriteView):
    anchor = "variants-panel"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = VariantsForm(request.POST, prefix="variants")
        if form.is_valid():
            try:
                flag = services.flag_update(
                    flag=flag, changes=form.cleaned_data, actor=request.user, source=Source.UI
                )
            except CanaryError as error:
                add_service_errors(form, error)
            else:
                return self.done(request, flag, "Variants saved.")
        return self.render_page(request, flag, status=400, variants_form=form)


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
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                if error.status_code == 409:
                    return self.refused(request, flag, error)
                add_service_errors(form, error, lambda path: "percentage")
            else:
                return self.done(
                    request, flag, f"Rollout set to {form.cleaned_data['percentage']:g}%."
                )
        return self.render_page(request, flag, status=400, rollout_form=form)


class FlagDefaultRuleView(FlagWriteView):
    anchor = "default-panel"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = DefaultRuleForm(request.POST, variants=_variant_names(flag), prefix="default")
        if form.is_valid():
            try:
                flag = services.flag_update(
                    flag=flag,
                    changes={"default_rule": form.serve()},
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                add_service_errors(
                    form, error, lambda path: form.serve_error_field(_after(path, "default_rule"))
                )
            else:
                return self.done(request, flag, "Default rule saved.")
        return self.render_page(request, flag, status=400, default_form=form)


class FlagTargetsView(FlagWriteView):
    anchor = "targets-panel"

    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        form = TargetsForm(request.POST, variants=_variant_names(flag), prefix="targets")
        if form.is_valid():
            try:
                flag = services.flag_update(
                    flag=flag,
                    changes={"targets": form.targets()},
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                add_service_errors(form, error, form.field_for)
            else:
                return self.done(request, flag, "Individual targets saved.")
        return self.render_page(request, flag, status=400, targets_form=form)


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
            return render(
                request,
                "flags/detail.html#try-panel",
                {"flag": flag, "try_form": form, "result": result},
                status=status,
            )
        return self.render_page(request, flag, status=status, try_form=form, result=result)


class FlagExposuresView(FlagPageMixin, View):
    def get(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        if request.htmx:
            context = {"flag": flag, **exposure_context(flag, request.GET.get("window", "1h"))}
            return render(request, "flags/detail.html#exposure-panel", context)
        return self.render_page(request, flag)


class FlagDeleteView(FlagWriteView):
    def post(self, request: HttpRequest, key: str) -> HttpResponse:
        flag = self.get_flag(key)
        try:
            services.flag_delete(flag=flag, actor=request.user, source=Source.UI)
        except CanaryError as error:
            return self.refused(request, flag, error)
        messages.success(request, f"Flag '{flag.key}' deleted.")
        return _redirect(request, reverse("flags:index"))


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
            writer = {"actor": request.user, "source": Source.UI}
            expected = form.cleaned_data["version"]
            try:
                if index is None:
                    services.flag_rule_add(
                        flag=flag, rule=rule, expected_version=expected, **writer
                    )
                else:
                    services.flag_rule_update(
                        flag=flag, index=index, rule=rule, expected_version=expected, **writer
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
                return _redirect(request, _page_url(flag, "rules-panel"))
        elif "version" in form.errors:
            form.add_error(None, "This page is out of date; open the rule again.")
        return self._render(request, flag, index, form, formset, status=status)

    def _place_errors(self, error: CanaryError, form: RuleForm, kept: list[Any]) -> None:
        prefix = "rule"
        unplaced = CanaryError(error.message)
        for path, problems in error.fields.items():
            inner = _after(path, prefix)
            match = re.match(r"constraints\[(\d+)\]\.?(\w*)", inner)
            if match and int(match.group(1)) < len(kept):
                row = kept[int(match.group(1))]
                name = match.group(2) if match.group(2) in row.fields else None
                for problem in problems:
                    row.add_error(name, problem)
                continue
            if inner.startswith("serve"):
                name = form.serve_error_field(_after(inner, "serve"))
            elif inner.startswith("segments"):
                name = "segments"
            elif inner.startswith("name"):
                name = "name"
            else:
                unplaced.fields[path] = problems
                continue
            for problem in problems:
                form.add_error(name, problem)
        if unplaced.fields or not error.fields:
            add_service_errors(form, unplaced if error.fields else error)

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
            return _redirect(request, _page_url(flag, "rules-panel"))
        writer = {"actor": request.user, "source": Source.UI, "expected_version": expected}
        try:
            if operation == "delete":
                services.flag_rule_delete(flag=flag, index=index, **writer)
                messages.success(request, f"Rule {index + 1} deleted.")
            elif operation in ("up", "down"):
                to = index - 1 if operation == "up" else index + 1
                services.flag_rule_move(flag=flag, index=index, to=to, **writer)
                messages.success(request, f"Rule {index + 1} moved to {to + 1}.")
            else:
                messages.error(request, "Say whether to move the rule up or down, or delete it.")
        except CanaryError as error:
            messages.error(request, error.message)
        return _redirect(request, _page_url(flag, "rules-panel"))


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
                        actor=request.user,
                        source=Source.UI,
                    )
                else:
                    segment = services.segment_update(
                        segment=segment, changes=fields, actor=request.user, source=Source.UI
                    )
            except CanaryError as error:
                for path, problems in error.fields.items():
                    match = re.match(r"constraints\[(\d+)\]\.?(\w*)", path)
                    if match and int(match.group(1)) < len(kept):
                        row = kept[int(match.group(1))]
                        name = match.group(2) if match.group(2) in row.fields else None
                        for problem in problems:
                            row.add_error(name, problem)
                    else:
                        for problem in problems:
                            form.add_error(path if path in form.fields else None, problem)
                if not error.fields:
                    form.add_error(None, error.message)
            else:
                messages.success(request, f"Segment '{segment.key}' saved.")
                return _redirect(request, reverse("flags:segment-detail", args=[segment.key]))
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
            services.segment_delete(segment=segment, actor=request.user, source=Source.UI)
        except CanaryError as error:
            messages.error(request, error.message)
            return _redirect(request, reverse("flags:segment-detail", args=[key]))
        messages.success(request, f"Segment '{key}' deleted.")
        return _redirect(request, reverse("flags:segment-list"))


# --- evaluation keys ----------------------------------------------------------------------------


@method_decorator(never_cache, name="dispatch")  # the secret shown once must stay in no cache
class EvaluationKeyListView(RoleRequiredMixin, View):
    """OFREP evaluation keys. A new key's secret is shown once, here."""

    template_name = "flags/keys.html"

    def render_page(
        self, request: HttpRequest, form: EvaluationKeyForm, *, status: int = 200, **extra: Any
    ) -> HttpResponse:
        template = self.template_name
        if request.htmx:
            template = f"{template}#key-panel"
        context = {
            "form": form,
            "keys": selectors.evaluation_keys(),
            "can_change": request.user.has_perm("flags.add_evaluationkey"),
            **extra,
        }
        return render(request, template, context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.render_page(request, EvaluationKeyForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("flags.add_evaluationkey"):
            return self.handle_no_permission()
        form = EvaluationKeyForm(request.POST)
        if form.is_valid():
            try:
                key, secret = services.evaluation_key_create(
                    name=form.cleaned_data["name"],
                    rate_limit=form.cleaned_data["rate_limit"],
                    actor=request.user,
                    source=Source.UI,
                )
            except CanaryError as error:
                add_service_errors(form, error)
            else:
                return self.render_page(
                    request, EvaluationKeyForm(), new_key=key, new_secret=secret
                )
        return self.render_page(request, form, status=400)


class EvaluationKeyRevokeView(RoleRequiredMixin, View):
    required_permission = "flags.change_evaluationkey"

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        try:
            key = services.evaluation_key_revoke(
                key_id=key_id, actor=request.user, source=Source.UI
            )
        except CanaryError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"Evaluation key '{key.name}' revoked.")
        return _redirect(request, reverse("flags:key-list"))


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


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    """A redirect that htmx follows as a full page load (HX-Redirect) and a browser as a 303."""
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)
