"""Serializers of the routing API: read shapes of the models, strict write shapes for services.

Write serializers only check types; everything the engine knows (weights summing to 100, URLs,
regular expressions, TTLs, target references) is checked by the services, which compile the
whole routing definition, so the API, the dashboard and the admin refuse the same things.
"""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from canary_site.api.serializers import StrictSerializer
from canary_site.exceptions import ValidationFailed
from routing.choices import ProviderKind, Strategy
from routing.models import RoutingRule, Service, Target
from routing.services import RULE_FIELDS, TARGET_FIELDS

PERCENT = {
    "max_digits": 5,
    "decimal_places": 2,
    "min_value": Decimal("0"),
    "max_value": Decimal("100"),
    "coerce_to_string": False,
}


class TargetBriefSerializer(serializers.ModelSerializer):
    weight = serializers.DecimalField(read_only=True, **PERCENT)

    class Meta:
        model = Target
        fields = ["id", "name", "endpoint", "version", "weight", "healthy", "draining_since"]
        read_only_fields = fields


class ServiceSerializer(serializers.ModelSerializer):
    targets = TargetBriefSerializer(many=True, read_only=True)
    # Set and lifted by kill switches (``services.services_halt``), never through this API.
    halted_by = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="Who holds the halt; halted while any holder remains.",
    )

    class Meta:
        model = Service
        fields = [
            "id",
            "name",
            "stable_version",
            "description",
            "routing_version",
            "halted_since",
            "halted_reason",
            "halted_by",
            "provider",
            "provider_config",
            "targets",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ServiceWriteSerializer(StrictSerializer):
    name = serializers.SlugField(max_length=63)
    stable_version = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    provider = serializers.ChoiceField(
        choices=ProviderKind.choices,
        required=False,
        default=ProviderKind.BUILTIN,
        help_text="The data plane that serves the service: the built-in proxy, HAProxy "
        "(Runtime API) or nginx (a file and a reload). A new provider starts from no settings.",
    )
    provider_config = serializers.JSONField(
        required=False,
        default=dict,
        help_text='HAProxy: {"runtimeApi": "unix:/run/haproxy/admin.sock" or "host:port", '
        '"backend", "serverPrefix"}; nginx: {"configPath", "testCommand": [...], '
        '"reloadCommand": [...], "accessLog", "listen", "serverName"}; the built-in proxy: {}.',
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="", write_only=True)


class TargetSerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="name", read_only=True)
    weight = serializers.DecimalField(read_only=True, **PERCENT)

    class Meta:
        model = Target
        fields = [
            "id",
            "service",
            *TARGET_FIELDS,
            "draining_since",
            "consecutive_successes",
            "consecutive_failures",
            "last_checked_at",
            "last_check_result",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class TargetWriteSerializer(StrictSerializer):
    service = serializers.SlugField(max_length=63, help_text="Service name (on create).")
    name = serializers.SlugField(max_length=100)
    endpoint = serializers.CharField(max_length=500)
    version = serializers.CharField(max_length=100)
    weight = serializers.DecimalField(required=False, **PERCENT)
    healthy = serializers.BooleanField(required=False)
    metadata = serializers.JSONField(required=False)
    health_check = serializers.JSONField(required=False, allow_null=True)
    reason = serializers.CharField(required=False, allow_blank=True, default="", write_only=True)


class DrainSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class DrainStatusSerializer(serializers.Serializer):
    """``selectors.DrainStatus``: where a target's drain stands in the running proxies."""

    draining = serializers.BooleanField()
    since = serializers.DateTimeField(allow_null=True)
    in_flight = serializers.IntegerField(
        help_text="Requests the live proxies have in flight to it."
    )
    proxies = serializers.IntegerField(help_text="Live proxies (fresh reports).")
    loaded = serializers.IntegerField(
        help_text="Live proxies routing with the drain (or not serving the service)."
    )
    drained = serializers.BooleanField(
        help_text="Draining, loaded by every live proxy, and nothing in flight (true at once "
        "when no proxy runs)."
    )


class TargetDrainSerializer(serializers.Serializer):
    target = TargetSerializer()
    drain = DrainStatusSerializer()


class RuleTargetSerializer(StrictSerializer):
    target = serializers.SlugField(max_length=100, help_text="Target name within the service.")
    weight = serializers.DecimalField(**PERCENT)


@extend_schema_field(RuleTargetSerializer(many=True))
class RuleTargetsField(serializers.JSONField):
    """A list of {target, weight}, checked by ``RuleWriteSerializer.validate_targets``."""


class RuleSerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="name", read_only=True)
    targets = serializers.SerializerMethodField()

    class Meta:
        model = RoutingRule
        fields = [
            "id",
            "service",
            *RULE_FIELDS,
            "targets",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_targets(self, rule: RoutingRule) -> list[dict[str, Any]]:
        return [
            {
                "target": item.target.name,
                "version": item.target.version,
                "weight": float(item.weight),
            }
            for item in rule.rule_targets.all()
        ]


class RuleWriteSerializer(StrictSerializer):
    service = serializers.SlugField(max_length=63, help_text="Service name (on create).")
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    priority = serializers.IntegerField(required=False, min_value=-(2**31), max_value=2**31 - 1)
    enabled = serializers.BooleanField(required=False)
    strategy = serializers.ChoiceField(choices=Strategy.choices, required=False)
    strategy_key = serializers.CharField(max_length=100, required=False, allow_blank=True)
    conditions = serializers.JSONField(required=False)
    targets = RuleTargetsField(
        help_text="Target names with percentages, in layout order: "
        '[{"target": "stable", "weight": 90}, {"target": "canary", "weight": 10}]'
    )
    affinity = serializers.JSONField(required=False, allow_null=True)
    failover = serializers.JSONField(required=False, allow_null=True)
    circuit_breaker = serializers.JSONField(required=False, allow_null=True)
    rate_limit = serializers.JSONField(required=False, allow_null=True)
    health_check = serializers.JSONField(required=False, allow_null=True)
    reason = serializers.CharField(required=False, allow_blank=True, default="", write_only=True)

    def validate_targets(self, value: Any) -> OrderedDict[str, Any]:
        """Shape only; the services check the names and the percentages. Errors name the item,
        ``targets[1].weight``, as the engine's own errors do."""
        if not isinstance(value, list) or not value:
            raise ValidationFailed("targets: a non-empty list of targets.", field="targets")
        weights: OrderedDict[str, Any] = OrderedDict()
        for index, item in enumerate(value):
            path = f"targets[{index}]"
            if not isinstance(item, dict):
                raise ValidationFailed(f"{path}: must be an object.", field=path)
            for key in item:
                if key not in ("target", "weight"):
                    raise ValidationFailed(f"{path}.{key}: unknown field.", field=f"{path}.{key}")
            name = item.get("target")
            if not isinstance(name, str) or not name:
                raise ValidationFailed(f"{path}.target: a target name.", field=f"{path}.target")
            if name in weights:
                field = f"{path}.target"
                raise ValidationFailed(f"{field}: {name} appears twice.", field=field)
            weight = item.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, int | float | str):
                field = f"{path}.weight"
                raise ValidationFailed(f"{field}: a percentage from 0 to 100.", field=field)
            weights[name] = weight
        return weights


