"""What every traffic provider does, and the split it carries.

A provider is a data plane outside Canary that serves a service's traffic: HAProxy, told
through its Runtime API (``haproxy.py``), or nginx, by a file and a reload (``nginx.py``). The
built-in proxy needs none: it reads the snapshots itself. Each provider

- ``apply(service, snapshot)``: makes the data plane serve the snapshot's weights; returns an
  `ApplyResult` or raises `ProviderError` (unreachable, refused, a test that failed);
- ``observe(service, snapshot)``: what the data plane serves now, and how that differs from
  the snapshot (`Observation`; drift is repaired by applying again);
- ``metrics(service, snapshot, cursor)``: each target's requests, errors and latencies since
  ``cursor`` (`MetricsReading`, with the cursor to keep for the next tick), for the metric
  store the health judge reads, as the built-in proxy's flushes are.

HAProxy's weights are per server of one backend, so what a weight-only data plane carries is
the split of requests that match no condition: `plain_split` (the first enabled rule without
conditions, as the deployments write theirs, or the default route to the stable version; a
halted service always the default route). nginx gets the whole export, every rule included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from health.histogram import Histogram
from routing.engine import BUCKETS, ServiceSnapshot, Strategy, TargetSnapshot

_SPLITS = frozenset({Strategy.WEIGHTED, Strategy.HEADER, Strategy.COOKIE, Strategy.QUERY})


class ProviderError(Exception):
    """The data plane could not be reached, refused a command or failed a check; the message
    says which and why, in words a person acts on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ServerShare:
    """One target as a data plane's server: where it listens and its share of plain traffic
    in basis points (all shares of a service sum to 10,000, or are all 0 when nothing may
    serve)."""

    target: str
    version: str
    host: str
    port: int
    tls: bool
    basis_points: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def percent(self) -> float:
        return self.basis_points / 100


@dataclass(frozen=True, slots=True)
class Split:
    """What a weight-only data plane serves: its source in words and a share per target."""

    source: str
    shares: tuple[ServerShare, ...]

    def percents(self) -> dict[str, float]:
        return {share.target: share.percent for share in self.shares}


@dataclass(frozen=True, slots=True)
class ApplyResult:
    detail: str
    weights: dict[str, float]


@dataclass(frozen=True, slots=True)
class Observation:
    """What the data plane serves (target name to percent, as far as it can be read) and each
    difference from what Canary set, in words; in place when there is none."""

    weights: dict[str, float] | None
    drift: tuple[str, ...] = ()


@dataclass(slots=True)
class TargetOutcome:
    target: str
    requests: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)


@dataclass(slots=True)
class MetricsReading:
    outcomes: list[TargetOutcome]
    cursor: dict[str, Any]
    detail: str = ""


class Provider(Protocol):
    kind: str
    label: str

    def apply(self, service: Any, snapshot: ServiceSnapshot) -> ApplyResult: ...

    def observe(self, service: Any, snapshot: ServiceSnapshot) -> Observation: ...

    def metrics(
        self, service: Any, snapshot: ServiceSnapshot, cursor: dict[str, Any]
    ) -> MetricsReading: ...


def endpoint_parts(endpoint: str) -> tuple[str, int, bool]:
    """(host, port, tls) of a target's http or https endpoint."""
    parts = urlsplit(endpoint)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls


def _shares(weights: list[tuple[TargetSnapshot, int]]) -> dict[str, int]:
    """Weights scaled to basis points summing to exactly 10,000 (largest remainders)."""
    total = sum(weight for _target, weight in weights)
    if total <= 0:
        return {}
    exact = [(target.id, weight * BUCKETS / total) for target, weight in weights]
    shares = {target_id: int(value) for target_id, value in exact}
    left = BUCKETS - sum(shares.values())
    by_remainder = sorted(exact, key=lambda item: item[1] - int(item[1]), reverse=True)
    for target_id, _value in by_remainder[:left]:
        shares[target_id] += 1
    return shares


def plain_split(snapshot: ServiceSnapshot) -> Split:
    """The split of requests that match no condition, as the engine would route them, over
    every target of the service (those outside it at 0): a target out of rotation (unhealthy
    or draining) gives its share to the others of the split, as in the engine; a rule with
    none left fails open over all its targets, or goes to its first fallback in rotation."""
    rule = None
    if not snapshot.halted:
        rule = next((plan.rule for plan in snapshot.plans if not plan.rule.conditions), None)
    if rule is not None:
        source = f"rule {rule.id}" + (f" '{rule.name}'" if rule.name else "")
        split = rule.strategy in _SPLITS
        candidates = [(target, target.weight if split else 1) for target in rule.targets]
        available = [(target, weight) for target, weight in candidates if target.in_rotation]
        if not any(weight for _target, weight in available):
            fallbacks = [
                snapshot.targets_by_id[target_id]
                for target_id in rule.failover.fallback_target_ids
                if snapshot.targets_by_id[target_id].in_rotation
            ]
            if fallbacks:
                available = [(fallbacks[0], 1)]
            elif rule.failover.fail_open:
                available = candidates
    else:
        source = f"default route to the stable version {snapshot.stable_version}"
        if snapshot.halted:
            source += " (the service is halted)"
        stable = [target for target in snapshot.stable_targets if target.in_rotation]
        available = [(target, target.weight) for target in stable]
        if not any(weight for _target, weight in available):
            available = [(target, 1) for target in stable]  # all zero: an even spread
    shares = _shares(available)
    servers = []
    for target in snapshot.targets:
        host, port, tls = endpoint_parts(target.endpoint)
        servers.append(
            ServerShare(
                target=target.name,
                version=target.version,
                host=host,
                port=port,
                tls=tls,
                basis_points=shares.get(target.id, 0),
            )
        )
    return Split(source=source, shares=tuple(servers))
