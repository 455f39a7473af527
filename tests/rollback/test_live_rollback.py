"""Rollback plans run by real processes: the routing proxy (``manage.py runproxy``) in front of two
fault-injecting backends (``tests/deployments/fault_backend.py``), a paced load through it, and a
Celery worker and beat ticking every second on a queue of the test's own.

The test process creates the plans and asks for the rollbacks through the services, as the API
would; the worker runs the executions; what reaches the canary is counted by the canary backend
itself and by the load, which reads the proxy's ``X-Canary-Version`` on every answer. Nothing is
simulated: the clock is real, so paces and keep-warm times are a few seconds."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.cache import cache

from canary_site.exceptions import TransitionNotAllowed
from canary_site.gates import ApprovalRequired
from deployments import services as deployment_services
from deployments.choices import DeploymentStatus, EventKind
from deployments.models import Deployment
from health.models import Alert
from rollback import services
from rollback.choices import ExecutionState, StepState
from rollback.models import RollbackExecution, RollbackPlan, RollbackStep
from routing.models import RuleTarget, Target
from routing.selectors import IN_FLIGHT_KEY
from tests.conftest import ManagedProcess, celery_args, wait_for
from tests.deployments.conftest import CANARY, STABLE
from tests.deployments.live import Answer, FaultyBackend, PacedLoad

# The closed loop's backends on service "shop" and the routing tests' proxy, as fixtures here.
from tests.deployments.test_closed_loop import (  # noqa: F401
    current,
    faulty_shop,
    no_thresholds,
    output,
)
from tests.routing.conftest import Proxy, start_proxy  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

TICK_SECONDS = "1"
# A worker that dies while it holds an execution lets it go after this (30 s by default).
LEASE_SECONDS = "5"
RATE = 50.0
# The moments an execution records are those of the tick (or the request) that moved traffic,
# taken before its transaction committed, and the proxy reads the routing version every
# 0.25 s: from this long after them, the proxy routes by the weights they wrote.
PROXY_SETTLE = 3.0


@dataclass
class Loop:
    """The worker and the beat; the worker can be killed and another started in its place."""

    spawn: Callable[..., ManagedProcess]
    env: dict[str, str]
    schedule: str
    workers: list[ManagedProcess] = field(default_factory=list)
    beat: ManagedProcess | None = None

    @property
    def worker(self) -> ManagedProcess:
        return self.workers[-1]

    def start_worker(self) -> ManagedProcess:
        queue = self.env["CANARY_TASK_QUEUE"]
        worker = self.spawn(
            f"worker-{len(self.workers) + 1}",
            celery_args("worker", "-Q", queue, "--pool", "solo", "--loglevel", "INFO"),
            **self.env,
        )
        self.workers.append(worker)
        return worker

    def wait_ready(self) -> None:
        worker = self.worker
        assert wait_for(lambda: " ready." in worker.output(), timeout=60), worker.output()

    def kill_worker(self) -> None:
        """SIGKILL: the worker gets no chance to finish a task or give anything back."""
        self.worker.proc.kill()
        self.worker.proc.wait(timeout=10)


@dataclass
class Live:
    stable: FaultyBackend
    canary: FaultyBackend
    proxy: Proxy
    loop: Loop

    def logs(self) -> str:
        processes = [*self.loop.workers, self.loop.beat, self.proxy.process]
        return output(*(process for process in processes if process is not None))


@pytest.fixture
def lease_seconds() -> str:
    """The workers' lease on an execution (a test may parametrize it)."""
    return LEASE_SECONDS


@pytest.fixture
def loop(spawn: Any, task_queue: str, tmp_path: Any, lease_seconds: str) -> Iterator[Loop]:
    env = {
        "CANARY_TASK_QUEUE": task_queue,
        "CANARY_TICK_SECONDS": TICK_SECONDS,
        "CANARY_ROLLBACK_LEASE_SECONDS": lease_seconds,
    }
    loop = Loop(spawn, env, str(tmp_path / "schedule"))
    loop.start_worker()
    loop.beat = spawn("beat", celery_args("beat", "-s", loop.schedule, "--loglevel", "INFO"), **env)
    yield loop


