"""Request middleware: attributes audited writes to the signed-in user and the request's source."""

from __future__ import annotations

from typing import Any

from auditlog.context import auditlog_value
from auditlog.middleware import AuditlogMiddleware
from django.http import HttpRequest, HttpResponse

from canary_site.choices import Source

API_PREFIXES = ("/api/", "/ofrep/")


def request_source(request: HttpRequest) -> str:
    return Source.API if request.path.startswith(API_PREFIXES) else Source.UI


class AuditMiddleware(AuditlogMiddleware):
    """Adds the source (ui or api) to what django-auditlog records for each request."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        outer = auditlog_value.get(None)
        try:
            return super().__call__(request)
        finally:
            # auditlog never resets its context variable; without this a request's user would
            # be attributed to whatever the same thread writes next.
            auditlog_value.set(outer)

    def get_extra_data(self, request: HttpRequest) -> dict[str, Any]:
        data = super().get_extra_data(request)
        data["source"] = str(request_source(request))
        return data
