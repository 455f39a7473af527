"""Services, their targets and the routing rules that split traffic between them.

The rows hold exactly what ``routing.engine`` needs: ``definition.service_definition`` turns a
service with its targets and rules into the engine's plain-dict shape, and every write is checked
by building that snapshot before it is saved (``services.py``), so a stored rule always compiles.
Weights are percentages with two decimals (0 to 100), basis points in the engine. Every change
to a service, a target or a rule bumps the service's ``routing_version`` and the shared cache's
routing version key, which is how proxies notice that they must reload.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from canary_site import audit
from canary_site.reading import index_path, key_path
from routing.choices import ProviderKind, ProviderSyncAction, Strategy
from routing.engine import InvalidRoutingDefinition, check_endpoint, check_text


def validate_endpoint(value: str) -> None:
    try:
        check_endpoint(value)
    except InvalidRoutingDefinition as error:
        raise ValidationError(f"The endpoint {error.message}.", code="invalid") from None


# The metric store keys its series by version with this alphabet, so a version the proxy records
# outcomes for must fit it.
validate_version = RegexValidator(
    # \Z, not $: "$" also matches before a final line break.
    r"^[A-Za-z0-9_.:\-/@+]{1,100}\Z",
    "A version is 1 to 100 letters, digits or _.:-/@+ (no spaces).",
)


def validate_metadata(value: object) -> None:
    """Refuse control characters in any key or string of a target's metadata."""

    def walk(item: object, path: str) -> None:
        if isinstance(item, dict):
            for key, inner in item.items():
                walk(key, path)
                walk(inner, key_path(path, str(key)))
        elif isinstance(item, list):
            for index, inner in enumerate(item):
                walk(inner, index_path(path, index))
        else:
            try:
                check_text(path, item)
            except InvalidRoutingDefinition as error:
                where = f" ({error.field})" if error.field else ""
                raise ValidationError(
                    f"Metadata{where} must not contain control characters (line breaks, tabs, "
                    "NUL and the like).",
                    code="invalid",
                ) from None

    walk(value, "")


PERCENT_VALIDATORS = [MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))]


class Service(models.Model):
    """A named deployable ("checkout") with its stable version and the targets that serve it."""

    # A DNS label: the proxy routes by the Host header's first label, and nginx names are built
    # from it.
    name = models.SlugField(max_length=63, unique=True)
    stable_version = models.CharField(max_length=100, validators=[validate_version])
    description = models.TextField(blank=True, default="")
    routing_version = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Bumped by every change to the service's routing."
    )
    # A halt (``services.services_halt``, a kill switch's): while any holder remains, every
    # request takes the default route to the stable version's targets, whatever the rules say,
    # and the rules are left untouched, so lifting the halt restores exactly what was there.
    # ``halted_by`` lists the holders in the order they took hold; each lifts only its own
    # hold, so two switches holding one service cannot release each other. ``halted_since``
    # and ``halted_reason`` tell when and why the halt began; a holder that joins a halt under
    # way keeps them (its own reason is on its audit entry).
    halted_since = models.DateTimeField(null=True, blank=True, editable=False)
    halted_reason = models.CharField(max_length=500, blank=True, default="", editable=False)
    halted_by = models.JSONField(
        default=list, blank=True, editable=False, help_text="Who holds the halt (their tokens)."
    )
    # The data plane that serves the service (``routing.providers``): the built-in proxy reads
    # the snapshots itself; HAProxy (Runtime API) and nginx (a file and a reload) are told every
    # change of weights by the control loop, which also repairs their drift. The config is the
    # provider's own (``providers.config``), checked by the services before it is saved.
    provider = models.CharField(
        max_length=16, choices=ProviderKind.choices, default=ProviderKind.BUILTIN
    )
    provider_config = models.JSONField(
        default=dict,
        blank=True,
        help_text='HAProxy: {"runtimeApi", "backend", "serverPrefix"}; nginx: {"configPath", '
        '"reloadCommand", "testCommand", "accessLog", "listen", "serverName"}.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def halted(self) -> bool:
        return bool(self.halted_by)


class Target(models.Model):
    """One backend of a service: an endpoint running one version, and its health."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="targets")
    # Unique within the service; the engine's target id, so a header, a fallback list or a
    # circuit breaker names a target by it.
    name = models.SlugField(max_length=100)
    # Not a URLField: Django's URL validator wants a dotted host, and backends are often named
    # by a bare host ("http://checkout-canary:8080"); the engine's own check applies instead.
    endpoint = models.CharField(
        max_length=500, validators=[validate_endpoint], help_text="http or https URL."
    )
    version = models.CharField(max_length=100, validators=[validate_version])
    weight = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=PERCENT_VALIDATORS,
        help_text=(
            "Share among the stable version's targets on the default route (no rule matched); "
            "all zero means an even spread."
        ),
    )
    healthy = models.BooleanField(default=True)
    # Set while the target is drained (``services.target_drain_start``): the proxies send it no
    # new request, its share going to the other targets of each split as an unhealthy
    # target's does, while the requests it already has finish (``selectors.drain_status``).
    draining_since = models.DateTimeField(null=True, blank=True, editable=False)
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    health_check = models.JSONField(
        null=True,
        blank=True,
        help_text="Active health check for this target; overrides the checks of its rules.",
    )
    # Probe bookkeeping, written by the active health checks without an audit entry each time.
    consecutive_successes = models.PositiveIntegerField(default=0, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_check_result = models.CharField(max_length=200, blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["service__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["service", "name"], name="routing_unique_target_name")
        ]

    def __str__(self) -> str:
        return f"{self.service.name}/{self.name} (v{self.version})"


class RoutingRule(models.Model):
    """Which requests of a service a rule takes, and how it spreads them over its targets.

    The JSON sections use the engine's keys (see ``routing.engine``): ``conditions`` is a list of
    ``{source, name, operator, values, case_sensitive, negate}``; ``affinity``, ``failover``,
    ``circuit_breaker``, ``rate_limit`` and ``health_check`` are objects or null.
    """

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="rules")
    name = models.CharField(max_length=100, blank=True, default="")
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    enabled = models.BooleanField(default=True)
    strategy = models.CharField(max_length=32, choices=Strategy.choices, default=Strategy.WEIGHTED)
    strategy_key = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="The header, cookie or query parameter that names a target (header, cookie "
        "and query strategies).",
    )
    conditions = models.JSONField(default=list, blank=True)
    targets = models.ManyToManyField(Target, through="RuleTarget", related_name="rules")
    affinity = models.JSONField(null=True, blank=True)
    failover = models.JSONField(null=True, blank=True)
    circuit_breaker = models.JSONField(null=True, blank=True)
    rate_limit = models.JSONField(null=True, blank=True)
    health_check = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["service__name", "priority", "id"]

    def __str__(self) -> str:
        label = self.name or f"rule {self.pk}"
        return f"{self.service.name}: {label}"


class RuleTarget(models.Model):
    """A target's share in a rule, in percent with two decimals."""

    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="rule_targets")
    # A target in use by a rule cannot vanish underneath it: the rule's weights would no
    # longer add up. Remove it from the rule first.
    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="rule_targets")
    weight = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal("0"), validators=PERCENT_VALIDATORS
    )
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["rule", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "target"], name="routing_unique_rule_target")
        ]

    def __str__(self) -> str:
        return f"{self.target.name} {self.weight}%"