class WeightsSerializer(StrictSerializer):
    weights = serializers.DictField(
        child=serializers.DecimalField(**PERCENT),
        allow_empty=False,
        help_text='Target name to percentage, e.g. {"stable": 75, "canary": 25}.',
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class DecideRequestSerializer(StrictSerializer):
    """A request to route, described: the same parts the proxy reads."""

    service = serializers.SlugField(max_length=63)
    method = serializers.CharField(max_length=16, default="GET")
    path = serializers.CharField(max_length=2048, default="/")
    headers = serializers.DictField(child=serializers.CharField(allow_blank=True), default=dict)
    cookies = serializers.DictField(child=serializers.CharField(allow_blank=True), default=dict)
    query = serializers.DictField(child=serializers.CharField(allow_blank=True), default=dict)
    client_ip = serializers.IPAddressField(required=False, allow_blank=True, default="")

    def validate_path(self, value: str) -> str:
        if not value.startswith("/"):
            raise serializers.ValidationError("A path starts with /.")
        return value


class DecisionTargetSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    endpoint = serializers.CharField()
    version = serializers.CharField()


class DecisionSerializer(serializers.Serializer):
    service = serializers.CharField()
    routing_version = serializers.IntegerField()
    target = DecisionTargetSerializer(allow_null=True)
    reason = serializers.CharField()
    rule_id = serializers.IntegerField(allow_null=True)
    rule_name = serializers.CharField(allow_null=True)
    bucket = serializers.IntegerField(allow_null=True)
    sticky_key = serializers.CharField(allow_null=True)
    key_issued = serializers.BooleanField()
    set_cookie = serializers.CharField(allow_null=True)
    explanation = serializers.CharField()
