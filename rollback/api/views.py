"""REST views of the rollback app: approval requests and their decisions, approval policies.

Every write calls ``rollback.services``; the inbox's buttons call the same functions.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from canary_site.audit import writer
from rollback import selectors, services
from rollback.api.serializers import (
    ApprovalPolicySerializer,
    ApprovalPolicyWriteSerializer,
    ApprovalRequestSerializer,
    DecisionWriteSerializer,
)
from rollback.filtersets import ApprovalPolicyFilterSet, ApprovalRequestFilterSet
from rollback.models import ApprovalPolicy

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
