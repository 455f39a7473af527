"""Models of the flags app: flags, segments, evaluation keys and exposure counts.

A flag's definition (variants, rules, the default rule, individual targets) is stored as JSON in
the shape :mod:`flags.definition` describes and the engine (:mod:`flags.evaluation`) validates;
services write it, snapshots read it. Every change goes through ``flags.services``, which bumps
the flag's ``version`` and the flags version (:class:`FlagsVersion` and its cache token) that
tells every process to reload.
"""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from canary_site import audit
from canary_site.models import person_field
from flags.choices import FlagStatus, FlagType, ValueType

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z"
key_validator = RegexValidator(
    KEY_PATTERN,
    "Use letters, digits, '-', '_' and '.', starting with a letter or digit.",
    code="invalid_key",
)


class Segment(models.Model):
    """A reusable, named set of constraints over context attributes (a cohort)."""

    key = models.CharField(max_length=100, unique=True, validators=[key_validator])
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    # [{"attribute", "operator", "values", "case_insensitive", "negate"}, ...]
    constraints = models.JSONField(default=list, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class Flag(models.Model):
    """A feature flag: who gets which variant, and the switches that override it."""

    key = models.CharField(max_length=100, unique=True, validators=[key_validator])
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    flag_type = models.CharField(max_length=16, choices=FlagType.choices, default=FlagType.RELEASE)
    value_type = models.CharField(
        max_length=16, choices=ValueType.choices, default=ValueType.BOOLEAN
    )
    status = models.CharField(
        max_length=16, choices=FlagStatus.choices, default=FlagStatus.DISABLED, db_index=True
    )
    # [{"name": "on", "value": true}, ...]
    variants = models.JSONField(default=list, blank=True)
    off_variant = models.CharField(max_length=100)
    # Ordered: the first rule that matches decides.
    rules = models.JSONField(default=list, blank=True)
    # A serve: {"variant"}, {"rollout": {"percentage", "variant"}} or {"split": [...]}.
    default_rule = models.JSONField(default=dict, blank=True)
    # Individual targets: [{"variant": "on", "values": ["alice", ...]}, ...]
    targets = models.JSONField(default=list, blank=True)
    stickiness = models.CharField(max_length=100, default="targetingKey")
    salt = models.CharField(max_length=100, blank=True)
    expires_on = models.DateField(null=True, blank=True)
    owner = person_field("owned_flags")
    tags = models.JSONField(default=list, blank=True)
    # Kill switches with a system-wide scope kill the flags that opt in here.
    kill_switch_enabled = models.BooleanField(default=False)
    version = models.PositiveIntegerField(default=1)
    # Who drives the rollout percentage, e.g. "deployment 12"; blank when people do.
    controlled_by = models.CharField(max_length=100, blank=True)
    killed_reason = models.TextField(blank=True)
    killed_at = models.DateTimeField(null=True, blank=True)
    # When the flag last started serving its "on" side to everyone; staleness counts from here.
    full_rollout_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["key"]
        indexes = [models.Index(fields=["flag_type"]), models.Index(fields=["expires_on"])]

    def __str__(self) -> str:
        return self.key


class EvaluationKey(models.Model):
    """A secret that can only evaluate flags over OFREP. Only its SHA-256 digest is stored."""

    name = models.CharField(max_length=100)
    # The first characters let a person recognise a key in a list without storing it.
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    # Evaluations per second for this key; null means CANARY_OFREP_RATE_LIMIT.
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    created_by = person_field("evaluation_keys")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(revoked_at__isnull=True),
                name="unique_active_evaluation_key_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class FlagExposure(models.Model):
    """How many times one variant of one flag was served in one minute, over all processes."""

    # The key rather than a foreign key: counts arrive in bulk from memory and must survive
    # the flag being deleted and recreated.
    flag_key = models.CharField(max_length=100)
    variant = models.CharField(max_length=100)
    bucket_start = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["flag_key", "bucket_start", "variant"]
        constraints = [
            models.UniqueConstraint(
                fields=["flag_key", "bucket_start", "variant"], name="unique_flag_exposure_bucket"
            )
        ]
        indexes = [models.Index(fields=["bucket_start"])]

    def __str__(self) -> str:
        return f"{self.flag_key}/{self.variant} @ {self.bucket_start:%Y-%m-%d %H:%M}: {self.count}"


class FlagsVersion(models.Model):
    """The database's count of changes to flags, segments and evaluation keys: the durable half
    of the flags version (:mod:`flags.snapshot`), bumped in the transaction of every change.

    The count is the sum of ``value`` over the rows (:func:`canary_site.versions.counter_bump`),
    so that concurrent writers each add to a row of their own instead of queueing for one.
    """

    value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"flags version slot {self.pk}: {self.value}"


audit.register(Flag, exclude_fields=["updated_at", "full_rollout_since"])
audit.register(Segment, exclude_fields=["updated_at"])
audit.register(EvaluationKey, exclude_fields=["digest"])
