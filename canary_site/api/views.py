"""The API's root, the audit trail and personal tokens."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from canary_site import selectors, services
from canary_site.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
    AuditEntrySerializer,
    MeSerializer,
)
from canary_site.audit import request_source
from canary_site.filtersets import AuditEntryFilterSet
from canary_site.models import ApiToken
from canary_site.roles import user_roles


class ApiRootView(APIView):
    """Links to every collection of the API."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, format: Any = None) -> Response:
        def link(name: str) -> str:
            return reverse(name, request=request, format=format)

        return Response(
            {
                "me": link("api:me"),
                "audit": link("api:audit-list"),
                "tokens": link("api:token-list"),
                "schema": link("api-schema"),
                "docs": link("api-docs"),
            }
        )


class MeView(APIView):
    @extend_schema(responses=MeSerializer)
    def get(self, request: Request) -> Response:
        return Response(
            {"username": request.user.get_username(), "roles": user_roles(request.user)}
        )


class AuditEntryViewSet(viewsets.ReadOnlyModelViewSet):
    """Every create, update, delete and action, with actor, time, source, reason and diff."""

    queryset = selectors.audit_entries()
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilterSet
    ordering_fields = ["timestamp"]
    search_fields = ["object_repr", "reason"]


class ApiTokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Your own API tokens. Creating one returns the secret once; only its digest is kept."""

    serializer_class = ApiTokenSerializer
    # Tokens are personal: any role may manage its own, and no one sees another's.
    required_permission = None
    write_roles = None

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return ApiToken.objects.none()
        return selectors.api_tokens_for_user(user=self.request.user)

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request: Request) -> Response:
        serializer = ApiTokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, secret = services.api_token_create(
            user=request.user, source=request_source(request), **serializer.validated_data
        )
        body = ApiTokenSerializer(token).data | {"token": secret}
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        try:
            token_id = int(pk or "")
        except ValueError:
            token_id = -1
        services.api_token_revoke(
            user=request.user, token_id=token_id, source=request_source(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
