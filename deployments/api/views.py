"""REST endpoints of the deployments app.

- ``/api/v1/deployments/``: list, create (the guide's configuration as JSON or YAML, or the
  wrapper ``{config, health_policy, linked_flags, context, reason}``), read, update and delete
  (pending only), and the lifecycle actions ``start``, ``pause``, ``resume``, ``promote``,
  ``promote-full``, ``abort``, ``retry`` (409 with the reason when not allowed now), the
  ``events`` timeline and ``simple-config``; its webhook gates (``gates``) and the opening of
  one by hand (``gates/{name}/open``).
- ``/api/v1/deployments/{id}/config.yaml``: the stored configuration as YAML.
- ``/api/v1/validate``: the configuration validator, ``{type, config, context, strictMode}``.

Each write calls one service, the same the dashboard's buttons call.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from canary_site.api.actions import object_verb, requires
from canary_site.audit import writer
from canary_site.exceptions import ValidationFailed
from deployments import conf, selectors, services, webhooks
from deployments.api.parsers import YAML_PARSERS
from deployments.api.serializers import (
    ActionSerializer,
    DeploymentEventSerializer,
    DeploymentSerializer,
    DeploymentWriteSerializer,
    GateOpenSerializer,
    GateSerializer,
    SimpleConfigResultSerializer,
    SimpleConfigSerializer,
    ValidateRequestSerializer,
    ValidationReportSerializer,
    is_wrapper,
)
from deployments.config import dump_config, simple_canary_config
from deployments.filtersets import DeploymentEventFilterSet, DeploymentFilterSet
from deployments.lifecycle import Action
from deployments.validation import validate_request

PARSERS = [JSONParser, *YAML_PARSERS, FormParser, MultiPartParser]
CHANGE = "deployments.change_deployment"


def _write_arguments(data: Any, *, creating: bool) -> dict[str, Any]:
    """The service's keyword arguments from a body: a bare configuration, or the wrapper."""
    if not is_wrapper(data):
        if not isinstance(data, dict) or not data:
            raise ValidationFailed(
                "Send the configuration (an object, as JSON or YAML), or "
                "{config, health_policy, linked_flags, context, reason}.",
                field="config",
            )
        return {"config": data}
    serializer = DeploymentWriteSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    values = serializer.validated_data
    arguments: dict[str, Any] = {}
    if "config" in values:
        arguments["config"] = values["config"]
    elif creating:
        raise ValidationFailed("config: is required.", field="config")
    if "health_policy" in values:
        arguments["health_policy"] = selectors.health_policy_for(value=values["health_policy"])
    if "linked_flags" in values:
        arguments["flags"] = selectors.flags_for(keys=values["linked_flags"])
    if "context" in values:
        arguments["context"] = values["context"]
    if values.get("reason"):
        arguments["reason"] = values["reason"]
    return arguments


def _open_gate(view: DeploymentViewSet, request: Request, data: dict[str, Any]) -> Any:
    deployment = view.get_object()
    name = view.kwargs["name"]
    webhooks.webhook_gate_open(
        deployment_id=deployment.pk, name=name, reason=data.get("reason", ""), **writer(request)
    )
    gates = webhooks.gate_views(selectors.deployment_get(deployment_id=deployment.pk))
    return GateSerializer(next(gate for gate in gates if gate.name == name)).data


def _lifecycle(verb: Action, doc: str, url_path: str | None = None) -> Any:
    """A DRF action that performs ``verb`` through the one transition service."""

    def perform(view: DeploymentViewSet, request: Request, data: dict[str, Any]) -> Any:
        deployment = view.get_object()
        services.deployment_transition(
            deployment_id=deployment.pk,
            action=verb,
            reason=data.get("reason", ""),
            expected_phase=data.get("phase"),
            **writer(request),
        )
        return DeploymentSerializer(selectors.deployment_get(deployment_id=deployment.pk)).data

    return object_verb(
        str(verb),
        perform,
        body=ActionSerializer,
        responses=DeploymentSerializer,
        permission=CHANGE,
        doc=doc,
        url_path=url_path,
        empty_body=True,
    )


