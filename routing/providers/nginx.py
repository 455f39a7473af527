"""nginx as a service's data plane: the export (``routing.exporters.nginx_config``) written to
the provider's ``configPath`` and loaded by a reload.

Applying writes the file atomically (a temporary file in the same directory, then a rename),
runs ``testCommand`` (``nginx -t``) and, only if it passes, ``reloadCommand``. A test that
fails puts the old file back (or removes the new one when there was none), so nginx keeps
serving the old weights and a later reload cannot pick up a file nginx refused. Writers on
one machine take turns through a lock file beside it (``<configPath>.lock``).

Drift is the file differing from what Canary would write now (edited by hand, or lost); the
observed weights are read back from its ``split_clients`` block for the plain traffic's rule.

Metrics come from the access log, when ``accessLog`` is set: the export then logs every
request as ``$upstream_addr $status $request_time`` (``exporters.ACCESS_LOG_FORMAT``), and
each tick reads the lines added since the offset it kept (from the end, the first time; from
the start of a new file after a rotation), at most ``CANARY_NGINX_LOG_MAX_BYTES``. The last
address of ``$upstream_addr`` (after any failover) is the target that answered, matched by
its IP address and port; a status of 500 or more is an error.

The worker that applies must see nginx's files: run it on the nginx host (or share the
directory), with the rights to run the commands.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from health.histogram import Histogram
from routing.choices import ProviderKind
from routing.engine import ServiceSnapshot, Strategy
from routing.exporters import nginx_config, nginx_context
from routing.providers import conf
from routing.providers.base import (
    ApplyResult,
    MetricsReading,
    Observation,
    ProviderError,
    TargetOutcome,
    plain_split,
)
from routing.providers.config import NginxConfig, parse_provider_config

_OUTPUT_LIMIT = 600
_SPLIT_BLOCK = re.compile(r"split_clients\s+\"[^\n]*\"\s+(\$\S+)\s*\{(?P<body>[^}]*)\}")
_SPLIT_ENTRY = re.compile(r"^\s*(?P<share>[0-9.]+%|\*)\s+(?P<upstream>\S+?)\s*;", re.MULTILINE)
_UPSTREAM_BLOCK = re.compile(r"upstream\s+(?P<name>\S+)\s*\{(?P<body>[^}]*)\}")
_SERVER_LINE = re.compile(r"^\s*server\s+(?P<address>\S+?)(?P<rest>[\s;][^\n]*)$", re.MULTILINE)


def expected_text(config: NginxConfig, snapshot: ServiceSnapshot) -> str:
    return nginx_config(
        snapshot,
        listen=config.listen,
        server_name=config.server_name,
        access_log=config.access_log,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        handle = open(f"{path}.lock", "a")  # noqa: SIM115 (held for the block)
    except OSError as error:
        raise ProviderError(f"nginx: cannot lock {path}: {error.strerror or error}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ProviderError(f"nginx: cannot read {path}: {error.strerror or error}") from None


def _write_atomically(path: Path, text: str) -> None:
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    except OSError as error:
        raise ProviderError(f"nginx: cannot read {path}: {error.strerror or error}") from None
    try:
        # A hidden name that an "include conf.d/*.conf" never matches, in the same directory
        # so the rename is atomic.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="~")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:
        raise ProviderError(f"nginx: cannot write {path}: {error.strerror or error}") from None


def _run(command: tuple[str, ...], what: str) -> None:
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=conf.command_timeout(),
            check=False,
        )
    except FileNotFoundError:
        raise ProviderError(f"nginx: the {what} command {command[0]!r} was not found") from None
    except subprocess.TimeoutExpired:
        raise ProviderError(
            f"nginx: the {what} command took longer than {conf.command_timeout():g} s"
        ) from None
    except OSError as error:
        raise ProviderError(f"nginx: the {what} command failed to start: {error}") from None
    if done.returncode != 0:
        output = " ".join((done.stderr or done.stdout or "").split())[-_OUTPUT_LIMIT:]
        raise ProviderError(
            f"nginx: the {what} command ({' '.join(command)}) failed with status "
            f"{done.returncode}: {output or 'no output'}"
        )


def _restore(path: Path, old: str | None) -> str:
    try:
        if old is None:
            path.unlink(missing_ok=True)
            return "the new file was removed"
        _write_atomically(path, old)
        return "the previous file was put back"
    except (OSError, ProviderError) as error:
        return f"the previous file could not be put back ({error})"


class NginxProvider:
    kind = ProviderKind.NGINX
    label = "nginx"

    def _config(self, service: Any) -> NginxConfig:
        config = parse_provider_config(self.kind, service.provider_config)
        assert isinstance(config, NginxConfig)
        return config

    def apply(self, service: Any, snapshot: ServiceSnapshot) -> ApplyResult:
        config = self._config(service)
        path = Path(config.config_path)
        text = expected_text(config, snapshot)
        with _locked(path):
            old = _read(path)
            _write_atomically(path, text)
            try:
                _run(config.test_command, "test")
            except ProviderError as error:
                restored = _restore(path, old)
                raise ProviderError(
                    f"{error.message}; nothing was reloaded and {restored}, so nginx keeps "
                    "serving the weights it had"
                ) from None
            _run(config.reload_command, "reload")
        split = plain_split(snapshot)
        weights = ", ".join(f"{share.target} {share.percent:g}%" for share in split.shares)
        written = "rewrote" if old is not None else "wrote"
        return ApplyResult(
            detail=f"nginx: {written} {path} (routing version {snapshot.version}), the test "
            f"passed and nginx reloaded; plain traffic {weights} from the {split.source}.",
            weights=split.percents(),
        )

    def observe(self, service: Any, snapshot: ServiceSnapshot) -> Observation:
        config = self._config(service)
        path = Path(config.config_path)
        actual = _read(path)
        expected = expected_text(config, snapshot)
        if actual is None:
            return Observation(weights=None, drift=(f"{path} is missing",))
        observed = file_weights(actual, snapshot, config)
        if actual == expected:
            return Observation(weights=observed)
        changed = [
            line[1:].strip()
            for line in difflib.unified_diff(
                expected.splitlines(), actual.splitlines(), lineterm="", n=0
            )
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        shown = "; ".join(changed[:4]) + (" …" if len(changed) > 4 else "")
        return Observation(
            weights=observed,
            drift=(f"{path} differs from what Canary set ({len(changed)} lines: {shown})",),
        )

    def metrics(
        self, service: Any, snapshot: ServiceSnapshot, cursor: dict[str, Any]
    ) -> MetricsReading:
        config = self._config(service)
        if not config.access_log:
            return MetricsReading(outcomes=[], cursor={}, detail="no accessLog")
        return read_access_log(Path(config.access_log), snapshot, cursor)


def file_weights(
    text: str, snapshot: ServiceSnapshot, config: NginxConfig
) -> dict[str, float] | None:
    """The plain traffic's shares as the file says (target name to percent): the
    ``split_clients`` block of the rule `plain_split` takes, each upstream known by its
    first server's address. None when that route has no split to read (one target, a pool,
    the default route)."""
    context = nginx_context(snapshot, listen=config.listen, server_name=config.server_name)
    rule = None
    if not snapshot.halted:
        rule = next((plan.rule for plan in snapshot.plans if not plan.rule.conditions), None)
    if rule is None or rule.strategy in (Strategy.ROUND_ROBIN, Strategy.LEAST_CONNECTIONS):
        return None
    suffix = f"_r{rule.id}_split"
    variable = next(
        (split.variable for split in context.splits if split.variable.endswith(suffix)), None
    )
    if variable is None:
        return None
    block = next(
        (match for match in _SPLIT_BLOCK.finditer(text) if match.group(1) == variable), None
    )
    if block is None:
        return {}
    addresses: dict[str, str] = {}
    for upstream in _UPSTREAM_BLOCK.finditer(text):
        server = _SERVER_LINE.search(upstream.group("body"))
        if server is not None:
            addresses[upstream.group("name")] = server.group("address")
    targets = {plain.address: plain.target for plain in plain_split(snapshot).shares}
    shares: dict[str, float] = {share.target: 0.0 for share in plain_split(snapshot).shares}
    left = 100.0
    for entry in _SPLIT_ENTRY.finditer(block.group("body")):
        target = targets.get(addresses.get(entry.group("upstream"), ""))
        share = left if entry.group("share") == "*" else float(entry.group("share")[:-1])
        left -= share if entry.group("share") != "*" else left
        if target is not None:
            shares[target] = round(shares[target] + share, 2)
    return shares


def parse_log_line(line: str) -> tuple[str, int, float] | None:
    """(address that answered, status, seconds) of one line in the export's log format, or
    None for a line without an upstream (nginx answered itself) or not in the format."""
    parts = line.strip().rsplit(" ", 2)
    if len(parts) != 3:
        return None
    upstreams, status, seconds = parts
    # "a:1, b:2" after failover, "a:1 : b:2" after an internal redirect: the last answered.
    address = re.split(r",\s*|\s+:\s+", upstreams.strip())[-1].strip()
    if not address or address == "-" or address.startswith("unix:"):
        return None
    try:
        return address, int(status), float(seconds)
    except ValueError:
        return None


def read_access_log(
    path: Path, snapshot: ServiceSnapshot, cursor: dict[str, Any]
) -> MetricsReading:
    """The outcomes of the lines written since ``cursor`` (``{"inode", "offset"}``)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return MetricsReading(outcomes=[], cursor={}, detail=f"{path} does not exist yet")
    except OSError as error:
        raise ProviderError(f"nginx: cannot read {path}: {error.strerror or error}") from None
    inode, size = stat.st_ino, stat.st_size
    if not cursor:
        # The first look: what came before is history, not this tick's traffic.
        return MetricsReading(outcomes=[], cursor={"inode": inode, "offset": size})
    offset = int(cursor.get("offset", 0))
    if cursor.get("inode") != inode or size < offset:
        offset = 0  # rotated or truncated: the new file from its start
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read(conf.nginx_log_max_bytes())
    except OSError as error:
        raise ProviderError(f"nginx: cannot read {path}: {error.strerror or error}") from None
    end = data.rfind(b"\n")
    if end < 0:
        return MetricsReading(outcomes=[], cursor={"inode": inode, "offset": offset})
    complete = data[: end + 1]
    by_address: dict[str, str] = {}
    for share in plain_split(snapshot).shares:
        by_address.setdefault(share.address, share.target)
    outcomes: dict[str, TargetOutcome] = {}
    unknown = 0
    for raw in complete.decode(errors="replace").splitlines():
        parsed = parse_log_line(raw)
        if parsed is None:
            continue
        address, status, seconds = parsed
        target = by_address.get(address)
        if target is None:
            unknown += 1
            continue
        outcome = outcomes.get(target)
        if outcome is None:
            outcome = outcomes[target] = TargetOutcome(target=target, latency=Histogram())
        outcome.requests += 1
        if status >= 500:
            outcome.errors += 1
        outcome.latency.record(seconds * 1000)
    detail = f"{unknown} lines from addresses that are no target" if unknown else ""
    return MetricsReading(
        outcomes=list(outcomes.values()),
        cursor={"inode": inode, "offset": offset + len(complete)},
        detail=detail,
    )
