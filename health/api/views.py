"""REST views of the health app: policies, checks, alerts, the metrics push and series."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from canary_site.api.actions import requires, validated
from canary_site.audit import request_source, writer
from canary_site.exceptions import ValidationFailed
from health import conf, selectors, services
from health.api.serializers import (
    AlertActionSerializer,
    AlertSerializer,
    HealthCheckCreateSerializer,
    HealthCheckSerializer,
    HealthPolicySerializer,
    HealthPolicyWriteSerializer,
    MetricsPushSerializer,
    PushResultSerializer,
    SeriesQuerySerializer,
    SeriesSerializer,
)
from health.filtersets import AlertFilterSet, HealthCheckFilterSet, HealthPolicyFilterSet
from health.models import HealthPolicy


class HealthPolicyViewSet(viewsets.ModelViewSet):
    """Reusable health policies: thresholds, comparison with stable, trends, sample ratio,
    auto-rollback thresholds and alerting. Engineers write; every role reads."""

    queryset = HealthPolicy.objects.all()
    serializer_class = HealthPolicySerializer
    filterset_class = HealthPolicyFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at"]

    @extend_schema(request=HealthPolicyWriteSerializer, responses={201: HealthPolicySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(HealthPolicyWriteSerializer, request.data)
        policy = services.health_policy_create(**writer(request), **data)
        return Response(HealthPolicySerializer(policy).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=HealthPolicyWriteSerializer, responses=HealthPolicySerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        partial = kwargs.pop("partial", False)
        policy = self.get_object()
        data = validated(HealthPolicyWriteSerializer, request.data, partial=partial)
        if "policy" in data:
            # The document's name in the body; the service's ``policy`` is the row.
            data["document"] = data.pop("policy")
        policy = services.health_policy_update(policy=policy, **writer(request), **data)
        return Response(HealthPolicySerializer(policy).data)

    def perform_destroy(self, instance: Any) -> None:
        services.health_policy_delete(policy=instance, **writer(self.request))


class HealthCheckViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Stored evaluations with their verdicts, statistics and the sentence that says why.
    POST evaluates a canary now (engineers)."""

    queryset = selectors.checks()
    serializer_class = HealthCheckSerializer
    filterset_class = HealthCheckFilterSet
    search_fields = ["service", "canary_version", "message"]
    ordering_fields = ["window_end", "created_at"]

    @extend_schema(request=HealthCheckCreateSerializer, responses={201: HealthCheckSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(HealthCheckCreateSerializer, request.data)
        check = services.health_evaluate(
            service=data["service"],
            canary_version=data["canary_version"],
            stable_version=data.get("stable_version") or None,
            policy=data["policy"],
            window_seconds=data.get("window_seconds"),
            planned_canary_share=data.get("planned_canary_share"),
        )
        return Response(HealthCheckSerializer(check).data, status=status.HTTP_201_CREATED)


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Alerts raised by checks; engineers acknowledge (stops escalation) and resolve them."""

    queryset = selectors.alerts()
    serializer_class = AlertSerializer
    filterset_class = AlertFilterSet
    search_fields = ["service", "canary_version", "title"]
    ordering_fields = ["raised_at", "last_seen_at", "severity"]

    def _act(self, request: Request, service: Any) -> Response:
        data = validated(AlertActionSerializer, request.data)
        note = data.get("note", "")
        alert = service(alert=self.get_object(), note=note, **writer(request))
        return Response(AlertSerializer(selectors.alert_by_id(alert_id=alert.pk)).data)

    @extend_schema(request=AlertActionSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    @requires("health.change_alert")
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, services.alert_acknowledge)

    @extend_schema(request=AlertActionSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    @requires("health.change_alert")
    def resolve(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, services.alert_resolve)


class MetricsPushView(APIView):
    """Push samples from anywhere. A retried batch with the same idempotency key (body field
    or ``Idempotency-Key`` header) counts once; too big a batch is refused with 413."""

    required_permission = "health.add_metricbucket"

    @extend_schema(
        request=MetricsPushSerializer,
        responses={202: PushResultSerializer, 200: PushResultSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", location="header", required=False)],
    )
    def post(self, request: Request) -> Response:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = conf.push_max_bytes()
        if length > limit:
            # Refused before the body is read or parsed.
            raise services.PayloadTooLarge(
                f"The body is {length:,} bytes; at most {limit:,} are accepted per push.",
                field="samples",
            )
        data = validated(MetricsPushSerializer, request.data)
        key = data.get("idempotency_key")
        header = request.headers.get("Idempotency-Key")
        if header and key and header != key:
            raise ValidationFailed(
                "The Idempotency-Key header and the body's idempotency_key differ.",
                field="idempotency_key",
            )
        result = services.metrics_push(
            samples=data["samples"],
            idempotency_key=key or header,
            user=request.user,
            source=request_source(request),
        )
        code = status.HTTP_200_OK if result.duplicate else status.HTTP_202_ACCEPTED
        return Response(result.to_dict(), status=code)


class SeriesView(APIView):
    """One metric of one version over a window, as plain lists for charts and scripts."""

    required_permission = "health.view_metricbucket"

    @extend_schema(parameters=[SeriesQuerySerializer], responses=SeriesSerializer)
    def get(self, request: Request) -> Response:
        params = {key: value for key, value in request.query_params.items() if key != "format"}
        query = SeriesQuerySerializer(data=params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        found = selectors.series(
            service=data["service"],
            version=data["version"],
            metric=data["metric"],
            window_seconds=data["window"],
            step_seconds=data.get("step"),
        )
        return Response(found.to_dict())
