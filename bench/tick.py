"""Benchmark of the deployments tick on PostgreSQL: one tick over 1,000 running deployments.

Each deployment has its own service (a stable and a canary target), a running first phase with
two success criteria (one held for ten minutes) and three rollback thresholds, the ten minutes
of observations a running loop would have logged for it, and ten minutes of 10-second buckets
for both versions in the metric store. Measured in the same run:

- the tick over all N deployments: its time and its SQL queries, on a fresh window (every
  deployment gets a new health check and a new observation: the most a steady tick does);
- the same tick over 10 of them (the baseline: the query count must be the same);
- the tick run again at the same moment (nothing new: idempotent, nothing written twice);
- the bare cost of loading the N rows with their running phases (what any tick pays);
- the health app's bulk evaluation of the same N canaries alone (the part of the tick that
  belongs to the health app);
- a tick where every one of the N deployments advances to its next phase: the decisions are
  written in bulk by the transition service (every row locked at once, phases, deployments,
  events, audit entries, routing weights and the news in a statement each), in one
  transaction;
- then a tick where every one decides otherwise, a third each: rolls back (and finishes the
  rollback), succeeds (its stable version becomes the canary's), or fails past its maximum
  time; the same tick over 10 of them is the baseline whose query count it must match.

The policy tells its people from the advancing tick on (an e-mail recipient, as the default
policy tells every channel the site has): each decision queues its news.

The script creates a scratch database (``canary_bench_tick``), migrates it and drops it.

    .venv/bin/python bench/tick.py [--server postgres://postgres@127.0.0.1:5432]
        [--deployments 1000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

# Run as a plain script from anywhere: the project root must be importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._scratch import add_scratch_arguments, scratch_django  # noqa: E402

BENCH_DB = "canary_bench_tick"
BASELINE = 10
ROUNDS = 3
BUCKET = 10
HISTORY_SECONDS = 600
STABLE, CANARY = "1.0.0", "2.0.0"


def lognormal(count: int, median_ms: float, sigma: float = 0.3) -> list[float]:
    normal = NormalDist()
    return [median_ms * math.exp(sigma * normal.inv_cdf((i + 0.5) / count)) for i in range(count)]


def build(count: int, started: datetime) -> Any:
    """N services, targets, deployments with their phases, and their metric history; rows are
    written in bulk (the services' one-by-one writes would make the set-up the benchmark)."""
    from deployments import services as deployment_services
    from deployments.models import Deployment, Phase
    from health import services as health_services
    from health.histogram import Histogram
    from health.ingest import OutcomeBatchItem
    from routing.models import RoutingRule, RuleTarget, Service, Target

    policy = health_services.health_policy_create(
        name="bench",
        alerting_enabled=False,
        policy={
            "window_seconds": 30,
            "min_requests": 20,
            "comparison": {"enabled": True},
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": True},
            "auto_rollback": {"enabled": False},
        },
    )
    names = [f"svc-{index:05d}" for index in range(count)]
    Service.objects.bulk_create([Service(name=name, stable_version=STABLE) for name in names])
    by_name = {service.name: service for service in Service.objects.all()}
    Target.objects.bulk_create(
        [
            Target(service=by_name[name], name=role, endpoint=f"http://{role}:80", version=version)
            for name in names
            for role, version in (("stable", STABLE), ("canary", CANARY))
        ]
    )
    targets = {(t.service_id, t.name): t for t in Target.objects.all()}

    config = deployment_services.read_configuration(
        {
            "name": "bench",
            "serviceName": "svc-00000",
            "stableVersion": STABLE,
            "canaryVersion": CANARY,
            "maxDeploymentTimeMs": 86_400_000,
            "phases": [
                {
                    "trafficPercentage": share,
                    "durationMs": 1_800_000,
                    "successCriteria": [
                        {
                            "metric": "availability",
                            "operator": "greater_than",
                            "threshold": 99,
                            "durationMs": 600_000,
                        },
                        {"metric": "latency_p95", "operator": "less_than", "threshold": 500},
                    ],
                    "rollbackThresholds": {"errorRate": 5, "latencyP95": 1000, "availability": 95},
                }
                for share in (10, 50, 100)
            ],
        }
    )
    Deployment.objects.bulk_create(
        [
            Deployment(
                service=by_name[name],
                name=f"{name} {CANARY}",
                stable_version=STABLE,
                canary_version=CANARY,
                stable_target=targets[(by_name[name].pk, "stable")],
                canary_target=targets[(by_name[name].pk, "canary")],
                status="running",
                current_phase=1,
                canary_share=10,
                health_policy=policy,
                config=config.to_dict(),
                max_deployment_time_ms=config.max_deployment_time_ms,
                started_at=started,
            )
            for name in names
        ]
    )
    # Each running deployment's routing rule, as its start left it: 90/10 between its targets.
    by_service = {d.service_id: d for d in Deployment.objects.all()}
    RoutingRule.objects.bulk_create(
        [
            RoutingRule(service_id=service_id, name=f"deployment {d.pk}: {d.name}", priority=1000)
            for service_id, d in by_service.items()
        ]
    )
    rules = list(RoutingRule.objects.all())
    RuleTarget.objects.bulk_create(
        [
            RuleTarget(
                rule=rule,
                target=targets[(rule.service_id, role)],
                weight=weight,
                position=position,
            )
            for rule in rules
            for position, (role, weight) in enumerate((("stable", 90), ("canary", 10)))
        ]
    )
    for rule in rules:
        by_service[rule.service_id].routing_rule = rule
    Deployment.objects.bulk_update(list(by_service.values()), ["routing_rule"])
    # Ten minutes of observations already in each running phase's log, as a running loop
    # leaves them: the judgement reads them all (the availability criterion holds ten minutes).
    window_ends = [
        int(started.timestamp()) // BUCKET * BUCKET + offset
        for offset in range(BUCKET, HISTORY_SECONDS - 5 * BUCKET, BUCKET)
    ]
    history = {
        "t0": window_ends[0],
        "t": [end - window_ends[0] for end in window_ends],
        "m": {
            "availability": [99.8333] * len(window_ends),
            "latency_p95": [121.5385] * len(window_ends),
            "error_rate": [0.1667] * len(window_ends),
        },
    }
    phases = []
    for deployment in Deployment.objects.all():
        for order, spec in enumerate(config.phases, start=1):
            phases.append(
                Phase(
                    deployment=deployment,
                    order=order,
                    key=spec.id,
                    name=spec.name,
                    traffic_percentage=spec.traffic_percentage,
                    duration_ms=spec.duration_ms,
                    success_criteria=[c.to_dict() for c in spec.success_criteria],
                    rollback_thresholds=spec.rollback_thresholds.to_dict(),
                    status="running" if order == 1 else "pending",
                    started_at=started if order == 1 else None,
                    observations=history if order == 1 else {},
                )
            )
    Phase.objects.bulk_create(phases, batch_size=2000)

    canary_latency = Histogram.from_values(lognormal(60, 80.0))
    stable_latency = Histogram.from_values(lognormal(540, 80.0))
    first = int(started.timestamp()) // BUCKET * BUCKET
    outcomes = [
        OutcomeBatchItem(
            service=name,
            version=version,
            bucket_start=datetime.fromtimestamp(first + offset, tz=UTC),
            requests=requests,
            errors=0,
            latency=latency,
        )
        for name in names
        for version, requests, latency in (
            (CANARY, 60, canary_latency),
            (STABLE, 540, stable_latency),
        )
        for offset in range(0, HISTORY_SECONDS + 300, BUCKET)
    ]
    for offset in range(0, len(outcomes), 20_000):
        health_services.metrics_record_outcomes(outcomes=outcomes[offset : offset + 20_000])
    return list(Deployment.objects.order_by("pk").values_list("pk", flat=True))


def measured(call: Any) -> tuple[float, int, Any]:
    """Time and SQL statements of one call. Counted with an execute wrapper rather than
    CaptureQueriesContext, whose log stops at 9,000 queries."""
    from django.db import connection

    count = 0

    def counter(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal count
        count += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
    return seconds, count, result


def bench(count: int) -> dict[str, Any]:
    from deployments import selectors, services
    from deployments.models import Deployment, Phase
    from health.choices import NotificationEvent
    from health.models import HealthPolicy, NotificationOutbox

    # Started ten minutes ago, on a bucket boundary plus one second: windows end predictably.
    base = int((datetime.now(tz=UTC) - timedelta(hours=1)).timestamp()) // BUCKET * BUCKET
    started = datetime.fromtimestamp(base + 1, tz=UTC)
    load_started = time.perf_counter()
    ids = build(count, started)
    result: dict[str, Any] = {"build_seconds": time.perf_counter() - load_started}

    # Fill the phases' observation logs as a running loop would have: one tick per window.
    moment = started + timedelta(seconds=HISTORY_SECONDS - 5 * BUCKET)
    for _ in range(3):
        moment += timedelta(seconds=BUCKET)
        services.deployments_tick(now=moment)

    rounds = []
    for _ in range(ROUNDS):
        moment += timedelta(seconds=BUCKET)
        rounds.append(measured(lambda m=moment: services.deployments_tick(now=m)))
    seconds = [r[0] for r in rounds]
    report = min(rounds, key=lambda r: r[0])[2]
    result.update(
        full_seconds=min(seconds),
        full_median=statistics.median(seconds),
        full_queries=rounds[-1][1],
        full_report=report.to_dict(),
    )

    moment += timedelta(seconds=BUCKET)
    small = [
        measured(lambda m=moment: services.deployments_tick(now=m, deployment_ids=ids[:BASELINE]))
    ]
    result.update(small_seconds=small[0][0], small_queries=small[0][1])

    moment += timedelta(seconds=BUCKET)
    services.deployments_tick(now=moment)
    repeat = measured(lambda m=moment: services.deployments_tick(now=m))
    result.update(repeat_seconds=repeat[0], repeat_queries=repeat[1])

    load = [measured(lambda: list(selectors.deployments_for_tick())) for _ in range(ROUNDS)]
    result.update(load_seconds=min(r[0] for r in load), load_queries=load[0][1])

    # The health app's own bulk pass over the same canaries on a fresh window, alone: the
    # part of the tick that is the health app's.
    from health import services as health_services
    from health.services import EvaluationRequest

    policy = Deployment.objects.select_related("health_policy").first().health_policy
    requests = [
        EvaluationRequest(
            service=f"svc-{index:05d}",
            canary_version=CANARY,
            stable_version=STABLE,
            policy=policy,
            planned_canary_share=10.0,
        )
        for index in range(count)
    ]
    health_rounds = []
    for _ in range(ROUNDS):
        moment += timedelta(seconds=BUCKET)
        health_rounds.append(
            measured(
                lambda m=moment: health_services.health_evaluate_many(requests=requests, now=m)
            )
        )
    result.update(
        health_seconds=min(r[0] for r in health_rounds), health_queries=health_rounds[0][1]
    )
    moment += timedelta(seconds=BUCKET)

    # From here on each decision is news for the policy's people, as with the default policy.
    HealthPolicy.objects.update(
        alerting_enabled=True, alert_channels=["email"], alert_recipients=["oncall@example.com"]
    )
    # Every deployment's first phase is done (no minimum left, nothing to hold): all advance.
    Phase.objects.filter(order=1).update(duration_ms=0, success_criteria=[])
    moment += timedelta(seconds=BUCKET)
    advance = measured(lambda m=moment: services.deployments_tick(now=m))
    result.update(
        advance_seconds=advance[0], advance_queries=advance[1], advance_report=advance[2].to_dict()
    )

    # Then each decides otherwise, a third each, once phase 2 has traffic of its own: its
    # latency breaches a 10 ms threshold (roll back), it is the last phase and holds
    # (succeed), or the deployment is past its maximum time (fail).
    thirds = [ids[0::3], ids[1::3], ids[2::3]]
    Phase.objects.filter(order=2, deployment_id__in=thirds[0]).update(
        rollback_thresholds={"latencyP95": 10}
    )
    Phase.objects.filter(order=3, deployment_id__in=thirds[1]).delete()
    # Planned at the share the synthetic traffic has, so the sample-ratio check passes.
    Phase.objects.filter(order=2, deployment_id__in=thirds[1]).update(
        duration_ms=0, success_criteria=[], traffic_percentage=10
    )
    Deployment.objects.filter(pk__in=thirds[2]).update(max_deployment_time_ms=1)
    small_ids = [pk for third in thirds for pk in third[:4]][:BASELINE]
    moment += timedelta(seconds=4 * BUCKET)
    decide_small = measured(
        lambda m=moment: services.deployments_tick(now=m, deployment_ids=small_ids)
    )
    decide = measured(lambda m=moment: services.deployments_tick(now=m))
    result.update(
        decide_small_queries=decide_small[1],
        decide_small_report=decide_small[2].to_dict(),
        decide_seconds=decide[0],
        decide_queries=decide[1],
        decide_report=decide[2].to_dict(),
        news=NotificationOutbox.objects.filter(event=NotificationEvent.DEPLOYMENT).count(),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=1000)
    add_scratch_arguments(parser)
    args = parser.parse_args()

    with scratch_django(args.server, BENCH_DB, keep=args.keep):
        r = bench(args.deployments)
        n = args.deployments
        print(
            f"deployments tick, {n:,} running deployments (set up in {r['build_seconds']:.1f} s):"
        )
        print(
            f"  tick over {n:,}         {r['full_seconds']:6.3f} s  (median of {ROUNDS}: "
            f"{r['full_median']:.3f} s)  {r['full_queries']:3d} queries  "
            f"(each a new window: a health check and an observation per deployment)"
        )
        print(
            f"  baseline: tick over {BASELINE:<4d} {r['small_seconds']:6.3f} s  "
            f"{r['small_queries']:3d} queries  (the count does not grow)"
        )
        print(
            f"  same moment again      {r['repeat_seconds']:6.3f} s  {r['repeat_queries']:3d} "
            "queries  (idempotent: nothing new to store)"
        )
        print(
            f"  bare load of the rows  {r['load_seconds']:6.3f} s  {r['load_queries']:3d} "
            "queries  (each deployment with its running phase)"
        )
        print(
            f"  health pass alone      {r['health_seconds']:6.3f} s  {r['health_queries']:3d} "
            "queries  (health_evaluate_many over the same canaries, a fresh window)"
        )
        print(
            f"  every one advancing    {r['advance_seconds']:6.3f} s  "
            f"{r['advance_queries']:5d} queries  (every decision in one transaction: rows "
            "locked at once, writes in bulk)"
        )
        decided = r["decide_report"]
        small = r["decide_small_report"]
        print(
            f"  every one deciding     {r['decide_seconds']:6.3f} s  "
            f"{r['decide_queries']:5d} queries  ({decided['rolled_back']} rolled back, "
            f"{decided['succeeded']} succeeded, {decided['failed']} failed)"
        )
        print(
            f"  baseline: the same over {BASELINE}     {r['decide_small_queries']:5d} queries  "
            f"({small['rolled_back']} rolled back, {small['succeeded']} succeeded, "
            f"{small['failed']} failed)"
        )
        print(f"  deployments' news queued: {r['news']:,} (one e-mail per decision)")
        print(f"  steps of the fastest tick (s): {r['full_report']['timings']}")
        print(f"  steps of the advancing tick (s): {r['advance_report']['timings']}")
        print(f"  steps of the deciding tick (s): {decided['timings']}")
        print(
            f"  advancing: {r['advance_report']['advanced']} advanced, "
            f"errors {r['advance_report']['errors']}; deciding: errors {decided['errors']}"
        )
        goal = (
            "met"
            if r["full_seconds"] < 2 and r["full_queries"] == r["small_queries"]
            else "NOT met"
        )
        print(f"goal (under 2 s, queries that do not grow): {goal}")


if __name__ == "__main__":
    main()
