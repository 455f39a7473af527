"""HAProxy as a service's data plane, through its Runtime API (a unix or TCP socket).

Weights change live, without a reload: ``set server <backend>/<server> weight <w>``. A target
with no server yet is added (``add server <backend>/<server> <addr:port> weight <w>``, then
``enable server``: HAProxy 2.4 and later add servers at run time, in maintenance; the 2.6 here
takes them without its experimental mode), and a server whose target has gone is set to weight
0. ``show servers state <backend>`` is what HAProxy serves (drift), ``show stat`` the
per-server counters (``req_tot``, ``hrsp_5xx``, ``econ``, ``ttime``) the health judge is fed.

HAProxy's weights run from 0 to 256, so a share is written as ``round(share x 256)`` (at
least 1 when it is not 0): within about 0.2 percentage points of Canary's. The backend needs
a balance algorithm with dynamic weights (``roundrobin``, the default, or ``leastconn``,
``random``); ``haproxy_config`` writes one.

One command per connection (the Runtime API's non-interactive mode answers and closes), which
on a unix socket costs well under a millisecond each.
"""

from __future__ import annotations

import csv
import io
import re
import socket
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from health.histogram import Histogram
from routing.choices import ProviderKind
from routing.engine import BUCKETS, ServiceSnapshot
from routing.providers import conf
from routing.providers.base import (
    ApplyResult,
    MetricsReading,
    Observation,
    ProviderError,
    ServerShare,
    Split,
    TargetOutcome,
    plain_split,
)
from routing.providers.config import HaproxyConfig, parse_provider_config

MAX_WEIGHT = 256
# srv_admin_state bits that keep a server out of rotation: forced, inherited and
# configuration maintenance, forced and inherited drain, resolution and hostname maintenance.
_OUT_OF_ROTATION = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x80
_FORCED_MAINTENANCE = 0x01
_FORCED_DRAIN = 0x08
_REPLY_LIMIT = 8 * 1024 * 1024


def haproxy_weight(basis_points: int) -> int:
    if basis_points <= 0:
        return 0
    return max(1, min(MAX_WEIGHT, round(basis_points * MAX_WEIGHT / BUCKETS)))


class RuntimeApi:
    """HAProxy's Runtime API at ``unix:/path`` or ``host:port``: one command per connection."""

    def __init__(self, address: str, *, timeout: float | None = None) -> None:
        self.address = address
        self.timeout = conf.socket_timeout() if timeout is None else timeout

    def _connect(self) -> socket.socket:
        if self.address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.address[len("unix:") :])
            return sock
        host, _, port = self.address.rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)

    def command(self, line: str) -> str:
        try:
            sock = self._connect()
        except OSError as error:
            raise ProviderError(
                f"HAProxy's Runtime API at {self.address} cannot be reached: {_reason(error)}"
            ) from None
        chunks: list[bytes] = []
        size = 0
        try:
            with sock:
                sock.sendall(line.encode() + b"\n")
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > _REPLY_LIMIT:
                        raise ProviderError(f"HAProxy's answer to {line.split()[0]!r} is too long")
        except OSError as error:
            raise ProviderError(
                f"HAProxy's Runtime API at {self.address} did not answer {line!r}: {_reason(error)}"
            ) from None
        return b"".join(chunks).decode(errors="replace")


def _reason(error: OSError) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    return error.strerror or str(error) or type(error).__name__


@dataclass(frozen=True, slots=True)
class ServerState:
    name: str
    address: str
    port: int
    admin_state: int
    weight: int

    @property
    def serving_weight(self) -> int:
        """The weight it serves with: 0 while maintenance or a drain holds it."""
        return 0 if self.admin_state & _OUT_OF_ROTATION else self.weight


def servers_state(api: RuntimeApi, backend: str) -> dict[str, ServerState]:
    """``show servers state <backend>``, by server name."""
    reply = api.command(f"show servers state {backend}")
    lines = [line for line in reply.splitlines() if line.strip()]
    if not lines or not lines[0].strip().isdigit():
        raise ProviderError(
            f"HAProxy has no backend {backend!r}: {reply.strip()[:200] or 'no answer'}"
        )
    header: list[str] = []
    states: dict[str, ServerState] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            header = line.lstrip("# ").split()
            continue
        row = dict(zip(header, line.split(), strict=False))
        if row.get("be_name") != backend or "srv_name" not in row:
            continue
        try:
            states[row["srv_name"]] = ServerState(
                name=row["srv_name"],
                address=row.get("srv_addr", ""),
                port=int(row.get("srv_port", "0") or 0),
                admin_state=int(row.get("srv_admin_state", "0") or 0),
                weight=int(row.get("srv_uweight", "0") or 0),
            )
        except ValueError:
            raise ProviderError(f"HAProxy's server state is unreadable: {line[:200]}") from None
    return states


