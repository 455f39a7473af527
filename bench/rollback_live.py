"""Live benchmark of the safety loop: from a canary's first injected 5xx to its share at 0% in the
proxy, with real processes and the default configuration.

Each run puts a deployment of service "shop" on two real backends (``tests/deployments/
fault_backend.py``, answering in about 2 ms) behind the real proxy (``manage.py runproxy``),
with a real Celery worker and beat ticking every ``--tick-seconds``. The deployment names no
health policy and gives no thresholds or criteria: the default policy judges it. A paced load
of ``--rate`` requests a second flows through the proxy; once the canary's phase has traffic
of its own, its backend starts failing ``--error-rate`` of its requests. Measured per run:

- **to 0% in the proxy**: from the backend's first injected 5xx (its own clock) to the last
  request the proxy still sent to the canary (the load's clock, the same machine's);
- **to the decision**: from that first 5xx to the rollback on the deployment's timeline.

With ``--plan immediate`` the service has an immediate rollback plan as its default
(``rollback.services.rollback_plan_create``): the breach begins a rollback execution, which
takes the canary out in the tick's own transaction and is finished by the worker; each run
also reports the execution's own ``out_of_traffic_at``. ``bench/rollback_plan_live.py`` is
this benchmark with that plan and a gross fault.

The median over ``--runs`` runs is printed beside the tick period, the loop's own granularity,
and beside the peers' anchors: Flagger's default analysis (``interval: 1m`` and ``threshold:
5`` failed checks: 300 s) and Argo Rollouts' typical one (one measurement a minute,
``failureLimit: 0``: up to 60 s), each as if its minute were read the moment it ends. The
script creates a scratch database (``canary_bench_rollback``, ``canary_bench_rollback_plan``
with a plan), migrates it and drops it.

    .venv/bin/python bench/rollback_live.py [--runs 7] [--rate 50] [--share 10]
        [--error-rate 0.05] [--tick-seconds 5] [--plan none|immediate]
        [--server postgres://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

# Run as a plain script from anywhere: the project root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._scratch import add_scratch_arguments, scratch_django  # noqa: E402

BENCH_DB = "canary_bench_rollback"
STABLE, CANARY = "1.0.0", "2.0.0"
GOAL_SECONDS = 10.0
# The peers' detection at their documented defaults, at best (their minute read as it ends).
FLAGGER_SECONDS = 60.0 * 5  # interval: 1m, threshold: 5 failed checks
ARGO_SECONDS = 60.0  # interval: 1m, failureLimit: 0 (the first failed measurement)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class Processes:
    """The child processes of the benchmark, each logging to a file; all stopped at the end."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append((name, process, log))
        return process

    def tail(self, name: str, size: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-size:]

    def stop(self) -> None:
        for _name, process, log in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            log.close()


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "canary_site", *args]


def one_run(
    *, proxy_url: str, canary: Any, share: float, rate: float, error_rate: float
) -> dict[str, Any]:
    from deployments import services
    from deployments.choices import DeploymentStatus, EventKind
    from deployments.models import Deployment
    from rollback.models import RollbackExecution
    from tests.deployments.live import PacedLoad

    canary.recover()
    config = {
        "name": f"shop {CANARY} live",
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "maxDeploymentTimeMs": 3_600_000,
        "phases": [
            {"trafficPercentage": share, "durationMs": 1_800_000},
            {"trafficPercentage": 100, "durationMs": 60_000},
        ],
    }
    deployment = services.deployment_create(config=config, source="api")
    services.deployment_transition(deployment_id=deployment.pk, action="start", source="api")

    def reread() -> Deployment:
        return Deployment.objects.get(pk=deployment.pk)

    def own_requests() -> int:
        judgement = reread().phases.get(order=1).judgement or {}
        return ((judgement.get("evidence") or {}).get("phase") or {}).get("requests", 0)

    with PacedLoad(proxy_url, rate=rate, limit=600) as load:
        if not wait_for(lambda: own_requests() >= 150, timeout=180, interval=0.5):
            raise RuntimeError("the canary's phase never got traffic of its own")
        faulty_since = time.monotonic()
        canary.fault(error_rate=error_rate)
        if not wait_for(
            lambda: reread().status == DeploymentStatus.ROLLED_BACK, timeout=300, interval=0.2
        ):
            raise RuntimeError("the faulty canary was not rolled back")

        def quiet() -> bool:
            moment = time.monotonic()
            time.sleep(2)
            return not any(a.version == CANARY and a.sent >= moment for a in list(load.answers))

        wait_for(quiet, timeout=30, interval=0.1)
        answers = [a for a in list(load.answers) if a.sent >= faulty_since]
    first_error = canary.state()["first_error_at"]
    last_to_canary = max(a.wall for a in answers if a.version == CANARY)
    rollback = reread().events.get(kind=EventKind.ROLLBACK)
    check = rollback.evidence.get("healthCheck") or {}
    window_end = datetime.fromisoformat(check["windowEnd"]).timestamp() if check else None
    execution = RollbackExecution.objects.get(deployment_id=deployment.pk)
    if execution.state != "succeeded" or execution.out_of_traffic_at is None:
        raise RuntimeError(f"rollback #{execution.pk} is {execution.state}: {execution.outcome}")
    return {
        "to_zero": last_to_canary - first_error,
        "to_decision": rollback.at.timestamp() - first_error,
        "to_out_of_traffic": execution.out_of_traffic_at.timestamp() - first_error,
        "plan": execution.plan_name,
        "to_window_end": None if window_end is None else window_end - first_error,
        "errors_before": sum(
            1 for a in answers if a.version == CANARY and a.status == 500 and a.wall <= window_end
        )
        if window_end is not None
        else None,
        "failed": sum(1 for a in answers if a.status != 200),
        "reason": rollback.reason,
    }