@extend_schema_view(
    create=extend_schema(
        request={
            "application/json": DeploymentWriteSerializer,
            "application/yaml": OpenApiTypes.STR,
        },
        responses={201: DeploymentSerializer},
        description="Create a pending deployment from the guide's configuration (the body "
        "itself, as JSON or YAML) or from the wrapper. Schema errors answer 400 naming each "
        "field; the validator's other findings are kept in `validation`, and a deployment "
        "whose validation has errors cannot start.",
    ),
    update=extend_schema(request=DeploymentWriteSerializer, responses=DeploymentSerializer),
    partial_update=extend_schema(request=DeploymentWriteSerializer, responses=DeploymentSerializer),
)
class DeploymentViewSet(viewsets.ModelViewSet):
    """Canary deployments: their configuration, phases, status and timeline."""

    queryset = selectors.deployments()
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilterSet
    parser_classes = PARSERS
    search_fields = ["name", "service__name", "canary_version"]
    ordering_fields = ["created_at", "started_at", "finished_at", "name", "status"]

    def create(self, request: Request) -> Response:
        arguments = _write_arguments(request.data, creating=True)
        deployment = services.deployment_create(**arguments, **writer(request))
        body = DeploymentSerializer(selectors.deployment_get(deployment_id=deployment.pk)).data
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request: Request, pk: str | None = None, partial: bool = False) -> Response:
        deployment = self.get_object()
        arguments = _write_arguments(request.data, creating=False)
        services.deployment_update(deployment_id=deployment.pk, **arguments, **writer(request))
        return Response(
            DeploymentSerializer(selectors.deployment_get(deployment_id=deployment.pk)).data
        )

    def perform_destroy(self, instance: Any) -> None:
        services.deployment_delete(deployment_id=instance.pk, **writer(self.request))

    start = _lifecycle(Action.START, "Start: the first phase's share goes to the canary.")
    pause = _lifecycle(Action.PAUSE, "Pause: hold the current phase; the tick leaves it alone.")
    resume = _lifecycle(Action.RESUME, "Resume a paused deployment.")
    promote = _lifecycle(
        Action.PROMOTE,
        "Promote to the next phase now (on the last phase: succeed). A reason is required "
        "when the current phase's criteria have not held.",
    )
    promote_full = _lifecycle(
        Action.PROMOTE_FULL,
        "Give the canary all traffic and make it the stable version. A reason is required "
        "when the current phase's criteria have not held.",
        url_path="promote-full",
    )
    abort = _lifecycle(Action.ABORT, "Abort: traffic returns to the stable version at once.")
    retry = _lifecycle(
        Action.RETRY, "Retry a rolled-back, failed or aborted deployment: back to pending."
    )

    @extend_schema(responses=GateSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def gates(self, request: Request, pk: str | None = None) -> Response:
        """The deployment's webhook gates where they stand now: for the start while it is
        pending, for the current phase while it runs."""
        deployment = self.get_object()
        return Response(GateSerializer(webhooks.gate_views(deployment), many=True).data)

    open_gate = object_verb(
        "open_gate",
        _open_gate,
        body=GateOpenSerializer,
        responses=GateSerializer,
        permission=CHANGE,
        doc="Open a webhook gate by hand for the current phase (entry gates: for the start): "
        "the tick counts it as answered 2xx there. 404 for a name the configuration does not "
        "give, 400 for a hook that is not a gate, 409 once the gate holds nothing any more.",
        url_path=r"gates/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,62})/open",
        empty_body=True,
    )

    @extend_schema(responses=DeploymentEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        """The timeline, newest first: what happened, who or what did it, why, and the
        evidence behind every automatic decision. Filters: ``kind``, ``source``, ``phase``."""
        deployment = self.get_object()
        filterset = DeploymentEventFilterSet(
            request.query_params, queryset=selectors.events(deployment=deployment)
        )
        if not filterset.is_valid():
            raise ValidationFailed(
                "Invalid filter.",
                fields={name: list(errors) for name, errors in filterset.errors.items()},
            )
        page = self.paginate_queryset(filterset.qs)
        data = DeploymentEventSerializer(page, many=True).data
        return self.get_paginated_response(data)

    @extend_schema(request=SimpleConfigSerializer, responses=SimpleConfigResultSerializer)
    @action(detail=False, methods=["post"], url_path="simple-config")
    @requires("deployments.view_deployment")
    def simple_config(self, request: Request) -> Response:
        """A complete configuration from a few numbers (the guide's createSimpleCanaryConfig,
        with the phases up to 100%), with its validation. Nothing is stored."""
        serializer = SimpleConfigSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            config = simple_canary_config(**serializer.validated_data)
        except ValueError as error:
            raise ValidationFailed(f"steps: {error}.", field="steps") from None
        report = services.configuration_report(config)
        return Response(
            {
                "config": config.to_dict(),
                "yaml": dump_config(config, "yaml"),
                "validation": _report_body(report),
            }
        )


class DeploymentConfigYamlView(APIView):
    """The deployment's configuration as YAML, in the guide's words: what ``POST
    /api/v1/deployments/`` accepts back."""

    required_permission = "deployments.view_deployment"

    @extend_schema(responses={(200, "application/yaml"): OpenApiTypes.STR})
    def get(self, request: Request, pk: int) -> HttpResponse:
        deployment = selectors.deployment_get(deployment_id=pk)
        text = dump_config(deployment.spec, "yaml")
        response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'inline; filename="deployment-{pk}.yaml"'
        return response


class ValidateView(APIView):
    """Validate a configuration without storing anything: ``{type, config, context,
    strictMode}`` (``config`` an object or JSON/YAML text). Always 200: the answer says what is
    wrong, each issue as ``{field, code, message}``."""

    parser_classes = [JSONParser, *YAML_PARSERS]
    # Checking a configuration changes nothing: every role may.
    write_roles = None

    @extend_schema(
        request=ValidateRequestSerializer,
        responses=OpenApiResponse(ValidationReportSerializer),
    )
    def post(self, request: Request) -> Response:
        report = validate_request(request.data, timing=conf.timing())
        return Response(_report_body(report))


def _report_body(report: Any) -> dict[str, Any]:
    body = report.to_dict()
    body["estimates"] = {
        "timeToFullPromotionMs": report.estimated_time_to_full_promotion_ms,
        "worstCaseTimeToRollbackMs": report.worst_case_time_to_rollback_ms,
    }
    return body
