"""Dashboard pages of the site itself (audit trail, profile), the error pages and the process
probes. The overview, which reads every app, is `canary_site.overview`."""

from __future__ import annotations

import sys
from typing import Any

from django import forms
from django.contrib import messages
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView

from canary_site import selectors, services
from canary_site.audit import request_source
from canary_site.celery import app as celery_app
from canary_site.exceptions import CanaryError, error_body, is_database_unavailable
from canary_site.filtersets import AuditEntryFilterSet
from canary_site.forms import ApiTokenForm, add_error_fields
from canary_site.htmx import HtmxPartialMixin, partial_template
from canary_site.htmx import redirect as htmx_redirect
from canary_site.middleware import database_unavailable_response, wants_json
from canary_site.roles import RoleRequiredMixin

AUDIT_PAGE_SIZE = 50
READY_CACHE_KEY = "readyz"


class AuditListView(RoleRequiredMixin, HtmxPartialMixin, TemplateView):
    template_name = "canary_site/audit.html"
    required_permission = "canary_site.view_auditentry"
    htmx_partial = "audit-table"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        filterset = AuditEntryFilterSet(self.request.GET, queryset=selectors.audit_entries())
        entries = filterset.qs[:AUDIT_PAGE_SIZE] if filterset.is_valid() else []
        return super().get_context_data(filterset=filterset, entries=entries, **kwargs)


@method_decorator(never_cache, name="dispatch")  # the secret shown once must stay in no cache
class CredentialsPageView(RoleRequiredMixin, View):
    """A page listing someone's credentials (API tokens, evaluation keys) with a form that
    issues one: the new secret is shown once, on the answer to that post, and the form comes
    back empty. Over htmx the answer is the region ``partial``."""

    template_name = ""
    partial = ""
    form_class: type[forms.Form] = forms.Form
    # The new credential's name in the context, beside ``new_secret``.
    issued_as = ""

    def page_context(self, request: HttpRequest) -> dict[str, Any]:
        raise NotImplementedError

    def issue(self, request: HttpRequest, data: dict[str, Any]) -> tuple[Any, str]:
        """The new credential and its secret; a ``CanaryError`` when the service refuses."""
        raise NotImplementedError

    def may_issue(self, request: HttpRequest) -> bool:
        return True

    def render_page(
        self, request: HttpRequest, form: forms.Form, *, status: int = 200, **extra: Any
    ) -> HttpResponse:
        context = {"form": form, **self.page_context(request), **extra}
        template = partial_template(request, self.template_name, self.partial)
        return render(request, template, context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.render_page(request, self.form_class())

    def post(self, request: HttpRequest) -> HttpResponse:
        if not self.may_issue(request):
            return self.handle_no_permission()
        form = self.form_class(request.POST)
        if form.is_valid():
            try:
                credential, secret = self.issue(request, form.cleaned_data)
            except CanaryError as error:
                add_error_fields(form, error)
            else:
                extra = {self.issued_as: credential, "new_secret": secret}
                return self.render_page(request, self.form_class(), **extra)
        return self.render_page(request, form, status=400)


class ProfileView(CredentialsPageView):
    """The signed-in user's roles and API tokens. A new token's secret is shown once, here."""

    template_name = "canary_site/profile.html"
    partial = "token-panel"
    form_class = ApiTokenForm
    issued_as = "new_token"

    def page_context(self, request: HttpRequest) -> dict[str, Any]:
        return {"tokens": selectors.api_tokens_for_user(user=request.user)}

    def issue(self, request: HttpRequest, data: dict[str, Any]) -> tuple[Any, str]:
        return services.api_token_create(user=request.user, source=request_source(request), **data)


class CredentialRevokeView(RoleRequiredMixin, View):
    """Revokes one credential for good, then goes back to the page that lists them, with what
    happened as a message."""

    # What the credential is called in the message, and the URL name of its page.
    noun = ""
    page = ""

    def revoke(self, request: HttpRequest, credential_id: int) -> Any:
        raise NotImplementedError

    def post(self, request: HttpRequest, **path: int) -> HttpResponse:
        # The path holds the one id, named after what it is (``token_id``, ``key_id``).
        (credential_id,) = path.values()
        try:
            credential = self.revoke(request, credential_id)
        except CanaryError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"{self.noun} '{credential.name}' revoked.")
        return htmx_redirect(request, self.page)


class TokenRevokeView(CredentialRevokeView):
    noun = "Token"
    page = "canary_site:profile"

    def revoke(self, request: HttpRequest, credential_id: int) -> Any:
        return services.api_token_revoke(
            user=request.user, token_id=credential_id, source=request_source(request)
        )


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving requests; nothing else is checked."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and the broker answer; 503 otherwise, naming what failed. Beside
    the checks, ``beat`` says which beat ticks (``hostname:pid``) and how long ago.

    The cache is reported beside them but does not make the process unready: flags keep
    serving from their snapshot and writes keep succeeding without it (changes then travel
    through the database version), so a cache outage is ``degraded`` with 200. Taking every web
    process out of its load balancer because a shared cache is down would turn a slower
    convergence into an outage.
    """
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as error:  # any failure means not ready
        checks["database"] = f"error: {error.__class__.__name__}"
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as error:
        checks["broker"] = f"error: {error.__class__.__name__}"
    try:
        cache.set(READY_CACHE_KEY, "ok", timeout=60)
        checks["cache"] = "ok"
    except Exception as error:
        checks["cache"] = f"error: {error.__class__.__name__}"
    if checks["database"] != "ok" or checks["broker"] != "ok":
        status, code = "unavailable", 503
    elif checks["cache"] != "ok":
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    beat = _beat_status(readable=checks["database"] == "ok")
    return JsonResponse({"status": status, "checks": checks, "beat": beat}, status=code)


def _beat_status(*, readable: bool) -> dict[str, Any]:
    """Which beat ticks and how long ago, from its last heartbeat; reported, never judged: a
    stopped beat stops canaries but not this web process. ``unknown`` when the database cannot
    say (a second try at a database that just failed would only slow the probe)."""
    unknown = {"identity": "unknown", "last_tick_seconds_ago": None}
    if not readable:
        return unknown
    try:
        last = selectors.heartbeat_last(name="beat")
    except Exception:  # the probe answers whatever fails
        return unknown
    if last is None:
        return {"identity": None, "last_tick_seconds_ago": None}
    identity, age = last
    return {"identity": identity or None, "last_tick_seconds_ago": round(age, 1)}


def _error_response(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if wants_json(request):
        return JsonResponse(error_body(code, message), status=status)
    context = {"status": status, "code": code, "message": message}
    return render(request, "errors/error.html", context, status=status)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    return _error_response(
        request,
        403,
        "csrf_failed",
        "The form's security token was missing or stale. Reload the page and try again.",
    )


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_response(request, 400, "bad_request", "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_response(request, 403, "forbidden", "Your role does not allow this.")


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error_response(request, 404, "not_found", f"Nothing at {request.path}.")


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls this while handling the exception, so it is still at hand: a database that
    # went away outside any view (a session saved on the way out) is a 503, not a bug.
    failure = sys.exc_info()[1]
    if failure is not None and is_database_unavailable(failure):
        return database_unavailable_response(request, failure)
    return _error_response(request, 500, "server_error", "Something went wrong on our side.")