def server_counters(api: RuntimeApi, backend: str) -> dict[str, dict[str, str]]:
    """``show stat`` of the backend's servers (type 4), each row by server name."""
    reply = api.command(f"show stat {backend} 4 -1")
    text = reply.lstrip()
    if not text.startswith("#"):
        raise ProviderError(f"HAProxy's statistics are unreadable: {reply.strip()[:200]}")
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        row["svname"]: row
        for row in rows
        if row.get("pxname") == backend and row.get("svname") not in (None, "BACKEND", "FRONTEND")
    }


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _tls_options(share: ServerShare) -> str:
    if not share.tls:
        return ""
    sni = f" sni str({share.host})" if share.host and not _is_ip(share.host) else ""
    return f" ssl verify required ca-file @system-ca{sni}"


def _ok(reply: str, line: str) -> None:
    """A ``set`` or ``enable`` command answers nothing when it worked."""
    if reply.strip():
        raise ProviderError(f"HAProxy refused {line!r}: {reply.strip()[:300]}")


def _managed(config: HaproxyConfig, states: dict[str, ServerState]) -> dict[str, ServerState]:
    return {name: state for name, state in states.items() if name.startswith(config.server_prefix)}


class HaproxyProvider:
    kind = ProviderKind.HAPROXY
    label = "HAProxy"

    def _setup(self, service: Any) -> tuple[HaproxyConfig, RuntimeApi]:
        config = parse_provider_config(self.kind, service.provider_config)
        assert isinstance(config, HaproxyConfig)
        return config, RuntimeApi(config.runtime_api)

    def apply(self, service: Any, snapshot: ServiceSnapshot) -> ApplyResult:
        config, api = self._setup(service)
        split = plain_split(snapshot)
        states = servers_state(api, config.backend)
        done: list[str] = []
        wanted: set[str] = set()
        for share in split.shares:
            name = config.server_name(share.target)
            wanted.add(name)
            weight = haproxy_weight(share.basis_points)
            where = f"{config.backend}/{name}"
            state = states.get(name)
            if state is None:
                line = f"add server {where} {share.address} weight {weight}{_tls_options(share)}"
                reply = api.command(line)
                if "New server registered" not in reply:
                    raise ProviderError(f"HAProxy refused {line!r}: {reply.strip()[:300]}")
                _ok(api.command(f"enable server {where}"), f"enable server {where}")
                done.append(f"added {name} at {share.address} with weight {weight}")
                continue
            if _is_ip(share.host) and (state.address, state.port) != (share.host, share.port):
                line = f"set server {where} addr {share.host} port {share.port}"
                reply = api.command(line)
                # This one says what it changed ("IP changed from ..."), or that nothing had to.
                if reply.strip() and not re.search(r"changed|no need", reply, re.IGNORECASE):
                    raise ProviderError(f"HAProxy refused {line!r}: {reply.strip()[:300]}")
                done.append(f"{name} moved to {share.address}")
            if state.weight != weight:
                line = f"set server {where} weight {weight}"
                _ok(api.command(line), line)
                done.append(f"{name} {state.weight} → {weight}")
            if state.admin_state & (_FORCED_MAINTENANCE | _FORCED_DRAIN):
                line = f"set server {where} state ready"
                _ok(api.command(line), line)
                done.append(f"{name} back from maintenance")
        for name, state in _managed(config, states).items():
            if name not in wanted and state.weight != 0:
                line = f"set server {config.backend}/{name} weight 0"
                _ok(api.command(line), line)
                done.append(f"{name} (no target) {state.weight} → 0")
        weights = ", ".join(
            f"{share.target} {share.percent:g}% ({haproxy_weight(share.basis_points)})"
            for share in split.shares
        )
        changes = "; ".join(done) if done else "nothing to change"
        return ApplyResult(
            detail=f"HAProxy backend {config.backend}: {weights} from the {split.source}; "
            f"{changes}.",
            weights=split.percents(),
        )

    def observe(self, service: Any, snapshot: ServiceSnapshot) -> Observation:
        config, api = self._setup(service)
        split = plain_split(snapshot)
        states = servers_state(api, config.backend)
        drift: list[str] = []
        serving: dict[str, int] = {}
        wanted: set[str] = set()
        for share in split.shares:
            name = config.server_name(share.target)
            wanted.add(name)
            expected = haproxy_weight(share.basis_points)
            state = states.get(name)
            if state is None:
                drift.append(f"{name} is missing from backend {config.backend}")
                serving[share.target] = 0
                continue
            serving[share.target] = state.serving_weight
            if _is_ip(share.host) and (state.address, state.port) != (share.host, share.port):
                drift.append(f"{name} points at {state.address}:{state.port}, not {share.address}")
            if state.weight != expected:
                drift.append(f"{name} has weight {state.weight}, Canary set {expected}")
            elif expected and state.serving_weight == 0:
                drift.append(f"{name} is held in maintenance or drain")
        for name, state in _managed(config, states).items():
            if name not in wanted and state.serving_weight:
                drift.append(f"{name} is no target of the service but has weight {state.weight}")
        return Observation(weights=_percents(serving, split), drift=tuple(drift))

    def metrics(
        self, service: Any, snapshot: ServiceSnapshot, cursor: dict[str, Any]
    ) -> MetricsReading:
        """Each target's requests and errors since the last reading, from HAProxy's
        cumulative counters: ``req_tot`` plus ``econ`` (connections that failed, which never
        became a request the server counted) as requests, ``hrsp_5xx`` plus ``econ`` as
        errors. HAProxy keeps no latency histogram per server, so each request is recorded
        at the server's average total time (``ttime``, over its last 1,024 requests). The
        first reading of a backend is only the base the next one counts from; a counter that
        went down (HAProxy restarted) counts from zero again."""
        config, api = self._setup(service)
        rows = server_counters(api, config.backend)
        before: dict[str, list[int]] = cursor.get("servers", {})
        after: dict[str, list[int]] = {}
        outcomes: list[TargetOutcome] = []
        targets = {config.server_name(target.name): target.name for target in snapshot.targets}
        for name, row in rows.items():
            requests = _count(row, "req_tot") + _count(row, "econ")
            errors = _count(row, "hrsp_5xx") + _count(row, "econ")
            after[name] = [requests, errors]
            previous = before.get(name)
            target = targets.get(name)
            if previous is None or target is None:
                continue
            new_requests, new_errors = requests - previous[0], errors - previous[1]
            if new_requests < 0 or new_errors < 0:
                new_requests, new_errors = requests, errors
            if new_requests <= 0:
                continue
            latency = Histogram()
            latency.record(float(_count(row, "ttime")), new_requests)
            outcomes.append(
                TargetOutcome(
                    target=target,
                    requests=new_requests,
                    errors=min(new_errors, new_requests),
                    latency=latency,
                )
            )
        return MetricsReading(outcomes=outcomes, cursor={"servers": after})


