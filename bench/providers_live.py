"""Live benchmark of the traffic providers: from a decision (the transaction that commits new
weights) to the external data plane serving them, for HAProxy (Runtime API) and nginx (a file
and a reload), with real processes.

Two real backends (``tests/deployments/fault_backend.py``) serve service "shop-haproxy" behind
a real HAProxy (its Runtime API on a unix socket, the backend Canary generates) and service
"shop-nginx" behind a real nginx (run as this user with a prefix of its own, the provider's
file included from ``conf.d``), and a real Celery worker runs the tasks. Each change is a
person's edit of a rule's split (``rule_set_weights``) that moves the canary from 0% to 100% or
back, so one answer tells which weights serve. Measured per change: from the commit (an
``on_commit`` hook registered first) to the first of five answers in a row from the version
the new weights send everything to, each over a new connection (HAProxy's change is live;
nginx's old workers finish their connections while new ones take new connections). The path
measured is the control loop's own: the after-commit enqueue of ``providers_apply``, the
broker, the worker, the data plane.

The median and the worst over ``--changes`` changes are printed beside the goals (HAProxy under
1 s, nginx under 2 s) with their ratio. The broker is ``CELERY_BROKER_URL`` (Redis when set;
kombu's filesystem transport polls about once a second otherwise). The script creates a
scratch database (``canary_bench_providers``), migrates it and drops it.

    .venv/bin/python bench/providers_live.py [--changes 10]
        [--server postgres://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._scratch import add_scratch_arguments, scratch_django  # noqa: E402

BENCH_DB = "canary_bench_providers"
STABLE, CANARY = "1.0.0", "2.0.0"
GOALS = {"haproxy": 1.0, "nginx": 2.0}
IN_A_ROW = 5
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

HAPROXY_MAIN = """
global
    stats socket {dir}/admin.sock mode 600 level admin
    pidfile {dir}/haproxy.pid
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be_shop
"""

NGINX_MAIN = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/conf.d/*.conf;
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def answered_by(url: str) -> str:
    """The version that answered one GET over a new connection ("" for none)."""
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as response:
            return response.read().decode(errors="replace").strip()
    except OSError:
        return ""


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
        log = self.logs / f"{name}.log"
        return log.read_text(errors="replace")[-size:] if log.exists() else "(not started)"

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


def one_change(*, rule: Any, url: str, to_canary: bool) -> float:
    """Seconds from the commit of a split that sends everything to one version to five
    answers in a row from it."""
    from django.db import transaction

    from routing import services

    committed: list[float] = []
    weights = {"stable": 0, "canary": 100} if to_canary else {"stable": 100, "canary": 0}
    wanted = CANARY if to_canary else STABLE
    with transaction.atomic():
        transaction.on_commit(lambda: committed.append(time.monotonic()))
        services.rule_set_weights(rule=rule, weights=weights, reason="bench")
    first: float | None = None
    streak = 0
    deadline = time.monotonic() + 30
    while streak < IN_A_ROW:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never served the new weights ({weights})")
        moment = time.monotonic()
        if answered_by(url) == wanted:
            first = moment if streak == 0 else first
            streak += 1
        else:
            streak = 0
            time.sleep(0.002)
    assert first is not None
    return max(0.0, first - committed[0])


def bench(args: argparse.Namespace, logs: Path, planes: Path) -> dict[str, list[float]]:
    from routing import services
    from routing.models import RoutingRule
    from routing.providers import sync
    from routing.providers.haproxy import haproxy_config
    from routing.snapshot import service_snapshot
    from tests.deployments.live import FaultyBackend, fault_backend_args

    queue = os.environ["CANARY_TASK_QUEUE"]
    os.environ["CANARY_NGINX_DIRS"] = str(planes)
    os.environ["CANARY_NGINX_COMMANDS"] = NGINX
    env = dict(os.environ)
    env.update(CANARY_PROVIDERS_ENQUEUE="true", PYTHONPATH=str(ROOT))
    processes = Processes(logs, env)
    try:
        backends = {}
        for version in (STABLE, CANARY):
            backend = FaultyBackend(version, free_port())
            backend.process = processes.spawn(
                f"backend-{version}", fault_backend_args(backend.port, version, delay_ms=0)
            )
            if not wait_for(backend.ready, timeout=20):
                raise RuntimeError(processes.tail(f"backend-{version}"))
            backends[version] = backend

        # HAProxy, its backend generated by Canary.
        haproxy_dir = planes / "hx"
        haproxy_dir.mkdir()
        haproxy_port = free_port()
        haproxy = services.service_create(
            name="shop-haproxy",
            stable_version=STABLE,
            provider="haproxy",
            provider_config={"runtimeApi": f"unix:{haproxy_dir}/admin.sock", "backend": "be_shop"},
        )
        # nginx, with its own prefix; the provider writes conf.d/canary-shop.conf.
        nginx_dir = planes / "nx"
        (nginx_dir / "conf.d").mkdir(parents=True)
        nginx_port = free_port()
        base = [NGINX, "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")]
        base += ["-e", str(nginx_dir / "error.log")]
        (nginx_dir / "nginx.conf").write_text(NGINX_MAIN.format(dir=nginx_dir))
        nginx = services.service_create(
            name="shop-nginx",
            stable_version=STABLE,
            provider="nginx",
            provider_config={
                "configPath": str(nginx_dir / "conf.d" / "canary-shop.conf"),
                "testCommand": [*base, "-t", "-q"],
                "reloadCommand": [*base, "-s", "reload"],
                "listen": f"127.0.0.1:{nginx_port}",
            },
        )
        rules = {}
        for service in (haproxy, nginx):
            for role, version in (("stable", STABLE), ("canary", CANARY)):
                services.target_create(
                    service=service, name=role, endpoint=backends[version].url, version=version
                )
            rules[service.name] = services.rule_create(
                service=service, targets={"stable": 100, "canary": 0}
            )
        (haproxy_dir / "haproxy.cfg").write_text(
            HAPROXY_MAIN.format(dir=haproxy_dir, port=haproxy_port)
            + haproxy_config(service_snapshot(name="shop-haproxy"), backend="be_shop")
        )
        processes.spawn("haproxy", [HAPROXY, "-db", "-f", str(haproxy_dir / "haproxy.cfg")])
        processes.spawn("nginx", [*base, "-g", "daemon off;"])
        if not wait_for((nginx_dir / "nginx.pid").exists, timeout=20):
            raise RuntimeError(processes.tail("nginx"))
        if not wait_for((haproxy_dir / "admin.sock").exists, timeout=20):
            raise RuntimeError(processes.tail("haproxy"))
        report = sync.providers_sync()  # both data planes take their first weights
        if report.failed:
            raise RuntimeError(f"the first sync failed for {report.failed}")
        celery = [sys.executable, "-m", "celery", "-A", "canary_site", "worker"]
        processes.spawn("worker", [*celery, "-Q", queue, "--pool", "solo", "-l", "INFO"])
        if not wait_for(lambda: "ready" in processes.tail("worker"), timeout=60):
            raise RuntimeError(processes.tail("worker"))
        urls = {
            "haproxy": f"http://127.0.0.1:{haproxy_port}",
            "nginx": f"http://127.0.0.1:{nginx_port}",
        }
        for kind, url in urls.items():
            if not wait_for(lambda url=url: answered_by(url) == STABLE, timeout=20):
                raise RuntimeError(f"{kind} does not serve the stable version")
        results: dict[str, list[float]] = {"haproxy": [], "nginx": []}
        for number in range(1, args.changes + 1):
            for kind, service in (("haproxy", haproxy), ("nginx", nginx)):
                rule = RoutingRule.objects.get(pk=rules[service.name].pk)
                seconds = one_change(rule=rule, url=urls[kind], to_canary=number % 2 == 1)
                results[kind].append(seconds)
            print(
                f"  change {number}: HAProxy {results['haproxy'][-1]:.3f} s, "
                f"nginx {results['nginx'][-1]:.3f} s",
                flush=True,
            )
        return results
    except RuntimeError:
        for name in ("worker", "haproxy", "nginx"):
            print(f"--- {name}\n{processes.tail(name)}", file=sys.stderr)
        raise
    finally:
        processes.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=10, help="changes of weights per plane")
    add_scratch_arguments(parser)
    args = parser.parse_args()
    broker = os.environ.get("CELERY_BROKER_URL", "") or "filesystem://"
    print(
        f"providers, live: {args.changes} changes of a split (0% <-> 100% canary) per data "
        f"plane, commit to {IN_A_ROW} answers in a row from the new version; broker "
        f"{broker.split('://')[0]}",
        flush=True,
    )
    # A queue of its own, read by the settings: no other worker takes these tasks.
    os.environ["CANARY_TASK_QUEUE"] = f"bench-providers-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="canary-providers-") as logs,
        # Short: a unix socket's path has at most 107 bytes.
        tempfile.TemporaryDirectory(prefix="cpl-", dir="/tmp") as planes,
        scratch_django(args.server, BENCH_DB, keep=args.keep),
    ):
        results = bench(args, Path(logs), Path(planes))
    verdicts = []
    for kind, label in (("haproxy", "HAProxy (Runtime API)"), ("nginx", "nginx (reload)")):
        seconds = results[kind]
        median = statistics.median(seconds)
        goal = GOALS[kind]
        met = max(seconds) < goal
        verdicts.append(met)
        print(
            f"{label}: commit to serving, median {median:.3f} s, worst {max(seconds):.3f} s "
            f"over {len(seconds)} changes; goal under {goal:g} s: worst is "
            f"{max(seconds) / goal:.2f}x the goal, median {median / goal:.2f}x "
            f"({'met' if met else 'NOT met'})"
        )
    print(f"goals (every change under its goal): {'met' if all(verdicts) else 'NOT met'}")


if __name__ == "__main__":
    main()