class ProviderState(models.Model):
    """The control loop's bookkeeping for one service's external data plane: who holds it
    now (a lease, so two workers never write one nginx file or HAProxy backend at once), what
    it last applied, its run of failures and when to try again, and where its metrics were
    last read (HAProxy's cumulative counters, nginx's access log offset). Written without an
    audit entry, like a target's probe counters."""

    service = models.OneToOneField(
        Service, on_delete=models.CASCADE, primary_key=True, related_name="provider_state"
    )
    lease_until = models.DateTimeField(null=True, blank=True)
    applied_version = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The routing version the data plane last took."
    )
    checked_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=1000, blank=True, default="")
    alerted = models.BooleanField(
        default=False, help_text="A critical alert was raised for this run of failures."
    )
    cursor = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.service_id}: {self.consecutive_failures} failure(s)"


class ProviderSync(models.Model):
    """One result of telling a service's data plane its weights, or of finding it unreachable
    or drifted: what Canary set (``weights``, target name to percent), what the data plane
    reported before a repair (``observed``), and what happened in words. A quiet look that
    finds everything in place writes no row (``ProviderState.checked_at`` moves instead)."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="provider_syncs")
    at = models.DateTimeField(default=timezone.now)
    provider = models.CharField(max_length=16, choices=ProviderKind.choices)
    action = models.CharField(max_length=16, choices=ProviderSyncAction.choices)
    ok = models.BooleanField()
    drift = models.BooleanField(default=False)
    routing_version = models.PositiveBigIntegerField(default=0)
    detail = models.TextField(blank=True, default="")
    weights = models.JSONField(default=dict, blank=True)
    observed = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["service", "-at"], name="routing_providersync_latest"),
            models.Index(fields=["at"], name="routing_providersync_at"),
        ]

    def __str__(self) -> str:
        outcome = "ok" if self.ok else "failed"
        return f"{self.service_id} {self.provider} {self.action} {outcome}"


_PROBE_FIELDS = [
    "consecutive_successes",
    "consecutive_failures",
    "last_checked_at",
    "last_check_result",
    "updated_at",
]
audit.register(Service, exclude_fields=["routing_version", "updated_at"])
audit.register(Target, exclude_fields=_PROBE_FIELDS)
audit.register(RoutingRule, exclude_fields=["updated_at"])
audit.register(RuleTarget)
