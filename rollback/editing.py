"""The editor the dashboard shares for rollback plans and kill switches: a definition edited in
a form (with rows: a plan's actions, a switch's conditions) or as YAML, checked as you type and
saved by the object's services. Each editor says what differs (its forms, its rows, the
service it saves with); the flow of a save is here once."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views import View

from canary_site.exceptions import CanaryError
from canary_site.htmx import partial_template, redirect
from canary_site.roles import RoleRequiredMixin
from deployments.config import ConfigError, load_text


def editor_mode(request: HttpRequest) -> str:
    """The editor's tab: ``yaml`` or ``form``."""
    data = request.POST if request.method == "POST" else request.GET
    return "yaml" if data.get("mode") == "yaml" else "form"


def text_definition(text_form: forms.Form, *, noun: str, strict: bool = True) -> Any:
    """The pasted definition, or None with the syntax error on the text field. ``strict``:
    a text form that does not validate (too long, say) is None too."""
    if not text_form.is_valid() and strict:
        return None
    text = (text_form.cleaned_data.get("definition_text") or "").strip()
    if not text:
        text_form.add_error("definition_text", f"Write the {noun} here, in YAML or JSON.")
        return None
    try:
        return load_text(text)
    except ConfigError as error:
        text_form.add_error("definition_text", str(error))
        return None


def text_findings(text_form: forms.Form, **extra: Any) -> dict[str, Any]:
    """The live check's findings on a text that does not read."""
    return {
        "valid": False,
        "errors": [
            {"field": "", "where": "", "message": " ".join(problems)}
            for problems in text_form.errors.values()
        ],
        **extra,
    }


class DefinitionEditorView(RoleRequiredMixin, View):
    """Create or edit an object as its definition: the form with its rows, or YAML."""

    template_name: str
    fragment: str
    form_class: type[forms.Form]
    text_form_class: type[forms.Form]
    noun: str  # in "Write the plan here"
    title: str  # in "Rollback plan 'x' saved."
    pk_kwarg: str
    detail_route: str
    strict_text = True

    # ---- what each editor says

    def found(self, pk: int) -> models.Model:
        raise NotImplementedError

    def posted_rows(self, data: Any) -> list[forms.Form]:
        raise NotImplementedError

    def edited_rows(self, data: Any, rows: list[forms.Form], op: str) -> list[forms.Form]:
        raise NotImplementedError

    def built(self, form: forms.Form, rows: list[forms.Form]) -> Any:
        """The definition the form says, with ``definition`` and ``row_of``."""
        raise NotImplementedError

    def reason_of(
        self, request: HttpRequest, form: forms.Form, text_form: forms.Form, mode: str
    ) -> str | None:
        """The reason typed, or None with the problem added to the tab shown."""
        return request.POST.get("reason", "")[:2000]

    def save(self, request: HttpRequest, obj: Any, definition: Any, reason: str) -> Any:
        raise NotImplementedError

    def show_text_error(self, text_form: forms.Form, error: CanaryError) -> None:
        raise NotImplementedError

    def show_form_error(
        self, form: forms.Form, rows: list[forms.Form], error: CanaryError, row_of: list[int]
    ) -> None:
        raise NotImplementedError

    def extra_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        return {}

    # ---- the flow

    def _object(self, pk: int | None) -> Any:
        return self.found(pk) if pk is not None else None

    def post(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        obj = self._object(kwargs.get(self.pk_kwarg))
        mode = editor_mode(request)
        op = request.POST.get("op", "save")
        form = self.form_class(request.POST)
        rows = self.posted_rows(request.POST)
        text_form = self.text_form_class(request.POST)
        if mode == "form" and op != "save":
            rows = self.edited_rows(request.POST, rows, op)
            form.is_valid()
            return self.render_editor(request, obj, form, rows, text_form)
        row_of: list[int] = []
        if mode == "yaml":
            definition = text_definition(text_form, noun=self.noun, strict=self.strict_text)
            if definition is None:
                return self.render_editor(request, obj, form, rows, text_form, status=400)
        else:
            built = self.built(form, rows)
            definition, row_of = built.definition, built.row_of
            if form.errors or any(row.errors for row in rows):
                return self.render_editor(request, obj, form, rows, text_form, status=400)
        reason = self.reason_of(request, form, text_form, mode)
        if reason is None:
            return self.render_editor(request, obj, form, rows, text_form, status=400)
        try:
            saved = self.save(request, obj, definition, reason)
        except CanaryError as error:
            if mode == "yaml":
                self.show_text_error(text_form, error)
            else:
                self.show_form_error(form, rows, error, row_of)
            return self.render_editor(request, obj, form, rows, text_form, status=error.status_code)
        messages.success(request, f"{self.title} '{saved.name}' saved.")
        return redirect(request, self.detail_route, saved.pk)

    def render_editor(
        self,
        request: HttpRequest,
        obj: Any,
        form: forms.Form,
        rows: list[forms.Form],
        text_form: forms.Form,
        *,
        status: int = 200,
    ) -> HttpResponse:
        context = {
            "mode": editor_mode(request),
            "form": form,
            "rows": rows,
            "text_form": text_form,
            "action": request.path,
            "reason": request.POST.get("reason", "") if request.method == "POST" else "",
            **self.extra_context(request, obj),
        }
        template = partial_template(request, self.template_name, self.fragment)
        return render(request, template, context, status=status)
