"""gunicorn's settings for Canary's web process, shared by the Procfile and production.

    gunicorn canary_site.wsgi:application --config canary_site/gunicorn.conf.py --bind ADDRESS

Everything of one install lives under its ``CANARY_VAR_DIR`` (``var/`` by default), as in the
Django settings, so two installs on one machine, even of one user, never share a file:

- the control socket (``gunicornc``). gunicorn's default is one path per user
  (``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``): a second install's master
  would take the first one's socket over and remove it when it stopped.
- the Prometheus samples of the workers (``PROMETHEUS_MULTIPROC_DIR``), which ``/metrics`` sums
  so that counters do not depend on which worker answers a scrape (``canary_site/metrics.py``).

This file runs in the master before any worker starts, so the environment it sets is inherited by
every worker before prometheus_client is first imported there (the library picks its storage at
import time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CANARY_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

control_socket = str(VAR_DIR / "gunicorn.ctl")

METRICS_DIR = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus")))


def on_starting(server: Any) -> None:
    # Files left by a previous run would add its counts to this one's; counters restart from zero
    # with the master, which Prometheus reads as the counter reset it is. Only the library's own
    # files go, in case the directory was pointed somewhere shared.
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's counters stay in the sum (they were served); its live gauges must not.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