@pytest.fixture
def live(faulty_shop: Any, loop: Loop, start_proxy: Any) -> Live:  # noqa: F811 (the fixtures)
    # A proxy of an earlier test that did not withdraw its report would count as one that has
    # not loaded a drain yet.
    cache.delete(IN_FLIGHT_KEY)
    _service, stable, canary = faulty_shop
    proxy = start_proxy("shop")
    loop.wait_ready()  # it has been starting meanwhile
    return Live(stable, canary, proxy, loop)


# ------------------------------------------------------------------------------------ helpers


def make_plan(name: str, **definition: Any) -> RollbackPlan:
    """A plan that is service shop's default."""
    return services.rollback_plan_create(
        definition={"name": name, "service": "shop", "isDefault": True, **definition}
    )


def deploy(share: float) -> Deployment:
    """A running deployment of shop with the canary at ``share``, judged by the default policy."""
    deployment = deployment_services.deployment_create(
        config=no_thresholds((share, 300_000), (100, 60_000))
    )
    deployment_services.deployment_transition(
        deployment_id=deployment.pk, action="start", source="api"
    )
    return current(deployment)


def canary_in_traffic(live: Live, load: PacedLoad) -> None:
    moment = time.monotonic()
    assert wait_for(lambda: load.since(moment)[(200, CANARY)] >= 5, timeout=30), live.logs()


def reread(execution: RollbackExecution) -> RollbackExecution:
    return RollbackExecution.objects.get(pk=execution.pk)


def ended(execution: RollbackExecution, live: Live, *, timeout: float = 40) -> RollbackExecution:
    def done() -> RollbackExecution | None:
        found = reread(execution)
        return found if found.ended else None

    found = wait_for(done, timeout=timeout)
    assert found is not None, (
        reread(execution).state,
        list(RollbackStep.objects.filter(execution_id=execution.pk).values("key", "state")),
        live.logs(),
    )
    return found


def assert_out_of_the_proxy(live: Live, load: PacedLoad, execution: RollbackExecution) -> None:
    """From ``PROXY_SETTLE`` after the execution's end (and its moment out of traffic), the
    canary backend receives nothing while the load goes on: its own count stands still and
    every answer through the proxy is stable's. A failure shows how long after the moment out
    of traffic the canary received its last request."""
    assert execution.finished_at is not None and execution.out_of_traffic_at is not None
    out = max(execution.finished_at, execution.out_of_traffic_at).timestamp()
    time.sleep(max(0.0, out + PROXY_SETTLE - time.time()))
    before = live.canary.state()
    moment = time.monotonic()
    time.sleep(2)
    after = live.canary.state()
    answers = load.since(moment)
    lag = (before["last_served_at"] or out) - execution.out_of_traffic_at.timestamp()
    assert after["served"] == before["served"], (before, after, f"last request {lag:.2f} s after")
    assert sum(answers.values()) >= RATE, answers
    assert set(answers) == {(200, STABLE)}, answers
    deployment = Deployment.objects.get(pk=execution.deployment_id)
    assert deployment.canary_share == 0
    weights = {
        item.target.name: float(item.weight)
        for item in RuleTarget.objects.filter(rule_id=deployment.routing_rule_id)
    }
    assert weights == {"stable": 100.0, "canary": 0.0}


def canary_share(answers: Sequence[Answer], start: float, end: float) -> tuple[float, int]:
    """The share of the requests sent between ``start`` and ``end`` (epoch seconds) that the
    proxy sent to the canary, and how many were sent."""
    window = [a for a in answers if start <= a.wall < end]
    to_canary = sum(1 for a in window if a.version == CANARY)
    return (to_canary / len(window) if window else 0.0), len(window)


def failed_requests(load: PacedLoad) -> int:
    return sum(count for (status, _), count in load.since(0).items() if status != 200)


def hooked(receiver: Any, secret: str = "") -> dict[str, Any]:
    """A ``call_webhook`` action (id ``hook``) to the test's receiver."""
    config = {"url": receiver.url, **({"secret": secret} if secret else {})}
    return {"id": "hook", "type": "call_webhook", "config": config}


def steps_of(execution: RollbackExecution) -> list[RollbackStep]:
    return list(execution.steps.order_by("position"))


