"""Benchmark of routing: the engine's decisions per second, and the proxy against nginx.

Measured in one run, each figure printed beside its baseline with the ratio:

1. ``routing.engine.decide`` for a two-target sticky rule with three conditions, against a bare
   bucket-and-bisect (goal: a decision under 10 microseconds);
2. requests per second and p99 latency with ``wrk -t1 -c50`` of: the backend (nginx returning
   200) reached directly, nginx as a reverse proxy in front of it, and ``manage.py runproxy``
   in front of it (its default client, and aiohttp's for comparison); one worker each
   (goal: the proxy at least 0.25 of nginx's throughput);
3. the latency the proxy adds at a fixed 500 requests per second, from a paced aiohttp client,
   against the backend reached directly (goal: under 1 ms at the median);
4. the same in front of a backend that writes each answer's head and body in two writes
   (Python's ``http.server``, HTTP/1.1 keep-alive: the body waits for the head's ACK under
   Nagle, and a peer that delays its ACKs makes that 40 ms), with nginx in front of the same
   backend in the same run (goals: under 1 ms at the median, and no more than nginx adds plus
   1 ms).

Rounds alternate between the contenders and the best round of each counts, so a machine shared
with other work disturbs all of them alike. Needs ``wrk`` and ``nginx`` on the PATH; the proxy
runs against a throw-away SQLite database and file cache in a temporary directory.

    .venv/bin/python bench/routing.py [--duration 5] [--rounds 3] [--paced-seconds 8]
        [--only engine,throughput,paced,two-writes]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NGINX_MAIN = """
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    {body}
}}
"""
BACKEND = 'server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}'
REVERSE_PROXY = """
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def serve_two_writes(port: int) -> None:
    """A ``ThreadingHTTPServer`` speaking HTTP/1.1 whose answers leave in two writes: the head
    (``end_headers`` flushes it) and then the body, with Nagle left on as ``http.server`` does."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def start_two_writes(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--serve-two-writes", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def start_nginx(tmp: Path, name: str, body: str) -> subprocess.Popen[bytes]:
    conf = tmp / f"{name}.conf"
    conf.write_text(NGINX_MAIN.format(tmp=tmp, name=name, body=body))
    return subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / f"{name}-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------------------------------------
# 1. the engine


def bench_engine(decisions: int, rounds: int) -> dict[str, float]:
    from bisect import bisect_right

    from routing_engine import USERS, best_rate, build_requests, build_service

    from canary_site.bucketing import bucket
    from routing.engine import RuntimeState, decide

    service = build_service()
    requests = build_requests()
    state = RuntimeState()
    loops = max(1, decisions // USERS)
    total = loops * USERS

    def run_decide(_: int) -> None:
        for _ in range(loops):
            for request in requests:
                decide(service, request, state=state)

    bounds = (1000, 10_000)
    layout = ("canary-1", "stable-1")

    def run_baseline(_: int) -> None:
        for _ in range(loops):
            for request in requests:
                layout[
                    bisect_right(bounds, bucket("checkout:1", request.cookies["canary_session"]))
                ]

    run_decide(0)
    return {
        "decide": best_rate(run_decide, total, rounds),
        "baseline": best_rate(run_baseline, total, rounds),
    }


# ---------------------------------------------------------------------------------------------
# 2. throughput with wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, duration: float, headers: tuple[str, ...] = ()) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of ``wrk -t1 -c50``."""
    args = ["wrk", "-t1", "-c50", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    for header in headers:
        args += ["-H", header]
    output = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    if "Non-2xx" in output or "Socket errors" in output:
        print(f"  warning: errors during the run of {url}:\n{output}")
    return rate, float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan")


# ---------------------------------------------------------------------------------------------
# 3. fixed-rate latency


async def paced_latencies(
    url: str, rate: float, seconds: float, headers: dict[str, str] | None = None
) -> list[float]:
    """Latencies (ms) of requests started at ``rate`` per second whatever the answers take, so
    a slow answer cannot slow the arrivals down. Each latency is timed from the moment its
    request starts, with the high-resolution clock (the loop's clock ticks in milliseconds)."""
    import aiohttp

    clock = time.perf_counter
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> None:
            started = clock()
            async with session.get(url) as response:
                await response.read()
            latencies.append((clock() - started) * 1000)

        # Warm the connection pool first.
        await asyncio.gather(*(one() for _ in range(32)))
        latencies.clear()
        count = int(rate * seconds)
        start = clock() + 0.05
        tasks = []
        for index in range(count):
            delay = start + index / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def paced(
    url: str, rate: float, seconds: float, headers: dict[str, str] | None = None
) -> list[float]:
    import uvloop

    return uvloop.run(paced_latencies(url, rate, seconds, headers))


def quantiles(values: list[float]) -> tuple[float, float]:
    """Median and p99."""
    cuts = statistics.quantiles(values, n=100)
    return statistics.median(values), cuts[98]


# ---------------------------------------------------------------------------------------------
# The proxy under test


def prepare_database(var_dir: Path, backend_port: int, two_writes_port: int) -> dict[str, str]:
    """A throw-away database with one service routed by a sticky three-condition rule whose
    conditions every benchmark request meets, and a service ``twowrites`` whose one target is
    the two-write backend."""
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env["CANARY_VAR_DIR"] = str(var_dir)
    env["DJANGO_SETTINGS_MODULE"] = "canary_site.settings"
    env["CELERY_BROKER_URL"] = "filesystem://"
    script = f"""
from routing import services
service = services.service_create(name="bench", stable_version="1.0.0")
for name, version in (("stable", "1.0.0"), ("canary", "2.0.0")):
    services.target_create(service=service, name=name, version=version,
                           endpoint="http://127.0.0.1:{backend_port}")
services.rule_create(
    service=service, name="bench", targets={{"stable": 90, "canary": 10}},
    conditions=[
        {{"source": "method", "operator": "in", "values": ["GET", "HEAD"]}},
        {{"source": "path", "operator": "prefix", "values": ["/"]}},
        {{"source": "header", "name": "x-user", "operator": "prefix", "values": ["u"]}},
    ],
    affinity={{"type": "header", "name": "x-user"}},
)
two = services.service_create(name="twowrites", stable_version="1.0.0")
services.target_create(service=two, name="stable", version="1.0.0",
                       endpoint="http://127.0.0.1:{two_writes_port}")
"""
    python = sys.executable
    for args in (
        [python, "manage.py", "migrate", "--noinput", "-v0"],
        [python, "manage.py", "shell", "-c", script],
    ):
        subprocess.run(args, cwd=ROOT, env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
    return env


def start_proxy(env: dict[str, str], port: int, client: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runproxy",
            "--port",
            str(port),
            "--service",
            "bench",
            "--upstream-client",
            client,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM if process.args[0] != "nginx" else signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


SECTIONS = ("engine", "throughput", "paced", "two-writes")


def bench_two_writes(
    direct_url: str, nginx_url: str, proxy_url: str, *, rate: float, seconds: float, rounds: int
) -> None:
    """Section 4: alternating paced rounds against the two-write backend, reached directly,
    through nginx and through the proxy; every round's latencies pooled per contender."""
    contenders = {
        "backend, direct": (direct_url, None),
        "nginx reverse proxy": (nginx_url, None),
        "canary proxy": (proxy_url, {"X-Canary-Service": "twowrites"}),
    }
    print(
        f"\n== added latency in front of a backend writing head and body apart "
        f"(http.server, HTTP/1.1 keep-alive): {rate:g} req/s, {rounds} alternating rounds "
        f"of {seconds:g} s"
    )
    pooled: dict[str, list[float]] = {name: [] for name in contenders}
    for _round in range(rounds):
        for name, (url, headers) in contenders.items():
            pooled[name] += paced(url, rate, seconds, headers)
    for name, values in pooled.items():
        median, p99 = quantiles(values)
        print(f"{name:<32} median {median:7.3f} ms   p99 {p99:7.3f} ms   ({len(values)} req)")
    direct = quantiles(pooled["backend, direct"])[0]
    added = quantiles(pooled["canary proxy"])[0] - direct
    added_nginx = quantiles(pooled["nginx reverse proxy"])[0] - direct
    ratio = added / added_nginx if added_nginx > 0 else float("inf")
    print(
        f"added at the median: canary proxy {added:.3f} ms, nginx {added_nginx:.3f} ms, "
        f"ratio {ratio:.2f}; goals: under 1 ms: {'met' if added < 1 else 'MISSED'}, "
        f"at most nginx + 1 ms: {'met' if added <= added_nginx + 1 else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--paced-seconds", type=float, default=8.0)
    parser.add_argument("--paced-rate", type=float, default=500.0)
    parser.add_argument("--two-writes-rate", type=float, default=200.0, help="req/s of section 4")
    parser.add_argument("--two-writes-seconds", type=float, default=4.0)
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--serve-two-writes", type=int, metavar="PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_two_writes:
        serve_two_writes(arguments.serve_two_writes)
        return
    sections = {name.strip() for name in arguments.only.split(",") if name.strip()}
    if unknown := sections - set(SECTIONS):
        sys.exit(f"unknown section(s): {', '.join(sorted(unknown))}")
    tools = ["nginx"] + (["wrk"] if "throughput" in sections else [])
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed on the PATH (apt-get install -y {tool})")

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "canary_site.settings")
    if "engine" in sections:
        print("== routing engine: two-target sticky rule, three conditions")
        engine = bench_engine(arguments.decisions, arguments.rounds)
        decide_us = 1e6 / engine["decide"]
        baseline_us = 1e6 / engine["baseline"]
        print(
            f"decide:                 {engine['decide']:>12,.0f} decisions/s  {decide_us:6.2f} us"
        )
        print(
            f"bucket() + bisect:      {engine['baseline']:>12,.0f} decisions/s  "
            f"{baseline_us:6.2f} us"
        )
        print(
            f"ratio (decide time / bare time): {decide_us / baseline_us:.2f}x; goal under 10 us: "
            f"{'met' if decide_us < 10 else 'MISSED'}"
        )
    if not sections & {"throughput", "paced", "two-writes"}:
        return

    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as directory:
        tmp = Path(directory)
        try:
            backend_port, nginx_port = free_port(), free_port()
            two_writes_port, nginx_two_writes_port = free_port(), free_port()
            processes.append(start_nginx(tmp, "backend", BACKEND.format(port=backend_port)))
            processes.append(
                start_nginx(
                    tmp, "reverse", REVERSE_PROXY.format(backend=backend_port, port=nginx_port)
                )
            )
            processes.append(start_two_writes(two_writes_port))
            processes.append(
                start_nginx(
                    tmp,
                    "reverse-two-writes",
                    REVERSE_PROXY.format(backend=two_writes_port, port=nginx_two_writes_port),
                )
            )
            env = prepare_database(tmp / "var", backend_port, two_writes_port)
            proxy_ports = {"fast": free_port()}
            if "throughput" in sections:
                proxy_ports["aiohttp"] = free_port()
            for client, port in proxy_ports.items():
                processes.append(start_proxy(env, port, client))
            ports = (backend_port, nginx_port, two_writes_port, nginx_two_writes_port)
            for port in (*ports, *proxy_ports.values()):
                wait_port(port)
            time.sleep(1.0)  # the proxies load their snapshots after they start listening

            contenders = {
                "backend, direct": f"http://127.0.0.1:{backend_port}/",
                "nginx reverse proxy": f"http://127.0.0.1:{nginx_port}/",
                "canary proxy": f"http://127.0.0.1:{proxy_ports['fast']}/",
            }
            if "aiohttp" in proxy_ports:
                contenders["canary proxy (aiohttp client)"] = (
                    f"http://127.0.0.1:{proxy_ports['aiohttp']}/"
                )
            if "throughput" in sections:
                bench_throughput(contenders, arguments.duration, arguments.rounds)
            if "paced" in sections:
                bench_paced(contenders, arguments.paced_rate, arguments.paced_seconds)
            if "two-writes" in sections:
                bench_two_writes(
                    f"http://127.0.0.1:{two_writes_port}/",
                    f"http://127.0.0.1:{nginx_two_writes_port}/",
                    contenders["canary proxy"],
                    rate=arguments.two_writes_rate,
                    seconds=arguments.two_writes_seconds,
                    rounds=arguments.rounds,
                )
        finally:
            for process in reversed(processes):
                stop(process)


def bench_throughput(contenders: dict[str, str], duration: float, rounds: int) -> None:
    headers = ("X-User: u-12345",)
    best: dict[str, tuple[float, float]] = {}
    print(
        f"\n== throughput: wrk -t1 -c50 -d{duration:g}s, best of "
        f"{rounds} alternating rounds, one worker each"
    )
    for _round in range(rounds):
        for name, url in contenders.items():
            rate, p99 = wrk(url, duration, headers)
            if name not in best or rate > best[name][0]:
                best[name] = (rate, p99)
    nginx_rate, nginx_p99 = best["nginx reverse proxy"]
    for name, (rate, p99) in best.items():
        print(
            f"{name:<32} {rate:>10,.0f} req/s   p99 {p99:7.2f} ms   "
            f"{rate / nginx_rate:5.2f} of nginx's throughput, p99 {p99 / nginx_p99:5.2f}x"
        )
    ratio = best["canary proxy"][0] / nginx_rate
    print(
        f"goal: at least 0.25 of nginx's throughput: "
        f"{'met' if ratio >= 0.25 else 'MISSED'} ({ratio:.2f})"
    )


def bench_paced(contenders: dict[str, str], rate: float, seconds: float) -> None:
    print(f"\n== added latency at {rate:g} req/s for {seconds:g} s (paced aiohttp client)")
    headers = {"X-User": "u-12345"}
    direct = paced(contenders["backend, direct"], rate, seconds, headers)
    proxied = paced(contenders["canary proxy"], rate, seconds, headers)
    through_nginx = paced(contenders["nginx reverse proxy"], rate, seconds, headers)
    for name, values in (
        ("backend, direct", direct),
        ("nginx reverse proxy", through_nginx),
        ("canary proxy", proxied),
    ):
        median, p99 = quantiles(values)
        print(f"{name:<32} median {median:6.3f} ms   p99 {p99:7.3f} ms   ({len(values)} req)")
    added = quantiles(proxied)[0] - quantiles(direct)[0]
    added_nginx = quantiles(through_nginx)[0] - quantiles(direct)[0]
    print(
        f"added at the median: canary proxy {added:.3f} ms, nginx {added_nginx:.3f} ms; "
        f"goal under 1 ms: {'met' if added < 1 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
