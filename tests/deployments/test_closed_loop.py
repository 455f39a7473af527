"""The closed loop with real processes: the routing proxy (``manage.py runproxy``) in front of two
real backends, a load generator, a Celery worker and beat running the deployments tick.

Traffic flows through the proxy, which records outcomes into the metric store; every tick the
worker evaluates the canary through the health app and moves the deployment on. Nothing here is
simulated: the clock is real, so phases are short (10 s, the proxy's bucket)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from deployments import services
from deployments.choices import DeploymentStatus, EventKind, PhaseStatus
from deployments.models import Deployment
from health import services as health_services
from routing import services as routing_services
from routing.models import RuleTarget, Service
from tests.conftest import celery_args, wait_for
from tests.deployments.conftest import CANARY, STABLE
from tests.deployments.live import FaultyBackend, PacedLoad, fault_backend_args
from tests.routing.conftest import Backend, Proxy, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

TICK_SECONDS = "1"


class Load:
    """A bounded load generator: a few concurrent clients sending GETs through the proxy until
    stopped (or for at most ``limit`` seconds), tallying who answered."""

    def __init__(self, url: str, *, concurrency: int = 4, pause: float = 0.02, limit: float = 150):
        self.url = url
        self.concurrency = concurrency
        self.pause = pause
        self.limit = limit
        self.answers: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        import aiohttp

        deadline = time.monotonic() + self.limit
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(
            timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:

            async def client() -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    try:
                        async with session.get(self.url + "/") as response:
                            await response.read()
                            version = response.headers.get("x-canary-version", "")
                            self.answers.append((time.monotonic(), response.status, version))
                    except (TimeoutError, aiohttp.ClientError):
                        self.answers.append((time.monotonic(), 0, ""))
                    await asyncio.sleep(self.pause)

            await asyncio.gather(*(client() for _ in range(self.concurrency)))

    def since(self, moment: float) -> Counter[tuple[int, str]]:
        return Counter((status, version) for at, status, version in self.answers if at >= moment)


@pytest.fixture
def loop_processes(spawn: Any, task_queue: str, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A worker and a beat that ticks the deployments every second, on a queue of their own."""
    env = {"CANARY_TASK_QUEUE": task_queue, "CANARY_TICK_SECONDS": TICK_SECONDS}
    worker = spawn(
        "worker",
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        **env,
    )
    beat = spawn(
        "beat", celery_args("beat", "-s", str(tmp_path / "schedule"), "--loglevel", "INFO"), **env
    )
    yield {"worker": worker, "beat": beat}


@pytest.fixture
def shop(start_backend: Any) -> tuple[Service, Backend, Backend]:
    stable, canary = start_backend(STABLE), start_backend(CANARY)
    service = routing_services.service_create(name="shop", stable_version=STABLE)
    routing_services.target_create(
        service=service, name="stable", endpoint=stable.url, version=STABLE
    )
    routing_services.target_create(
        service=service, name="canary", endpoint=canary.url, version=CANARY
    )
    return service, stable, canary


@pytest.fixture
def quick_policy(db: Any) -> Any:
    """Judge one 10-second window (the proxy's bucket) with a handful of requests."""
    return health_services.health_policy_create(
        name="closed-loop",
        alerting_enabled=False,
        policy={
            "window_seconds": 10,
            "min_requests": 5,
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": False},
            "comparison": {"enabled": False},
            "auto_rollback": {"enabled": False},
        },
    )


def config(*phases: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "shop 2.0 closed loop",
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "maxDeploymentTimeMs": 600_000,
        "phases": list(phases),
    }


def phase(share: float, *, duration_ms: int, hold_ms: int) -> dict[str, Any]:
    return {
        "trafficPercentage": share,
        "durationMs": duration_ms,
        "successCriteria": [
            {
                "metric": "availability",
                "operator": "greater_than",
                "threshold": 90,
                "durationMs": hold_ms,
            },
            {"metric": "error_rate", "operator": "less_than", "threshold": 5},
        ],
        "rollbackThresholds": {"errorRate": 10, "latencyP95": 2000},
    }


def current(deployment: Deployment) -> Deployment:
    return Deployment.objects.get(pk=deployment.pk)


def output(*processes: Any) -> str:
    return "\n".join(process.output()[-4000:] for process in processes)


