"""Routing decision engine: picks the target for one request from an in-memory rules snapshot.

Pure Python with no Django import and no database, so that the proxy, the REST ``decide``
endpoint, the exporters and the tests all share one implementation. The snapshot is immutable and
precompiled (matchers, lowercased names, regular expressions, networks, cumulative bucket
boundaries); the only mutable piece is an optional :class:`RuntimeState` that a proxy process keeps
for round robin turns, in-flight counts, circuit breakers and rate limiters.

Semantics
---------
* Rules are tried by ascending ``priority`` (ties keep the given order); the first enabled rule
  whose conditions all match wins. A rule without conditions matches every request.
* When no rule matches, the request takes the default route: an available target of the
  service's stable version, picked at random in proportion to the targets' service-level
  ``weight`` (evenly when they are all 0; reason ``no_rule``; no target when none is available).
* A halted service (``halted``, a kill switch's emergency stop) sends every request by the
  default route, whatever its rules say: no split, pin or sticky key can reach a target of
  another version (reason ``halted``; no target when no stable target is available, as on the
  default route). Its rules stay compiled, so lifting the halt routes exactly as before.
* Weights are integer basis points, 0 to 10,000 (10,000 = 100%), the unit of the shared bucketing
  (``canary_site.bucketing.bucket``). In ``weighted``, ``header``, ``cookie`` and ``query`` rules
  they must sum to exactly 10,000; ``round_robin`` and ``least_connections`` ignore them except
  when failing open.
* Targets are laid out on the 10,000 buckets canary first (every target whose version is not the
  stable version, in the rule's order), then stable. A sticky key (the affinity cookie or header)
  is hashed with ``bucket(f"{service}:{rule id}", key)``; raising the canary share only grows the
  canary's range, so a user moves from stable to canary and never back, as with flags.
* Without a sticky key the point on the layout is random. A cookie-affinity rule issues a fresh
  key to a newcomer (``Decision.key_issued``) so that it is sticky from its first request.
* ``header``, ``cookie`` and ``query`` strategies read ``strategy_key`` from the request; a value
  equal to a target's id, version or name (tried in that order) pins the request to that target.
  Without a pin they split by weight like ``weighted``.
* A target is in rotation when it is marked healthy and is not draining (a drained target
  finishes the requests it has and takes no new one). It is available when it is in rotation,
  not excluded by the caller (a proxy retrying elsewhere), and its circuit breaker admits the
  request. A target that is not available is never chosen while an available one exists in the
  rule: the request fails over to the rule's available targets (same point, spread by their
  weights), then to the first available ``fallback_target_ids``; with none left, ``fail_open``
  picks among all the rule's targets by weight (draining ones too) and ``fail_closed`` answers
  no target (reason ``no_healthy_target``).
* A rule with a rate limit refuses requests beyond it when a ``RuntimeState`` is given (reason
  ``rate_limited`` with ``retry_after`` seconds); a stateless call never limits.

Dictionary shape for :func:`build_service_snapshot` (snake_case keys; ``?`` marks optional keys,
shown with their default; ``metadata``, ``description`` and ``health_check`` are accepted anywhere
and ignored, any other unknown key is an error)::

    {
      "name": "checkout",                      # service name, part of the bucketing salt
      "stable_version": "1.4.0",
      "version?": 0,                           # snapshot version, bumped on every change
      "halted?": false,                        # true: every request takes the default route
      "halted_reason?": "",                    # why, for the explanation
      "targets?": [                            # the service's targets
        {"id": "stable-1", "name?": "<id>", "endpoint": "http://10.0.0.5:8080",
         "version": "1.4.0", "healthy?": true, "draining?": false, "weight?": 0}
      ],
      "rules?": [
        {
          "id": 1,                             # int or str, unique
          "name?": "",
          "priority?": 0,                      # lower runs first
          "enabled?": true,
          "strategy?": "weighted",             # weighted | round_robin | least_connections
                                               # | header | cookie | query
          "strategy_key?": null,               # header / cookie / query parameter naming a
                                               # target; required by those three strategies
          "conditions?": [
            {"source": "header",               # header | cookie | query | path | method
                                               # | client_ip
             "name?": "x-beta",                # required for header, cookie and query
             "operator": "equals",             # equals | in | prefix | contains | regex | cidr
             "values": ["1"],                  # equals takes exactly one value
             "case_sensitive?": false, "negate?": false}
          ],
          "targets": [                         # a reference to a service target ...
            {"id": "stable-1", "weight": 9000},
                                               # ... or a full definition, as in "targets"
            {"id": "canary-1", "endpoint": "http://10.0.0.9:8080", "version": "1.5.0",
             "weight": 1000}
          ],
          "affinity?": null,                   # or {"type": "cookie", "name": "canary_session",
                                               #     "ttl_s?": null, "path?": "/",
                                               #     "secure?": false, "httponly?": true}
                                               # or {"type": "header", "name": "x-user-id"}
          "failover?": {"fail_open?": true, "fallback_target_ids?": [],
                        "retries?": 0, "retry_delay_ms?": 0},
          "circuit_breaker?": null,            # or {"failure_threshold?": 5,
                                               #     "recovery_timeout_s?": 60,
                                               #     "half_open_requests?": 1}
          "rate_limit?": null                  # or {"rps": 100, "burst": 20}
        }
      ]
    }

Every validation error is an :class:`InvalidRoutingDefinition` naming the field with its path,
for example ``rules[0].conditions[1].values[0]`` for an unsafe regular expression.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from canary_site import regex_guard
from canary_site.bucketing import BUCKET_COUNT, bucket
from canary_site.reading import Fields, is_integer, is_list, is_number, key_path, nested_path

__all__ = [
    "BUCKETS",
    "Affinity",
    "CircuitBreaker",
    "CircuitBreakerSettings",
    "CircuitState",
    "Condition",
    "Decision",
    "Failover",
    "InvalidRoutingDefinition",
    "Operator",
    "RateLimit",
    "Reason",
    "RequestContext",
    "RuleSnapshot",
    "RuntimeState",
    "ServiceSnapshot",
    "Source",
    "Strategy",
    "TargetSnapshot",
    "TokenBucket",
    "build_service_snapshot",
    "check_endpoint",
    "check_text",
    "decide",
]

BUCKETS = BUCKET_COUNT
"""Buckets of the shared bucketing function (10,000); weights are basis points of this."""

MAX_REGEX_LENGTH = regex_guard.MAX_PATTERN_LENGTH
"""Longest regular expression a condition may hold."""

MAX_REGEX_INPUT = regex_guard.MAX_INPUT_LENGTH
"""A regular expression sees at most this many leading characters of the request value."""

RuleId = int | str


class Strategy(StrEnum):
    WEIGHTED = "weighted"
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    HEADER = "header"
    COOKIE = "cookie"
    QUERY = "query"


class Source(StrEnum):
    HEADER = "header"
    COOKIE = "cookie"
    QUERY = "query"
    PATH = "path"
    METHOD = "method"
    CLIENT_IP = "client_ip"


class Operator(StrEnum):
    EQUALS = "equals"
    IN = "in"
    PREFIX = "prefix"
    CONTAINS = "contains"
    REGEX = "regex"
    CIDR = "cidr"


class Reason(StrEnum):
    """Why a decision chose its target, as a short machine code."""

    RULE_MATCH = "rule_match"  # the matching rule has a single target and no affinity
    WEIGHTED = "weighted"  # random point on the weight layout
    STICKY = "sticky"  # affinity key's bucket on the weight layout
    PINNED = "pinned"  # header / cookie / query value named the target
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    FAILOVER = "failover"  # the natural pick was unavailable; another target took it
    FAIL_OPEN = "fail_open"  # nothing available; picked by weight regardless of health
    NO_HEALTHY_TARGET = "no_healthy_target"  # nothing available and the rule fails closed
    RATE_LIMITED = "rate_limited"
    NO_RULE = "no_rule"  # no rule matched; default route to the stable version
    HALTED = "halted"  # the service is halted; default route to the stable version


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Enum member lookups go through the metaclass; the hot path reads these module globals instead.
_RULE_MATCH = Reason.RULE_MATCH
_WEIGHTED = Reason.WEIGHTED
_STICKY = Reason.STICKY
_PINNED = Reason.PINNED
_FAILOVER = Reason.FAILOVER

_SPLIT_STRATEGIES = frozenset(
    {Strategy.WEIGHTED, Strategy.HEADER, Strategy.COOKIE, Strategy.QUERY},
)
_NAMED_SOURCES = frozenset({Source.HEADER, Source.COOKIE, Source.QUERY})
_IGNORED_KEYS = frozenset({"metadata", "description", "health_check"})


class InvalidRoutingDefinition(ValueError):
    """A routing definition that cannot be used, with the path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def within(self, prefix: str) -> InvalidRoutingDefinition:
        """The same error with its field placed under ``prefix``."""
        return InvalidRoutingDefinition(nested_path(prefix, self.field), self.message)


