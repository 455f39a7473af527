"""REST API of the kill switches: their serializers and views in one module, since the switches
are an API of their own beside the plans and executions (a switch, its three verbs and its
record of activations) and read best in one place.

- ``/api/v1/kill-switches/``: switches in the guide's vocabulary (``killSwitchService
  .createConfig``, as JSON or YAML, or the wrapper ``{definition, reason}``): list (critical
  first, then by name), read, create, replace (PUT), change some keys (PATCH), delete (409
  while active).
- ``/api/v1/kill-switches/{id}/trigger/``: a person fires the switch (never gated; 201 with the
  activation, 200 with the one already active); ``.../{id}/recover/``: a person recovers it
  (200; 202 when an approval policy on ``killswitch.recover`` holds it; 409 when not active).
- ``/api/v1/kill-switches/kill-all/``: ``emergencyKillAll(reason)``: every service halted and
  every flag that allows it killed (201 with the activation and what stopped).
- ``/api/v1/kill-switches/activations/``: every activation, newest first, with what it changed
  and how it was recovered.

Every write calls ``rollback.services``, as the dashboard's buttons do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Case, OuterRef, Prefetch, QuerySet, Subquery, Value, When
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from canary_site.api.actions import object_verb, requires, validated
from canary_site.api.serializers import RelatedName, StrictSerializer
from canary_site.audit import writer
from deployments.api.parsers import YAML_PARSERS
from flags.api.views import SafeJSONParser
from flags.models import Flag
from rollback import killswitches, services
from rollback.api.definitions import definition_body
from rollback.choices import (
    ActivationState,
    ActivationTrigger,
    KillSwitchPriority,
    KillSwitchScope,
    SwitchState,
)
from rollback.filtersets import KillSwitchActivationFilterSet, KillSwitchFilterSet
from rollback.models import KillSwitch, KillSwitchActivation
from routing.models import Service

TRIGGER = "rollback.trigger_killswitch"
# The aliases a switch may be written with; a PATCH naming one replaces the stored other.
ALIASES = {
    "service": "targetComponent",
    "targetComponent": "service",
    "targetFlags": "flags",
    "flags": "targetFlags",
}


def _words(choices: Any) -> str:
    return ", ".join(choices.values)


# --- serializers --------------------------------------------------------------------------------


class KillSwitchDefinitionSerializer(serializers.Serializer):
    """For the schema only: a switch in the guide's vocabulary, read by
    `rollback.killswitches.read_kill_switch`, which names the field at fault
    (``triggerConditions[0].threshold``)."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    scope = serializers.CharField(
        required=False, help_text=f"{_words(KillSwitchScope)} (or component); system by default."
    )
    targetComponent = serializers.CharField(
        required=False, allow_blank=True, help_text="The service a service switch stops."
    )
    flags = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="The keys of the flags a flag switch kills.",
    )
    deploymentAction = serializers.CharField(
        required=False, help_text="pause (the default) or rollback: what becomes of a canary."
    )
    triggerConditions = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="Each {type, component, threshold, windowMs, minRequests}; type is one of "
        + ", ".join(killswitches.ConditionType),
    )
    gracePeriodMs = serializers.IntegerField(
        required=False, help_text="How long a condition holds before the switch fires."
    )
    priority = serializers.CharField(required=False, help_text=_words(KillSwitchPriority))
    enabled = serializers.BooleanField(required=False)
    notifications = serializers.DictField(
        required=False, help_text="{enabled, channels, recipients}."
    )
    autoRecovery = serializers.DictField(
        required=False,
        help_text="{enabled, delayMs, maxAttempts, recoveryActions}; recoveryActions from "
        + ", ".join(killswitches.RecoveryAction),
    )


class KillSwitchWriteSerializer(StrictSerializer):
    """The wrapper form of a switch's create or update; the body may instead be the switch
    itself, as JSON or YAML."""

    definition = serializers.JSONField(help_text="The switch in the guide's vocabulary.")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class KillSwitchReasonSerializer(StrictSerializer):
    reason = serializers.CharField(
        max_length=2000, help_text="Why; required, and kept with the activation."
    )


