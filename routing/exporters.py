"""Export of a service's routing as nginx configuration, for users who run nginx as the proxy.

``nginx_config(snapshot)`` renders ``templates/routing/nginx.conf``: a file to include inside
``http {}``. It reproduces the engine's decision as closely as nginx allows:

- **rules**: each condition becomes a ``map`` (``geo`` for client-IP networks) yielding 1 or 0;
  an ordered regex ``map`` over the rules' match flags picks the first matching rule by
  priority, and the default route (the stable version's targets in rotation) takes the rest;
- **weights**: ``split_clients`` over the rule's targets in rotation, canary first,
  keyed by ``"<service>:<rule>:<key>"`` where the key is the affinity cookie or header when the
  rule has affinity, else ``$request_id``. nginx hashes with MurmurHash2 rather than the engine's
  MurmurHash3, so a user's bucket differs between the two, but each is sticky and monotonic:
  raising the canary's share only moves users from stable to canary. A cookie-affinity rule
  issues its cookie (``Set-Cookie`` with ``$request_id``) to a newcomer, as the proxy does;
- **header, cookie and query strategies**: a ``map`` from the named value (a target's id,
  version or name) to that target, defaulting to the split;
- **round robin and least connections**: one upstream pool (``least_conn`` for the latter);
- **failover and circuit breakers**: every (rule, target) upstream lists the rule's other
  available targets and its fallbacks as ``backup`` servers; the breaker's failure threshold and
  recovery timeout become ``max_fails`` and ``fail_timeout``; retries become
  ``proxy_next_upstream_tries``. A rule with nothing available fails open over all its targets
  or, failing closed, answers 503;
- **rate limits**: one ``limit_req_zone`` per rule (a shared budget, like the proxy's token
  bucket), answering 429 with ``Retry-After``;
- **headers**: ``X-Forwarded-For``/``-Proto``/``-Host`` and ``X-Canary-Version`` to the target,
  ``X-Canary-Version`` back to the client;
- **a halted service**: only the default route, to its stable targets in rotation; no rule and
  no other target appears in the file (a note says why), so a reload after the halt takes the
  canary out of nginx's traffic and one after its release brings the rules back.

What nginx cannot express is left out with a comment saying so (cookie and query parameter
names outside ``[A-Za-z0-9_]``, which nginx variables cannot name).

Every value that comes from a definition is written quoted and escaped (:func:`quote`; in values
nginx expands, a ``$`` is spelt through a variable that holds one, :meth:`_Builder.text`), map
keys that nginx would read as a keyword or a regular expression are escaped with its leading
backslash, literal match values are regex-escaped, and comments that quote a definition escape
control characters (:func:`comment`), so no name or value can end a string, a comment or a
directive. The engine refuses control characters in every name and value before they get here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from ipaddress import ip_address, ip_network
from urllib.parse import urlsplit

from django.template.loader import render_to_string

from routing.engine import (
    Condition,
    Operator,
    RuleSnapshot,
    ServiceSnapshot,
    Source,
    Strategy,
    TargetSnapshot,
)

_NGINX_NAME = re.compile(r"^[A-Za-z0-9_]+\Z")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+\Z")
# Map keys nginx reads as its own parameters rather than as values to compare with.
_MAP_KEYWORDS = frozenset({"default", "hostnames", "include", "volatile"})
# What would end a comment line, or make one hard to read: C0 and C1 controls, DEL, and the
# Unicode line and paragraph separators.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What nginx's parser un-escapes inside a quoted string.
_QUOTED_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def quote(value: str) -> str:
    """A double-quoted nginx string that reads back as ``value``: nginx un-escapes ``\\\\``,
    ``\\"``, ``\\n``, ``\\r`` and ``\\t`` in every quoted token, and nothing else ends one.

    Where nginx expands variables in the value (map results, ``split_clients`` keys, headers),
    a ``$`` must also be spelt as a variable: :meth:`_Builder.text`.
    """
    return '"' + value.translate(_QUOTED_ESCAPES) + '"'


def comment(text: str) -> str:
    """``text`` made safe for a ``#`` comment: control characters (which could end the comment
    and start configuration) are written as escapes, as is the backslash."""
    return _UNPRINTABLE.sub(
        lambda match: (
            f"\\x{ord(match.group()):02x}"
            if ord(match.group()) < 0x100
            else f"\\u{ord(match.group()):04x}"
        ),
        text.replace("\\", "\\\\"),
    )


def map_key(value: str) -> str:
    """A map key that nginx compares literally: a leading ``~`` (a regex) or a keyword
    (``default``, ``include``, ...) is escaped with the backslash nginx strips."""
    if value.startswith(("~", "\\")) or value in _MAP_KEYWORDS:
        value = "\\" + value
    return quote(value)


def _ident(name: str) -> str:
    """A short, variable-safe identifier: long names would overflow nginx's hash buckets."""
    plain = name.replace("_", "__").replace("-", "_")
    if len(plain) <= 24 and _NGINX_NAME.match(plain):
        return plain
    return "h" + hashlib.sha1(name.encode()).hexdigest()[:10]


