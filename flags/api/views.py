"""REST views of the flags app: flags and segments by key, and the flag verbs.

Every write calls ``flags.services``; the dashboard's buttons call the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from canary_site.api.actions import object_verb, requires, validated
from canary_site.audit import writer
from canary_site.exceptions import ValidationFailed
from flags import selectors, services
from flags.api.serializers import (
    EvaluateSerializer,
    EvaluationResultSerializer,
    FlagSerializer,
    FlagWriteSerializer,
    KillSerializer,
    ReasonSerializer,
    RolloutSerializer,
    RuleAddSerializer,
    RuleDeleteSerializer,
    RuleMoveSerializer,
    RuleUpdateSerializer,
    SegmentSerializer,
    SegmentWriteSerializer,
)
from flags.filtersets import FlagFilterSet, SegmentFilterSet
from flags.models import Flag, Segment

KEY_IN_PATH = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
RULE_INDEX = OpenApiParameter(
    "index", OpenApiTypes.INT, OpenApiParameter.PATH, description="The rule's position, from 0."
)


class SafeJSONParser(JSONParser):
    """JSON the database could not store is bad input (400), not a crash: nesting deeper than
    the parser can follow, and text with lone surrogates (valid JSON, invalid UTF-8)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
            json.dumps(data, ensure_ascii=False).encode()
        except RecursionError:
            raise ParseError("JSON nested too deeply.") from None
        except UnicodeEncodeError:
            raise ParseError("The body holds text that is not valid Unicode.") from None
        return data


class KeyedViewSet(viewsets.ModelViewSet):
    """Flags and segments: addressed by key, and written as JSON the database can store."""

    parser_classes = [SafeJSONParser]
    lookup_field = "key"
    lookup_value_regex = KEY_IN_PATH


def evaluation_body(flag: Flag, context: dict[str, Any]) -> dict[str, Any]:
    result = selectors.flag_evaluate(flag=flag, context=context)
    return {
        "key": flag.key,
        "value": result.value,
        "variant": result.variant,
        "reason": str(result.reason),
        "error_code": str(result.error_code) if result.error_code else None,
        "error_message": result.error_message,
        "metadata": dict(result.metadata),
        "explanation": result.explain(),
    }