def bench(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    from routing import services as routing_services
    from tests.deployments.live import FaultyBackend, fault_backend_args

    env = dict(os.environ)
    env.update(
        CANARY_TICK_SECONDS=str(args.tick_seconds),
        CANARY_TASK_QUEUE=f"bench-rollback-{uuid.uuid4().hex[:8]}",
        CANARY_DEPLOYMENTS_ENQUEUE="true",
        CANARY_NOTIFY_ENQUEUE="true",
        PYTHONPATH=str(ROOT),
    )
    processes = Processes(logs, env)
    try:
        backends = {}
        for version in (STABLE, CANARY):
            backend = FaultyBackend(version, free_port())
            backend.process = processes.spawn(
                f"backend-{version}", fault_backend_args(backend.port, version)
            )
            if not wait_for(backend.ready, timeout=20):
                raise RuntimeError(processes.tail(f"backend-{version}"))
            backends[version] = backend
        service = routing_services.service_create(name="shop", stable_version=STABLE)
        for role, version in (("stable", STABLE), ("canary", CANARY)):
            routing_services.target_create(
                service=service, name=role, endpoint=backends[version].url, version=version
            )
        if args.plan == "immediate":
            from rollback import services as rollback_services

            rollback_services.rollback_plan_create(
                definition={
                    "name": "shop immediate",
                    "service": "shop",
                    "isDefault": True,
                    "strategy": "immediate",
                }
            )
        port = free_port()
        processes.spawn(
            "proxy",
            [sys.executable, "manage.py", "runproxy", "--port", str(port), "--service", "shop"],
        )
        proxy_url = f"http://127.0.0.1:{port}"
        queue = env["CANARY_TASK_QUEUE"]
        processes.spawn("worker", celery("worker", "-Q", queue, "--pool", "solo", "-l", "INFO"))
        processes.spawn("beat", celery("beat", "-s", str(logs / "schedule"), "-l", "INFO"))

        def routed() -> bool:
            import urllib.request

            try:
                with urllib.request.urlopen(proxy_url + "/", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        if not wait_for(routed, timeout=30):
            raise RuntimeError(processes.tail("proxy"))
        results = []
        for number in range(1, args.runs + 1):
            result = one_run(
                proxy_url=proxy_url,
                canary=backends[CANARY],
                share=args.share,
                rate=args.rate,
                error_rate=args.error_rate,
            )
            print(
                f"  run {number}: {result['to_zero']:5.1f} s to 0% in the proxy, "
                f"{result['to_decision']:5.1f} s to the decision "
                f"({result['to_out_of_traffic']:.1f} s to out of traffic by {result['plan']}), "
                f"{result['failed']} failed requests; the deciding window ended "
                f"{result['to_window_end']:.1f} s after the first 5xx, "
                f"{result['errors_before']} errors sent by then",
                flush=True,
            )
            results.append(result)
        return results
    except RuntimeError:
        for name in ("worker", "beat", "proxy"):
            print(f"--- {name}\n{processes.tail(name)}", file=sys.stderr)
        raise
    finally:
        processes.stop()


def main(description: str | None = None, **defaults: Any) -> None:
    """Run the benchmark; another script's ``description`` and ``defaults`` for the options
    replace this one's."""
    parser = argparse.ArgumentParser(description=(description or __doc__).split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second, in all")
    parser.add_argument("--share", type=float, default=10.0, help="the canary's share, percent")
    parser.add_argument("--error-rate", type=float, default=0.05, help="the canary's fault")
    parser.add_argument("--tick-seconds", type=float, default=5.0, help="the beat's period")
    parser.add_argument(
        "--plan",
        choices=["none", "immediate"],
        default="none",
        help="the service's default rollback plan (none: the built-in one)",
    )
    add_scratch_arguments(parser)
    parser.set_defaults(**defaults)
    args = parser.parse_args()

    plan = "the built-in plan" if args.plan == "none" else f"an {args.plan} plan as its default"
    print(
        f"rollback, live: {args.error_rate:.0%} errors on a canary at {args.share:g}% of "
        f"{args.rate:g} req/s, default configuration, {plan}, tick every "
        f"{args.tick_seconds:g} s",
        flush=True,
    )
    database = BENCH_DB if args.plan == "none" else f"{BENCH_DB}_plan"
    with (
        tempfile.TemporaryDirectory(prefix="canary-rollback-") as logs,
        scratch_django(args.server, database, keep=args.keep),
    ):
        results = bench(args, Path(logs))
    to_zero = [result["to_zero"] for result in results]
    to_decision = [result["to_decision"] for result in results]
    median = statistics.median(to_zero)
    print(
        f"first 5xx to 0% in the proxy: median {median:.1f} s (min {min(to_zero):.1f}, "
        f"max {max(to_zero):.1f}) over {len(to_zero)} runs; tick period {args.tick_seconds:g} s"
    )
    print(f"first 5xx to the rollback decision: median {statistics.median(to_decision):.1f} s")
    print(
        f"peer anchors: Flagger's default analysis {FLAGGER_SECONDS:.0f} s (interval 1m x "
        f"threshold 5), {FLAGGER_SECONDS / median:.0f}x this median; Argo Rollouts' typical "
        f"analysis up to {ARGO_SECONDS:.0f} s (interval 1m, failureLimit 0), "
        f"{ARGO_SECONDS / median:.0f}x"
    )
    print(f"why, the first time: {results[0]['reason'][:400]}")
    verdict = "met" if median <= GOAL_SECONDS else "NOT met"
    print(f"goal (median {GOAL_SECONDS:g} s or less): {verdict}")


if __name__ == "__main__":
    main()