@dataclass
class Upstream:
    name: str
    comment: str
    servers: list[str]
    least_conn: bool = False

    def __post_init__(self) -> None:
        self.comment = comment(self.comment)


@dataclass
class MapBlock:
    source: str
    variable: str
    entries: list[tuple[str, str]]
    default: str
    comment: str = ""

    def __post_init__(self) -> None:
        self.comment = comment(self.comment)


@dataclass
class SplitBlock:
    key: str
    variable: str
    entries: list[tuple[str, str]]
    comment: str = ""

    def __post_init__(self) -> None:
        self.comment = comment(self.comment)


@dataclass
class LimitZone:
    key_variable: str
    zone: str
    rate: str
    burst: int


@dataclass
class ExportContext:
    service: str
    routing_version: int
    prefix: str
    upstreams: list[Upstream] = field(default_factory=list)
    geos: list[MapBlock] = field(default_factory=list)
    maps: list[MapBlock] = field(default_factory=list)
    splits: list[SplitBlock] = field(default_factory=list)
    limits: list[LimitZone] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dollar_variable: str = ""  # set when a value needs a literal $
    upstream_variable: str = ""
    version_variable: str = ""
    planned_version_variable: str = ""
    set_cookie_variable: str = ""
    retry_after_variable: str = ""
    scheme: str = "http"
    next_upstream_tries: int = 1
    listen: str = "8080"
    server_name: str = "_"
    access_log: str = ""  # quoted path, or "" for none
    log_format: str = ""

    @property
    def service_comment(self) -> str:
        return comment(self.service)

    @property
    def notes_comments(self) -> list[str]:
        return [comment(note) for note in self.notes]


