"""Live benchmark of a kill switch: from a trigger over REST to every OFREP process serving the
killed flag and the proxy sending the canary no request, with real processes.

Each run puts service "shop" on two real backends (``tests/deployments/fault_backend.py``) behind
the real proxy (``manage.py runproxy``), with a deployment holding its canary at 50% and a flag
that follows it (``kill_switch_enabled``), two gunicorn processes serving OFREP on ports of
their own, and a paced load of ``--rate`` requests a second through the proxy. A service switch
on "shop" is then triggered and recovered ``--cycles`` times over REST
(``POST /api/v1/kill-switches/{id}/trigger/`` and ``.../recover/``, an engineer's token).

Three pollers ask every ``--poll-ms`` (20) from the moment before each call:

- each OFREP process, ``POST /ofrep/v1/evaluate/flags/<key>``: killed once it answers
  ``DISABLED``;
- the proxy, with a request that a rule of its own sends to the canary (header
  ``X-Probe: 1``): out once the answer's ``X-Canary-Version`` is stable's (a halted service
  takes every request by its default route, whatever its rules).

Measured per trigger: from the REST call's return to the first answer (its arrival) showing the
kill, for each poller (0 when it arrived before the call returned, after its commit), and the
latest of the three: the moment the kill is everywhere. After it the canary backend's own count
of requests must stand still. Printed: median, p95 and worst beside the goal (median under 1 s,
worst under 2 s) and LaunchDarkly's published streaming propagation (about 200 ms) as a ratio;
the recovery's figures the same way; and where the time goes (the REST call itself, the
processes' check intervals, the proxy's reload). The script creates a scratch database
(``canary_bench_killswitch``), migrates it and drops it; the cache is ``REDIS_URL``'s Redis
under a key prefix of its own, or the embedded file cache without one.

    .venv/bin/python bench/killswitch_live.py [--cycles 20] [--rate 40] [--poll-ms 20]
        [--server postgres://postgres@127.0.0.1:5432] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a plain script from anywhere: the project root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._scratch import add_scratch_arguments, scratch_django  # noqa: E402
from bench.rollback_live import Processes, free_port, wait_for  # noqa: E402

BENCH_DB = "canary_bench_killswitch"
STABLE, CANARY = "1.0.0", "2.0.0"
FLAG = "checkout-v2"
GOAL_MEDIAN, GOAL_WORST = 1.0, 2.0
# LaunchDarkly's documented streaming update: flag changes reach connected SDKs in about 200 ms.
LAUNCHDARKLY_SECONDS = 0.2


def request(
    url: str, *, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], Any]:
    """One HTTP call: (status, headers, JSON or text body); status 0 when unreachable."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    call = urllib.request.Request(
        url, data=data, headers=sent, method="GET" if data is None else "POST"
    )
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            raw, status, answer_headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        raw, status, answer_headers = error.read(), error.code, error.headers
    except OSError:
        return 0, {}, None
    found = {name.lower(): value for name, value in answer_headers.items()}
    try:
        return status, found, json.loads(raw or b"null")
    except ValueError:
        return status, found, raw.decode(errors="replace")


