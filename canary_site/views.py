"""Dashboard pages of the site itself (overview, audit trail, profile) and the process probes."""

from __future__ import annotations

import sys
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView

from canary_site import selectors, services
from canary_site.celery import app as celery_app
from canary_site.choices import Source
from canary_site.exceptions import CanaryError, error_body, is_database_unavailable
from canary_site.filtersets import AuditEntryFilterSet
from canary_site.forms import ApiTokenForm
from canary_site.middleware import API_PREFIXES, database_unavailable_response
from canary_site.roles import RoleRequiredMixin

AUDIT_PAGE_SIZE = 50
READY_CACHE_KEY = "readyz"


class OverviewView(RoleRequiredMixin, TemplateView):
    template_name = "canary_site/overview.html"

    def get_template_names(self) -> list[str]:
        if self.request.htmx:
            return [f"{self.template_name}#overview-counts"]
        return [self.template_name]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(counts=selectors.overview_counts(), **kwargs)


class AuditListView(RoleRequiredMixin, TemplateView):
    template_name = "canary_site/audit.html"
    required_permission = "canary_site.view_auditentry"

    def get_template_names(self) -> list[str]:
        if self.request.htmx:
            return [f"{self.template_name}#audit-table"]
        return [self.template_name]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        filterset = AuditEntryFilterSet(self.request.GET, queryset=selectors.audit_entries())
        entries = filterset.qs[:AUDIT_PAGE_SIZE] if filterset.is_valid() else []
        return super().get_context_data(filterset=filterset, entries=entries, **kwargs)


@method_decorator(never_cache, name="dispatch")  # the secret shown once must stay in no cache
class ProfileView(RoleRequiredMixin, View):
    """The signed-in user's roles and API tokens. A new token's secret is shown once, here."""

    template_name = "canary_site/profile.html"

    def render_page(
        self, request: HttpRequest, form: ApiTokenForm, *, status: int = 200, **extra: Any
    ) -> HttpResponse:
        context = {
            "form": form,
            "tokens": selectors.api_tokens_for_user(user=request.user),
            **extra,
        }
        template = self.template_name
        if request.htmx:
            template = f"{template}#token-panel"
        return render(request, template, context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.render_page(request, ApiTokenForm())

    def post(self, request: HttpRequest) -> HttpResponse:
        form = ApiTokenForm(request.POST)
        if not form.is_valid():
            return self.render_page(request, form, status=400)
        try:
            token, secret = services.api_token_create(
                user=request.user, source=Source.UI, **form.cleaned_data
            )
        except CanaryError as error:
            for field, problems in error.fields.items():
                for problem in problems:
                    form.add_error(field if field in form.fields else None, problem)
            return self.render_page(request, form, status=400)
        return self.render_page(request, ApiTokenForm(), new_token=token, new_secret=secret)


class TokenRevokeView(RoleRequiredMixin, View):
    def post(self, request: HttpRequest, token_id: int) -> HttpResponse:
        try:
            token = services.api_token_revoke(user=request.user, token_id=token_id)
        except CanaryError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"Token '{token.name}' revoked.")
        return redirect("canary_site:profile")


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving requests; nothing else is checked."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and the broker answer; 503 otherwise, naming what failed.

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
    return JsonResponse({"status": status, "checks": checks}, status=code)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES) or "application/json" in request.headers.get(
        "Accept", ""
    )


def _error_response(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if _wants_json(request):
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
