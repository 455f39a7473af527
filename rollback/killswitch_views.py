"""Dashboard pages of the kill switches: the list with each switch's live state, the editor (a
form with its conditions as rows, or YAML, checked as you type), a switch's page with its state,
Trigger and Recover, its activations and a chart of each watched metric against its threshold,
the confirmation of the navigation's red button (kill all) naming what will stop, and delete.

The buttons call the same services as ``POST /api/v1/kill-switches/{id}/trigger/`` and its
twins. The list and a switch's state poll every 2 seconds and are sent again only when
something they show has changed (a poll that finds nothing new answers 204), so a reason being
typed survives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views import View

from canary_site.audit import writer
from canary_site.exceptions import CanaryError
from canary_site.gates import ApprovalRequired
from canary_site.htmx import partial_template, redirect
from canary_site.roles import RoleRequiredMixin
from rollback import killswitch_charts, killswitches, services
from rollback.api.definitions import refuse_unstorable
from rollback.choices import ActivationState, KillSwitchScope
from rollback.editing import DefinitionEditorView, editor_mode, text_definition, text_findings
from rollback.killswitch_forms import (
    MAX_CONDITIONS,
    NEW_ROWS,
    STARTER,
    ConditionRowForm,
    KillSwitchForm,
    KillSwitchTextForm,
    ReasonForm,
    condition_rows,
    edited_rows,
    in_form_units,
    initial_rows,
    issues_of,
    place_of,
    show_switch_error,
    switch_definition,
    switch_initial,
    switch_yaml,
)
from rollback.killswitch_selectors import (
    active_of,
    changed,
    missing_targets,
    reach,
    spec_of,
    switch_reach,
    switches,
)
from rollback.models import KillSwitch
from rollback.services.killswitches import KILL_ALL_NAME
from routing.models import Service

VIEW = "rollback.view_killswitch"
ADD = "rollback.add_killswitch"
CHANGE = "rollback.change_killswitch"
DELETE = "rollback.delete_killswitch"
TRIGGER = "rollback.trigger_killswitch"
POLL_SECONDS = 2
ACTIVATIONS_SHOWN = 50

LIST = "rollback/killswitches/list.html"
DETAIL = "rollback/killswitches/detail.html"
EDITOR = "rollback/killswitches/form.html"
KILL_ALL = "rollback/killswitches/kill_all.html"


def _switch(switch_id: int) -> KillSwitch:
    switch = switches().filter(pk=switch_id).first()
    if switch is None:
        raise Http404(f"There is no kill switch {switch_id}.")
    return switch


def _digest(parts: Iterable[Any]) -> str:
    return hashlib.sha256("|".join(str(part) for part in parts).encode()).hexdigest()[:16]


def _switch_parts(switch: KillSwitch) -> list[Any]:
    active = active_of(switch)
    return [
        switch.pk,
        switch.state,
        switch.armed_since,
        switch.arming_reason,
        switch.updated_at,
        active.pk if active else "",
        active.recovery if active else "",
    ]


def _in_order(switch: KillSwitch, spec: killswitches.KillSwitchSpec | None) -> dict[str, Any]:
    """The switch in the guide's order (the database keeps a JSON object's keys in an order
    of its own); as stored when it no longer reads."""
    return killswitches.spec_to_dict(spec) if spec is not None else dict(switch.definition)


def _target(switch: KillSwitch) -> str:
    if switch.scope == KillSwitchScope.SERVICE:
        return switch.service.name if switch.service_id else "(no service)"
    if switch.scope == KillSwitchScope.FLAG:
        return ", ".join(flag.key for flag in switch.flags.all()) or "(no flag)"
    return "every service, every flag that allows it"


def row_of(switch: KillSwitch) -> dict[str, Any]:
    return {"switch": switch, "active": active_of(switch), "target": _target(switch)}


# --------------------------------------------------------------------------------- list


class KillSwitchListView(RoleRequiredMixin, View):
    """Every switch, critical first, with its scope, target, priority and live state."""

    required_permission = VIEW

    def get(self, request: HttpRequest) -> HttpResponse:
        found = list(switches())
        signature = _digest(part for switch in found for part in _switch_parts(switch))
        template = partial_template(request, LIST, targets={"killswitch-list"})
        if template != LIST and request.GET.get("seen") == signature:
            return HttpResponse(status=204)
        user = request.user
        context = {
            "rows": [row_of(switch) for switch in found],
            "signature": signature,
            "poll_seconds": POLL_SECONDS,
            "may_create": user.has_perm(ADD),
            "may_press": user.has_perm(TRIGGER),
        }
        return render(request, template, context)


# --------------------------------------------------------------------------------- a switch


def live_context(request: HttpRequest, switch: KillSwitch, **extra: Any) -> dict[str, Any]:
    """The switch's live region: its state, what it has stopped (or would), its buttons and
    its activations."""
    active = active_of(switch)
    activations = list(
        switch.activations.select_related("activated_by", "recovered_by")[:ACTIVATIONS_SHOWN]
    )
    records = changed(activations)
    current = next(
        (record for record in records if record.activation.state == ActivationState.ACTIVE), None
    )
    preview = switch_reach(switch) if active is None else None
    parts = [*_switch_parts(switch)]
    for record in records:
        parts += [record.activation.pk, record.activation.state, record.activation.recovery]
        parts += [flag.status if flag else "-" for _, flag in record.flags]
        parts += [service.halted if service else "-" for _, service in record.services]
        parts += [d.status if d else "-" for _, d in record.paused + record.rolled_back]
    if preview is not None:
        parts += [(f.pk, f.status) for f in preview.flags + preview.killed_already]
        parts += [(s.pk, s.halted) for s in preview.services]
        parts += [d.pk for d in preview.deployments]
    user = request.user
    return {
        "switch": switch,
        "active": active,
        "records": records,
        "current": current,
        "preview": preview,
        "signature": _digest(parts),
        "poll_seconds": POLL_SECONDS,
        "may_press": user.has_perm(TRIGGER),
        **extra,
    }


def detail_context(request: HttpRequest, switch: KillSwitch, **extra: Any) -> dict[str, Any]:
    user = request.user
    spec = spec_of(switch)
    context = live_context(request, switch, **extra)
    activations = [record.activation for record in context["records"]]
    context.update(
        spec=spec,
        target=_target(switch),
        definition_yaml=switch_yaml(_in_order(switch, spec)),
        charts=killswitch_charts.condition_charts(spec, activations) if spec else [],
        may_edit=user.has_perm(CHANGE),
        may_delete=user.has_perm(DELETE),
    )
    return context


class KillSwitchDetailView(RoleRequiredMixin, View):
    """A switch: its definition, its live state, Trigger and Recover, its activations and the
    charts of its watched metrics."""

    required_permission = VIEW

    def get(self, request: HttpRequest, switch_id: int) -> HttpResponse:
        switch = _switch(switch_id)
        template = partial_template(request, DETAIL, targets={"killswitch-live"})
        if template == DETAIL:
            return render(request, DETAIL, detail_context(request, switch))
        context = live_context(request, switch)
        if request.GET.get("seen") == context["signature"]:
            return HttpResponse(status=204)
        return render(request, template, context)


def _answer(
    request: HttpRequest,
    switch_id: int,
    *,
    status: int,
    error_key: str = "",
    error: str = "",
    approval: ApprovalRequired | None = None,
    reason: str = "",
) -> HttpResponse:
    """A button's refusal (or its approval request): the live region over htmx, the page
    otherwise, with the reason typed kept."""
    switch = _switch(switch_id)
    extra: dict[str, Any] = {"approval": approval}
    if error_key:
        extra.update({f"{error_key}_error": error, f"{error_key}_reason": reason})
    if request.htmx:
        context = live_context(request, switch, **extra)
        return render(request, f"{DETAIL}#killswitch-live", context, status=status)
    return render(request, DETAIL, detail_context(request, switch, **extra), status=status)


class KillSwitchTriggerView(RoleRequiredMixin, View):
    """Fire the switch by hand (``kill_switch_trigger``; never gated, a reason required)."""

    required_permission = TRIGGER

    def post(self, request: HttpRequest, switch_id: int) -> HttpResponse:
        switch = _switch(switch_id)
        form = ReasonForm(request.POST)
        reason = request.POST.get("reason", "")
        if not form.is_valid():
            return _answer(
                request,
                switch.pk,
                status=400,
                error_key="trigger",
                error=_form_said(form),
                reason=reason,
            )
        try:
            activation = services.kill_switch_trigger(
                switch=switch, reason=form.cleaned_data["reason"], **writer(request)
            )
        except CanaryError as failure:
            return _answer(
                request,
                switch.pk,
                status=failure.status_code,
                error_key="trigger",
                error=_said(failure),
                reason=reason,
            )
        messages.success(request, f"Kill switch '{switch.name}' is active (#{activation.pk}).")
        return redirect(request, "rollback:killswitch-detail", switch.pk)


class KillSwitchRecoverView(RoleRequiredMixin, View):
    """Recover the switch (``kill_switch_recover``): what its activation changed is put back,
    or an approval request opens when a policy on ``killswitch.recover`` asks for one."""

    required_permission = TRIGGER

    def post(self, request: HttpRequest, switch_id: int) -> HttpResponse:
        switch = _switch(switch_id)
        form = ReasonForm(request.POST)
        reason = request.POST.get("reason", "")
        if not form.is_valid():
            return _answer(
                request,
                switch.pk,
                status=400,
                error_key="recover",
                error=_form_said(form),
                reason=reason,
            )
        try:
            services.kill_switch_recover(
                switch_id=switch.pk, reason=form.cleaned_data["reason"], **writer(request)
            )
        except ApprovalRequired as held:
            return _answer(request, switch.pk, status=held.status_code, approval=held)
        except CanaryError as failure:
            return _answer(
                request,
                switch.pk,
                status=failure.status_code,
                error_key="recover",
                error=_said(failure),
                reason=reason,
            )
        messages.success(request, f"Kill switch '{switch.name}' recovered.")
        return redirect(request, "rollback:killswitch-detail", switch.pk)


def _form_said(form: ReasonForm) -> str:
    return " ".join(message for problems in form.errors.values() for message in problems)


def _said(error: CanaryError) -> str:
    """A service's refusal in the words of the field it is next to."""
    return " ".join(message for _, message in issues_of(error))