def test_closed_loop__a_healthy_canary_waits_for_data__then_walks_its_phases_to_stable(
    shop, quick_policy, start_proxy, loop_processes
):
    service, _stable, _canary = shop
    proxy: Proxy = start_proxy("shop")
    deployment = services.deployment_create(
        config=config(
            phase(30, duration_ms=5_000, hold_ms=10_000),
            phase(100, duration_ms=5_000, hold_ms=0),
        ),
        health_policy=quick_policy,
    )
    services.deployment_transition(deployment_id=deployment.pk, action="start", source="api")

    # No traffic yet: the ticks judge the phase, its minimum passes, and it waits for data.
    def judged_without_data() -> bool:
        judgement = current(deployment).phases.get(order=1).judgement
        return (
            bool(judgement)
            and judgement["timeLeftMs"] == 0
            and all(item["state"] == "no_data" for item in judgement["criteria"])
        )

    assert wait_for(judged_without_data, timeout=60), output(*loop_processes.values())
    assert current(deployment).current_phase == 1

    with Load(proxy.url) as load:
        started = time.monotonic()
        done = wait_for(lambda: current(deployment).is_terminal, timeout=120, interval=0.5)
        assert done, output(*loop_processes.values(), proxy.process)
        during = load.since(started)

    deployment = current(deployment)
    assert deployment.status == DeploymentStatus.SUCCEEDED, list(
        deployment.events.values_list("kind", "reason")
    )
    assert [p.status for p in deployment.phases.all()] == [PhaseStatus.PASSED] * 2
    assert Service.objects.get(pk=service.pk).stable_version == CANARY
    # Both versions answered through the proxy while the phases ran, and nothing failed.
    assert during[(200, STABLE)] > 0 and during[(200, CANARY)] > 0
    assert sum(count for (status, _), count in during.items() if status != 200) == 0
    promote = deployment.events.get(kind=EventKind.PROMOTE)
    assert promote.source == "system"
    assert promote.evidence["judgement"]["outcome"] == "advance"
    assert promote.evidence["healthCheck"]["canary"]["availability"] == 100.0

    # The canary is the stable version now: the proxy sends everyone to it.
    def all_on_canary() -> bool:
        with Load(proxy.url, limit=2) as probe:
            time.sleep(1.5)
        answers = probe.since(0)
        return bool(answers) and set(answers) == {(200, CANARY)}

    assert wait_for(all_on_canary, timeout=20, interval=0.5)


def test_closed_loop__a_canary_that_starts_failing__is_rolled_back_and_leaves_the_proxy(
    shop, quick_policy, start_proxy, loop_processes
):
    _service, _stable, canary = shop
    proxy: Proxy = start_proxy("shop")
    deployment = services.deployment_create(
        config=config(
            phase(40, duration_ms=300_000, hold_ms=60_000),
            phase(100, duration_ms=60_000, hold_ms=0),
        ),
        health_policy=quick_policy,
    )
    services.deployment_transition(deployment_id=deployment.pk, action="start", source="api")

    with Load(proxy.url) as load:

        def canary_measured() -> bool:
            judgement = current(deployment).phases.get(order=1).judgement or {}
            latest = [item.get("latest") for item in judgement.get("criteria", [])]
            return any(item and item.get("value") == 100.0 for item in latest)

        assert wait_for(canary_measured, timeout=60), output(*loop_processes.values())
        canary.fail()  # from now on the canary answers 500
        failing_since = time.monotonic()

        rolled_back = wait_for(
            lambda: current(deployment).status == DeploymentStatus.ROLLED_BACK,
            timeout=60,
            interval=0.5,
        )
        assert rolled_back, output(*loop_processes.values(), proxy.process)
        assert load.since(failing_since)[(500, CANARY)] > 0

        # Its share returns to 0 in the proxy: a while later, no request reaches the canary.
        def canary_gone() -> float | None:
            moment = time.monotonic()
            time.sleep(2)
            answers = load.since(moment)
            return moment if answers and not any(v == CANARY for _s, v in answers) else None

        quiet_since = wait_for(canary_gone, timeout=20, interval=0.1)
        assert quiet_since, load.since(failing_since)
        time.sleep(2)
        after = load.since(quiet_since)

    assert set(after) == {(200, STABLE)}, after
    deployment = current(deployment)
    rule_weights = {
        item.target.name: float(item.weight)
        for item in RuleTarget.objects.filter(rule_id=deployment.routing_rule_id)
    }
    assert rule_weights == {"stable": 100.0, "canary": 0.0}
    rollback = deployment.events.get(kind=EventKind.ROLLBACK)
    assert rollback.source == "system"
    assert rollback.reason.startswith("Roll back: error_rate")
    breach = rollback.evidence["judgement"]["breaches"][0]
    assert breach["threshold"] == "errorRate" and breach["observed"] > 10
    assert deployment.events.filter(kind=EventKind.FINISH_ROLLBACK).count() == 1
    assert deployment.phases.get(order=1).status == PhaseStatus.ROLLED_BACK


# ---------------------------------------------------------------------------- the default policy


