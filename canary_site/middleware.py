"""Request middleware: attributes audited writes to the signed-in user and the request's source."""

from __future__ import annotations

from typing import Any

from auditlog.middleware import AuditlogMiddleware
from django.http import HttpRequest

from canary_site.choices import Source

API_PREFIXES = ("/api/", "/ofrep/")


def request_source(request: HttpRequest) -> str:
    return Source.API if request.path.startswith(API_PREFIXES) else Source.UI


class AuditMiddleware(AuditlogMiddleware):
    """Adds the source (ui or api) to what django-auditlog records for each request."""

    def get_extra_data(self, request: HttpRequest) -> dict[str, Any]:
        data = super().get_extra_data(request)
        data["source"] = str(request_source(request))
        return data