# ------------------------------------------------------------------------------- kill all


class KillAllView(RoleRequiredMixin, View):
    """The red button's confirmation: what will stop (the services halted, the running
    canaries paused, the flags killed) and what keeps serving; confirmed with a reason, it
    calls ``kill_switch_kill_all`` and shows the activation on the switch's page."""

    required_permission = TRIGGER

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request, ReasonForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = ReasonForm(request.POST)
        if form.is_valid():
            try:
                activation = services.kill_switch_kill_all(
                    reason=form.cleaned_data["reason"], **writer(request)
                )
            except CanaryError as failure:
                form.add_error("reason", _said(failure))
                return self._render(request, form, status=failure.status_code)
            messages.warning(
                request,
                f"Kill-all is active (#{activation.pk}): every service is halted and every "
                "flag that allows it is killed. Recover it here when it is safe.",
            )
            return redirect(request, "rollback:killswitch-detail", activation.switch_id)
        return self._render(request, form, status=400)

    def _render(self, request: HttpRequest, form: ReasonForm, *, status: int = 200) -> HttpResponse:
        switch = KillSwitch.objects.filter(name=KILL_ALL_NAME).first()
        active = switch.activations.filter(state=ActivationState.ACTIVE).first() if switch else None
        spec = spec_of(switch) if switch else None
        action = spec.deployment_action.value if spec else killswitches.DeploymentAction.PAUSE
        context = {
            "form": form,
            "switch": switch,
            "active": active,
            "reach": reach(scope=KillSwitchScope.SYSTEM, action=action),
        }
        return render(request, KILL_ALL, context, status=status)