@pytest.fixture
def faulty_shop(spawn: Any) -> tuple[Service, FaultyBackend, FaultyBackend]:
    """Service "shop" on two fault-injecting backends answering in about 2 ms."""
    backends = []
    for version in (STABLE, CANARY):
        backend = FaultyBackend(version, free_port())
        backend.process = spawn(f"backend-{version}", fault_backend_args(backend.port, version))
        assert wait_for(backend.ready, timeout=20), backend.process.output()
        backends.append(backend)
    stable, canary = backends
    service = routing_services.service_create(name="shop", stable_version=STABLE)
    routing_services.target_create(
        service=service, name="stable", endpoint=stable.url, version=STABLE
    )
    routing_services.target_create(
        service=service, name="canary", endpoint=canary.url, version=CANARY
    )
    return service, stable, canary


def no_thresholds(*shares_and_durations: tuple[float, int]) -> dict[str, Any]:
    """The configuration a REST client sends with no thresholds and no criteria at all."""
    return config(
        *(
            {"trafficPercentage": share, "durationMs": duration}
            for share, duration in shares_and_durations
        )
    )


def own_requests(deployment: Deployment, order: int = 1) -> int:
    """The canary requests phase ``order`` has of its own, as the tick last judged it."""
    judgement = current(deployment).phases.get(order=order).judgement
    return ((judgement or {}).get("evidence") or {}).get("phase", {}).get("requests", 0)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        pytest.param({"error_rate": 0.05}, "error", id="5-percent-errors"),
        pytest.param({"delay_ms": 300}, "latency", id="150x-latency"),
    ],
)
def test_closed_loop__the_default_configuration__rolls_back_a_bad_canary(
    faulty_shop, start_proxy, loop_processes, fault, expected
):
    _service, _stable, canary = faulty_shop
    proxy: Proxy = start_proxy("shop")
    # No policy, no thresholds, no criteria: the deployments' default policy judges it.
    deployment = services.deployment_create(config=no_thresholds((10, 300_000), (100, 60_000)))
    services.deployment_transition(deployment_id=deployment.pk, action="start", source="api")

    with PacedLoad(proxy.url, rate=50) as load:
        # Healthy first, long enough for the phase to have traffic of its own.
        assert wait_for(lambda: own_requests(deployment) >= 50, timeout=90), output(
            *loop_processes.values(), proxy.process
        )
        canary.fault(**fault)
        faulty_since = time.monotonic()
        rolled_back = wait_for(
            lambda: current(deployment).status == DeploymentStatus.ROLLED_BACK,
            timeout=120,
            interval=0.5,
        )
        assert rolled_back, output(*loop_processes.values(), proxy.process)

        def canary_gone() -> float | None:
            moment = time.monotonic()
            time.sleep(2)
            answers = load.since(moment)
            return moment if answers and not any(v == CANARY for _s, v in answers) else None

        assert wait_for(canary_gone, timeout=20, interval=0.1)
        during = load.since(faulty_since)

    assert during[(200, CANARY)] + during[(500, CANARY)] > 0
    deployment = current(deployment)
    rollback = deployment.events.get(kind=EventKind.ROLLBACK)
    assert rollback.source == "system"
    assert rollback.reason.startswith("Roll back: the health policy 'deployments-default'")
    assert expected in rollback.reason.lower()
    assert rollback.evidence["healthCheck"]["shouldRollback"] is True
    assert deployment.phases.get(order=1).status == PhaseStatus.ROLLED_BACK
    assert deployment.events.filter(kind=EventKind.PROMOTE).count() == 0


def test_closed_loop__traffic_stopped_mid_phase__holds_the_phase(
    faulty_shop, start_proxy, loop_processes
):
    proxy: Proxy = start_proxy("shop")
    deployment = services.deployment_create(config=no_thresholds((10, 90_000), (100, 10_000)))
    services.deployment_transition(deployment_id=deployment.pk, action="start", source="api")

    with PacedLoad(proxy.url, rate=50) as load:
        assert wait_for(lambda: own_requests(deployment) >= 100, timeout=90), (
            current(deployment).phases.get(order=1).judgement,
            list(current(deployment).events.values_list("kind", "reason")),
        )
    assert load.since(0)[(200, CANARY)] > 0

    # The load has stopped: once the phase's minimum has passed, it still holds, and says why.
    def held_without_traffic() -> dict[str, Any] | None:
        judgement = current(deployment).phases.get(order=1).judgement or {}
        stopped = "the canary's traffic has stopped" in judgement.get("reason", "")
        return judgement if stopped and judgement.get("timeLeftMs") == 0 else None

    judgement = wait_for(held_without_traffic, timeout=150, interval=0.5)
    assert judgement, (
        current(deployment).phases.get(order=1).judgement,
        list(current(deployment).events.values_list("kind", "reason")),
    )
    deployment = current(deployment)
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
    assert judgement["outcome"] == "wait"
    assert not deployment.events.filter(kind=EventKind.PROMOTE).exists()