def _count(row: dict[str, str], name: str) -> int:
    try:
        return max(0, int(row.get(name) or 0))
    except ValueError:
        return 0


def _percents(serving: dict[str, int], split: Split) -> dict[str, float]:
    total = sum(serving.values())
    return {
        share.target: round(serving.get(share.target, 0) * 100 / total, 2) if total else 0.0
        for share in split.shares
    }


def haproxy_config(
    snapshot: ServiceSnapshot, *, backend: str | None = None, server_prefix: str = ""
) -> str:
    """A backend section for ``haproxy.cfg`` with the service's targets as servers, weighted
    as `plain_split` says; include it beside a frontend that uses it. Later changes of weight
    reach it through the Runtime API (a ``stats socket ... level admin`` in ``global``)."""
    backend = backend or f"be_{snapshot.name}"
    config = parse_provider_config(
        ProviderKind.HAPROXY,
        {"runtimeApi": "unix:/", "backend": backend, "serverPrefix": server_prefix},
    )
    assert isinstance(config, HaproxyConfig)
    split = plain_split(snapshot)
    lines = [
        f"# Canary routing for service {snapshot.name!r}, routing version {snapshot.version}:",
        f"# the split of requests that match no condition ({_comment(split.source)}).",
        "# Generated by Canary. With the service's provider set to haproxy, later weights",
        "# reach this backend through the Runtime API, without a reload.",
        f"backend {config.backend}",
        "    mode http",
        "    balance roundrobin",
        "    option redispatch",
        "    retries 2",
    ]
    for share in split.shares:
        weight = haproxy_weight(share.basis_points)
        lines.append(
            f"    server {config.server_name(share.target)} {share.address} weight {weight}"
            f"{_tls_options(share)}"
            f"  # v{_comment(share.version)} {share.percent:g}%"
        )
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text)