# --------------------------------------------------------------------------------- editor


class KillSwitchEditorView(DefinitionEditorView):
    """Create or edit a switch: the form with its condition rows, or the switch as YAML;
    checked as you type, saved by ``kill_switch_create`` / ``kill_switch_update``."""

    required_permission = ADD
    template_name = EDITOR
    fragment = "killswitch-editor"
    form_class = KillSwitchForm
    text_form_class = KillSwitchTextForm
    noun = "kill switch"
    title = "Kill switch"
    pk_kwarg = "switch_id"
    detail_route = "rollback:killswitch-detail"
    # A text the form refuses keeps its error and gets the prompt to write one too.
    strict_text = False

    def found(self, pk: int) -> KillSwitch:
        return _switch(pk)

    def get(self, request: HttpRequest, switch_id: int | None = None) -> HttpResponse:
        switch = self._object(switch_id)
        if switch is not None:
            form = KillSwitchForm(initial=switch_initial(switch.definition))
            rows = initial_rows(switch.definition)
            text = switch_yaml(_in_order(switch, spec_of(switch)))
        else:
            form = KillSwitchForm()
            rows = initial_rows({"triggerConditions": NEW_ROWS})
            text = switch_yaml(STARTER)
        text_form = KillSwitchTextForm(initial={"definition_text": text})
        return self.render_editor(request, switch, form, rows, text_form)

    def posted_rows(self, data: Any) -> list[ConditionRowForm]:
        return condition_rows(data)

    def edited_rows(self, data: Any, rows: list[Any], op: str) -> list[ConditionRowForm]:
        return edited_rows(data, rows, op)

    def built(self, form: Any, rows: list[Any]) -> Any:
        return switch_definition(form, rows)

    def save(self, request: HttpRequest, obj: Any, definition: Any, reason: str) -> KillSwitch:
        refuse_unstorable(definition)
        if obj is None:
            return services.kill_switch_create(
                definition=definition, reason=reason, **writer(request)
            )
        return services.kill_switch_update(
            switch=obj, definition=definition, reason=reason, **writer(request)
        )

    def show_text_error(self, text_form: Any, error: CanaryError) -> None:
        """A service's errors on the text field, each saying the path it is about."""
        for path, message in issues_of(error):
            text_form.add_error("definition_text", f"{path}: {message}" if path else message)

    def show_form_error(self, form: Any, rows: list[Any], error: CanaryError, row_of: Any) -> None:
        show_switch_error(form, rows, error, row_of)

    def extra_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        return {
            "switch": obj,
            "max_conditions": MAX_CONDITIONS,
            "service_names": list(Service.objects.order_by("name").values_list("name", flat=True)),
        }


