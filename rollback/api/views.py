"""REST views of the rollback app: approval requests and their decisions, approval policies,
rollback plans, executions and their statistics, and a person's rollback of a deployment.

- ``/api/v1/approvals/``, ``/api/v1/approval-policies/``: the approvals.
- ``/api/v1/rollback/plans/``: plans in the guide's vocabulary (JSON or YAML, or the wrapper
  ``{definition, reason}``): list, read, create, replace (PUT), change some keys (PATCH),
  delete (409 while one of its rollbacks runs), ``rehearse`` and ``preview``.
- ``/api/v1/rollback/executions/``: every rollback and rehearsal, newest first, with its steps;
  ``cancel``.
- ``/api/v1/rollback/statistics/``: how rollbacks went (``?service=``, ``?since=``).
- ``/api/v1/deployments/{id}/rollback/``: a person's rollback (201 with the execution; 202 with
  the approval request when its plan asks for one).

Every write calls ``rollback.services``; the inbox's buttons call the same functions.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from canary_site.api.actions import object_verb, requires, validated
from canary_site.audit import writer
from canary_site.exceptions import TransitionNotAllowed, ValidationFailed
from deployments.api.parsers import YAML_PARSERS
from deployments.models import Deployment
from flags.api.views import SafeJSONParser
from rollback import selectors, services
from rollback.api.definitions import definition_body
from rollback.api.serializers import (
    SECRET_MASK,
    ApprovalPolicySerializer,
    ApprovalPolicyWriteSerializer,
    ApprovalRequestSerializer,
    CancelSerializer,
    DecisionWriteSerializer,
    DeploymentRefSerializer,
    PreviewSerializer,
    RollbackExecutionDetailSerializer,
    RollbackExecutionSerializer,
    RollbackPlanDefinitionSerializer,
    RollbackPlanSerializer,
    RollbackPlanWriteSerializer,
    RollbackRequestSerializer,
    StatisticsQuerySerializer,
    unmasked,
)
from rollback.filtersets import (
    ApprovalPolicyFilterSet,
    ApprovalRequestFilterSet,
    RollbackExecutionFilterSet,
    RollbackPlanFilterSet,
)
from rollback.models import ApprovalPolicy, RollbackExecution, RollbackPlan, RollbackStep

APPROVE = "rollback.approve_approvalrequest"
VIEW = "rollback.view_approvalrequest"


def _decision(verb: str, doc: str, permission: str) -> Any:
    service = {
        "approve": services.approval_request_approve,
        "reject": services.approval_request_reject,
        "cancel": services.approval_request_cancel,
    }[verb]

    def handler(self: ApprovalRequestViewSet, request: Request, pk: str | None = None) -> Response:
        found = self.get_object()
        serializer = DecisionWriteSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        service(
            request_id=found.pk,
            comment=serializer.validated_data.get("comment", ""),
            **writer(request),
        )
        return Response(
            ApprovalRequestSerializer(selectors.approval_request_get(request_id=found.pk)).data
        )

    handler.__name__ = verb
    handler.__doc__ = doc
    handler.required_permission = permission  # type: ignore[attr-defined]
    routed = action(detail=True, methods=["post"])(handler)
    return extend_schema(request=DecisionWriteSerializer, responses=ApprovalRequestSerializer)(
        routed
    )


class ApprovalRequestViewSet(viewsets.ReadOnlyModelViewSet):
    """Approval requests: the change asked for (a before/after diff), who asked and why, its
    decisions and its state. Opened by the gated services (their 202 names the request);
    approvers approve or reject, the requester cancels."""

    queryset = selectors.approval_requests()
    serializer_class = ApprovalRequestSerializer
    filterset_class = ApprovalRequestFilterSet
    ordering_fields = ["created_at", "expires_at"]

    approve = _decision(
        "approve",
        "Approve the request (approvers; never your own). The approval that reaches the quorum "
        "applies the change, or supersedes the request when the object changed since.",
        APPROVE,
    )
    reject = _decision("reject", "Reject the request (approvers; never your own).", APPROVE)
    cancel = _decision("cancel", "Withdraw the request (its requester, or an admin).", VIEW)


@extend_schema(request=ApprovalPolicyWriteSerializer, responses=ApprovalPolicySerializer)
class ApprovalPolicyViewSet(
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.ReadOnlyModelViewSet,
):
    """Approval policies: which actions on which scope need whose sign-off, how many and for
    how long. Admins write; every role reads."""

    queryset = selectors.approval_policies()
    serializer_class = ApprovalPolicySerializer
    filterset_class = ApprovalPolicyFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]

    @extend_schema(request=ApprovalPolicyWriteSerializer, responses={201: ApprovalPolicySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ApprovalPolicyWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = services.approval_policy_create(**serializer.validated_data, **writer(request))
        return Response(ApprovalPolicySerializer(policy).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ApprovalPolicyWriteSerializer, responses=ApprovalPolicySerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        partial = kwargs.pop("partial", False)
        policy: ApprovalPolicy = self.get_object()
        serializer = ApprovalPolicyWriteSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        policy = services.approval_policy_update(
            policy=policy, changes=serializer.validated_data, **writer(request)
        )
        return Response(ApprovalPolicySerializer(policy).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.approval_policy_delete(policy=self.get_object(), **writer(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- rollback plans, executions, statistics ------------------------------------------------------

VIEW_PLANS = "rollback.view_rollbackplan"
EXECUTE = "rollback.add_rollbackexecution"
CANCEL = "rollback.change_rollbackexecution"
VIEW_EXECUTIONS = "rollback.view_rollbackexecution"
PLAN_BODY = {
    "application/json": RollbackPlanDefinitionSerializer,
    "application/yaml": OpenApiTypes.STR,
}
PLAN_BODY_HELP = (
    "The body is the plan in the guide's vocabulary, as JSON or YAML (`application/yaml`, "
    "`text/yaml`), or the wrapper `{definition, reason}`. A plan that does not read is a 400 "
    "naming the field at fault (`actions[0].type`)."
)


def _plans() -> QuerySet[RollbackPlan]:
    return RollbackPlan.objects.select_related("service", "created_by")


def _execution_get(*, execution_id: int) -> RollbackExecution:
    steps = Prefetch("steps", queryset=RollbackStep.objects.order_by("position"))
    return selectors.executions().prefetch_related(steps).get(pk=execution_id)


def _plan_body(data: Any, *, stored: Any = None) -> tuple[Any, str]:
    """The definition and the reason a body carries: the plan itself, or the wrapper. A secret
    sent back masked is the stored one."""
    data, reason = definition_body(data, wrapper=RollbackPlanWriteSerializer, noun="plan")
    definition = unmasked(data, stored or {})
    for index, action_ in enumerate(definition.get("actions") or []):
        config = action_.get("config") if isinstance(action_, dict) else None
        if isinstance(config, dict) and config.get("secret") == SECRET_MASK:
            raise ValidationFailed(
                f"actions[{index}].config.secret: no action with this id had a secret to keep; "
                "send the secret itself.",
                field=f"actions[{index}].config.secret",
            )
    return definition, reason


def _execution_body(execution: RollbackExecution) -> dict[str, Any]:
    found = _execution_get(execution_id=execution.pk)
    return dict(RollbackExecutionDetailSerializer(found).data)


@extend_schema_view(
    create=extend_schema(
        request=PLAN_BODY, responses={201: RollbackPlanSerializer}, description=PLAN_BODY_HELP
    ),
    update=extend_schema(
        request=PLAN_BODY,
        responses=RollbackPlanSerializer,
        description="Replace the plan. " + PLAN_BODY_HELP,
    ),
    partial_update=extend_schema(
        request=PLAN_BODY,
        responses=RollbackPlanSerializer,
        description="Change the top-level keys the body names; the others stay as they are.",
    ),
    destroy=extend_schema(description="Delete the plan; 409 while one of its rollbacks runs."),
)
class RollbackPlanViewSet(viewsets.ModelViewSet):
    """Rollback plans: a strategy (immediate, gradual, phased, blue_green), triggers, ordered
    actions with timeouts, validation and safety, for one deployment or a service (its default
    when ``isDefault``). Engineers and admins write; every role reads."""

    queryset = _plans()
    serializer_class = RollbackPlanSerializer
    filterset_class = RollbackPlanFilterSet
    parser_classes = [SafeJSONParser, *YAML_PARSERS]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at"]

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        definition, reason = _plan_body(request.data)
        plan = services.rollback_plan_create(
            definition=definition, reason=reason, **writer(request)
        )
        body = RollbackPlanSerializer(_plans().get(pk=plan.pk)).data
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        plan: RollbackPlan = self.get_object()
        stored = dict(plan.definition or {})
        definition, reason = _plan_body(request.data, stored=stored)
        if kwargs.get("partial"):
            definition = {**stored, **definition}
        services.rollback_plan_update(
            plan=plan, definition=definition, reason=reason, **writer(request)
        )
        return Response(RollbackPlanSerializer(_plans().get(pk=plan.pk)).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.rollback_plan_delete(plan=self.get_object(), **writer(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=DeploymentRefSerializer, responses={201: RollbackExecutionDetailSerializer}
    )
    @action(detail=True, methods=["post"])
    @requires(EXECUTE)
    def rehearse(self, request: Request, pk: str | None = None) -> Response:
        """Run the plan against a deployment without moving traffic or flags: webhooks get
        `X-Canary-Dry-Run: true`, validation really runs; recorded as a rehearsal."""
        plan = self.get_object()
        data = validated(DeploymentRefSerializer, request.data)
        execution = services.rollback_rehearse(
            plan=plan, deployment=data["deployment"], reason=data["reason"], **writer(request)
        )
        return Response(_execution_body(execution), status=status.HTTP_201_CREATED)

    @extend_schema(request=PreviewSerializer, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"])
    @requires(VIEW_PLANS)
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """What rolling the deployment back by this plan would do now, without doing it: the
        canary's share and traffic, the flags it would change, the stable version's health and
        the worst-case time (`canaryShare`, `requestsPerMinute`, `flags`, `stable`,
        `worstCaseMs`). Every role may look."""
        plan = self.get_object()
        data = validated(PreviewSerializer, request.data)
        return Response(selectors.rollback_impact(deployment=data["deployment"], plan=plan))


class RollbackExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Every rollback and rehearsal, newest first (page with `page_size`): its plan as it was,
    why, who or what asked, and how it went; the detail lists its steps."""

    queryset = selectors.executions()
    serializer_class = RollbackExecutionSerializer
    parser_classes = [SafeJSONParser]
    filterset_class = RollbackExecutionFilterSet
    ordering_fields = ["created_at", "finished_at"]

    def get_queryset(self) -> QuerySet[RollbackExecution]:
        queryset = super().get_queryset()
        if self.action != "list":
            steps = Prefetch("steps", queryset=RollbackStep.objects.order_by("position"))
            queryset = queryset.prefetch_related(steps)
        return queryset

    def get_serializer_class(self) -> Any:
        if self.action == "list":
            return RollbackExecutionSerializer
        return RollbackExecutionDetailSerializer

    cancel = object_verb(
        "cancel",
        lambda view, request, data: _execution_body(
            services.rollback_execution_cancel(
                execution=view.get_object(), reason=data["reason"], **writer(request)
            )
        ),
        body=CancelSerializer,
        responses=RollbackExecutionDetailSerializer,
        permission=CANCEL,
        empty_body=True,
        doc="Cancel the execution (409 once it has ended). One awaiting approval closes its "
        "request and leaves the deployment paused; one running skips its remaining steps but "
        "still takes the canary out of traffic at once; a rehearsal just stops.",
    )


