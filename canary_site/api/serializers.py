"""Serializers of the site's API, and the strict base every write serializer builds on."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from canary_site.models import ApiToken, AuditEntry


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo in a client is an error, not a silent no-op."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(self.fields)
            unknown = sorted(str(key) for key in data if key not in known)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class RelatedName(serializers.CharField):
    """A related object's name or a related account's username (``source`` says which, as
    ``"policy.name"`` or ``"owner.username"``), or null where there is none; read-only."""

    def __init__(self, source: str, **kwargs: Any) -> None:
        super().__init__(source=source, read_only=True, default=None, allow_null=True, **kwargs)


@extend_schema_field(
    {"anyOf": [{"type": "string", "format": "uri"}, {"type": "string", "enum": [""]}]}
)
class BlankableURLField(serializers.URLField):
    """A URL, or the empty string where none is set: the schema says both, since an empty
    string is no ``uri``."""


class AuditEntrySerializer(serializers.ModelSerializer):
    object_type = serializers.CharField(source="content_type.model", read_only=True)
    actor = RelatedName("actor.username")
    action = serializers.CharField(source="action_name", read_only=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "timestamp",
            "actor",
            "source",
            "action",
            "reason",
            "object_type",
            "object_pk",
            "object_repr",
            "changes",
            "remote_addr",
        ]
        read_only_fields = fields


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at"]
        read_only_fields = fields


class ApiTokenCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="What kind of error, e.g. 'invalid' or 'conflict'.")
    message = serializers.CharField(help_text="A sentence for a person.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="The fields at fault, as paths such as 'rules[0].operator', each with its "
        "messages; empty when the error concerns no one field.",
    )


class ErrorSerializer(serializers.Serializer):
    """The one body of every error the API answers."""

    error = ErrorDetailSerializer()


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())
