"""Request middleware: attributes audited writes to the signed-in user and the request's source,
and answers 503 instead of 500 while the database is unreachable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auditlog.context import auditlog_value
from auditlog.middleware import AuditlogMiddleware
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from canary_site.audit import API_PREFIXES, request_source
from canary_site.exceptions import (
    database_available,
    database_unavailable,
    is_database_unavailable,
)


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES) or "application/json" in request.headers.get(
        "Accept", ""
    )


def database_unavailable_response(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """503 with ``Retry-After`` and the one error body: JSON for API clients, the error page for
    people. The page is rendered without the request's context, whose user, roles and messages
    would each need the database that just failed."""
    error = database_unavailable(exc)
    if wants_json(request):
        response: HttpResponse = JsonResponse(error.as_body(), status=error.status_code)
    else:
        page = render_to_string(
            "errors/error.html",
            {"status": error.status_code, "code": error.code, "message": error.message},
        )
        response = HttpResponse(page, status=error.status_code)
    response["Retry-After"] = str(error.retry_after)
    return response


class DatabaseUnavailableMiddleware:
    """Turns a view's database connection failure into a 503 (the API's exception handler does
    the same for DRF views, and the 500 handler for failures outside any view)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code != 503:
            database_available()
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_database_unavailable(exception):
            return database_unavailable_response(request, exception)
        return None


class AuditMiddleware(AuditlogMiddleware):
    """Adds the source (ui or api) to what django-auditlog records for each request."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        outer = auditlog_value.get(None)
        try:
            return super().__call__(request)
        except Exception as error:
            # auditlog loads the signed-in user (a session and a user query) before any view
            # runs, so this is where a page request first meets a database that is down.
            if is_database_unavailable(error):
                return database_unavailable_response(request, error)
            raise
        finally:
            # auditlog never resets its context variable; without this a request's user would
            # be attributed to whatever the same thread writes next.
            auditlog_value.set(outer)

    def get_extra_data(self, request: HttpRequest) -> dict[str, Any]:
        data = super().get_extra_data(request)
        data["source"] = str(request_source(request))
        return data
