"""Live benchmark of a rollback plan: from a canary's first injected 5xx to its share at 0% in the
proxy, with real processes, the service's default rollback plan an immediate one and the default
health policy.

This is ``bench/rollback_live.py --plan immediate`` with a gross fault: the canary, at 10% of
50 req/s, fails every one of its requests from the fault on (``--error-rate 1.0``). Each run's
breach begins a rollback execution of the plan; the figure is measured in the proxy (the last
request it still sent to the canary), beside the tick period and the peers' anchors, Flagger's
default analysis (300 s) and Argo Rollouts' typical one (up to 60 s). Every option of
``bench/rollback_live.py`` applies; the script creates and drops its scratch database
(``canary_bench_rollback_plan``).

    .venv/bin/python bench/rollback_plan_live.py [--runs 5] [--rate 50] [--share 10]
        [--error-rate 1.0] [--tick-seconds 5] [--server postgres://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a plain script from anywhere: the project root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rollback_live import main

if __name__ == "__main__":
    main(description=__doc__, plan="immediate", runs=5, error_rate=1.0)