class RollbackStatisticsView(APIView):
    """How rollbacks went: counts by outcome, trigger and strategy, and the times from the
    fault to the canary out of traffic. Rehearsals are not counted."""

    required_permission = VIEW_EXECUTIONS

    @extend_schema(parameters=[StatisticsQuerySerializer], responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        params = {key: value for key, value in request.query_params.items() if key != "format"}
        query = validated(StatisticsQuerySerializer, params)
        return Response(
            selectors.rollback_statistics(
                service=query.get("service") or None, since=query.get("since")
            )
        )


RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[409],
    description="With the code `cooldown`: seconds until the plan allows the next rollback.",
)


class DeploymentRollbackView(generics.GenericAPIView):
    """A person's rollback of a running or paused deployment, by its plan (or ``plan``), with a
    reason. 201 with the execution; 202 with the approval request when the plan asks for one
    (the deployment pauses at its share meanwhile); 409 when the deployment is not running or
    paused, or within the plan's cooldown (with `Retry-After`)."""

    queryset = Deployment.objects.select_related("service")
    serializer_class = RollbackRequestSerializer
    required_permission = EXECUTE
    parser_classes = [SafeJSONParser]
    filter_backends: list[Any] = []
    pagination_class = None

    @extend_schema(
        request=RollbackRequestSerializer,
        responses={201: RollbackExecutionDetailSerializer},
        parameters=[RETRY_AFTER],
    )
    def post(self, request: Request, pk: int) -> Response:
        deployment = self.get_object()
        data = validated(RollbackRequestSerializer, request.data)
        try:
            execution = services.rollback_request(
                deployment_id=deployment.pk,
                reason=data["reason"],
                plan_id=data.get("plan"),
                **writer(request),
            )
        except TransitionNotAllowed as refused:
            if refused.code != "cooldown":
                raise
            headers = {"Retry-After": str(getattr(refused, "retry_after", 1))}
            return Response(refused.as_body(), status=refused.status_code, headers=headers)
        return Response(_execution_body(execution), status=status.HTTP_201_CREATED)