def _flag_verb(name: str, service: Callable[..., Flag], body: type) -> Any:
    """``POST /api/v1/flags/{key}/<name>/``: ``service`` with the body's fields; the flag after."""

    def perform(view: FlagViewSet, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        flag = service(flag=view.get_object(), **writer(request), **data)
        return view._read(flag.key)

    return object_verb(
        name, perform, body=body, responses=FlagSerializer, permission="flags.change_flag"
    )


@extend_schema_view(
    partial_update=extend_schema(request=FlagWriteSerializer, responses=FlagSerializer)
)
class FlagViewSet(KeyedViewSet):
    """Feature flags by key. Viewers and approvers read; engineers write.

    Verbs: ``enable``, ``disable``, ``kill`` (a reason is required), ``rollout`` (the default
    rule's percentage) and ``evaluate`` (a context in, the result and why out; read-only).
    Rules one at a time, by position, against the flag's ``version`` as the client read it:
    ``rules/`` (add), ``rules/{index}/`` (PUT, DELETE) and ``rules/{index}/move/``.
    """

    queryset = Flag.objects.all()
    serializer_class = FlagSerializer
    filterset_class = FlagFilterSet
    ordering_fields = ["key", "updated_at", "created_at"]

    def get_queryset(self) -> Any:
        return selectors.flags()

    @extend_schema(request=FlagWriteSerializer, responses={201: FlagSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(FlagWriteSerializer, request.data)
        if "key" not in data:
            raise ValidationFailed("A key is required.", field="key")
        if "version" in data:
            raise ValidationFailed(
                "A new flag starts at version 1; send a version only with a change.",
                field="version",
            )
        flag = services.flag_create(**data, **writer(request))
        return Response(self._read(flag.key), status=status.HTTP_201_CREATED)

    @extend_schema(request=FlagWriteSerializer, responses=FlagSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        flag = self.get_object()
        data = validated(FlagWriteSerializer, request.data)
        expected = data.pop("version", None)
        services.flag_update(
            flag=flag,
            changes=data,
            expected_version=expected,
            **writer(request),
        )
        return Response(self._read(flag.key))

    def perform_destroy(self, instance: Any) -> None:
        services.flag_delete(flag=instance, **writer(self.request))

    enable = _flag_verb("enable", services.flag_enable, ReasonSerializer)
    disable = _flag_verb("disable", services.flag_disable, ReasonSerializer)
    kill = _flag_verb("kill", services.flag_kill, KillSerializer)
    rollout = _flag_verb("rollout", services.flag_set_rollout, RolloutSerializer)

    @extend_schema(request=RuleAddSerializer, responses={201: FlagSerializer})
    @action(detail=True, methods=["post"], url_path="rules")
    @requires("flags.change_flag")
    def rule_add(self, request: Request, key: str | None = None) -> Response:
        data = validated(RuleAddSerializer, request.data)
        flag = services.flag_rule_add(
            flag=self.get_object(),
            rule=data["rule"],
            expected_version=data.get("version"),
            reason=data["reason"],
            **writer(request),
        )
        return Response(self._read(flag.key), status=status.HTTP_201_CREATED)

    @extend_schema(
        methods=["PUT"],
        request=RuleUpdateSerializer,
        responses=FlagSerializer,
        parameters=[RULE_INDEX],
    )
    @extend_schema(
        methods=["DELETE"],
        request=None,
        responses={200: FlagSerializer},
        parameters=[RULE_INDEX, RuleDeleteSerializer],
    )
    @action(detail=True, methods=["put", "delete"], url_path=r"rules/(?P<index>[0-9]+)")
    @requires("flags.change_flag")
    def rule(self, request: Request, key: str | None = None, index: str = "") -> Response:
        flag = self.get_object()
        if request.method == "DELETE":
            data = validated(RuleDeleteSerializer, request.query_params.dict())
            flag = services.flag_rule_delete(
                flag=flag,
                index=int(index),
                expected_version=data["version"],
                reason=data["reason"],
                **writer(request),
            )
        else:
            data = validated(RuleUpdateSerializer, request.data)
            flag = services.flag_rule_update(
                flag=flag,
                index=int(index),
                rule=data["rule"],
                expected_version=data["version"],
                reason=data["reason"],
                **writer(request),
            )
        return Response(self._read(flag.key))

    @extend_schema(request=RuleMoveSerializer, responses=FlagSerializer, parameters=[RULE_INDEX])
    @action(detail=True, methods=["post"], url_path=r"rules/(?P<index>[0-9]+)/move")
    @requires("flags.change_flag")
    def rule_move(self, request: Request, key: str | None = None, index: str = "") -> Response:
        data = validated(RuleMoveSerializer, request.data)
        flag = services.flag_rule_move(
            flag=self.get_object(),
            index=int(index),
            to=data["to"],
            expected_version=data["version"],
            reason=data["reason"],
            **writer(request),
        )
        return Response(self._read(flag.key))

    @extend_schema(request=EvaluateSerializer, responses=EvaluationResultSerializer)
    @action(detail=True, methods=["post"])
    @requires("flags.view_flag")
    def evaluate(self, request: Request, key: str | None = None) -> Response:
        data = validated(EvaluateSerializer, request.data)
        return Response(evaluation_body(self.get_object(), data["context"]))

    def _read(self, key: str) -> dict[str, Any]:
        flag = selectors.flag_get(key=key)
        return FlagSerializer(flag, context=self.get_serializer_context()).data


@extend_schema_view(
    partial_update=extend_schema(request=SegmentWriteSerializer, responses=SegmentSerializer)
)
class SegmentViewSet(KeyedViewSet):
    """Segments (cohorts) by key: reusable constraints that flag rules name."""

    queryset = Segment.objects.all()
    serializer_class = SegmentSerializer
    filterset_class = SegmentFilterSet
    ordering_fields = ["key", "updated_at"]

    def get_queryset(self) -> Any:
        return selectors.segments()

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "segment_usage": selectors.segment_usage()}

    @extend_schema(request=SegmentWriteSerializer, responses={201: SegmentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(SegmentWriteSerializer, request.data)
        segment = services.segment_create(key=data.pop("key", ""), **data, **writer(request))
        return Response(
            SegmentSerializer(segment, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=SegmentWriteSerializer, responses=SegmentSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(SegmentWriteSerializer, request.data)
        segment = services.segment_update(
            segment=self.get_object(), changes=data, **writer(request)
        )
        return Response(SegmentSerializer(segment, context=self.get_serializer_context()).data)

    def perform_destroy(self, instance: Any) -> None:
        services.segment_delete(segment=instance, **writer(self.request))
