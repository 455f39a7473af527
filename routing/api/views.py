"""REST endpoints of the routing app: services, targets and rules (CRUD), a target's drain, a
rule's split in one call, the decision for a described request, and the nginx and HAProxy
exports. Each write calls one service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from canary_site.api.actions import object_verb, requires, validated
from canary_site.api.serializers import ErrorSerializer
from canary_site.audit import writer
from canary_site.exceptions import NotFound, ValidationFailed
from routing import exporters, selectors, services
from routing.api.serializers import (
    DecideRequestSerializer,
    DecisionSerializer,
    DrainSerializer,
    DrainStatusSerializer,
    RuleSerializer,
    RuleWriteSerializer,
    ServiceSerializer,
    ServiceWriteSerializer,
    TargetDrainSerializer,
    TargetSerializer,
    TargetWriteSerializer,
    WeightsSerializer,
)
from routing.filtersets import RuleFilterSet, ServiceFilterSet, TargetFilterSet
from routing.models import Service, Target
from routing.providers.config import InvalidProviderConfig
from routing.providers.haproxy import haproxy_config
from routing.snapshot import service_snapshot


def _service_named(name: str) -> Service:
    service = selectors.service_get(name=name)
    if service is None:
        raise ValidationFailed(f"service: no service named {name!r}.", field="service")
    return service


def _partial_data(serializer_class: type, data: Any, *, omit: tuple[str, ...] = ()) -> Any:
    """Validate only the fields sent (a PATCH, or a PUT that leaves some out)."""
    data = validated(serializer_class, data, partial=True)
    for name in omit:
        if name in data:
            raise ValidationFailed(f"{name}: cannot be changed.", field=name)
    return data


class ServiceViewSet(viewsets.ModelViewSet):
    """Services: a name, the stable version and the targets that serve it."""

    queryset = selectors.service_list()
    serializer_class = ServiceSerializer
    filterset_class = ServiceFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    lookup_field = "name"
    lookup_value_regex = "[-a-zA-Z0-9_]+"

    @extend_schema(request=ServiceWriteSerializer, responses={201: ServiceSerializer})
    def create(self, request: Request) -> Response:
        data = validated(ServiceWriteSerializer, request.data)
        service = services.service_create(**data, **writer(request))
        return Response(ServiceSerializer(service).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ServiceWriteSerializer, responses=ServiceSerializer)
    def update(self, request: Request, name: str | None = None, partial: bool = False) -> Response:
        service = self.get_object()
        changes = dict(_partial_data(ServiceWriteSerializer, request.data))
        service = services.service_update(
            service=service, reason=changes.pop("reason", ""), **changes, **writer(request)
        )
        return Response(ServiceSerializer(selectors.service_list().get(pk=service.pk)).data)

    def perform_destroy(self, instance: Any) -> None:
        services.service_delete(service=instance, **writer(self.request))


def _drain_verb(name: str, service: Callable[..., Target], doc: str) -> Any:
    """``POST /api/v1/routing/targets/{id}/<name>/``: the target and where its drain stands.
    Idempotent, so posting ``drain`` again is how a client follows a drain to its end."""

    def perform(view: TargetViewSet, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        target = service(target=view.get_object(), **data, **writer(request))
        target = selectors.target_list().get(pk=target.pk)
        return {
            "target": TargetSerializer(target).data,
            "drain": DrainStatusSerializer(selectors.drain_status(target=target)).data,
        }

    return object_verb(
        name,
        perform,
        body=DrainSerializer,
        responses=TargetDrainSerializer,
        permission="routing.change_target",
        doc=doc,
        empty_body=True,
    )


class TargetViewSet(viewsets.ModelViewSet):
    """Targets: one endpoint running one version of a service, with its health and drain."""

    queryset = selectors.target_list()
    serializer_class = TargetSerializer
    filterset_class = TargetFilterSet
    search_fields = ["name", "endpoint", "version"]
    ordering_fields = ["name", "version", "created_at"]

    @extend_schema(request=TargetWriteSerializer, responses={201: TargetSerializer})
    def create(self, request: Request) -> Response:
        data = validated(TargetWriteSerializer, request.data)
        service = _service_named(data.pop("service"))
        target = services.target_create(service=service, **data, **writer(request))
        return Response(TargetSerializer(target).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=TargetWriteSerializer, responses=TargetSerializer)
    def update(self, request: Request, pk: str | None = None, partial: bool = False) -> Response:
        target = self.get_object()
        changes = dict(_partial_data(TargetWriteSerializer, request.data, omit=("service",)))
        target = services.target_update(
            target=target, reason=changes.pop("reason", ""), **changes, **writer(request)
        )
        return Response(TargetSerializer(target).data)

    def perform_destroy(self, instance: Any) -> None:
        services.target_delete(target=instance, **writer(self.request))

    drain = _drain_verb(
        "drain",
        services.target_drain_start,
        "Drain the target: the proxies send it no new request (its share goes to the other "
        "targets of each split) and finish those in flight; `drain.drained` tells when they "
        "have. A drain under way keeps its start.",
    )
    undrain = _drain_verb(
        "undrain", services.target_drain_end, "Put a drained target back in rotation."
    )


class RuleViewSet(viewsets.ModelViewSet):
    """Routing rules: which requests, which targets with which weights, affinity, failover,
    circuit breaker, rate limit and active health check."""

    queryset = selectors.rule_list()
    serializer_class = RuleSerializer
    filterset_class = RuleFilterSet
    search_fields = ["name"]
    ordering_fields = ["priority", "created_at"]

    @extend_schema(request=RuleWriteSerializer, responses={201: RuleSerializer})
    def create(self, request: Request) -> Response:
        data = validated(RuleWriteSerializer, request.data)
        service = _service_named(data.pop("service"))
        rule = services.rule_create(service=service, **data, **writer(request))
        return Response(
            RuleSerializer(selectors.rule_list().get(pk=rule.pk)).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=RuleWriteSerializer, responses=RuleSerializer)
    def update(self, request: Request, pk: str | None = None, partial: bool = False) -> Response:
        rule = self.get_object()
        changes = dict(_partial_data(RuleWriteSerializer, request.data, omit=("service",)))
        services.rule_update(
            rule=rule, reason=changes.pop("reason", ""), **changes, **writer(request)
        )
        return Response(RuleSerializer(selectors.rule_list().get(pk=rule.pk)).data)

    def perform_destroy(self, instance: Any) -> None:
        services.rule_delete(rule=instance, **writer(self.request))

    @extend_schema(request=WeightsSerializer, responses=RuleSerializer)
    @action(detail=True, methods=["post"])
    @requires("routing.change_routingrule")
    def weights(self, request: Request, pk: str | None = None) -> Response:
        """Set the rule's split in one call: target names to percentages (summing to 100 for
        a weighted rule); targets left out keep their weight."""
        rule = self.get_object()
        data = validated(WeightsSerializer, request.data)
        services.rule_set_weights(
            rule=rule,
            weights=data["weights"],
            reason=data["reason"],
            **writer(request),
        )
        return Response(RuleSerializer(selectors.rule_list().get(pk=rule.pk)).data)


class DecideView(APIView):
    """Where a described request would go, and why (stateless: no proxy's breakers or rate
    limits apply, health flags do)."""

    required_permission = "routing.view_routingrule"

    # 404 when the body names no known service.
    @extend_schema(
        request=DecideRequestSerializer, responses={200: DecisionSerializer, 404: ErrorSerializer}
    )
    def post(self, request: Request) -> Response:
        data = validated(DecideRequestSerializer, request.data)
        decision = selectors.decision_for(**data)
        return Response(selectors.decision_summary(decision))


class NginxConfigView(APIView):
    """The service's routing as an nginx configuration to include inside ``http {}``."""

    required_permission = "routing.view_service"

    @extend_schema(
        parameters=[
            OpenApiParameter("listen", str, description="Port or address:port (default 8080)."),
            OpenApiParameter("server_name", str, description="Server name (default _)."),
        ],
        responses={(200, "text/plain"): OpenApiTypes.STR},
    )
    def get(self, request: Request, name: str) -> HttpResponse:
        snapshot = service_snapshot(name=name)
        if snapshot is None:
            raise NotFound(f"No service named {name!r}.")
        listen = request.query_params.get("listen", "8080")
        server_name = request.query_params.get("server_name", "_")
        try:
            text = exporters.nginx_config(snapshot, listen=listen, server_name=server_name)
        except ValueError as error:
            field = "listen" if "listen" in str(error) else "server_name"
            raise ValidationFailed(f"{field}: {error}.", field=field) from None
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'inline; filename="canary-{name}.conf"'
        return response


class HaproxyConfigView(APIView):
    """The service's targets as an HAProxy backend section, weighted as the split of requests
    that match no condition (``routing.providers.haproxy``)."""

    required_permission = "routing.view_service"

    @extend_schema(
        parameters=[
            OpenApiParameter("backend", str, description="Backend name (default be_<service>)."),
            OpenApiParameter("server_prefix", str, description="Prefix of server names."),
        ],
        responses={(200, "text/plain"): OpenApiTypes.STR},
    )
    def get(self, request: Request, name: str) -> HttpResponse:
        snapshot = service_snapshot(name=name)
        if snapshot is None:
            raise NotFound(f"No service named {name!r}.")
        try:
            text = haproxy_config(
                snapshot,
                backend=request.query_params.get("backend") or None,
                server_prefix=request.query_params.get("server_prefix", ""),
            )
        except InvalidProviderConfig as error:
            field = {"provider_config.backend": "backend"}.get(error.field, "server_prefix")
            raise ValidationFailed(f"{field}: {error.message}.", field=field) from None
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'inline; filename="canary-{name}.cfg"'
        return response
