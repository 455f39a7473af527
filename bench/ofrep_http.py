"""Benchmark: OFREP single-flag evaluations per second over HTTP, against a bare Django JSON
endpoint (``/healthz``) served by the same gunicorn workers in the same run.

    .venv/bin/python bench/ofrep_http.py [--seconds 3] [--connections 16] [--workers 2] [--rounds 5]

It sets up its own scratch state in a temporary directory (a SQLite database via
``DATABASE_URL``, the file cache, the secret key), migrates it, creates a flag (a 10% rollout
keyed on the user within a segment of launch countries, the ``bench/flags_eval.py`` workload)
and an evaluation key, and starts gunicorn on a free loopback port. The load comes from ``wrk``
(with a Lua script that posts a JSON context for a different user each request) when it is
installed, else from an aiohttp client. Each round loads the bare endpoint, then OFREP, for the
same time with the same connections. It prints requests per second of each and OFREP's ratio to
the bare endpoint, the median over rounds (goal: at least 0.7), and the same comparison by the
server's CPU time per request (read from /proc), which other load on the machine moves less.

The rate limit is raised far above the load so every request is evaluated, but its shared-cache
bookkeeping still runs; exposure counting and flushing run as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAG_KEY = "new-checkout"
GOAL = 0.7

SETUP = """
import django
django.setup()
from flags import services
services.segment_create(key="launch-markets", constraints=[
    {"attribute": "country", "operator": "in", "values": ["US", "CA", "GB", "DE"]}])
services.flag_create(key="new-checkout", status="enabled", default_rule={"variant": "off"},
    rules=[{"segments": ["launch-markets"],
            "serve": {"rollout": {"percentage": 10, "variant": "on"}}}])
_key, secret = services.evaluation_key_create(name="bench")
print(secret)
"""

# The requests are formatted once, up front, so the Lua per request is an index and a modulo:
# wrk shares the machine with the server, and a costly script would slow the server it measures.
# Both scripts cycle through their requests the same way, so the client spends the same on each
# and the difference measured is the server's; each says how request ``n`` is built. The result
# is a %-format (``%%`` for Lua's modulo).
WRK_TEMPLATE = """
{prelude}local requests = {}
local counter = 0
init = function(args)
  for n = 1, 1000 do
{build}  end
end
request = function()
  counter = counter %% 1000 + 1
  return requests[counter]
end
"""


def wrk_script(build: str, prelude: str = "") -> str:
    return WRK_TEMPLATE.replace("{prelude}", prelude).replace("{build}", build)


WRK_SCRIPT = wrk_script(
    prelude='local countries = {"US", "CA", "GB", "DE", "FR", "JP", "BR", "IN"}\n',
    build="""\
    local body = string.format(
      '{"context":{"targetingKey":"user-%%d","country":"%%s"}}', n, countries[n %% 8 + 1])
    requests[n] = wrk.format("POST", nil,
      {["Content-Type"] = "application/json", ["X-API-Key"] = "%(secret)s"}, body)
""",
)

WRK_BARE_SCRIPT = wrk_script(
    build="""\
    requests[n] = wrk.format("GET", nil, {["X-Request"] = tostring(n)}, nil)
