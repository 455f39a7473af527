"""How the apps' REST views read a body and declare their verbs: the permission an action
needs (read by ``canary_site.roles.HasRolePermissions``), the validated body, and a verb on one
object (``POST /api/v1/<collection>/{id}/<verb>/``) that calls one service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

F = TypeVar("F", bound=Callable[..., Any])


def requires(permission: str) -> Callable[[F], F]:
    """The model permission an action needs, in place of the one its HTTP method implies."""

    def mark(function: F) -> F:
        function.required_permission = permission  # type: ignore[attr-defined]
        return function

    return mark


def validated(serializer_class: type, data: Any, **kwargs: Any) -> dict[str, Any]:
    """``data`` checked by ``serializer_class``; a 400 naming each field otherwise."""
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def object_verb(
    name: str,
    perform: Callable[[Any, Request, dict[str, Any]], Any],
    *,
    body: type,
    responses: Any,
    permission: str,
    doc: str = "",
    url_path: str | None = None,
    empty_body: bool = False,
) -> Any:
    """A detail action ``name`` (POST): the body checked by ``body``, then the answer is what
    ``perform(view, request, data)`` returns. With ``empty_body``, no body at all counts as an
    empty object."""

    def handler(self: Any, request: Request, **kwargs: Any) -> Response:
        data = (request.data or {}) if empty_body else request.data
        return Response(perform(self, request, validated(body, data)))

    handler.__name__ = name
    handler.__doc__ = doc or None
    routed = action(detail=True, methods=["post"], url_path=url_path)(requires(permission)(handler))
    return extend_schema(request=body, responses=responses, description=doc or None)(routed)