# ---------------------------------------------------------------------------------------------
# Snapshot


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """One backend of a service: where it listens, which version it runs, its share in a rule."""

    id: str
    name: str
    endpoint: str
    version: str
    weight: int = 0
    healthy: bool = True
    draining: bool = False
    # Healthy and not draining: may take new requests. Read on every decision, so computed once.
    in_rotation: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidRoutingDefinition("id", "must be a non-empty string")
        check_text("id", self.id)
        check_text("name", self.name)
        if not isinstance(self.version, str) or not self.version:
            raise InvalidRoutingDefinition("version", "must be a non-empty string")
        check_text("version", self.version)
        check_endpoint(self.endpoint)
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise InvalidRoutingDefinition("weight", "must be an integer number of basis points")
        if not 0 <= self.weight <= BUCKETS:
            raise InvalidRoutingDefinition("weight", f"must be between 0 and {BUCKETS}")
        for name in ("healthy", "draining"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRoutingDefinition(name, "must be true or false")
        object.__setattr__(self, "in_rotation", self.healthy and not self.draining)

    @property
    def identity(self) -> tuple[str, str, str, bool, bool]:
        """What must agree wherever the same target id appears."""
        return (self.name, self.endpoint, self.version, self.healthy, self.draining)


# C0 controls, DEL and C1 controls. A line break in a name or a value would end a comment or a
# directive of an exported configuration (nginx) or split a header the proxy writes.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def check_text(field: str, value: object) -> None:
    """Raise :class:`InvalidRoutingDefinition` if ``value`` holds a control character."""
    if isinstance(value, str) and _CONTROL_CHARACTERS.search(value):
        raise InvalidRoutingDefinition(
            field, "must not contain control characters (line breaks, tabs, NUL and the like)"
        )


def check_endpoint(endpoint: object) -> None:
    """Raise :class:`InvalidRoutingDefinition` unless ``endpoint`` is an http(s) URL with a host
    name or an IP address."""
    if not isinstance(endpoint, str):
        raise InvalidRoutingDefinition("endpoint", "must be an http or https URL")
    # urlsplit silently drops tabs and line breaks, so look before it does.
    if _CONTROL_CHARACTERS.search(endpoint) or any(c.isspace() for c in endpoint):
        raise InvalidRoutingDefinition("endpoint", "must not contain spaces or control characters")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidRoutingDefinition("endpoint", "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRoutingDefinition("endpoint", "must be an http or https URL with a host")
    host = parts.hostname
    if not _HOST_NAME.fullmatch(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            # The host becomes an nginx upstream address, and anything but a name or an address
            # would be read as configuration there.
            raise InvalidRoutingDefinition(
                "endpoint", "must name its host by a DNS name or an IP address"
            ) from None


Matcher = Callable[["RequestContext"], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on the request; a rule applies when all of its conditions hold."""

    source: str
    operator: str
    values: tuple[str, ...]
    name: str = ""
    case_sensitive: bool = False
    negate: bool = False
    matches: Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            source = Source(self.source)
        except ValueError:
            raise InvalidRoutingDefinition("source", f"must be one of {_choices(Source)}") from None
        try:
            operator = Operator(self.operator)
        except ValueError:
            raise InvalidRoutingDefinition(
                "operator", f"must be one of {_choices(Operator)}"
            ) from None
        if source in _NAMED_SOURCES and (not isinstance(self.name, str) or not self.name):
            raise InvalidRoutingDefinition("name", f"is required for a {source} condition")
        check_text("name", self.name)
        values = self.values
        if isinstance(values, str) or not isinstance(values, Iterable):
            raise InvalidRoutingDefinition("values", "must be a list of strings")
        values = tuple(values)
        if not values or not all(isinstance(value, str) for value in values):
            raise InvalidRoutingDefinition("values", "must be a non-empty list of strings")
        for index, value in enumerate(values):
            check_text(f"values[{index}]", value)
        if operator is Operator.EQUALS and len(values) != 1:
            raise InvalidRoutingDefinition(
                "values", "equals takes exactly one value; use in for several"
            )
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "matches", _compile_matcher(self))

    def describe(self) -> str:
        """The condition as a phrase, e.g. ``header x-beta equals "1"``."""
        subject = {
            Source.HEADER: f"header {self.name}",
            Source.COOKIE: f"cookie {self.name}",
            Source.QUERY: f"query parameter {self.name}",
            Source.PATH: "path",
            Source.METHOD: "method",
            Source.CLIENT_IP: "client IP",
        }[self.source]
        quoted = ", ".join(f'"{value}"' for value in self.values)
        positive, negative = {
            Operator.EQUALS: ("equals", "does not equal"),
            Operator.IN: ("is one of", "is not one of"),
            Operator.PREFIX: ("starts with", "does not start with"),
            Operator.CONTAINS: ("contains", "does not contain"),
            Operator.REGEX: ("matches", "does not match"),
            Operator.CIDR: ("is in", "is not in"),
        }[self.operator]
        if self.operator is Operator.CIDR:
            quoted = ", ".join(self.values)
        elif self.operator in (Operator.PREFIX, Operator.CONTAINS, Operator.REGEX):
            quoted = " or ".join(f'"{value}"' for value in self.values)
        phrase = f"{subject} {negative if self.negate else positive} {quoted}"
        if self.case_sensitive and self.operator is not Operator.CIDR:
            phrase += " (case-sensitive)"
        return phrase


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(member.value for member in enum)


def _compile_matcher(condition: Condition) -> Matcher:
    """Build the closure that evaluates ``condition``; all per-call work is decided here."""
    fold = not condition.case_sensitive and condition.operator not in (
        Operator.REGEX,
        Operator.CIDR,
    )
    values = tuple(value.lower() for value in condition.values) if fold else condition.values
    test = _compile_test(condition.operator, values, condition.case_sensitive)
    negate = condition.negate
    source = condition.source

    # Each source gets its own closure: reading one attribute directly beats a generic getter
    # call, and the matchers run for every rule tried on every request.
    if source in _NAMED_SOURCES:
        key = condition.name.lower() if source is Source.HEADER else condition.name
        attribute = {Source.HEADER: "headers", Source.COOKIE: "cookies", Source.QUERY: "query"}[
            source
        ]

        def match_named(request: RequestContext) -> bool:
            value = getattr(request, attribute).get(key)
            if value is None:
                # An absent value fails the test, so a negated condition holds.
                return negate
            return test(value.lower() if fold else value) is not negate

        return match_named

    attribute = {Source.PATH: "path", Source.METHOD: "method", Source.CLIENT_IP: "client_ip"}[
        source
    ]

    def match_scalar(request: RequestContext) -> bool:
        value = getattr(request, attribute)
        return test(value.lower() if fold else value) is not negate

    return match_scalar


def _compile_test(operator: Operator, values: tuple[str, ...], case_sensitive: bool) -> Any:
    if operator is Operator.EQUALS:
        return values[0].__eq__
    if operator is Operator.IN:
        return frozenset(values).__contains__
    if operator is Operator.PREFIX:

        def starts_with(value: str) -> bool:
            return value.startswith(values)

        return starts_with
    if operator is Operator.CONTAINS:

        def contains(value: str) -> bool:
            return any(needle in value for needle in values)

        return contains
    if operator is Operator.REGEX:
        patterns = tuple(
            _compile_regex(value, case_sensitive, f"values[{index}]")
            for index, value in enumerate(values)
        )

        def search(value: str) -> bool:
            value = value[:MAX_REGEX_INPUT]
            return any(pattern.search(value) is not None for pattern in patterns)

        return search
    networks = tuple(_parse_network(value) for value in values)

    def in_networks(value: str) -> bool:
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            return False
        if any(address in network for network in networks):
            return True
        # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; IPv4 rules should hold.
        mapped = getattr(address, "ipv4_mapped", None)
        return mapped is not None and any(mapped in network for network in networks)

    return in_networks


def _parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise InvalidRoutingDefinition("values", f"{value!r} is not an IP network") from None


def _compile_regex(pattern: str, case_sensitive: bool, field: str) -> re.Pattern[str]:
    """Compile a condition's regular expression through the shared screen
    (``canary_site.regex_guard``), which refuses what could backtrack for too long on the
    prefix of ``MAX_REGEX_INPUT`` characters the matcher looks at."""
    try:
        return regex_guard.compile_screened(
            pattern, ignore_case=not case_sensitive, max_input=MAX_REGEX_INPUT
        )
    except regex_guard.UnsafeRegex as error:
        raise InvalidRoutingDefinition(field, error.message) from None


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_PATH = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")


@dataclass(frozen=True, slots=True)
class Affinity:
    """Session affinity: where the sticky key comes from, and the cookie that carries it."""

    type: str  # "cookie" or "header"
    name: str
    ttl_s: int | None = None  # cookie lifetime; None makes a session cookie
    path: str = "/"
    secure: bool = False
    httponly: bool = True
    # What follows name=value in the cookie's Set-Cookie, for the proxy and the nginx export.
    attributes: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.type not in ("cookie", "header"):
            raise InvalidRoutingDefinition("type", "must be cookie or header")
        if not isinstance(self.name, str) or not _TOKEN.fullmatch(self.name):
            # The name goes into a Set-Cookie or names a header: anything but an HTTP token
            # would corrupt (or inject into) the response's headers.
            raise InvalidRoutingDefinition(
                "name",
                "must be a non-empty cookie or header name (letters, digits, !#$%&'*+-.^_`|~)",
            )
        if self.ttl_s is not None and (
            isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, int) or self.ttl_s <= 0
        ):
            raise InvalidRoutingDefinition("ttl_s", "must be a positive number of seconds")
        if not isinstance(self.path, str) or not _COOKIE_PATH.fullmatch(self.path):
            raise InvalidRoutingDefinition(
                "path", "must start with / and hold no spaces, semicolons or control characters"
            )
        if self.type == "header":
            object.__setattr__(self, "name", self.name.lower())
        attributes = [f"Path={self.path}", "SameSite=Lax"]
        if self.ttl_s is not None:
            attributes.append(f"Max-Age={self.ttl_s}")
        if self.secure:
            attributes.append("Secure")
        if self.httponly:
            attributes.append("HttpOnly")
        object.__setattr__(self, "attributes", "; ".join(attributes))


@dataclass(frozen=True, slots=True)
class Failover:
    """What happens when the rule's natural pick is not available."""

    fail_open: bool = True
    fallback_target_ids: tuple[str, ...] = ()
    retries: int = 0  # for the proxy: how many other targets to try after a failure
    retry_delay_ms: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fallback_target_ids", tuple(self.fallback_target_ids))
        if not all(isinstance(value, str) for value in self.fallback_target_ids):
            raise InvalidRoutingDefinition("fallback_target_ids", "must be a list of target ids")
        _check_count("retries", self.retries, minimum=0)
        _check_count("retry_delay_ms", self.retry_delay_ms, minimum=0)


@dataclass(frozen=True, slots=True)
class CircuitBreakerSettings:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    recovery_timeout_s: float = 60.0  # time open before trial requests are let through
    half_open_requests: int = 1  # trial requests; all must succeed to close again

    def __post_init__(self) -> None:
        _check_count("failure_threshold", self.failure_threshold, minimum=1)
        _check_count("half_open_requests", self.half_open_requests, minimum=1)
        _check_seconds("recovery_timeout_s", self.recovery_timeout_s)


@dataclass(frozen=True, slots=True)
class RateLimit:
    rps: float  # sustained requests per second
    burst: int  # requests allowed at once on top of an idle period

    def __post_init__(self) -> None:
        _check_seconds("rps", self.rps, positive=True)
        _check_count("burst", self.burst, minimum=1)


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRoutingDefinition(name, f"must be an integer of at least {minimum}")


def _check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidRoutingDefinition(name, "must be a number")
    if value < 0 or (positive and value == 0):
        raise InvalidRoutingDefinition(
            name, "must be positive" if positive else "cannot be negative"
        )


@dataclass(frozen=True, slots=True)
class RuleSnapshot:
    """A routing rule: which requests it takes and how it spreads them over its targets."""

    id: RuleId
    targets: tuple[TargetSnapshot, ...]
    name: str = ""
    priority: int = 0
    enabled: bool = True
    strategy: str = Strategy.WEIGHTED
    strategy_key: str | None = None
    conditions: tuple[Condition, ...] = ()
    affinity: Affinity | None = None
    failover: Failover = field(default_factory=Failover)
    circuit_breaker: CircuitBreakerSettings | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int | str) or self.id == "":
            raise InvalidRoutingDefinition("id", "must be an integer or a non-empty string")
        check_text("id", self.id)
        if not isinstance(self.name, str):
            raise InvalidRoutingDefinition("name", "must be a string")
        check_text("name", self.name)
        check_text("strategy_key", self.strategy_key)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidRoutingDefinition("priority", "must be an integer")
        try:
            strategy = Strategy(self.strategy)
        except ValueError:
            raise InvalidRoutingDefinition(
                "strategy", f"must be one of {_choices(Strategy)}"
            ) from None
        object.__setattr__(self, "strategy", strategy)
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if not self.targets:
            raise InvalidRoutingDefinition("targets", "a rule needs at least one target")
        seen: set[str] = set()
        for index, target in enumerate(self.targets):
            if target.id in seen:
                raise InvalidRoutingDefinition(f"targets[{index}].id", "appears twice in the rule")
            seen.add(target.id)
        if strategy in _SPLIT_STRATEGIES:
            total = sum(target.weight for target in self.targets)
            if total != BUCKETS:
                raise InvalidRoutingDefinition(
                    "targets",
                    f"weights of a {strategy} rule must sum to {BUCKETS} basis points, not {total}",
                )
        if strategy in (Strategy.HEADER, Strategy.COOKIE, Strategy.QUERY):
            if not isinstance(self.strategy_key, str) or not self.strategy_key:
                raise InvalidRoutingDefinition(
                    "strategy_key", f"names the {strategy} that pins a target; it is required"
                )
            if strategy is Strategy.HEADER:
                object.__setattr__(self, "strategy_key", self.strategy_key.lower())
        if strategy not in _SPLIT_STRATEGIES and self.affinity is not None:
            raise InvalidRoutingDefinition(
                "affinity", f"needs a weight split, and a {strategy} rule has none"
            )


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """Everything needed to route one service's requests, frozen at one version of its rules."""

    name: str
    stable_version: str
    rules: tuple[RuleSnapshot, ...] = ()
    targets: tuple[TargetSnapshot, ...] = ()
    version: int = 0
    halted: bool = False
    halted_reason: str = ""
    plans: tuple[_RulePlan, ...] = field(init=False, repr=False, compare=False)
    targets_by_id: Mapping[str, TargetSnapshot] = field(init=False, repr=False, compare=False)
    stable_targets: tuple[TargetSnapshot, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidRoutingDefinition("name", "must be a non-empty string")
        check_text("name", self.name)
        if not isinstance(self.stable_version, str) or not self.stable_version:
            raise InvalidRoutingDefinition("stable_version", "must be a non-empty string")
        check_text("stable_version", self.stable_version)
        _check_count("version", self.version, minimum=0)
        if not isinstance(self.halted, bool):
            raise InvalidRoutingDefinition("halted", "must be true or false")
        if not isinstance(self.halted_reason, str):
            raise InvalidRoutingDefinition("halted_reason", "must be a string")
        check_text("halted_reason", self.halted_reason)
        by_id: dict[str, TargetSnapshot] = {}
        for index, target in enumerate(self.targets):
            if target.id in by_id:
                raise InvalidRoutingDefinition(f"targets[{index}].id", "appears twice")
            by_id[target.id] = target
        all_targets = list(self.targets)
        rule_ids: set[RuleId] = set()
        for index, rule in enumerate(self.rules):
            if rule.id in rule_ids:
                raise InvalidRoutingDefinition(f"rules[{index}].id", "appears twice")
            rule_ids.add(rule.id)
            for position, target in enumerate(rule.targets):
                known = by_id.get(target.id)
                if known is None:
                    by_id[target.id] = target
                    all_targets.append(target)
                elif known.identity != target.identity:
                    raise InvalidRoutingDefinition(
                        f"rules[{index}].targets[{position}]",
                        f"disagrees with the definition of target {target.id!r} elsewhere",
                    )
        for index, rule in enumerate(self.rules):
            for position, target_id in enumerate(rule.failover.fallback_target_ids):
                if target_id not in by_id:
                    raise InvalidRoutingDefinition(
                        f"rules[{index}].failover.fallback_target_ids[{position}]",
                        f"names no target of the service: {target_id!r}",
                    )
        # Stable sort: rules with the same priority keep the order they were given in.
        rules = tuple(sorted(self.rules, key=lambda rule: rule.priority))
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "targets", tuple(all_targets))
        object.__setattr__(self, "targets_by_id", by_id)
        object.__setattr__(
            self,
            "stable_targets",
            tuple(t for t in all_targets if t.version == self.stable_version),
        )
        object.__setattr__(
            self, "plans", tuple(_RulePlan(self, rule) for rule in rules if rule.enabled)
        )

    def plan_for(self, rule_id: RuleId) -> _RulePlan | None:
        for plan in self.plans:
            if plan.rule.id == rule_id:
                return plan
        return None


class _RulePlan:
    """A rule compiled against its service: the layout and lookups that ``decide`` reads."""

    __slots__ = (
        "affinity_cookie",
        "affinity_header",
        "bounds",
        "has_affinity",
        "layout",
        "matchers",
        "pin_source",
        "pins",
        "rotating",
        "rule",
        "salt",
        "single",
        "strategy",
    )

    def __init__(self, service: ServiceSnapshot, rule: RuleSnapshot) -> None:
        self.rule = rule
        self.strategy = rule.strategy
        self.rotating = rule.strategy in (Strategy.ROUND_ROBIN, Strategy.LEAST_CONNECTIONS)
        self.matchers = tuple(condition.matches for condition in rule.conditions)
        self.salt = f"{service.name}:{rule.id}"
        canary = [t for t in rule.targets if t.version != service.stable_version]
        stable = [t for t in rule.targets if t.version == service.stable_version]
        # Canary first: a growing canary share extends its range over former stable buckets
        # and never hands a canary bucket back to stable.
        self.layout = tuple(canary + stable)
        bounds: list[int] = []
        total = 0
        for target in self.layout:
            total += target.weight
            bounds.append(total)
        self.bounds = tuple(bounds)
        affinity = rule.affinity
        self.has_affinity = affinity is not None
        self.affinity_cookie = affinity.name if affinity and affinity.type == "cookie" else None
        self.affinity_header = affinity.name if affinity and affinity.type == "header" else None
        self.single = len(self.layout) == 1 and affinity is None
        self.pin_source = {
            Strategy.HEADER: "headers",
            Strategy.COOKIE: "cookies",
            Strategy.QUERY: "query",
        }.get(rule.strategy)
        pins: dict[str, TargetSnapshot] = {}
        # Later entries never overwrite earlier ones: ids beat versions, versions beat names.
        for target in rule.targets:
            pins.setdefault(target.id, target)
        for target in rule.targets:
            pins.setdefault(target.version, target)
        for target in rule.targets:
            pins.setdefault(target.name, target)
        self.pins = pins

    def describe_layout(self) -> str:
        ranges = []
        low = 0
        for target, high in zip(self.layout, self.bounds, strict=True):
            if high > low:
                ranges.append(f"{low}-{high - 1} -> {target.name} (v{target.version})")
            low = high
        return ", ".join(ranges)


# ---------------------------------------------------------------------------------------------
# Requests and decisions


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the engine may look at in a request. Header names must be lowercase."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    client_ip: str = ""

    @classmethod
    def from_http(
        cls,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        query_string: str = "",
        client_ip: str = "",
    ) -> RequestContext:
        """Build a context from raw HTTP parts: lowercases header names, parses cookies and
        the query string (the first value of a repeated name wins)."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        lowered: dict[str, str] = {}
        for name, value in pairs:
            name = name.lower()
            # Repeated headers combine as HTTP defines it.
            lowered[name] = f"{lowered[name]}, {value}" if name in lowered else value
        cookies: dict[str, str] = {}
        for chunk in lowered.get("cookie", "").split(";"):
            name, sep, value = chunk.strip().partition("=")
            if sep and name and name not in cookies:
                cookies[name] = value.strip().strip('"')
        query: dict[str, str] = {}
        for name, value in parse_qsl(query_string, keep_blank_values=True):
            query.setdefault(name, value)
        return cls(
            method=method.upper(),
            path=path,
            headers=lowered,
            cookies=cookies,
            query=query,
            client_ip=client_ip,
        )


@dataclass(slots=True)
class Decision:
    """The engine's answer for one request. Treat as read-only."""

    target: TargetSnapshot | None
    reason: Reason
    service: ServiceSnapshot = field(repr=False)
    rule: RuleSnapshot | None = None
    bucket: int | None = None  # the point on the 10,000-bucket layout, when one was used
    sticky_key: str | None = None
    key_issued: bool = False  # sticky_key is new: the caller must set the affinity cookie
    retry_after: float = 0.0  # seconds, when rate limited
    unavailable: TargetSnapshot | None = field(default=None, repr=False)
    detail: str = field(default="", repr=False)

    @property
    def rule_id(self) -> RuleId | None:
        return None if self.rule is None else self.rule.id

    def set_cookie_header(self) -> str | None:
        """The ``Set-Cookie`` value that makes a newcomer sticky, or None when none is due."""
        if not self.key_issued or self.rule is None or self.rule.affinity is None:
            return None
        affinity = self.rule.affinity
        return f"{affinity.name}={self.sticky_key}; {affinity.attributes}"

    def explain(self) -> str:
        """A plain-English sentence saying why the request goes where it goes."""
        if self.rule is None:
            stable = self.service.stable_version
            if self.reason is Reason.HALTED:
                halted = f"The service is halted by {self.service.halted_reason or 'an operator'}"
                if self.target is None:
                    return (
                        f"{halted} and no stable (v{stable}) target is available, so there is "
                        "no target."
                    )
                return (
                    f"{halted}, so every request takes the default route to the stable version, "
                    f"whatever its rules say: {self.target.name} (v{stable})."
                )
            if self.target is None:
                return (
                    f"No enabled rule matched and no stable (v{stable}) target is available, "
                    "so there is no target."
                )
            return (
                f"No enabled rule matched, so the default route sent it to the stable version: "
                f"{self.target.name} (v{stable})."
            )
        rule = self.rule
        title = f"Rule {rule.id}" + (f" '{rule.name}'" if rule.name else "")
        if rule.conditions:
            phrases = [condition.describe() for condition in rule.conditions]
            matched = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1])
            if len(phrases) > 1:
                matched += f" and {phrases[-1]}"
            opening = f"{title} matched {matched}"
        else:
            opening = f"{title} matches every request"
        return f"{opening}; {self._outcome()}."

    def _outcome(self) -> str:
        rule = self.rule
        assert rule is not None
        plan = self.service.plan_for(rule.id)
        layout = f" ({plan.describe_layout()})" if plan is not None else ""
        target = self.target
        reason = self.reason
        if reason is Reason.RATE_LIMITED:
            limit = rule.rate_limit
            assert limit is not None
            return (
                f"its rate limit of {limit.rps:g} requests per second (burst {limit.burst}) is "
                f"exhausted, so the request is refused; retry after {self.retry_after:.3g} s"
            )
        if reason is Reason.NO_HEALTHY_TARGET:
            return "no target is available and the rule fails closed, so the request is refused"
        assert target is not None
        chosen = f"{target.name} (v{target.version})"
        if reason is Reason.RULE_MATCH:
            return f"its only target is {chosen}"
        if reason is Reason.PINNED:
            return f"{self.detail} named target {chosen}"
        if reason is Reason.STICKY:
            affinity = rule.affinity
            source = f"{affinity.type} {affinity.name}" if affinity else "affinity key"
            fresh = ", newly issued" if self.key_issued else ""
            return (
                f"sticky bucket {self.bucket} of {BUCKETS} (from {source}{fresh}) falls in "
                f"{target.name}'s share{layout}"
            )
        if reason is Reason.WEIGHTED:
            return f"random point {self.bucket} of {BUCKETS} falls in {target.name}'s share{layout}"
        if reason is Reason.ROUND_ROBIN:
            return f"round robin picked {chosen}{self.detail}"
        if reason is Reason.LEAST_CONNECTIONS:
            return f"least connections picked {chosen}{self.detail}"
        if reason is Reason.FAILOVER:
            if self.unavailable is not None:
                lost = f"{self.unavailable.name} {self.detail}"
                return f"{lost}, so it failed over to {chosen}"
            return f"no target of the rule is available, so it failed over to fallback {chosen}"
        return f"no target is available, so it failed open to {chosen} by weight{layout}"


# ---------------------------------------------------------------------------------------------
# Runtime state: circuit breakers, rate limiters, counters


class CircuitBreaker:
    """Closed / open / half-open circuit breaker for one target, driven by an injected clock."""

    __slots__ = (
        "_failures",
        "_opened_at",
        "_state",
        "_successes",
        "_trials",
        "settings",
    )

    def __init__(self, settings: CircuitBreakerSettings) -> None:
        self.settings = settings
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        self._successes = 0

    def state(self, now: float) -> CircuitState:
        """The state at ``now``; an open circuit past its recovery timeout reads half-open."""
        self._advance(now)
        return self._state

    def _advance(self, now: float) -> None:
        if self._state is CircuitState.OPEN:
            if now - self._opened_at >= self.settings.recovery_timeout_s:
                self._state = CircuitState.HALF_OPEN
                self._opened_at = now
                self._trials = 0
                self._successes = 0
        elif (
            self._state is CircuitState.HALF_OPEN
            and now - self._opened_at >= self.settings.recovery_timeout_s
        ):
            # Trial requests whose outcome never came back (a dropped connection, a restarted
            # worker) would otherwise hold the circuit half-open for ever.
            self._opened_at = now
            self._trials = 0
            self._successes = 0

    def available(self, now: float) -> bool:
        """Whether a request would be admitted, without using up a trial slot."""
        self._advance(now)
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            return False
        return self._trials < self.settings.half_open_requests

    def allow(self, now: float) -> bool:
        """Admit a request, counting it as a trial while half-open."""
        if self._state is CircuitState.CLOSED:
            return True
        if not self.available(now):
            return False
        if self._state is CircuitState.HALF_OPEN:
            self._trials += 1
        return True

    def record_success(self) -> None:
        if self._state is CircuitState.CLOSED:
            self._failures = 0
        elif self._state is CircuitState.HALF_OPEN:
            self._successes += 1
            if self._successes >= self.settings.half_open_requests:
                self._state = CircuitState.CLOSED
                self._failures = 0
        # A late success from before the circuit opened proves nothing about the target now.

    def record_failure(self, now: float) -> None:
        if self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self.settings.failure_threshold:
                self._open(now)
        elif self._state is CircuitState.HALF_OPEN:
            self._open(now)

    def _open(self, now: float) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = now
        self._failures = 0


class TokenBucket:
    """Token-bucket rate limiter: ``burst`` requests at once, refilled at ``rate`` per second."""

    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(burst)
        self._updated: float | None = None

    def take(self, now: float) -> tuple[bool, float]:
        """Take one token: ``(True, 0.0)``, or ``(False, seconds until one is available)``."""
        if self._updated is None:
            self._updated = now
        elif now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True, 0.0
        return False, (1.0 - self._tokens) / self.rate


class RuntimeState:
    """Per-process mutable routing state. Not thread-safe: keep one per event loop or thread.

    It configures itself from the first snapshot ``decide`` sees and again whenever the snapshot
    object changes; breakers and limiters keep their counts across snapshots while their
    settings stay the same.
    """

    __slots__ = (
        "_breakers",
        "_default_breaker",
        "_in_flight",
        "_limiters",
        "_service",
        "_turns",
        "clock",
        "rng",
    )

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        default_breaker: CircuitBreakerSettings | None = None,
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self._default_breaker = default_breaker
        self._breakers: dict[str, CircuitBreaker] = {}
        self._limiters: dict[RuleId, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}
        self._turns: dict[RuleId, int] = {}
        self._service: ServiceSnapshot | None = None

    def sync(self, service: ServiceSnapshot) -> None:
        """Take breaker and rate-limit settings from ``service``'s enabled rules."""
        wanted: dict[str, CircuitBreakerSettings] = {}
        # The first rule by priority that sets a breaker for a target decides its settings.
        for plan in service.plans:
            settings = plan.rule.circuit_breaker
            if settings is not None:
                for target in plan.rule.targets:
                    wanted.setdefault(target.id, settings)
        breakers: dict[str, CircuitBreaker] = {}
        for target_id, settings in wanted.items():
            breaker = self._breakers.get(target_id)
            breakers[target_id] = (
                breaker if breaker and breaker.settings == settings else CircuitBreaker(settings)
            )
        # Breakers that record_failure made from the default settings outlive a snapshot change.
        for target_id, breaker in self._breakers.items():
            if breaker.settings == self._default_breaker:
                breakers.setdefault(target_id, breaker)
        self._breakers = breakers
        limiters: dict[RuleId, TokenBucket] = {}
        for plan in service.plans:
            limit = plan.rule.rate_limit
            if limit is not None:
                limiter = self._limiters.get(plan.rule.id)
                if limiter is None or (limiter.rate, limiter.burst) != (limit.rps, limit.burst):
                    limiter = TokenBucket(limit.rps, limit.burst)
                limiters[plan.rule.id] = limiter
        self._limiters = limiters
        self._service = service

    def _breaker(self, target_id: str, create: bool) -> CircuitBreaker | None:
        breaker = self._breakers.get(target_id)
        if breaker is None and create and self._default_breaker is not None:
            breaker = self._breakers[target_id] = CircuitBreaker(self._default_breaker)
        return breaker

    def allow(self, target_id: str, now: float) -> bool:
        """Whether the target's circuit admits a request now (uses a half-open trial slot)."""
        breaker = self._breakers.get(target_id)
        return breaker is None or breaker.allow(now)

    def available(self, target_id: str, now: float) -> bool:
        """Like :meth:`allow` without using up a trial slot."""
        breaker = self._breakers.get(target_id)
        return breaker is None or breaker.available(now)

    def circuit_state(self, target_id: str, now: float) -> CircuitState:
        breaker = self._breakers.get(target_id)
        return CircuitState.CLOSED if breaker is None else breaker.state(now)

    def record_success(self, target_id: str) -> None:
        breaker = self._breaker(target_id, create=False)
        if breaker is not None:
            breaker.record_success()

    def record_failure(self, target_id: str, now: float) -> None:
        """Count a failed request; ignored for a target that no rule gives a breaker, unless
        the state was built with ``default_breaker``."""
        breaker = self._breaker(target_id, create=True)
        if breaker is not None:
            breaker.record_failure(now)

    def begin(self, target_id: str) -> None:
        """A request was sent to the target (for least connections)."""
        self._in_flight[target_id] = self._in_flight.get(target_id, 0) + 1

    def end(self, target_id: str) -> None:
        """A request to the target finished, whatever its outcome."""
        count = self._in_flight.get(target_id, 0)
        self._in_flight[target_id] = count - 1 if count > 0 else 0

    def in_flight(self, target_id: str) -> int:
        return self._in_flight.get(target_id, 0)

    def in_flight_counts(self) -> dict[str, int]:
        """Requests in flight per target id, for targets that have any."""
        return {target_id: count for target_id, count in self._in_flight.items() if count}

    def take(self, rule_id: RuleId, now: float) -> tuple[bool, float]:
        """Take a token from the rule's rate limiter; unlimited rules always pass."""
        limiter = self._limiters.get(rule_id)
        return (True, 0.0) if limiter is None else limiter.take(now)

    def next_turn(self, rule_id: RuleId) -> int:
        turn = self._turns.get(rule_id, 0)
        self._turns[rule_id] = turn + 1
        return turn


# Used when no RuntimeState is given; random.random() is thread-safe under the GIL, and the
# points and keys it yields only spread traffic, so they need no cryptographic strength.
_RANDOM = random.Random()


# ---------------------------------------------------------------------------------------------
# Decision


def decide(
    service: ServiceSnapshot,
    request: RequestContext,
    *,
    state: RuntimeState | None = None,
    now: float | None = None,
    exclude: Collection[str] = (),
) -> Decision:
    """Pick the target for ``request``.

    ``state`` enables round robin turns, least connections, circuit breakers and rate limits;
    ``now`` (seconds on the state's clock) defaults to ``state.clock()``; ``exclude`` lists
    target ids to avoid, such as the one a retry is moving away from.
    """
    if state is not None:
        if state._service is not service:
            state.sync(service)
        if now is None:
            now = state.clock()
    if service.halted:
        return _default_route(service, state, now or 0.0, exclude, Reason.HALTED)
    for plan in service.plans:
        for matches in plan.matchers:
            if not matches(request):
                break
        else:
            return _route(service, plan, request, state, now or 0.0, exclude)
    return _default_route(service, state, now or 0.0, exclude)


def _route(
    service: ServiceSnapshot,
    plan: _RulePlan,
    request: RequestContext,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
) -> Decision:
    rule = plan.rule
    if state is not None and rule.rate_limit is not None:
        allowed, retry_after = state.take(rule.id, now)
        if not allowed:
            return Decision(None, Reason.RATE_LIMITED, service, rule, retry_after=retry_after)
    if plan.rotating:
        return _rotate(service, plan, state, now, exclude)

    if plan.pin_source is not None:
        value = getattr(request, plan.pin_source).get(rule.strategy_key)
        target = plan.pins.get(value) if value is not None else None
        if target is not None:
            if _usable(target, state, now, exclude):
                detail = f'{plan.strategy} {rule.strategy_key} "{value}"'
                return Decision(target, _PINNED, service, rule, detail=detail)
            return _fail_over(service, plan, state, now, exclude, target, None, None, False)

    key: str | None = None
    issued = False
    if plan.single:
        target = plan.layout[0]
        if _usable(target, state, now, exclude):
            return Decision(target, _RULE_MATCH, service, rule)
        return _fail_over(service, plan, state, now, exclude, target, None, None, False)
    if plan.has_affinity:
        if plan.affinity_cookie is not None:
            key = request.cookies.get(plan.affinity_cookie)
            if not key:
                rng = state.rng if state is not None else _RANDOM
                key = f"{rng.getrandbits(64):016x}"
                issued = True
        else:
            key = request.headers.get(plan.affinity_header)  # type: ignore[arg-type]
    if key:
        point = bucket(plan.salt, key)
        reason = _STICKY
    else:
        key = None
        rng = state.rng if state is not None else _RANDOM
        point = int(rng.random() * BUCKETS)
        reason = _WEIGHTED
    target = plan.layout[bisect_right(plan.bounds, point)]
    if (
        target.in_rotation
        and (not exclude or target.id not in exclude)
        and (state is None or state.allow(target.id, now))
    ):
        return Decision(target, reason, service, rule, point, key, issued)
    return _fail_over(service, plan, state, now, exclude, target, point, key, issued)


def _usable(
    target: TargetSnapshot,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
) -> bool:
    """Available and admitted: consumes a half-open trial slot, so call it on the final pick."""
    return (
        target.in_rotation
        and target.id not in exclude
        and (state is None or state.allow(target.id, now))
    )


def _available(
    target: TargetSnapshot,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
) -> bool:
    return (
        target.in_rotation
        and target.id not in exclude
        and (state is None or state.available(target.id, now))
    )


def _why_unavailable(
    target: TargetSnapshot, state: RuntimeState | None, now: float, exclude: Collection[str]
) -> str:
    if not target.healthy:
        return "is marked unhealthy"
    if target.draining:
        return "is draining"
    if target.id in exclude:
        return "was excluded by the caller"
    if state is not None:
        return f"has its circuit {state.circuit_state(target.id, now)}"
    return "is unavailable"


def _spread(targets: Sequence[TargetSnapshot], point: int) -> TargetSnapshot:
    """Map ``point`` (0..9999) onto ``targets`` by their weights, evenly if all weigh nothing."""
    total = sum(target.weight for target in targets)
    if total == 0:
        return targets[point * len(targets) // BUCKETS]
    scaled = point * total // BUCKETS
    running = 0
    for target in targets:
        running += target.weight
        if scaled < running:
            return target
    return targets[-1]


def _fail_over(
    service: ServiceSnapshot,
    plan: _RulePlan,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
    natural: TargetSnapshot | None,
    point: int | None,
    key: str | None,
    issued: bool,
) -> Decision:
    rule = plan.rule
    if point is None:
        rng = state.rng if state is not None else _RANDOM
        point = int(rng.random() * BUCKETS)
    why = _why_unavailable(natural, state, now, exclude) if natural is not None else ""
    # Keeping the layout order and the point keeps failover sticky: the same user lands on the
    # same substitute for as long as the outage lasts.
    candidates = [
        target
        for target in plan.layout
        if target is not natural and _available(target, state, now, exclude)
    ]
    if candidates:
        target = _spread(candidates, point)
        if state is not None:
            state.allow(target.id, now)
        return Decision(
            target, _FAILOVER, service, rule, point, key, issued, unavailable=natural, detail=why
        )
    return _no_available_target(service, plan, state, now, exclude, point, key, issued)


def _no_available_target(
    service: ServiceSnapshot,
    plan: _RulePlan,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
    point: int,
    key: str | None,
    issued: bool,
) -> Decision:
    rule = plan.rule
    for target_id in rule.failover.fallback_target_ids:
        target = service.targets_by_id[target_id]
        if _usable(target, state, now, exclude):
            return Decision(
                target,
                _FAILOVER,
                service,
                rule,
                point,
                key,
                issued,
            )
    if rule.failover.fail_open:
        target = _spread(plan.layout, point)
        return Decision(target, Reason.FAIL_OPEN, service, rule, point, key, issued)
    return Decision(None, Reason.NO_HEALTHY_TARGET, service, rule, point, key, issued)


def _rotate(
    service: ServiceSnapshot,
    plan: _RulePlan,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
) -> Decision:
    rule = plan.rule
    candidates = [t for t in rule.targets if _available(t, state, now, exclude)]
    # Without per-process state there is no turn to keep or count to compare: spread evenly.
    turn = int(_RANDOM.random() * BUCKETS) if state is None else state.next_turn(rule.id)
    if not candidates:
        return _no_available_target(service, plan, state, now, exclude, turn % BUCKETS, None, False)
    count = len(candidates)
    if plan.strategy is Strategy.ROUND_ROBIN:
        target = candidates[turn % count]
        reason = Reason.ROUND_ROBIN
        detail = f" on turn {turn} among {count} available target{'s' if count != 1 else ''}"
    else:
        # Ties go to the next target in turn, so an idle pool still spreads its load.
        rotated = candidates[turn % count :] + candidates[: turn % count]
        loads = [0] * count if state is None else [state.in_flight(t.id) for t in rotated]
        lightest = loads.index(min(loads))
        target = rotated[lightest]
        flight = loads[lightest]
        reason = Reason.LEAST_CONNECTIONS
        detail = f" with {flight} request{'s' if flight != 1 else ''} in flight"
    if state is not None:
        state.allow(target.id, now)
    return Decision(target, reason, service, rule, detail=detail)


def _default_route(
    service: ServiceSnapshot,
    state: RuntimeState | None,
    now: float,
    exclude: Collection[str],
    reason: Reason = Reason.NO_RULE,
) -> Decision:
    candidates = [t for t in service.stable_targets if _available(t, state, now, exclude)]
    if not candidates:
        return Decision(None, reason, service)
    rng = state.rng if state is not None else _RANDOM
    # Service-level target weights spread the default route; all zero means an even spread.
    target = _spread(candidates, int(rng.random() * BUCKETS))
    if state is not None:
        state.allow(target.id, now)
    return Decision(target, reason, service)


# ---------------------------------------------------------------------------------------------
# Building a snapshot from plain data


def _keys(cls: type[Any]) -> frozenset[str]:
    """The keys a definition of ``cls`` may hold: the fields its dataclass takes."""
    return frozenset(item.name for item in fields(cls) if item.init)


_SERVICE_KEYS = _keys(ServiceSnapshot)
_TARGET_KEYS = _keys(TargetSnapshot)
_RULE_KEYS = _keys(RuleSnapshot)
_CONDITION_KEYS = _keys(Condition)
_AFFINITY_KEYS = _keys(Affinity)
_FAILOVER_KEYS = _keys(Failover)
_BREAKER_KEYS = _keys(CircuitBreakerSettings)
_RATE_KEYS = _keys(RateLimit)


def build_service_snapshot(data: Mapping[str, Any]) -> ServiceSnapshot:
    """Validate the plain-dict shape described in the module docstring and compile it.

    Raises :class:`InvalidRoutingDefinition` naming the first offending field.
    """
    service = _fields(data, "")
    _check_keys(service, _SERVICE_KEYS)
    catalogue: dict[str, TargetSnapshot] = {}
    targets: list[TargetSnapshot] = []
    for path, item in service.items("targets"):
        target = _build_target(item, path, reference=None)
        if target.id in catalogue:
            raise InvalidRoutingDefinition(key_path(path, "id"), "appears twice")
        catalogue[target.id] = target
        targets.append(target)
    raw_rules = service.items("rules")
    # Targets may be defined inline in any rule and referenced from any other, so collect the
    # definitions before resolving references.
    for rule_path, raw_rule in raw_rules:
        for path, item in _fields(raw_rule, rule_path).items("targets"):
            if "endpoint" in _fields(item, path).data:
                target = _build_target(item, path, reference=None)
                known = catalogue.get(target.id)
                if known is not None and known.identity != target.identity:
                    raise InvalidRoutingDefinition(
                        path, f"disagrees with the definition of target {target.id!r} elsewhere"
                    )
                catalogue.setdefault(target.id, target)
    rules = tuple(
        _build_rule(_fields(raw_rule, rule_path), catalogue) for rule_path, raw_rule in raw_rules
    )
    return ServiceSnapshot(
        name=_get(service, "name", str),
        stable_version=_get(service, "stable_version", str),
        rules=rules,
        targets=tuple(targets),
        version=_get(service, "version", int, 0),
        halted=_get(service, "halted", bool, False),
        halted_reason=_get(service, "halted_reason", str, ""),
    )


def _build_target(
    raw: Any, path: str, *, reference: Mapping[str, TargetSnapshot] | None
) -> TargetSnapshot:
    item = _fields(raw, path)
    _check_keys(item, _TARGET_KEYS)
    raw_id = item.data.get("id")
    if is_integer(raw_id):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id:
        item.fail("id", "must be a non-empty string")
    if reference is not None and "endpoint" not in item.data:
        known = reference.get(raw_id)
        if known is None:
            item.fail("id", f"names no target of the service: {raw_id!r}")
        extra = set(item.data) - {"id", "weight"}
        if extra:
            item.fail(
                sorted(extra)[0], "a reference to a service target carries only id and weight"
            )
        return _construct(
            path,
            TargetSnapshot,
            id=known.id,
            name=known.name,
            endpoint=known.endpoint,
            version=known.version,
            weight=_get(item, "weight", int),
            healthy=known.healthy,
            draining=known.draining,
        )
    return _construct(
        path,
        TargetSnapshot,
        id=raw_id,
        name=_get(item, "name", str, raw_id) or raw_id,
        endpoint=_get(item, "endpoint", str),
        version=_get(item, "version", str),
        weight=_get(item, "weight", int, 0),
        healthy=_get(item, "healthy", bool, True),
        draining=_get(item, "draining", bool, False),
    )


def _build_rule(rule: Fields, catalogue: Mapping[str, TargetSnapshot]) -> RuleSnapshot:
    _check_keys(rule, _RULE_KEYS)
    conditions = []
    for condition_path, raw_condition in rule.items("conditions"):
        condition = _fields(raw_condition, condition_path)
        _check_keys(condition, _CONDITION_KEYS)
        values = condition.data.get("values")
        if not is_list(values):
            condition.fail("values", "must be a list of strings")
        conditions.append(
            _construct(
                condition.path,
                Condition,
                source=_get(condition, "source", str),
                operator=_get(condition, "operator", str),
                values=tuple(values),
                name=_get(condition, "name", str, ""),
                case_sensitive=_get(condition, "case_sensitive", bool, False),
                negate=_get(condition, "negate", bool, False),
            )
        )
    targets = tuple(
        _build_target(item, path, reference=catalogue) for path, item in rule.items("targets")
    )
    raw_id = rule.data.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, int | str):
        rule.fail("id", "must be an integer or a string")
    strategy_key = rule.data.get("strategy_key")
    if strategy_key is not None and not isinstance(strategy_key, str):
        rule.fail("strategy_key", "must be a string")
    return _construct(
        rule.path,
        RuleSnapshot,
        id=raw_id,
        name=_get(rule, "name", str, ""),
        priority=_get(rule, "priority", int, 0),
        enabled=_get(rule, "enabled", bool, True),
        strategy=_get(rule, "strategy", str, Strategy.WEIGHTED.value),
        strategy_key=strategy_key,
        conditions=tuple(conditions),
        targets=targets,
        affinity=_build_section(rule, "affinity", Affinity, _AFFINITY_KEYS, _AFFINITY_TYPES),
        failover=_build_section(rule, "failover", Failover, _FAILOVER_KEYS, _FAILOVER_TYPES)
        or Failover(),
        circuit_breaker=_build_section(
            rule, "circuit_breaker", CircuitBreakerSettings, _BREAKER_KEYS, _BREAKER_TYPES
        ),
        rate_limit=_build_section(rule, "rate_limit", RateLimit, _RATE_KEYS, _RATE_TYPES),
    )


_AFFINITY_TYPES: dict[str, Any] = {
    "type": str,
    "name": str,
    "ttl_s": int,
    "path": str,
    "secure": bool,
    "httponly": bool,
}
_FAILOVER_TYPES: dict[str, Any] = {
    "fail_open": bool,
    "fallback_target_ids": list,
    "retries": int,
    "retry_delay_ms": int,
}
_BREAKER_TYPES: dict[str, Any] = {
    "failure_threshold": int,
    "recovery_timeout_s": float,
    "half_open_requests": int,
}
_RATE_TYPES: dict[str, Any] = {"rps": float, "burst": int}


def _build_section(
    rule: Fields,
    key: str,
    cls: type[Any],
    keys: frozenset[str],
    types: Mapping[str, Any],
) -> Any:
    if rule.data.get(key) is None:
        return None
    section = rule.object(key)
    _check_keys(section, keys)
    arguments: dict[str, Any] = {}
    for name, value in section.data.items():
        if name in _IGNORED_KEYS or value is None:
            continue
        arguments[name] = _typed(value, types[name], section.field(name))
    if "fallback_target_ids" in arguments:
        arguments["fallback_target_ids"] = tuple(
            str(item) if is_integer(item) else item for item in arguments["fallback_target_ids"]
        )
    try:
        return cls(**arguments)
    except InvalidRoutingDefinition as error:
        raise error.within(section.path) from None
    except TypeError:
        required = [
            item.name
            for item in fields(cls)
            if item.init and item.default is MISSING and item.default_factory is MISSING
        ]
        missing = [name for name in required if name not in arguments]
        raise InvalidRoutingDefinition(
            section.field(missing[0]) if missing else section.path, "is required"
        ) from None


def _construct(path: str, cls: type[Any], **arguments: Any) -> Any:
    try:
        return cls(**arguments)
    except InvalidRoutingDefinition as error:
        raise error.within(path) from None


def _fields(data: Any, path: str) -> Fields:
    return Fields(data, path, InvalidRoutingDefinition, top="service")


_MISSING = object()


def _get(item: Fields, key: str, kind: type, default: Any = _MISSING) -> Any:
    value = item.data.get(key)
    if value is None:
        return default if default is not _MISSING else item.value(key)
    return _typed(value, kind, item.field(key))


def _typed(value: Any, kind: type, path: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidRoutingDefinition(path, "must be true or false")
    elif kind is int:
        if not is_integer(value):
            raise InvalidRoutingDefinition(path, "must be an integer")
    elif kind is float:
        if not is_number(value):
            raise InvalidRoutingDefinition(path, "must be a number")
    elif kind is list:
        if not is_list(value):
            raise InvalidRoutingDefinition(path, "must be a list")
    elif not isinstance(value, kind):
        raise InvalidRoutingDefinition(path, "must be a string")
    return value


def _check_keys(item: Fields, allowed: frozenset[str]) -> None:
    for key in item.data:
        if key not in allowed and key not in _IGNORED_KEYS:
            item.fail(str(key), "is not a known field")