""",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(scratch: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "CELERY_BROKER_URL")
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "canary_site.settings",
            "DATABASE_URL": f"sqlite:///{scratch / 'bench.sqlite3'}",
            "CANARY_VAR_DIR": str(scratch),
            "CANARY_OFREP_RATE_LIMIT": str(10**9),
            "CANARY_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",
        }
    )
    return env


def set_up(env: dict[str, str]) -> str:
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    done = subprocess.run(
        [python, "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer {url}")


def load_with_wrk(url: str, *, seconds: int, connections: int, script: Path) -> tuple[float, int]:
    # One client thread: the machine is shared with the server, and the server is what counts.
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script)]
    output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in output:
        raise SystemExit(f"errors under load at {url}:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if rate is None or count is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    return float(rate.group(1)), int(count.group(1))


def load_with_aiohttp(url: str, *, seconds: int, connections: int, secret: str | None) -> float:
    import aiohttp

    async def run() -> tuple[float, int]:
        done = 0
        deadline = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(offset: int) -> None:
                nonlocal done
                count = offset
                while time.monotonic() < deadline:
                    count += connections
                    if secret is None:
                        response = await session.get(url)
                    else:
                        body = {"context": {"targetingKey": f"user-{count}", "country": "US"}}
                        response = await session.post(url, json=body, headers={"X-API-Key": secret})
                    if response.status != 200:
                        raise SystemExit(f"{url} answered {response.status}")
                    await response.read()
                    done += 1

            started = time.monotonic()
            await asyncio.gather(*(worker(n) for n in range(connections)))
            return done / (time.monotonic() - started), done

    return asyncio.run(run())


def server_cpu_seconds(master: int) -> float:
    """CPU time used so far by gunicorn's master and its workers (Linux /proc)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    total = 0
    for pid in [master, *map(int, children)]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3, help="length of each load run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="canary-ofrep-bench-") as directory:
        scratch = Path(directory)
        env = environment(scratch)
        secret = set_up(env)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "canary_site.wsgi:application",
                "--bind", f"127.0.0.1:{port}", "--workers", str(options.workers),
                "--log-level", "warning",
            ],
            cwd=ROOT, env=env,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            bare_url = f"{base}/healthz"
            ofrep_url = f"{base}/ofrep/v1/evaluate/flags/{FLAG_KEY}"
            wait_until_up(bare_url)
            wrk = shutil.which("wrk")
            script = scratch / "ofrep.lua"
            script.write_text(WRK_SCRIPT % {"secret": secret})
            bare_script = scratch / "bare.lua"
            bare_script.write_text(WRK_BARE_SCRIPT % {})

            def load(url: str, ofrep: bool) -> tuple[float, float]:
                """Requests per second, and server CPU microseconds per request."""
                before = server_cpu_seconds(server.pid)
                rate, count = measure(url, ofrep)
                return rate, (server_cpu_seconds(server.pid) - before) / max(count, 1) * 1e6

            def measure(url: str, ofrep: bool) -> tuple[float, int]:
                if wrk:
                    return load_with_wrk(
                        url,
                        seconds=options.seconds,
                        connections=options.connections,
                        script=script if ofrep else bare_script,
                    )
                return load_with_aiohttp(
                    url,
                    seconds=options.seconds,
                    connections=options.connections,
                    secret=secret if ofrep else None,
                )

            check = urllib.request.Request(
                ofrep_url,
                data=json.dumps({"context": {"targetingKey": "u1", "country": "US"}}).encode(),
                headers={"X-API-Key": secret, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(check, timeout=5) as response:
                answer = json.loads(response.read())
            load(bare_url, False)  # warm both endpoints in every worker
            load(ofrep_url, True)

            bare, ofrep = [], []
            for _ in range(options.rounds):
                bare.append(load(bare_url, False))
                ofrep.append(load(ofrep_url, True))
        finally:
            server.terminate()
            server.wait(timeout=15)

    # Each round runs the two loads back to back, so a round's ratio compares them under the
    # same background load; the median of the rounds' ratios is the figure that counts. The
    # server's CPU time per request is the same comparison without the load of other processes
    # on the machine, which moves requests per second but not the work each request costs.
    bare_rates, ofrep_rates = [rate for rate, _ in bare], [rate for rate, _ in ofrep]
    ratios = sorted(o / b for b, o in zip(bare_rates, ofrep_rates, strict=True))
    ratio = statistics.median(ratios)
    bare_cpu = statistics.median(cpu for _, cpu in bare)
    ofrep_cpu = statistics.median(cpu for _, cpu in ofrep)
    generator = "wrk" if wrk else "aiohttp"
    print(f"load: {generator}, {options.connections} connections, {options.seconds} s per run,")
    print(f"      gunicorn with {options.workers} sync workers, {options.rounds} rounds")
    print(f"sample OFREP answer: {json.dumps(answer)}")
    print(
        f"bare /healthz:      best {max(bare_rates):7.0f} requests/s  "
        f"(rounds: {_rounds(bare_rates)}); server CPU {bare_cpu:.0f} us/request"
    )
    print(
        f"OFREP single flag:  best {max(ofrep_rates):7.0f} requests/s  "
        f"(rounds: {_rounds(ofrep_rates)}); server CPU {ofrep_cpu:.0f} us/request"
    )
    verdict = "meets" if ratio >= GOAL else "misses"
    each = ", ".join(f"{value:.2f}" for value in ratios)
    print(f"OFREP / bare:       median {ratio:.2f} ({each}); {verdict} the goal of {GOAL}")
    print(f"by server CPU:      {bare_cpu / ofrep_cpu:.2f} (bare CPU per request / OFREP's)")


def _rounds(values: list[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values)


if __name__ == "__main__":
    main()