def _server_address(target: TargetSnapshot) -> str:
    parts = urlsplit(target.endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _percentages(weights: list[int]) -> list[Decimal]:
    """Shares of 100% with two decimals (nginx's resolution); all zero splits evenly."""
    total = sum(weights)
    if total == 0:
        weights = [1] * len(weights)
        total = len(weights)
    return [
        (Decimal(weight) * 100 / Decimal(total)).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
        for weight in weights
    ]


class _Builder:
    def __init__(self, snapshot: ServiceSnapshot, *, listen: str, server_name: str) -> None:
        self.snapshot = snapshot
        self.prefix = f"canary_{_ident(snapshot.name)}"
        self.context = ExportContext(
            service=snapshot.name,
            routing_version=snapshot.version,
            prefix=self.prefix,
            listen=listen,
            server_name=server_name,
        )
        self.versions: dict[str, str] = {}  # upstream -> version of all its primary servers
        self.schemes: dict[str, str] = {}
        self.upstream_count = 0

    def var(self, suffix: str) -> str:
        return f"${self.prefix}_{suffix}"

    def text(self, value: str) -> str:
        """``value`` as a quoted string for a place where nginx expands variables: each ``$`` is
        spelt ``${<prefix>_dollar}``, a variable that holds one (nginx has no escape for it)."""
        if "$" not in value:
            return quote(value)
        self.context.dollar_variable = self.var("dollar")
        spelt = "${" + self.context.dollar_variable[1:] + "}"
        return quote(value).replace("$", spelt)

    def new_upstream(
        self,
        comment: str,
        primaries: list[TargetSnapshot],
        backups: list[TargetSnapshot],
        rule: RuleSnapshot | None,
        *,
        weights: bool = False,
        least_conn: bool = False,
    ) -> str:
        self.upstream_count += 1
        name = f"{self.prefix}_u{self.upstream_count}"
        breaker = rule.circuit_breaker if rule is not None else None
        if breaker is not None:
            timeout = max(1, round(breaker.recovery_timeout_s))
            health = f" max_fails={breaker.failure_threshold} fail_timeout={timeout}s"
        else:
            # Without a breaker the engine never takes a target out; neither does nginx.
            health = " max_fails=0"
        servers = []
        for target in primaries:
            weight = f" weight={target.weight}" if weights and target.weight > 0 else ""
            servers.append(f"{_server_address(target)}{weight}{health}")
        seen = {target.id for target in primaries}
        for target in backups:
            if target.id not in seen:
                seen.add(target.id)
                servers.append(f"{_server_address(target)}{health} backup")
        self.context.upstreams.append(
            Upstream(name=name, comment=comment, servers=servers, least_conn=least_conn)
        )
        versions = {target.version for target in primaries}
        if len(versions) == 1:
            self.versions[name] = versions.pop()
        schemes = {urlsplit(target.endpoint).scheme for target in primaries}
        self.schemes[name] = "https" if schemes == {"https"} else "http"
        return name

    # -- conditions ------------------------------------------------------------------------

    def condition_variable(self, rule_key: str, index: int, condition: Condition) -> str:
        variable = self.var(f"{rule_key}_c{index}")
        hit, miss = ("0", "1") if condition.negate else ("1", "0")
        described = condition.describe()
        if condition.source is Source.CLIENT_IP:
            if condition.operator is Operator.CIDR:
                # Written as parsed: the canonical network, never the text as given.
                networks = [
                    (str(ip_network(value.strip(), strict=False)), hit)
                    for value in condition.values
                ]
                self.context.geos.append(
                    MapBlock("$remote_addr", variable, networks, miss, comment=described)
                )
                return variable
            source = "$remote_addr"
        elif condition.source is Source.HEADER:
            if not _HEADER_NAME.match(condition.name):
                return self.unsupported(rule_key, described)
            source = "$http_" + condition.name.lower().replace("-", "_")
        elif condition.source is Source.COOKIE:
            if not _NGINX_NAME.match(condition.name):
                return self.unsupported(rule_key, described)
            source = f"$cookie_{condition.name}"
        elif condition.source is Source.QUERY:
            if not _NGINX_NAME.match(condition.name):
                return self.unsupported(rule_key, described)
            source = f"$arg_{condition.name}"
        elif condition.source is Source.PATH:
            source = "$uri"
        else:
            source = "$request_method"
        if condition.operator is Operator.CIDR:
            return self.unsupported(rule_key, described)
        flag = "~" if condition.case_sensitive else "~*"
        patterns = []
        for value in condition.values:
            if condition.operator is Operator.REGEX:
                pattern = value
            else:
                escaped = re.escape(value)
                pattern = {
                    Operator.EQUALS: f"^{escaped}$",
                    Operator.IN: f"^{escaped}$",
                    Operator.PREFIX: f"^{escaped}",
                    Operator.CONTAINS: escaped,
                }[condition.operator]
            patterns.append((quote(flag + pattern), hit))
        self.context.maps.append(MapBlock(source, variable, patterns, miss, comment=described))
        return variable

    def unsupported(self, rule_key: str, described: str) -> str:
        self.context.notes.append(
            f"rule {rule_key[1:]}: '{described}' cannot be expressed in nginx; "
            "the rule never matches here"
        )
        return "0"

    # -- targets of a rule ---------------------------------------------------------------

    def rule_route(self, rule: RuleSnapshot, rule_key: str) -> str:
        """The nginx value (an upstream name, a variable or "") that a matching rule routes to."""
        available = [target for target in rule.targets if target.in_rotation]
        fallbacks = [
            self.snapshot.targets_by_id[target_id]
            for target_id in rule.failover.fallback_target_ids
            if self.snapshot.targets_by_id[target_id].in_rotation
        ]
        label = f"rule {rule.id}" + (f" '{rule.name}'" if rule.name else "")
        if rule.strategy in (Strategy.ROUND_ROBIN, Strategy.LEAST_CONNECTIONS):
            pool = available or (rule.targets if rule.failover.fail_open and not fallbacks else [])
            if not pool and not fallbacks:
                return '""'
            return self.new_upstream(
                f"{label}: {rule.strategy} pool",
                list(pool or fallbacks[:1]),
                fallbacks,
                rule,
                least_conn=rule.strategy is Strategy.LEAST_CONNECTIONS,
            )
        if not available:
            if fallbacks:
                return self.new_upstream(f"{label}: fallback", fallbacks[:1], fallbacks, rule)
            if not rule.failover.fail_open:
                return '""'
            available = list(rule.targets)  # failing open: by weight, health regardless
        canary = [t for t in available if t.version != self.snapshot.stable_version]
        stable = [t for t in available if t.version == self.snapshot.stable_version]
        layout = canary + stable
        upstream_of: dict[str, str] = {}
        for target in layout:
            others = [t for t in layout if t.id != target.id]
            upstream_of[target.id] = self.new_upstream(
                f"{label}: {target.name} (v{target.version})", [target], others + fallbacks, rule
            )
        if len(layout) == 1:
            split_value = upstream_of[layout[0].id]
        else:
            split_value = self.split(rule, rule_key, layout, upstream_of)
        if rule.strategy in (Strategy.HEADER, Strategy.COOKIE, Strategy.QUERY):
            return self.pins(rule, rule_key, upstream_of, split_value)
        return split_value

    def split(
        self,
        rule: RuleSnapshot,
        rule_key: str,
        layout: list[TargetSnapshot],
        upstream_of: dict[str, str],
    ) -> str:
        key_variable = self.sticky_key(rule, rule_key)
        shares = _percentages([target.weight for target in layout])
        entries: list[tuple[str, str]] = []
        for target, share in zip(layout[:-1], shares[:-1], strict=True):
            if share > 0:
                entries.append((f"{share}%", upstream_of[target.id]))
        entries.append(("*", upstream_of[layout[-1].id]))
        variable = self.var(f"{rule_key}_split")
        salt = f"{self.snapshot.name}:{rule.id}:"
        total = sum(target.weight for target in layout)
        described = ", ".join(
            f"{target.name} {target.weight * 100 / (total or 1):.2f}%" for target in layout
        )
        self.context.splits.append(
            SplitBlock(self.text(salt)[:-1] + key_variable + '"', variable, entries, described)
        )
        return variable

    def sticky_key(self, rule: RuleSnapshot, rule_key: str) -> str:
        affinity = rule.affinity
        if affinity is None:
            return "${request_id}"
        if affinity.type == "cookie":
            if not _NGINX_NAME.match(affinity.name):
                self.context.notes.append(
                    f"rule {rule.id}: affinity cookie {affinity.name!r} cannot be read by nginx; "
                    "the split is random per request"
                )
                return "${request_id}"
            source = f"$cookie_{affinity.name}"
        else:
            if not _HEADER_NAME.match(affinity.name):
                return "${request_id}"
            source = "$http_" + affinity.name.replace("-", "_")
        variable = self.var(f"{rule_key}_key")
        # A newcomer without a key is split by its request id, which its new cookie carries.
        self.context.maps.append(
            MapBlock(
                source,
                variable,
                [('""', "$request_id")],
                source,
                comment=f"rule {rule.id}: sticky key",
            )
        )
        return "${" + variable[1:] + "}"

    def pins(
        self, rule: RuleSnapshot, rule_key: str, upstream_of: dict[str, str], split_value: str
    ) -> str:
        name = rule.strategy_key or ""
        if rule.strategy is Strategy.HEADER and _HEADER_NAME.match(name):
            source = "$http_" + name.lower().replace("-", "_")
        elif rule.strategy is Strategy.COOKIE and _NGINX_NAME.match(name):
            source = f"$cookie_{name}"
        elif rule.strategy is Strategy.QUERY and _NGINX_NAME.match(name):
            source = f"$arg_{name}"
        else:
            self.context.notes.append(
                f"rule {rule.id}: {rule.strategy} {name!r} cannot be read by nginx; "
                "requests are split by weight"
            )
            return split_value
        entries: dict[str, str] = {}
        # Ids beat versions, versions beat names, as in the engine.
        for attribute in ("id", "version", "name"):
            for target in rule.targets:
                value = getattr(target, attribute)
                if target.id in upstream_of:
                    entries.setdefault(map_key(value), upstream_of[target.id])
        variable = self.var(f"{rule_key}_pin")
        self.context.maps.append(
            MapBlock(
                source,
                variable,
                list(entries.items()),
                split_value,
                comment=f"rule {rule.id}: {rule.strategy} {name} names a target",
            )
        )
        return variable

    # -- the whole service -------------------------------------------------------------

    def build(self) -> ExportContext:
        snapshot = self.snapshot
        context = self.context
        match_flags: list[tuple[str, str]] = []
        routes: list[tuple[str, str]] = []
        cookie_rules: list[tuple[str, RuleSnapshot]] = []
        retries = 0
        # A halted service routes every request by the default route, as the engine does.
        plans = () if snapshot.halted else snapshot.plans
        if snapshot.halted:
            context.notes.append(
                f"its rules, while the service is halted by {snapshot.halted_reason}: every "
                "request takes the default route to the stable version"
            )
        for plan in plans:
            rule = plan.rule
            rule_key = (
                f"r{rule.id}" if _NGINX_NAME.match(str(rule.id)) else f"r{_ident(str(rule.id))}"
            )
            flags = [
                self.condition_variable(rule_key, index, condition)
                for index, condition in enumerate(rule.conditions)
            ]
            if not flags:
                flag = "1"
            elif len(flags) == 1:
                flag = flags[0]
            else:
                flag = self.var(f"{rule_key}_match")
                joined = "".join("${" + f[1:] + "}" if f.startswith("$") else f for f in flags)
                context.maps.append(
                    MapBlock(
                        f'"{joined}"',
                        flag,
                        [(quote("1" * len(flags)), "1")],
                        "0",
                        comment=f"rule {rule.id}: all conditions hold",
                    )
                )
            match_flags.append((rule_key, flag))
            routes.append((rule_key, self.rule_route(rule, rule_key)))
            retries = max(retries, rule.failover.retries)
            affinity = rule.affinity
            if (
                affinity is not None
                and affinity.type == "cookie"
                and _NGINX_NAME.match(affinity.name)
            ):
                cookie_rules.append((rule_key, rule))
            if rule.rate_limit is not None:
                self.rate_limit(rule, rule_key)
        context.next_upstream_tries = retries + 1

        # The first rule (by priority) whose flag is 1 wins; the flags are concatenated in
        # priority order and ordered regexes find the first 1.
        rule_variable = self.var("rule")
        if match_flags:
            joined = "".join(
                "${" + f[1:] + "}" if f.startswith("$") else f for _k, f in match_flags
            )
            entries = [
                (quote(f"~^{'0' * index}1"), rule_key)
                for index, (rule_key, _flag) in enumerate(match_flags)
            ]
            context.maps.append(
                MapBlock(f'"{joined}"', rule_variable, entries, '""', comment="first matching rule")
            )
        default_targets = [t for t in snapshot.stable_targets if t.in_rotation]
        default_route = (
            self.new_upstream(
                f"default route: stable v{snapshot.stable_version}",
                default_targets,
                [],
                None,
                weights=True,
            )
            if default_targets
            else '""'
        )
        upstream_variable = self.var("upstream")
        context.upstream_variable = upstream_variable
        if match_flags:
            context.maps.append(
                MapBlock(rule_variable, upstream_variable, routes, default_route, comment="route")
            )
        else:
            context.maps.append(
                MapBlock('""', upstream_variable, [], default_route, comment="no rule: default")
            )

        planned = self.var("planned_version")
        context.planned_version_variable = planned
        context.maps.append(
            MapBlock(
                upstream_variable,
                planned,
                [(name, self.text(value)) for name, value in sorted(self.versions.items())],
                '""',
                comment="version of the chosen upstream",
            )
        )
        version = self.var("version")
        context.version_variable = version
        by_address = []
        for target in snapshot.stable_targets if snapshot.halted else snapshot.targets:
            host = urlsplit(target.endpoint).hostname or ""
            try:
                ip_address(host)
            except ValueError:
                continue  # $upstream_addr holds resolved addresses; a host name never matches
            address = re.escape(_server_address(target))
            by_address.append((quote(f"~(^|\\s){address}$"), self.text(target.version)))
        context.maps.append(
            MapBlock(
                "$upstream_addr",
                version,
                by_address,
                planned,
                comment="version of the target that answered (after any failover)",
            )
        )
        if any(scheme == "https" for scheme in self.schemes.values()):
            context.scheme = self.var("scheme")
            context.maps.append(
                MapBlock(
                    upstream_variable,
                    context.scheme,
                    [(name, "https") for name, s in self.schemes.items() if s == "https"],
                    "http",
                )
            )
        set_cookie = self.var("set_cookie")
        context.set_cookie_variable = set_cookie
        if cookie_rules:
            # "<rule>|<cookie of cookie rule 0>|<cookie of cookie rule 1>|...": a cookie is
            # issued when its rule routed the request and its own field is empty.
            source = "${" + rule_variable[1:] + "}"
            entries = []
            for index, (rule_key, rule) in enumerate(cookie_rules):
                affinity = rule.affinity
                assert affinity is not None
                source += "|${cookie_" + affinity.name + "}"
                # The value is the request id, the one variable here; the rest is literal.
                cookie = (
                    self.text(f"{affinity.name}=")[:-1]
                    + "${request_id}"
                    + self.text("; " + affinity.attributes)[1:]
                )
                pattern = f"~^{rule_key}\\|" + "[^|]*\\|" * index + "(\\||$)"
                entries.append((quote(pattern), cookie))
            context.maps.append(
                MapBlock(
                    f'"{source}"',
                    set_cookie,
                    entries,
                    '""',
                    comment="affinity cookie for newcomers",
                )
            )
        else:
            context.maps.append(MapBlock('""', set_cookie, [], '""'))
        retry_after = self.var("retry_after")
        context.retry_after_variable = retry_after
        context.maps.append(MapBlock("$status", retry_after, [("429", "1")], '""'))
        return context

    def rate_limit(self, rule: RuleSnapshot, rule_key: str) -> None:
        limit = rule.rate_limit
        assert limit is not None
        per_minute = limit.rps * 60
        if limit.rps >= 1 and float(limit.rps).is_integer():
            rate = f"{int(limit.rps)}r/s"
        else:
            rate = f"{max(1, round(per_minute))}r/m"
        key_variable = self.var(f"{rule_key}_limit")
        self.context.maps.append(
            MapBlock(
                self.var("rule"),
                key_variable,
                [(rule_key, rule_key)],
                '""',
                comment=f"rule {rule.id}: rate limit budget (an empty key is not counted)",
            )
        )
        self.context.limits.append(
            LimitZone(
                key_variable=key_variable,
                zone=f"{self.prefix}_{rule_key}",
                rate=rate,
                # nginx lets one request through at the rate plus `burst` more at once.
                burst=max(0, limit.burst - 1),
            )
        )


ACCESS_LOG_FORMAT = "$upstream_addr $status $request_time"
"""The access log line the nginx provider reads back (``routing.providers.nginx``): who
answered (the last address of ``$upstream_addr`` after any failover), the status the client
got, and the seconds it took."""


def nginx_context(
    snapshot: ServiceSnapshot,
    *,
    listen: str = "8080",
    server_name: str = "_",
    access_log: str | None = None,
) -> ExportContext:
    context = _Builder(snapshot, listen=listen, server_name=server_name).build()
    if access_log:
        # One format per service: two files that both define "canary" would not load.
        context.log_format = context.prefix
        context.access_log = quote(access_log)
    return context


_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]:|[0-9.]+:|[A-Za-z0-9.-]+:)?[0-9]{1,5}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.*~^$-]{1,253}$")


def nginx_config(
    snapshot: ServiceSnapshot,
    *,
    listen: str = "8080",
    server_name: str = "_",
    access_log: str | None = None,
) -> str:
    """The configuration text; ``listen`` and ``server_name`` go into its server block, and
    ``access_log`` (a path) logs each request in `ACCESS_LOG_FORMAT`, as the nginx provider
    reads it."""
    if not _LISTEN.match(listen):
        raise ValueError("listen must be a port or address:port")
    if not _SERVER_NAME.match(server_name):
        raise ValueError("server_name must be a host name")
    export = nginx_context(snapshot, listen=listen, server_name=server_name, access_log=access_log)
    return render_to_string(
        "routing/nginx.conf", {"export": export, "log_format_line": ACCESS_LOG_FORMAT}
    )