@dataclass
class Poller:
    """Asks one process every ``interval`` seconds whether it serves the kill, in a thread;
    keeps (sent, arrived, killed) of every answer, monotonic seconds."""

    name: str
    ask: Any  # () -> bool | None: killed, alive, or no answer
    interval: float
    seen: list[tuple[float, float, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            sent = time.monotonic()
            killed = self.ask()
            if killed is not None:
                self.seen.append((sent, time.monotonic(), killed))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def first(self, killed: bool, after: float) -> float | None:
        """When the first answer sent at ``after`` or later that is ``killed`` arrived."""
        for sent, arrived, state in list(self.seen):
            if sent >= after and state is killed:
                return arrived
        return None

    def relapses(self, killed: bool, since: float, until: float) -> int:
        """Answers sent in [since, until) that are not ``killed`` after one that was."""
        answers = [state for sent, _, state in list(self.seen) if since <= sent < until]
        if killed not in answers:
            return 0
        return sum(1 for state in answers[answers.index(killed) :] if state is not killed)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def setup_world() -> dict[str, Any]:
    """The rows of the run: service, deployment with its flag, a switch, a token and a key."""
    from django.contrib.auth import get_user_model

    from canary_site import services as site_services
    from deployments import services as deployment_services
    from flags import services as flag_services
    from rollback import services
    from routing import services as routing_services

    flag = flag_services.flag_create(key=FLAG, status="enabled", kill_switch_enabled=True)
    deployment = deployment_services.deployment_create(
        config={
            "name": f"shop {CANARY}",
            "serviceName": "shop",
            "stableVersion": STABLE,
            "canaryVersion": CANARY,
            "maxDeploymentTimeMs": 24 * 3_600_000,
            "phases": [
                {"trafficPercentage": 50, "durationMs": 12 * 3_600_000},
                {"trafficPercentage": 100, "durationMs": 60_000},
            ],
        },
        flags=[flag],
    )
    deployment_services.deployment_transition(
        deployment_id=deployment.pk, action="start", source="api"
    )
    service = deployment.service
    # The pollers' probe: a request the rules send to the canary while the service is not
    # halted, so its answer tells the proxy's decision exactly.
    routing_services.rule_create(
        service=service,
        name="probe",
        priority=1,
        conditions=[{"source": "header", "name": "x-probe", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )
    person = get_user_model().objects.create_user(username="erin", password="pw-Canary-123")
    site_services.user_set_roles(user=person, roles=["engineer"])
    _token, token = site_services.api_token_create(user=person, name="bench", source="api")
    _key, secret = flag_services.evaluation_key_create(name="bench")
    switch = services.kill_switch_create(
        definition={"name": "stop-shop", "scope": "service", "targetComponent": "shop"},
        actor=person,
    )
    return {"switch": switch.pk, "token": token, "key": secret, "deployment": deployment.pk}


def bench(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    from routing import services as routing_services
    from tests.deployments.live import FaultyBackend, PacedLoad, fault_backend_args

    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), CANARY_DEPLOYMENTS_ENQUEUE="false")
    processes = Processes(logs, env)
    pollers: list[Poller] = []
    try:
        backends = {}
        for version in (STABLE, CANARY):
            backend = FaultyBackend(version, free_port())
            backend.process = processes.spawn(
                f"backend-{version}", fault_backend_args(backend.port, version)
            )
            backends[version] = backend
        webs = []
        for number in (1, 2):
            port = free_port()
            processes.spawn(
                f"web-{number}",
                [
                    sys.executable, "-m", "gunicorn", "canary_site.wsgi:application",
                    "--bind", f"127.0.0.1:{port}", "--workers", "1", "--no-control-socket",
                ],
            )  # fmt: skip
            webs.append(f"http://127.0.0.1:{port}")
        for version, backend in backends.items():
            if not wait_for(backend.ready, timeout=20):
                raise RuntimeError(processes.tail(f"backend-{version}"))
        service = routing_services.service_create(name="shop", stable_version=STABLE)
        for role, version in (("stable", STABLE), ("canary", CANARY)):
            routing_services.target_create(
                service=service, name=role, endpoint=backends[version].url, version=version
            )
        world = setup_world()
        port = free_port()
        processes.spawn(
            "proxy",
            [sys.executable, "manage.py", "runproxy", "--port", str(port), "--service", "shop"],
        )
        proxy = f"http://127.0.0.1:{port}"
        for name, url in (("proxy", proxy + "/"), ("web-1", webs[0] + "/healthz")):
            if not wait_for(lambda url=url: request(url, timeout=1)[0] == 200, timeout=60):
                raise RuntimeError(processes.tail(name))
        if not wait_for(lambda: request(webs[1] + "/healthz", timeout=1)[0] == 200, timeout=60):
            raise RuntimeError(processes.tail("web-2"))

        def ofrep(url: str) -> Any:
            def ask() -> bool | None:
                status, _, body = request(
                    f"{url}/ofrep/v1/evaluate/flags/{FLAG}",
                    body={"context": {"targetingKey": "user-1"}},
                    headers={"X-API-Key": world["key"]},
                    timeout=5,
                )
                return None if status != 200 else body["reason"] == "DISABLED"

            return ask

        def probe() -> bool | None:
            status, headers, _ = request(proxy + "/", headers={"X-Probe": "1"}, timeout=5)
            return None if status != 200 else headers.get("x-canary-version") == STABLE

        interval = args.poll_ms / 1000
        pollers = [
            Poller("OFREP 1", ofrep(webs[0]), interval).start(),
            Poller("OFREP 2", ofrep(webs[1]), interval).start(),
            Poller("proxy", probe, interval).start(),
        ]
        bearer = {"Authorization": f"Bearer {world['token']}"}

        def press(verb: str, reason: str) -> float:
            """The REST call on the first web process; returns when it answered."""
            status, _, body = request(
                f"{webs[0]}/api/v1/kill-switches/{world['switch']}/{verb}/",
                body={"reason": reason},
                headers=bearer,
            )
            if status not in (200, 201):
                raise RuntimeError(f"{verb} answered {status}: {body}")
            return time.monotonic()

        def everywhere(killed: bool, after: float, what: str) -> None:
            """Wait until every poller has seen ``killed`` in an answer sent after ``after``."""
            seen = wait_for(
                lambda: all(poller.first(killed, after) is not None for poller in pollers),
                timeout=30,
                interval=0.01,
            )
            if not seen:
                raise RuntimeError(f"{what} did not reach every poller")

        canary = backends[CANARY]
        with PacedLoad(proxy, rate=args.rate, limit=3600):
            start = time.monotonic()
            everywhere(False, start, "the live flag and canary")
            cycles = []
            for number in range(1, args.cycles + 1):
                asked = time.monotonic()
                returned = press("trigger", f"bench cycle {number}")
                everywhere(True, asked, f"cycle {number}: the kill")
                # An answer that arrived before the call returned (after its commit) counts 0.
                reached = {p.name: max(0.0, p.first(True, asked) - returned) for p in pollers}
                # Once out, the canary gets nothing: its own count stands still.
                served = canary.state()["served"]
                time.sleep(0.5)
                leaked = canary.state()["served"] - served
                back_asked = time.monotonic()
                back_returned = press("recover", f"bench cycle {number} over")
                everywhere(False, back_asked, f"cycle {number}: the recovery")
                recovered = {
                    p.name: max(0.0, p.first(False, back_asked) - back_returned) for p in pollers
                }
                relapses = sum(p.relapses(True, asked, back_asked) for p in pollers)
                cycle = {
                    "reached": reached,
                    "trigger_call": returned - asked,
                    "recovered": recovered,
                    "recover_call": back_returned - back_asked,
                    "leaked": leaked,
                    "relapses": relapses,
                }
                cycles.append(cycle)
                worst = max(reached.values())
                print(
                    f"  cycle {number:2d}: everywhere {worst * 1000:4.0f} ms ("
                    + ", ".join(f"{name} {value * 1000:4.0f}" for name, value in reached.items())
                    + f"); REST call {cycle['trigger_call'] * 1000:3.0f} ms; recovered "
                    f"{max(recovered.values()) * 1000:4.0f} ms",
                    flush=True,
                )
                time.sleep(0.5)
        reloads = [
            float(found)
            for found in re.findall(
                r"Routing version \S+ loaded in (\d+) ms", processes.tail("proxy", 10**7)
            )
        ]
        return {"cycles": cycles, "proxy_reloads": reloads}
    except RuntimeError:
        for name in ("web-1", "web-2", "proxy"):
            print(f"--- {name}\n{processes.tail(name)}", file=sys.stderr)
        raise
    finally:
        for poller in pollers:
            poller.stop()
        processes.stop()


def summary(label: str, values: list[float]) -> str:
    median, p95, worst = statistics.median(values), percentile(values, 0.95), max(values)
    return (
        f"{label}: median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, worst "
        f"{worst * 1000:.0f} ms over {len(values)}; LaunchDarkly's streaming "
        f"~{LAUNCHDARKLY_SECONDS * 1000:.0f} ms: median x{median / LAUNCHDARKLY_SECONDS:.2f}, "
        f"worst x{worst / LAUNCHDARKLY_SECONDS:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20, help="trigger/recover cycles")
    parser.add_argument("--rate", type=float, default=40.0, help="load through the proxy, req/s")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="each poller's period")
    add_scratch_arguments(parser)
    args = parser.parse_args()
    # A key prefix of the run's own in a shared Redis, so no other user of it is disturbed.
    os.environ["CANARY_CACHE_PREFIX"] = f"bench-killswitch-{uuid.uuid4().hex[:8]}"
    cache = "Redis" if os.environ.get("REDIS_URL") else "the file cache"
    print(
        f"kill switch, live: a service switch over REST, {args.cycles} cycles; 2 gunicorn "
        f"processes serving OFREP and the proxy, polled every {args.poll_ms:g} ms; canary at "
        f"50% of {args.rate:g} req/s; the cache is {cache}",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="canary-killswitch-") as logs,
        scratch_django(args.server, BENCH_DB, keep=args.keep),
    ):
        from flags import conf as flag_conf
        from routing import conf as routing_conf

        result = bench(args, Path(logs))
        intervals = (
            flag_conf.snapshot_check_seconds(),
            flag_conf.db_version_seconds(),
            routing_conf.proxy_poll_seconds(),
        )
    cycles = result["cycles"]
    everywhere = [max(cycle["reached"].values()) for cycle in cycles]
    recovered = [max(cycle["recovered"].values()) for cycle in cycles]
    print(summary("trigger to killed everywhere", everywhere))
    for name in cycles[0]["reached"]:
        each = [cycle["reached"][name] for cycle in cycles]
        median, worst = statistics.median(each), max(each)
        print(f"  {name:8s} median {median * 1000:4.0f} ms, worst {worst * 1000:4.0f} ms")
    print(summary("recovery to live everywhere", recovered))
    calls = [cycle["trigger_call"] for cycle in cycles]
    pressed = [call + reached for call, reached in zip(calls, everywhere, strict=True)]
    print(
        f"  from the moment the call was made: median {statistics.median(pressed) * 1000:.0f} ms, "
        f"worst {max(pressed) * 1000:.0f} ms"
    )
    reloads = result["proxy_reloads"]
    print(
        f"where the time goes: the REST trigger itself {statistics.median(calls) * 1000:.0f} ms "
        f"(median, not counted above); OFREP checks the flags version every {intervals[0]:g} s "
        f"(the database's every {intervals[1]:g} s), the proxy the routing version every "
        f"{intervals[2]:g} s, then reloads"
        + (f" (proxy reload median {statistics.median(reloads):.0f} ms)" if reloads else "")
    )
    leaked = sum(cycle["leaked"] for cycle in cycles)
    relapses = sum(cycle["relapses"] for cycle in cycles)
    print(f"after the moment: {leaked} requests reached the canary, {relapses} answers relapsed")
    median, worst = statistics.median(everywhere), max(everywhere)
    verdict = "met" if median < GOAL_MEDIAN and worst < GOAL_WORST else "NOT met"
    print(f"goal (median under {GOAL_MEDIAN:g} s, worst under {GOAL_WORST:g} s): {verdict}")
    if leaked or relapses:
        raise SystemExit("a kill that did not hold")


if __name__ == "__main__":
    main()