def assert_failed_loudly(execution: RollbackExecution, why: str) -> None:
    """A failed rollback: the deployment failed with the canary out, and a critical alert."""
    assert execution.state == ExecutionState.FAILED, execution.outcome
    assert why in execution.outcome
    deployment = Deployment.objects.get(pk=execution.deployment_id)
    assert deployment.status == DeploymentStatus.FAILED
    assert deployment.canary_share == 0
    alert = Alert.objects.get(service="shop", canary_version=CANARY)
    assert alert.severity == "critical"
    assert alert.title == f"Rollback #{execution.pk} of shop failed"
    assert why in alert.message


# ------------------------------------------------------------------------- a person's rollback

STRATEGIES = {
    "immediate": {"strategy": "immediate"},
    "gradual": {"strategy": "gradual", "strategyConfig": {"durationMs": 4_000, "steps": 2}},
    "blue_green": {
        "strategy": "blue_green",
        "strategyConfig": {"keepWarmMs": 1_500},
        "validation": {"enabled": True, "healthCheckPath": "/health"},
    },
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_persons_rollback_under_load__succeeds_with_the_canary_out_of_the_proxy(
    live, people, strategy
):
    make_plan(f"shop {strategy}", **STRATEGIES[strategy])
    deployment = deploy(60)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        loaded = time.time()
        time.sleep(3)  # a window of the canary's share before the rollback
        asked = time.time()
        execution = services.rollback_request(
            deployment_id=deployment.pk,
            reason="Checkout errors reported by support.",
            actor=people["erin"],
            source="api",
        )
        execution = ended(execution, live)
        assert_out_of_the_proxy(live, load, execution)
        answers = list(load.answers)

    assert execution.state == ExecutionState.SUCCEEDED, execution.outcome
    assert (execution.strategy, execution.trigger) == (strategy, "manual")
    assert execution.requested_by == people["erin"]
    assert execution.out_of_traffic_at is not None
    steps = steps_of(execution)
    assert {step.state for step in steps} == {StepState.SUCCEEDED}
    deployment = current(deployment)
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert deployment.events.filter(kind=EventKind.ROLLBACK).count() == 1
    assert failed_requests(load) == 0

    if strategy == "gradual":
        half, stop = steps
        assert (half.type, half.config, stop.type) == (
            "set_share",
            {"share": "30"},
            "stop_new_traffic",
        )
        shares = list(
            deployment.events.filter(kind=EventKind.STEP_ROLLBACK)
            .order_by("at")
            .values_list("canary_share", flat=True)
        )
        assert [float(share) for share in shares] == [30.0, 0.0]
        # The share the canary really got through the proxy, before, between and after the
        # steps (each window opening once the proxy has read the new weights).
        half_done, stop_done = half.finished_at.timestamp(), stop.finished_at.timestamp()
        windows = [
            canary_share(answers, loaded, asked),
            canary_share(answers, half_done + 0.5, stop.started_at.timestamp()),
            canary_share(answers, stop_done + PROXY_SETTLE, time.time()),
        ]
        assert all(count >= RATE for _share, count in windows), windows
        observed = [share for share, _count in windows]
        assert observed[0] > observed[1] > observed[2] == 0.0, windows
    elif strategy == "blue_green":
        assert [step.key for step in steps] == [
            "validate-stable-first",
            "stop-new-traffic",
            "keep-warm",
            "release-targets",
            "validate",
        ]
        first, stop = steps[0], steps[1]
        assert first.output["passed"] is True
        assert first.output["criteria"][0]["detail"] == f"GET {live.stable.url}/health answered 200"
        # Stable was checked before a single request moved to it.
        assert stop.started_at >= first.finished_at
        assert (steps[2].finished_at - steps[2].started_at) >= timedelta(milliseconds=1_500)
        assert execution.validation["passed"] is True


def test_a_drain_waits_for_the_slow_request_in_flight__then_finishes(live, people):
    make_plan(
        "shop drained",
        actions=[
            {"id": "stop", "type": "stop_new_traffic"},
            {"id": "drain", "type": "drain_connections", "timeoutMs": 10_000},
        ],
    )
    deployment = deploy(50)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        # The next request the canary gets takes 4 s; the rollback begins while it is in flight.
        live.canary.slow_next(delay_ms=4_000)
        assert wait_for(lambda: live.canary.state()["slow"], timeout=10), live.canary.state()
        execution = services.rollback_request(
            deployment_id=deployment.pk,
            reason="Slow checkout.",
            actor=people["erin"],
            source="api",
        )
        seen: list[tuple[str, dict[str, Any]]] = []

        def drained() -> bool:
            step = RollbackStep.objects.get(execution_id=execution.pk, key="drain")
            seen.append((step.state, dict(step.output or {})))
            return reread(execution).ended

        assert wait_for(drained, timeout=30, interval=0.1), (seen, live.logs())
        execution = reread(execution)
        assert_out_of_the_proxy(live, load, execution)

    (slow,) = live.canary.state()["slow"]
    drain = execution.steps.get(key="drain")
    assert execution.state == ExecutionState.SUCCEEDED, execution.outcome
    assert drain.state == StepState.SUCCEEDED and not drain.timed_out, drain.output
    # It waited for the slow request, which had the time to finish (answered 200 through the
    # proxy, like every other request).
    assert slow["end"] is not None
    assert drain.finished_at.timestamp() >= slow["end"], (drain.finished_at, slow)
    assert any(state == StepState.RUNNING and out.get("inFlight") == 1 for state, out in seen), seen
    assert drain.output["inFlight"] == 0 and drain.output["target"] == "canary"
    assert failed_requests(load) == 0
    # The rollback's end puts the target back in rotation for the next deployment.
    assert Target.objects.get(name="canary").draining_since is None


def test_a_worker_killed_mid_rollback__another_resumes_it__the_webhook_called_once(
    live, people, receiver
):
    secret = "rollback-hook-secret"
    make_plan(
        "shop hooked",
        strategy="blue_green",
        strategyConfig={"keepWarmMs": 8_000},
        actions=[{"id": "stop", "type": "stop_new_traffic"}, hooked(receiver, secret)],
    )
    deployment = deploy(30)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        execution = services.rollback_request(
            deployment_id=deployment.pk,
            reason="Errors after the release.",
            actor=people["erin"],
            source="api",
        )

        def warming() -> RollbackStep | None:
            step = RollbackStep.objects.get(execution_id=execution.pk, key="keep-warm")
            return step if step.state == StepState.RUNNING else None

        assert wait_for(warming, timeout=30), live.logs()
        hook = RollbackStep.objects.get(execution_id=execution.pk, key="hook")
        assert hook.state == StepState.SUCCEEDED and len(receiver.accepted) == 1

        live.loop.kill_worker()
        killed_at = time.time()
        assert live.loop.worker.proc.returncode == -9
        assert not reread(execution).ended
        live.loop.start_worker()
        live.loop.wait_ready()
        execution = ended(execution, live)
        assert_out_of_the_proxy(live, load, execution)

    assert execution.state == ExecutionState.SUCCEEDED, execution.outcome
    assert execution.finished_at.timestamp() > killed_at
    # One call, signed with the plan's secret, with the key a retry would carry too.
    assert receiver.attempts == 1 and len(receiver.accepted) == 1
    delivery = receiver.accepted[0]
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert headers["idempotency-key"] == f"rollback-{execution.pk}-hook"
    signature = "sha256=" + hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-canary-signature"], signature)
    assert "x-canary-dry-run" not in headers
    payload = json.loads(delivery.body)
    assert (payload["execution"], payload["step"], payload["trigger"]) == (
        execution.pk,
        "hook",
        "manual",
    )
    steps = {step.key: step for step in steps_of(execution)}
    assert {step.state for step in steps.values()} == {StepState.SUCCEEDED}
    assert steps["hook"].finished_at == hook.finished_at
    # Nothing ran twice. The keep-warm step is looked at once more when its time is up, by the
    # new worker: that look is counted as an attempt too.
    assert {key: step.attempts for key, step in steps.items() if key != "keep-warm"} == {
        "validate-stable-first": 1,
        "stop": 1,
        "hook": 1,
        "release-targets": 1,
    }
    assert steps["keep-warm"].finished_at.timestamp() > killed_at
    assert current(deployment).status == DeploymentStatus.ROLLED_BACK


@pytest.mark.parametrize("lease_seconds", ["12"], ids=["lease-12s"])
def test_a_worker_killed_inside_a_step__its_lease_runs_out__another_worker_runs_the_step_again(
    live, people, receiver, lease_seconds
):
    make_plan(
        "shop validated slowly",
        actions=[{"id": "stop", "type": "stop_new_traffic"}, hooked(receiver)],
        validation={
            "enabled": True,
            "healthCheckPath": "/validate",
            "validationTimeoutMs": 20_000,
        },
    )
    deployment = deploy(30)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        # Stable's first answer to the validation takes 10 s: the worker sits inside the step.
        live.stable.slow_next(delay_ms=10_000, path="/validate")
        execution = services.rollback_request(
            deployment_id=deployment.pk, reason="Errors.", actor=people["erin"], source="api"
        )
        assert wait_for(lambda: live.stable.state()["slow"], timeout=30), live.logs()
        held = reread(execution)
        assert held.state == ExecutionState.VALIDATING and held.lease_until is not None
        live.loop.kill_worker()
        live.loop.start_worker()
        execution = ended(execution, live, timeout=60)
        assert_out_of_the_proxy(live, load, execution)

    assert execution.state == ExecutionState.SUCCEEDED, execution.outcome
    stop, hook, validate = steps_of(execution)
    # The validation the dead worker was running is run again, once its lease had run out;
    # the webhook that had finished before is not called again.
    assert (stop.attempts, hook.attempts, validate.attempts) == (1, 1, 2)
    assert datetime.fromisoformat(execution.validation["at"]) >= held.lease_until
    assert execution.validation["passed"] is True
    assert receiver.attempts == 1 and len(receiver.accepted) == 1


# ------------------------------------------------------------------------ approval, cooldown


def test_an_approval_gated_rollback__paused_at_its_share_until_approved__runs_once(live, people):
    make_plan("shop gated", safety={"requireApproval": True, "approvers": ["ann", "bob"]})
    deployment = deploy(30)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        with pytest.raises(ApprovalRequired) as held:
            services.rollback_request(
                deployment_id=deployment.pk,
                reason="Latency up since the release.",
                actor=people["erin"],
                source="api",
            )
        assert held.value.status_code == 202
        paused = current(deployment)
        assert (paused.status, float(paused.canary_share)) == (DeploymentStatus.PAUSED, 30.0)
        waiting = RollbackExecution.objects.get(deployment=deployment)
        assert waiting.state == ExecutionState.AWAITING_APPROVAL

        # While the approvers decide, the proxy still splits at 30%.
        start = time.time()
        time.sleep(4)
        share, count = canary_share(list(load.answers), start, time.time())
        assert count >= 3 * RATE and 0.15 < share < 0.45, (share, count)
        assert reread(waiting).state == ExecutionState.AWAITING_APPROVAL

        services.approval_request_approve(
            request_id=held.value.request_id, actor=people["ann"], source="api"
        )
        execution = ended(waiting, live)
        assert_out_of_the_proxy(live, load, execution)

    assert execution.state == ExecutionState.SUCCEEDED, execution.outcome
    assert (
        execution.requested_by == people["erin"] and execution.approval_id == held.value.request_id
    )
    with pytest.raises(TransitionNotAllowed) as again:
        services.approval_request_approve(
            request_id=held.value.request_id, actor=people["bob"], source="api"
        )
    assert again.value.status_code == 409
    assert RollbackExecution.objects.filter(deployment=deployment).count() == 1
    deployment = current(deployment)
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert deployment.events.filter(kind=EventKind.ROLLBACK).count() == 1


def test_within_the_cooldown__a_second_persons_rollback_is_refused__a_breach_still_rolls_back(
    live, people
):
    make_plan(
        "shop once",
        safety={"allowConsecutiveRollbacks": False, "cooldownPeriodMs": 600_000},
    )
    first = deploy(20)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        execution = services.rollback_request(
            deployment_id=first.pk, reason="Bad release.", actor=people["erin"], source="api"
        )
        assert ended(execution, live).state == ExecutionState.SUCCEEDED

        second = deploy(20)
        canary_in_traffic(live, load)
        with pytest.raises(TransitionNotAllowed) as refused:
            services.rollback_request(
                deployment_id=second.pk, reason="Again?", actor=people["ada"], source="api"
            )
        assert (refused.value.status_code, refused.value.code) == (409, "cooldown")
        assert "plan 'shop once' allows the next rollback in 9 min" in refused.value.message
        assert current(second).status == DeploymentStatus.RUNNING

        # A breach is never refused: the built-in plan takes the canary out at once.
        live.canary.fault(error_rate=1.0)
        rolled_back = wait_for(
            lambda: current(second).status == DeploymentStatus.ROLLED_BACK, timeout=60
        )
        assert rolled_back, live.logs()
        automatic = RollbackExecution.objects.get(deployment=second)
        assert_out_of_the_proxy(live, load, automatic)

    assert automatic.trigger == "automatic" and automatic.state == ExecutionState.SUCCEEDED
    assert automatic.plan is None and automatic.plan_name == "built-in immediate"
    assert "Plan 'shop once' is cooling down for 9 min" in automatic.outcome
    assert automatic.outcome.endswith("the built-in plan took the canary out at once.")
    assert automatic.out_of_traffic_at == current(second).events.get(kind=EventKind.ROLLBACK).at
    assert RollbackExecution.objects.count() == 2


# ------------------------------------------------------------------------------- failing loudly


def test_a_rollback_past_its_maximum_time__fails_loudly_with_the_canary_out(live, people):
    # A pace of 15 s between the two steps, and 5 s allowed for the whole rollback.
    make_plan(
        "shop too slow",
        strategy="gradual",
        strategyConfig={"durationMs": 30_000, "steps": 2},
        safety={"maxRollbackTimeMs": 5_000},
    )
    deployment = deploy(40)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        execution = services.rollback_request(
            deployment_id=deployment.pk, reason="Errors.", actor=people["erin"], source="api"
        )
        execution = ended(execution, live)
        assert_out_of_the_proxy(live, load, execution)

    assert_failed_loudly(execution, "Past the maximum rollback time of 5 s.")
    half, stop = steps_of(execution)
    assert (half.state, stop.state) == (StepState.SUCCEEDED, StepState.SKIPPED)
    # It failed at its deadline, not when the pace next woke it: the canary was not left at
    # 20% until then.
    assert execution.finished_at < half.finished_at + timedelta(seconds=15), (
        execution.deadline_at,
        execution.finished_at,
        half.finished_at,
    )


def test_validation_onto_an_unhealthy_stable__fails_the_rollback_loudly(live, people):
    make_plan(
        "shop validated",
        validation={
            "enabled": True,
            "healthCheckPath": "/health",
            "successCriteria": [{"type": "health_check", "required": True}],
            "retryAttempts": 1,
            "retryDelayMs": 500,
        },
    )
    deployment = deploy(30)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        live.stable.answer_health(500)
        execution = services.rollback_request(
            deployment_id=deployment.pk, reason="Errors.", actor=people["erin"], source="api"
        )
        execution = ended(execution, live)
        assert_out_of_the_proxy(live, load, execution)

    assert_failed_loudly(execution, "Stable did not validate")
    stop, validate = steps_of(execution)
    assert (stop.state, validate.state) == (StepState.SUCCEEDED, StepState.FAILED)
    assert validate.attempts == 2
    assert execution.validation["passed"] is False
    assert execution.validation["criteria"][0]["detail"] == (
        f"GET {live.stable.url}/health answered 500"
    )


# ------------------------------------------------------------------------------ the automatic


def test_a_breach_under_the_default_policy__the_services_immediate_plan__out_within_the_tick(
    live,
):
    plan = make_plan("shop at once", strategy="immediate")
    deployment = deploy(10)
    with PacedLoad(live.proxy.url, rate=RATE) as load:
        canary_in_traffic(live, load)
        live.canary.fault(error_rate=1.0)
        rolled_back = wait_for(
            lambda: current(deployment).status == DeploymentStatus.ROLLED_BACK, timeout=60
        )
        assert rolled_back, live.logs()
        execution = ended(RollbackExecution.objects.get(deployment=deployment), live)
        assert_out_of_the_proxy(live, load, execution)

    assert execution.state == ExecutionState.SUCCEEDED, execution.outcome
    assert execution.trigger == "automatic" and execution.plan == plan
    rollback = current(deployment).events.get(kind=EventKind.ROLLBACK)
    assert rollback.source == "system"
    assert rollback.reason.startswith("Roll back: the health policy 'deployments-default'")
    # The tick that saw the breach took the canary out in the transaction that began the
    # rollback; the worker finished the rest of the plan afterwards.
    assert execution.out_of_traffic_at == rollback.at
    (stop,) = steps_of(execution)
    assert (stop.type, stop.attempts, stop.finished_at) == ("stop_new_traffic", 1, rollback.at)