class KillSwitchSerializer(serializers.ModelSerializer):
    """A switch with its live state. ``definition`` is the switch with every default written
    out: what ``PUT`` takes back."""

    scope = serializers.CharField(read_only=True, help_text=_words(KillSwitchScope))
    service = RelatedName("service.name")
    flags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="key")
    priority = serializers.CharField(read_only=True, help_text=_words(KillSwitchPriority))
    state = serializers.CharField(read_only=True, help_text=_words(SwitchState))
    armedSince = serializers.DateTimeField(source="armed_since", read_only=True, allow_null=True)
    armingReason = serializers.CharField(
        source="arming_reason", read_only=True, help_text="The condition that holds, and why."
    )
    definition = serializers.DictField(read_only=True)
    activeActivation = serializers.IntegerField(
        source="active_activation",
        read_only=True,
        allow_null=True,
        help_text="The id of its activation while it is active.",
    )
    recoveryAttempts = serializers.IntegerField(
        source="recovery_attempts",
        read_only=True,
        help_text="Automatic recoveries since a person last recovered it.",
    )

    class Meta:
        model = KillSwitch
        fields = [
            "id",
            "name",
            "description",
            "scope",
            "service",
            "flags",
            "priority",
            "enabled",
            "state",
            "armedSince",
            "armingReason",
            "definition",
            "activeActivation",
            "recoveryAttempts",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class KillSwitchRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class KillSwitchActivationSerializer(serializers.ModelSerializer):
    switch = KillSwitchRefSerializer(read_only=True)
    trigger = serializers.CharField(read_only=True, help_text=_words(ActivationTrigger))
    state = serializers.CharField(read_only=True, help_text=_words(ActivationState))
    activated_by = RelatedName("activated_by.username")
    recovered_by = RelatedName("recovered_by.username")
    evidence = serializers.DictField(
        read_only=True, help_text="For a condition: its numbers and since when it held."
    )
    changes = serializers.DictField(
        read_only=True,
        help_text="What it changed (flags with their previous status, services halted, "
        "deployments paused or rolled back) and, once recovered, what was restored.",
    )

    class Meta:
        model = KillSwitchActivation
        fields = [
            "id",
            "switch",
            "trigger",
            "state",
            "reason",
            "evidence",
            "changes",
            "activated_by",
            "source",
            "activated_at",
            "recovered_at",
            "recovered_by",
            "recovery",
            "recovery_attempt",
        ]
        read_only_fields = fields


class KillSwitchTriggeredSerializer(KillSwitchActivationSerializer):
    alreadyActive = serializers.SerializerMethodField(
        method_name="get_already_active",
        help_text="True when the switch was active already: this is its activation.",
    )

    class Meta(KillSwitchActivationSerializer.Meta):
        fields = [*KillSwitchActivationSerializer.Meta.fields, "alreadyActive"]
        read_only_fields = fields

    @extend_schema_field(serializers.BooleanField())
    def get_already_active(self, activation: KillSwitchActivation) -> bool:
        return bool(self.context.get("already_active"))


class StoppedSerializer(serializers.Serializer):
    services = serializers.ListField(child=serializers.CharField(), help_text="Halted, by name.")
    flags = serializers.ListField(child=serializers.CharField(), help_text="Killed, by key.")
    paused = serializers.ListField(child=serializers.IntegerField(), help_text="Deployment ids.")
    rolledBack = serializers.ListField(
        child=serializers.IntegerField(), help_text="Deployment ids."
    )


class KillAllSerializer(serializers.Serializer):
    activation = KillSwitchActivationSerializer()
    alreadyActive = serializers.BooleanField(
        help_text="True when kill-all was active already: this is its activation."
    )
    stopped = StoppedSerializer()


# --- reads --------------------------------------------------------------------------------------


def _switches() -> QuerySet[KillSwitch]:
    """Switches, critical first and then by name, each with its active activation's id."""
    active = KillSwitchActivation.objects.filter(
        switch=OuterRef("pk"), state=ActivationState.ACTIVE
    ).values("pk")[:1]
    rank = Case(
        *(When(priority=str(word), then=Value(place)) for word, place in _priority_order()),
        default=Value(len(killswitches.PRIORITY_ORDER)),
    )
    return (
        KillSwitch.objects.select_related("service")
        .prefetch_related(Prefetch("flags", queryset=Flag.objects.order_by("key")))
        .annotate(active_activation=Subquery(active), priority_rank=rank)
        .order_by("priority_rank", "name")
    )


def _priority_order() -> list[tuple[str, int]]:
    return sorted(killswitches.PRIORITY_ORDER.items(), key=lambda item: item[1])


def _activations() -> QuerySet[KillSwitchActivation]:
    return KillSwitchActivation.objects.select_related("switch", "activated_by", "recovered_by")


def _switch_body(switch: KillSwitch) -> dict[str, Any]:
    return dict(KillSwitchSerializer(_switches().get(pk=switch.pk)).data)


def _activation_body(activation: KillSwitchActivation) -> dict[str, Any]:
    return dict(KillSwitchActivationSerializer(_activations().get(pk=activation.pk)).data)


def _stopped(activation: KillSwitchActivation) -> dict[str, list[Any]]:
    """What an activation stopped, as its record says, with the services by name."""
    changes = activation.changes or {}
    halted = Service.objects.filter(pk__in=changes.get("services") or [])
    return {
        "services": sorted(halted.values_list("name", flat=True)),
        "flags": [item.get("key", "") for item in changes.get("flags") or []],
        "paused": [item["id"] for item in changes.get("paused") or []],
        "rolledBack": list(changes.get("rolledBack") or []),
    }


# --- bodies -------------------------------------------------------------------------------------


def _definition(data: Any) -> tuple[dict[str, Any], str]:
    """The switch and the reason a body carries: the switch itself, or the wrapper."""
    return definition_body(data, wrapper=KillSwitchWriteSerializer, noun="kill switch")


def _patched(stored: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The stored switch with the top-level keys ``changes`` names replaced; a key written by
    its alias (``service`` for ``targetComponent``) replaces the stored one too."""
    kept = {key: value for key, value in stored.items() if ALIASES.get(key) not in changes}
    return {**kept, **changes}


def _pressed(activation: KillSwitchActivation, now: datetime) -> bool:
    """Whether the activation a press answered was there before it: the service answers the
    active one instead of firing again, and a new one carries the press's own moment. (Asking
    before the press would race with a press at the same time.)"""
    return activation.activated_at != now


# --- views --------------------------------------------------------------------------------------

SWITCH_BODY = {
    "application/json": KillSwitchDefinitionSerializer,
    "application/yaml": OpenApiTypes.STR,
}
SWITCH_BODY_HELP = (
    "The body is the switch in the guide's vocabulary, as JSON or YAML (`application/yaml`, "
    "`text/yaml`), or the wrapper `{definition, reason}`. A switch that does not read is a 400 "
    "naming the field at fault (`triggerConditions[0].threshold`); a service or flag it names "
    "must exist."
)


@extend_schema_view(
    create=extend_schema(
        request=SWITCH_BODY, responses={201: KillSwitchSerializer}, description=SWITCH_BODY_HELP
    ),
    update=extend_schema(
        request=SWITCH_BODY,
        responses=KillSwitchSerializer,
        description="Replace the switch. An active switch keeps what its activation changed. "
        + SWITCH_BODY_HELP,
    ),
    partial_update=extend_schema(
        request=SWITCH_BODY,
        responses=KillSwitchSerializer,
        description="Change the top-level keys the body names; the others stay as they are.",
    ),
    destroy=extend_schema(description="Delete the switch; 409 while it is active."),
)
class KillSwitchViewSet(viewsets.ModelViewSet):
    """Kill switches: an emergency off-switch over the whole system, a service or some flags,
    fired by a person, by kill-all or by its trigger conditions on the beat. Critical first,
    then by name. Engineers and admins write and press; viewers and approvers read."""

    queryset = _switches()
    serializer_class = KillSwitchSerializer
    filterset_class = KillSwitchFilterSet
    parser_classes = [SafeJSONParser, *YAML_PARSERS]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at"]

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        definition, reason = _definition(request.data)
        switch = services.kill_switch_create(
            definition=definition, reason=reason, **writer(request)
        )
        return Response(_switch_body(switch), status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        switch: KillSwitch = self.get_object()
        definition, reason = _definition(request.data)
        if kwargs.get("partial"):
            definition = _patched(dict(switch.definition or {}), definition)
        services.kill_switch_update(
            switch=switch, definition=definition, reason=reason, **writer(request)
        )
        return Response(_switch_body(switch))

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.kill_switch_delete(switch=self.get_object(), **writer(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=KillSwitchReasonSerializer,
        responses={201: KillSwitchTriggeredSerializer, 200: KillSwitchTriggeredSerializer},
    )
    @action(detail=True, methods=["post"])
    @requires(TRIGGER)
    def trigger(self, request: Request, pk: str | None = None) -> Response:
        """Fire the switch now (never gated; a reason is required): 201 with the activation,
        or 200 with the activation it already has when it is active (`alreadyActive`)."""
        data = validated(KillSwitchReasonSerializer, request.data)
        now = timezone.now()
        activation = services.kill_switch_trigger(
            switch=self.get_object(), reason=data["reason"], now=now, **writer(request)
        )
        already = _pressed(activation, now)
        body = KillSwitchTriggeredSerializer(
            _activations().get(pk=activation.pk), context={"already_active": already}
        ).data
        return Response(body, status=status.HTTP_200_OK if already else status.HTTP_201_CREATED)

    recover = object_verb(
        "recover",
        lambda view, request, data: _activation_body(
            services.kill_switch_recover(
                switch_id=view.get_object().pk, reason=data["reason"], **writer(request)
            )
        ),
        body=KillSwitchReasonSerializer,
        responses=KillSwitchActivationSerializer,
        permission=TRIGGER,
        doc="Recover the active switch (a reason is required): its flags back to the status "
        "each had, its services released, the deployments it paused resumed. 202 with the "
        "approval request when a policy on `killswitch.recover` covers it; 409 (code "
        "`not_active`) when it is not active.",
    )

    @extend_schema(
        request=KillSwitchReasonSerializer,
        responses={201: KillAllSerializer, 200: KillAllSerializer},
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="kill-all",
        filter_backends=[],
        pagination_class=None,
    )
    @requires(TRIGGER)
    def kill_all(self, request: Request) -> Response:
        """Emergency kill-all (never gated; a reason is required): every service halted, every
        running canary paused, every flag with `kill_switch_enabled` killed, as the system
        switch `kill-all`. 201 with the activation and what stopped; 200 with the same when
        kill-all is active already."""
        data = validated(KillSwitchReasonSerializer, request.data)
        now = timezone.now()
        activation = services.kill_switch_kill_all(
            reason=data["reason"], now=now, **writer(request)
        )
        already = _pressed(activation, now)
        body = {
            "activation": _activation_body(activation),
            "alreadyActive": already,
            "stopped": _stopped(activation),
        }
        return Response(body, status=status.HTTP_200_OK if already else status.HTTP_201_CREATED)


class KillSwitchActivationViewSet(viewsets.ReadOnlyModelViewSet):
    """Every activation of every switch, newest first: why it fired (a condition with its
    numbers, a person, kill-all), exactly what it changed, and how it was recovered."""

    queryset = _activations()
    serializer_class = KillSwitchActivationSerializer
    filterset_class = KillSwitchActivationFilterSet
    parser_classes = [SafeJSONParser]
    ordering_fields = ["activated_at", "recovered_at"]