class KillSwitchUpdateView(KillSwitchEditorView):
    required_permission = CHANGE


def findings_of(definition: Any, row_of: Sequence[int] | None = None) -> dict[str, Any]:
    """What the switch's reader says of ``definition``, each error with the form's words for
    the place it names (``Condition 2: threshold``); and whether the service and the flags it
    names exist, which the save checks too."""
    errors: list[dict[str, Any]] = []
    try:
        refuse_unstorable(definition)
        spec = services.kill_switch_validate(definition=definition)
    except CanaryError as error:
        spec = None
        for path, message in issues_of(error):
            place = place_of(path, row_of) if row_of is not None else None
            errors.append(
                {
                    "field": path,
                    "where": _where(path, row_of),
                    "message": in_form_units(message, place.name) if place else message,
                }
            )
    for path, message in missing_targets(spec) if spec is not None else []:
        errors.append({"field": path, "where": _where(path, row_of), "message": message})
    return {"valid": not errors, "errors": errors, "spec": spec if not errors else None}


def _where(path: str, row_of: Sequence[int] | None) -> str:
    return place_of(path, row_of).where(KillSwitchForm()) if row_of is not None else ""


class KillSwitchValidateView(RoleRequiredMixin, View):
    """The editor's live check: the findings on what the form (or the YAML) says now."""

    required_permission = ADD

    def post(self, request: HttpRequest) -> HttpResponse:
        if editor_mode(request) == "yaml":
            text_form = KillSwitchTextForm(request.POST)
            definition = text_definition(text_form, noun="kill switch", strict=False)
            findings = text_findings(text_form) if definition is None else findings_of(definition)
        else:
            form = KillSwitchForm(request.POST)
            rows = condition_rows(request.POST)
            built = switch_definition(form, rows)
            findings = findings_of(built.definition, built.row_of)
            # What the form itself could not read (a service that is not there, say).
            form_errors = [
                {"field": name, "where": str(form[name].label), "message": m}
                for name, problems in form.errors.items()
                if name in form.fields
                for m in problems
            ]
            if form_errors:
                findings["errors"] = form_errors + [
                    issue
                    for issue in findings["errors"]
                    if issue["where"] not in {e["where"] for e in form_errors}
                ]
                findings["valid"] = False
        return render(request, f"{EDITOR}#killswitch-findings", {"findings": findings})


# --------------------------------------------------------------------------------- delete


class KillSwitchDeleteView(RoleRequiredMixin, View):
    """Delete a switch after a confirmation; refused (409, said on the page) while it is
    active."""

    required_permission = DELETE
    template_name = "rollback/killswitches/delete.html"

    def get(self, request: HttpRequest, switch_id: int) -> HttpResponse:
        switch = _switch(switch_id)
        return render(request, self.template_name, {"switch": switch, "active": active_of(switch)})

    def post(self, request: HttpRequest, switch_id: int) -> HttpResponse:
        switch = _switch(switch_id)
        form = ReasonForm(request.POST)
        reason = form.cleaned_data["reason"] if form.is_valid() else ""
        try:
            services.kill_switch_delete(switch=switch, reason=reason, **writer(request))
        except CanaryError as error:
            context = {"switch": switch, "active": active_of(switch), "error": error.message}
            return render(request, self.template_name, context, status=error.status_code)
        messages.success(request, f"Kill switch '{switch.name}' deleted.")
        return redirect(request, "rollback:killswitch-list")
