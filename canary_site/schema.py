"""OpenAPI descriptions that drf-spectacular cannot infer: our token authentication, and the
error answers every operation can give, each in the one error body."""

from __future__ import annotations

import functools
import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# The REST operations whose services are gated: the lifecycle verbs a policy may name, the flag
# writes other than the kill, the routing rules and their weights, and a kill switch's recovery.
GATED_PATHS = [
    re.compile(pattern)
    for pattern in (
        r"^/api/v1/deployments/\{id\}/(start|promote|promote-full|abort|retry|rollback)/$",
        r"^/api/v1/flags/$",
        r"^/api/v1/flags/\{key\}/$",
        r"^/api/v1/flags/\{key\}/(enable|disable|rollout|rules)/$",
        r"^/api/v1/flags/\{key\}/rules/\{index\}/(move/)?$",
        r"^/api/v1/routing/rules/(\{id\}/(weights/)?)?$",
        r"^/api/v1/kill-switches/\{id\}/recover/$",
    )
]

ERROR_DESCRIPTIONS = {
    "400": "Invalid input; `fields` names each field at fault.",
    "401": "No credentials, or credentials that are not valid (expired, revoked, unknown).",
    "403": "The caller's role does not allow this, or a session write lacks its CSRF token.",
    "404": "No such object, or no such page of a list.",
    "409": "The object's current state does not allow this change now.",
    "413": "The request body is larger than accepted.",
    "415": "The request body's media type is not accepted.",
    "429": "Too many requests; try again after `Retry-After` seconds.",
    "503": "The database is unavailable; try again after `Retry-After` seconds.",
}

RETRY_AFTER = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 1},
        "description": "Seconds to wait before trying again.",
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "schema": {"type": "string"},
        "description": "The scheme to authenticate with (Bearer).",
    }
}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "canary_site.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A personal API token."}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema, with each error status an operation can answer documented
    with the one error body (``Error``), beside the statuses the view declares itself."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation["responses"]
        for status in self.error_statuses(operation):
            responses.setdefault(status, self.error_response(status))
        if self.method in UNSAFE_METHODS and self._may_be_gated():
            responses.setdefault("202", self.approval_required_response())
        for status, response in responses.items():
            # An error a view declares itself gets the same description and headers.
            if status in ERROR_DESCRIPTIONS and not response.get("description"):
                responses[status] = {**response, **self.error_response(status)}
        return operation

    def error_statuses(self, operation: dict[str, Any]) -> list[str]:
        """The errors this operation can answer, from what it takes and who may call it."""
        has_body = "requestBody" in operation or self.method in {"POST", "PUT", "PATCH"}
        query = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        statuses = []
        if has_body or query:
            statuses.append("400")
        if self._needs_authentication():
            statuses += ["401", "403"]
        if "{" in self.path or "page" in query:
            statuses.append("404")
        if self.method in UNSAFE_METHODS:
            statuses.append("409")
        if has_body:
            statuses += ["413", "415"]
        if self.view.get_throttles():
            statuses.append("429")
        statuses.append("503")
        return statuses

    def error_response(self, status: str) -> dict[str, Any]:
        # Imported here: DRF loads this module with its settings, before the apps are ready.
        from canary_site.api.serializers import ErrorSerializer

        response = self._get_response_for_code(
            OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[status]), status
        )
        if status in {"429", "503"}:
            response["headers"] = {**response.get("headers", {}), **RETRY_AFTER}
        if status == "401":
            response["headers"] = {**response.get("headers", {}), **WWW_AUTHENTICATE}
        return response

    def _may_be_gated(self) -> bool:
        """Whether the operation writes through a service an approval policy may gate
        (`canary_site.gates.GATED_ACTIONS`)."""
        return any(pattern.match(self.path) for pattern in GATED_PATHS)

    def approval_required_response(self) -> dict[str, Any]:
        return self._get_response_for_code(
            OpenApiResponse(
                _approval_required_serializer(),
                description="An approval policy covers this change, so it was not made: an "
                "approval request was opened instead (`approval_request.url`); the change is "
                "applied once the request is approved.",
            ),
            "202",
        )

    def _needs_authentication(self) -> bool:
        return any(not isinstance(p, AllowAny) for p in self.view.get_permissions())


def one_spelling_per_route(
    endpoints: list[tuple[Any, ...]], **kwargs: Any
) -> list[tuple[Any, ...]]:
    """drf-spectacular's preprocessing hook: a route that answers with and without a trailing
    slash (`canary_site.api.routes.optional_slash`) is documented once, without the slash."""
    bare = {(path, method, callback) for path, _regex, method, callback in endpoints}
    return [
        (path, regex, method, callback)
        for path, regex, method, callback in endpoints
        if not (path.endswith("/") and (path[:-1], method, callback) in bare)
    ]


@functools.cache
def _approval_required_serializer() -> Any:
    """The 202's body, built once (drf-spectacular names a component by its serializer)."""
    from drf_spectacular.utils import inline_serializer
    from rest_framework import serializers

    summary = inline_serializer(
        name="ApprovalRequestSummary",
        fields={
            "id": serializers.IntegerField(),
            "state": serializers.CharField(),
            "action": serializers.CharField(),
            "object": serializers.DictField(),
            "quorum": serializers.IntegerField(),
            "expires_at": serializers.DateTimeField(),
            "url": serializers.CharField(help_text="The request in the API."),
            "page": serializers.CharField(help_text="The request in the dashboard."),
        },
    )
    return inline_serializer(
        name="ApprovalRequired",
        fields={"message": serializers.CharField(), "approval_request": summary},
    )
