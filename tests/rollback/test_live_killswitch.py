"""Kill switches against real processes: two gunicorn processes serving OFREP on ports of their
own and the routing proxy (``manage.py runproxy``) in front of fault-injecting backends
(``tests/deployments/fault_backend.py``), under a paced load, sharing this run's PostgreSQL and
Redis; for the automatic switches, a Celery worker and beat ticking every second.

The test process fires and recovers the switches as an engineer does, over REST through the
first gunicorn process (with the cache down, through the service, so that no process hears of
it but from the database). What a switch changed is read where it matters: each OFREP process
is asked for the flags directly, and each canary backend counts the requests it serves, so "the
proxy sends the canary nothing" is the canary's own count standing still while the load goes
on. Nothing is simulated: the clock is real."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from canary_site import services as site_services
from deployments import services as deployment_services
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from flags import services as flag_services
from flags.models import Flag
from rollback import services
from rollback.choices import ActivationState, SwitchState
from rollback.models import KillSwitch, KillSwitchActivation
from routing import services as routing_services
from routing.models import Service
from tests.conftest import ManagedProcess, wait_for
from tests.deployments.conftest import CANARY, STABLE
from tests.deployments.live import FaultyBackend, PacedLoad, fault_backend_args

# The closed loop's worker and beat (ticking every second) and the routing tests' proxy.
from tests.deployments.test_closed_loop import (  # noqa: F401
    faulty_shop,
    loop_processes,
    output,
)
from tests.flags.test_faults import Web, get_json, post_json
from tests.routing.conftest import Proxy, free_port, start_proxy  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

RATE = 40.0  # requests a second through the proxy, per service
USERS = [f"user-{index}" for index in range(6)]
# With the cache up, a change reaches a process within its check interval (0.2 s for the flags,
# 0.25 s for the proxy's routing version) plus one reload; this leaves room for a busy machine.
NOTICED = 10.0
# With the cache down only the database version tells them, read at most every 2 s
# (CANARY_FLAGS_DB_VERSION_SECONDS, CANARY_ROUTING_DB_VERSION_SECONDS: canary_site/versions.py),
# checked every 0.2 s (flags) or 0.25 s (proxy), plus one reload.
DATABASE_BOUND = 2.0 + 0.25
DATABASE_DEADLINE = DATABASE_BOUND + 2.0
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
NO_FOLLOW_UPS = {"CANARY_DEPLOYMENTS_ENQUEUE": "false", "CANARY_NOTIFY_ENQUEUE": "false"}


# ------------------------------------------------------------------------------- the world


@dataclass
class Routed:
    """A service on two fault-injecting backends, its canary at 50% (by a deployment, or by a
    rule where no deployment may run), and the load through the proxy."""

    service: Service
    stable: FaultyBackend
    canary: FaultyBackend
    deployment: Deployment | None = None
    load: PacedLoad | None = None


@dataclass
class World:
    routed: dict[str, Routed]
    proxy: Proxy
    webs: list[Web] = field(default_factory=list)
    key: str = ""  # an evaluation key's secret, for OFREP
    token: str = ""  # an engineer's API token
    person: Any = None
    others: list[ManagedProcess] = field(default_factory=list)  # the worker and beat, say

    def logs(self) -> str:
        return output(self.proxy.process, *(web.process for web in self.webs), *self.others)


# Flag key -> (kill_switch_enabled, the service whose deployment drives it, or None).
FLAGS: dict[str, tuple[bool, str | None]] = {
    "shop-checkout": (True, "shop"),
    "shop-banner": (False, "shop"),
    "pay-wallet": (True, "pay"),
    "dark-mode": (False, None),
    "search-v2": (True, None),
}


def start_backends(spawn: Callable[..., ManagedProcess], service: str) -> list[FaultyBackend]:
    backends = []
    for version in (STABLE, CANARY):
        backend = FaultyBackend(version, free_port())
        backend.process = spawn(
            f"backend-{service}-{version}", fault_backend_args(backend.port, version)
        )
        backends.append(backend)
    for backend in backends:
        assert wait_for(backend.ready, timeout=20), backend.process.output()
    return backends


def half_and_half(service: str) -> dict[str, Any]:
    """A deployment that holds its canary at 50% for longer than any test here."""
    return {
        "name": f"{service} {CANARY}",
        "serviceName": service,
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "maxDeploymentTimeMs": 600_000,
        "phases": [
            {"trafficPercentage": 50, "durationMs": 300_000},
            {"trafficPercentage": 100, "durationMs": 60_000},
        ],
    }


@pytest.fixture
def make_world(
    spawn: Callable[..., ManagedProcess],
    start_proxy: Callable[..., Proxy],  # noqa: F811 (the fixture)
    people: dict[str, Any],
) -> Iterator[Callable[..., World]]:
    """Services "shop" (the proxy's default) and "pay", each with a running canary at 50%,
    the flags of ``FLAGS``, two gunicorn processes serving OFREP and the proxy; the loads run
    until the test ends. ``redis_url`` is the cache the processes are given."""
    loads = ExitStack()

    def make(*, redis_url: str | None = None) -> World:
        cache_url = os.environ.get("REDIS_URL", "") if redis_url is None else redis_url
        # No worker reads their follow-up tasks (the pause's next tick): they enqueue none.
        webs = [Web(spawn, f"web-{number}", cache_url, **NO_FOLLOW_UPS) for number in (1, 2)]
        backends = {name: start_backends(spawn, name) for name in ("shop", "pay")}
        flags = {
            key: flag_services.flag_create(key=key, status="enabled", kill_switch_enabled=guarded)
            for key, (guarded, _) in FLAGS.items()
        }
        routed = {}
        for name, (stable, canary) in backends.items():
            service = routing_services.service_create(name=name, stable_version=STABLE)
            for role, backend in (("stable", stable), ("canary", canary)):
                routing_services.target_create(
                    service=service, name=role, endpoint=backend.url, version=backend.version
                )
            deployment = deployment_services.deployment_create(
                config=half_and_half(name),
                flags=[flags[key] for key, (_, owner) in FLAGS.items() if owner == name],
            )
            deployment_services.deployment_transition(
                deployment_id=deployment.pk, action="start", source="api"
            )
            routed[name] = Routed(service, stable, canary, Deployment.objects.get(pk=deployment.pk))
        env = {} if redis_url is None else {"REDIS_URL": redis_url}
        proxy = start_proxy("shop", **env)
        _key, secret = flag_services.evaluation_key_create(name="storefront")
        _token, token = site_services.api_token_create(user=people["erin"], name="ops")
        world = World(routed, proxy, webs, secret, token, people["erin"])
        for web in webs:
            up = wait_for(lambda web=web: get_json(f"{web.url}/healthz")[0] == 200, timeout=60)
            assert up, web.output()
        for name, item in routed.items():
            item.load = loads.enter_context(
                PacedLoad(proxy.url, rate=RATE, limit=120, headers={"X-Canary-Service": name})
            )
        return world

    with loads:
        yield make


# ------------------------------------------------------------------------------ pressing


class Presser:
    """Fires and recovers switches as the engineer of ``world`` does: over REST, with their API
    token, through the first gunicorn process (which serves OFREP too)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def _post(self, path: str, reason: str, expected: int) -> dict[str, Any]:
        status, body = post_json(
            f"{self.world.webs[0].url}/api/v1/kill-switches/{path}",
            {"reason": reason},
            {"Authorization": f"Bearer {self.world.token}"},
        )
        assert status == expected, (status, body, self.world.webs[0].output()[-3000:])
        return body

    def trigger(self, switch: KillSwitch, reason: str) -> KillSwitchActivation:
        body = self._post(f"{switch.pk}/trigger/", reason, 201)
        return KillSwitchActivation.objects.get(pk=body["id"])

    def kill_all(self, reason: str) -> KillSwitchActivation:
        body = self._post("kill-all/", reason, 201)
        return KillSwitchActivation.objects.get(pk=body["activation"]["id"])

    def recover(self, switch_id: int, reason: str) -> KillSwitchActivation:
        body = self._post(f"{switch_id}/recover/", reason, 200)
        return KillSwitchActivation.objects.get(pk=body["id"])


# --------------------------------------------------------------------------------- OFREP


def evaluate(web: Web, key: str, user: str, secret: str) -> dict[str, Any] | None:
    """``POST /ofrep/v1/evaluate/flags/<key>`` on one process; the body, or None on a failure."""
    status, body = post_json(
        f"{web.url}/ofrep/v1/evaluate/flags/{key}",
        {"context": {"targetingKey": user}},
        {"X-API-Key": secret},
    )
    return body if status == 200 else None


def served_flags(web: Web, secret: str) -> dict[tuple[str, str], tuple[Any, str, str]]:
    """What one process serves now, for every user and flag: (value, variant, reason), through
    the bulk endpoint."""
    found = {}
    for user in USERS:
        status, body = post_json(
            f"{web.url}/ofrep/v1/evaluate/flags",
            {"context": {"targetingKey": user}},
            {"X-API-Key": secret},
        )
        assert status == 200, (status, body)
        for item in body["flags"]:
            found[(user, item["key"])] = (item["value"], item["variant"], item["reason"])
    return found


KILLED = (False, "off", "DISABLED")


def expected_while_killed(
    before: dict[tuple[str, str], tuple[Any, str, str]], killed: set[str]
) -> dict[tuple[str, str], tuple[Any, str, str]]:
    return {(user, key): KILLED if key in killed else was for (user, key), was in before.items()}


def serves_killed(world: World, web: Web, killed: set[str]) -> bool:
    return all(
        (body := evaluate(web, key, USERS[0], world.key)) is not None
        and (body["value"], body["variant"], body["reason"]) == KILLED
        and body["metadata"]["status"] == "killed"
        for key in killed
    )


# --------------------------------------------------------------------------------- proxy


def canary_in_traffic(world: World, routed: Routed) -> None:
    assert routed.load is not None
    moment = time.monotonic()
    arrived = wait_for(lambda: routed.load.since(moment)[(200, CANARY)] >= 5, timeout=30)
    assert arrived, world.logs()


def canary_quiet(world: World, names: set[str]) -> None:
    """Wait until a whole second of the loads of ``names`` reaches no canary (the proxy has
    reloaded)."""

    def quiet() -> bool:
        moment = time.monotonic()
        time.sleep(1)
        answers = [world.routed[name].load.since(moment) for name in names]  # type: ignore[union-attr]
        return all(answers) and not any(v == CANARY for each in answers for _s, v in each)

    assert wait_for(quiet, timeout=NOTICED, interval=0.05), world.logs()


def canary_back(world: World, names: set[str]) -> None:
    """Wait until the loads of ``names`` reach their canaries again."""
    moment = time.monotonic()

    def back() -> bool:
        return all(
            world.routed[name].load.since(moment)[(200, CANARY)] > 0  # type: ignore[union-attr]
            for name in names
        )

    assert wait_for(back, timeout=NOTICED, interval=0.05), world.logs()


def assert_traffic(
    world: World, *, stopped: set[str] = frozenset(), sharing: set[str] = frozenset()
) -> None:
    """Over two seconds of the loads: the canaries of ``stopped`` serve nothing (their own
    counts stand still) and every answer is stable's; those of ``sharing`` get about their
    50%."""
    names = sorted({*stopped, *sharing})
    counts = {name: world.routed[name].canary.state()["served"] for name in names}
    moment = time.monotonic()
    time.sleep(2)
    for name in names:
        routed = world.routed[name]
        assert routed.load is not None
        served = routed.canary.state()["served"] - counts[name]
        answers = dict(routed.load.since(moment))
        total = sum(answers.values())
        assert total >= 1.5 * RATE, (name, answers)
        if name in stopped:
            assert served == 0, (name, served, answers)
            assert set(answers) == {(200, STABLE)}, (name, answers)
        else:
            assert served > 0, (name, answers)
            assert set(answers) <= {(200, STABLE), (200, CANARY)}, (name, answers)
            # 50% of at least 60 requests: outside a quarter either side by a 4-sigma fluke.
            assert 0.25 <= answers.get((200, CANARY), 0) / total <= 0.75, (name, answers)


def deployment_of(routed: Routed) -> Deployment:
    assert routed.deployment is not None
    return Deployment.objects.get(pk=routed.deployment.pk)


# ------------------------------------------------------------------------------ the scopes


@dataclass(frozen=True)
class Case:
    definition: dict[str, Any] | None  # None: kill-all
    killed: set[str]
    stopped: set[str]


CASES = {
    # The listed flags, enabled for kill switches or not; no canary stops.
    "flag": Case(
        {"name": "stop-flags", "scope": "flag", "flags": ["dark-mode", "shop-banner"]},
        killed={"dark-mode", "shop-banner"},
        stopped=set(),
    ),
    # The service's canary, and only those of its deployment's flags that allow it.
    "service": Case(
        {"name": "stop-shop", "scope": "service", "targetComponent": "shop"},
        killed={"shop-checkout"},
        stopped={"shop"},
    ),
    # Every canary, and every flag that allows it, linked to a deployment or not.
    "system": Case(
        None, killed={"shop-checkout", "pay-wallet", "search-v2"}, stopped={"shop", "pay"}
    ),
}


@pytest.mark.parametrize("scope", list(CASES))
def test_a_switch_of_each_scope__reaches_every_ofrep_process_and_the_proxy__recovery_restores_all(
    make_world, scope
):
    case = CASES[scope]
    world = make_world()
    presser = Presser(world)
    for routed in world.routed.values():
        canary_in_traffic(world, routed)
    before = [served_flags(web, world.key) for web in world.webs]
    assert before[0] == before[1]
    # The linked flags follow their canary's 50%: some users in, some out.
    linked = {before[0][(user, "shop-checkout")][0] for user in USERS}
    assert linked == {True, False}, before[0]

    if case.definition is None:
        activation = presser.kill_all("checkout errors everywhere")
    else:
        switch = services.kill_switch_create(definition=case.definition, actor=world.person)
        activation = presser.trigger(switch, "checkout errors")

    for web in world.webs:
        assert wait_for(lambda web=web: serves_killed(world, web, case.killed), timeout=NOTICED), (
            web.output()
        )
        # Only those flags: every other one serves exactly what it served before.
        assert served_flags(web, world.key) == expected_while_killed(before[0], case.killed)
    sharing = set(world.routed) - case.stopped
    if case.stopped:
        canary_quiet(world, case.stopped)
    assert_traffic(world, stopped=case.stopped, sharing=sharing)
    for name, routed in world.routed.items():
        paused = name in case.stopped
        assert deployment_of(routed).status == ("paused" if paused else "running"), name
    recorded = {item["key"]: item["previous"] for item in activation.changes["flags"]}
    assert recorded == dict.fromkeys(case.killed, "enabled")
    assert set(Flag.objects.filter(status="killed").values_list("key", flat=True)) == case.killed

    recovered = presser.recover(activation.switch_id, "the fix is out")

    assert recovered.state == ActivationState.RECOVERED
    for web in world.webs:
        back = wait_for(lambda web=web: served_flags(web, world.key) == before[0], timeout=NOTICED)
        assert back, (served_flags(web, world.key), web.output())
    canary_back(world, case.stopped)
    assert_traffic(world, sharing=set(world.routed))
    for routed in world.routed.values():
        deployment = deployment_of(routed)
        assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
        assert deployment.canary_share == 50
    assert not Service.objects.filter(halted_since__isnull=False).exists()
    assert KillSwitch.objects.get(pk=activation.switch_id).state == SwitchState.READY
    assert KillSwitchActivation.objects.count() == 1


# ----------------------------------------------------------------------------- Redis down


def within(deadline: float, predicate: Callable[[], Any]) -> Any:
    """``predicate`` polled every 50 ms until the monotonic moment ``deadline``."""
    return wait_for(predicate, timeout=max(0.0, deadline - time.monotonic()), interval=0.05)


def assert_proxy_noticed_by(world: World, routed: Routed, deadline: float) -> None:
    """No request the load sent from ``deadline`` on reached the canary (looked at a second
    after it, long enough for the requests sent by then to be answered)."""
    assert routed.load is not None
    time.sleep(max(0.0, deadline + 1 - time.monotonic()))
    last = routed.load.last_sent_to(CANARY)
    assert last is not None and last.sent < deadline, (
        None if last is None else last.sent - deadline,
        world.logs(),
    )


def test_redis_down__every_ofrep_process_and_the_proxy_hear_of_a_switch_from_the_database(
    make_world,
):
    # The processes are given a cache nothing listens on; this process keeps the shared one,
    # so its announcements of the changes reach none of them.
    world = make_world(redis_url=UNREACHABLE_REDIS)
    shop = world.routed["shop"]
    canary_in_traffic(world, shop)
    before = served_flags(world.webs[0], world.key)
    switch = services.kill_switch_create(
        definition={"name": "stop-shop", "scope": "service", "targetComponent": "shop"},
        actor=world.person,
    )

    # Through the service in this process, which commits to the shared database and announces
    # the change in its cache.
    services.kill_switch_trigger(
        switch=switch, reason="checkout errors", actor=world.person, source="api"
    )
    triggered = time.monotonic()
    deadline = triggered + DATABASE_DEADLINE

    noticed = []
    for web in world.webs:
        served = within(deadline, lambda web=web: serves_killed(world, web, {"shop-checkout"}))
        assert served, web.output()
        noticed.append(time.monotonic() - triggered)
    assert_proxy_noticed_by(world, shop, deadline)
    last = shop.load.last_sent_to(CANARY)  # type: ignore[union-attr]
    assert last is not None
    noticed.append(last.sent - triggered)
    assert_traffic(world, stopped={"shop"}, sharing={"pay"})

    services.kill_switch_recover(
        switch_id=switch.pk, reason="the fix is out", actor=world.person, source="api"
    )
    recovered = time.monotonic()
    deadline = recovered + DATABASE_DEADLINE

    for web in world.webs:
        back = within(deadline, lambda web=web: served_flags(web, world.key) == before)
        assert back, web.output()
    assert shop.load is not None
    back = within(deadline, lambda: shop.load.since(recovered)[(200, CANARY)])
    assert back, world.logs()
    assert_traffic(world, sharing={"shop", "pay"})
    for web in world.webs:
        log = web.output()
        assert log.count("The cache (for the flags version) is unreachable") == 1, log
        assert "Traceback" not in log, log
    assert "The cache (for the routing version) is unreachable" in world.proxy.process.output()
    # Reported, not asserted: the house allows no timed assertions beyond the deadline.
    print(
        "\nwith the cache unreachable, the kill was served by the OFREP processes "
        f"{noticed[0] * 1000:.0f} and {noticed[1] * 1000:.0f} ms after the trigger, and the "
        f"proxy sent the canary its last request {noticed[2] * 1000:.0f} ms after it"
    )


# ------------------------------------------------------------------- conditions on the beat

GRACE_MS = 2_000
DELAY_MS = 2_000


@dataclass
class Seen:
    """One state of a switch's row, as this process read it (the moments are the worker's)."""

    state: str
    armed_since: datetime | None
    condition_cleared_at: datetime | None


@dataclass
class SwitchLog:
    """Every state of a switch's row seen by polling it every 50 ms."""

    switch: KillSwitch
    seen: list[Seen] = field(default_factory=list)

    def poll(self) -> Seen:
        row = KillSwitch.objects.get(pk=self.switch.pk)
        now = Seen(row.state, row.armed_since, row.condition_cleared_at)
        if not self.seen or now != self.seen[-1]:
            self.seen.append(now)
        return now

    def until(self, predicate: Callable[[Seen], bool], logs: Callable[[], str]) -> Seen:
        found = wait_for(
            lambda: (seen := self.poll()) and predicate(seen) and seen, timeout=30, interval=0.05
        )
        assert found, (self.seen, logs())
        return found


def activations_of(switch: KillSwitch) -> list[KillSwitchActivation]:
    return list(KillSwitchActivation.objects.filter(switch=switch).order_by("pk"))


def test_a_condition_on_the_beat__arms_fires_after_its_grace_period_and_recovers_once_only(
    faulty_shop,  # noqa: F811 (the fixture)
    start_proxy,  # noqa: F811 (the fixture)
    loop_processes,  # noqa: F811 (the fixture)
):
    service, stable, canary = faulty_shop
    # No deployment: the deployments tick would roll a failing canary back on its own.
    routing_services.rule_create(
        service=service, name="split", targets={"stable": 50, "canary": 50}
    )
    proxy = start_proxy("shop")
    switch = services.kill_switch_create(
        definition={
            "name": "shop-errors",
            "scope": "service",
            "targetComponent": "shop",
            "triggerConditions": [
                {
                    "type": "error_rate_threshold",
                    "component": "shop",
                    "threshold": 20,
                    "windowMs": 5_000,
                    "minRequests": 20,
                }
            ],
            "gracePeriodMs": GRACE_MS,
            "autoRecovery": {"enabled": True, "delayMs": DELAY_MS, "maxAttempts": 1},
        }
    )
    log = SwitchLog(switch)
    routed = Routed(service, stable, canary)
    world = World({"shop": routed}, proxy, others=list(loop_processes.values()))
    logs = world.logs

    def fires() -> KillSwitchActivation:
        arming = log.until(lambda seen: seen.state == SwitchState.ARMING, logs)
        assert arming.armed_since is not None
        assert not KillSwitchActivation.objects.filter(switch=switch, state="active").exists()
        log.until(lambda seen: seen.state == SwitchState.ACTIVE, logs)
        activation = activations_of(switch)[-1]
        armed = datetime.fromisoformat(activation.evidence["armedSince"])
        assert armed == arming.armed_since
        # Not before its grace period: the condition held that long first.
        assert activation.activated_at - armed >= timedelta(milliseconds=GRACE_MS)
        assert (activation.trigger, activation.source) == ("condition", "system")
        assert f"grace period {GRACE_MS // 1000} s" in activation.reason
        return activation

    with PacedLoad(proxy.url, rate=50) as load:
        routed.load = load
        canary_in_traffic(world, routed)
        assert log.poll().state == SwitchState.READY
        canary.fault(error_rate=1.0)

        first = fires()
        canary_quiet(world, {"shop"})
        assert_traffic(world, stopped={"shop"})
        canary.recover()
        cleared = log.until(lambda seen: seen.condition_cleared_at is not None, logs)
        log.until(lambda seen: seen.state == SwitchState.READY, logs)
        first.refresh_from_db()
        assert first.state == ActivationState.RECOVERED
        assert first.recovered_at - cleared.condition_cleared_at >= timedelta(milliseconds=DELAY_MS)
        assert first.recovery_attempt == 1
        assert first.recovery.startswith("Recovered automatically: the condition has been clear")
        canary_back(world, {"shop"})
        assert_traffic(world, sharing={"shop"})

        # It fires again; its one automatic attempt is used: it stays active and says so.
        canary.fault(error_rate=1.0)
        second = fires()
        log.until(lambda seen: seen.condition_cleared_at is not None, logs)
        exhausted = wait_for(
            lambda: (
                "used its 1 attempts" in KillSwitchActivation.objects.get(pk=second.pk).recovery
            ),
            timeout=30,
        )
        assert exhausted, logs()
        assert_traffic(world, stopped={"shop"})

    assert [(a.pk, a.state) for a in activations_of(switch)] == [
        (first.pk, "recovered"),
        (second.pk, "active"),
    ]
    assert KillSwitch.objects.get(pk=switch.pk).state == SwitchState.ACTIVE
    assert Service.objects.get(pk=service.pk).halted_since is not None
    states = [seen.state for seen in log.seen]
    changes = [state for index, state in enumerate(states) if states[index - 1 : index] != [state]]
    assert changes == ["ready", "arming", "active", "ready", "arming", "active"], log.seen


# ------------------------------------------------------------- a worker killed mid-activation

HOLD_BEFORE_COMMIT = """
import os, time
from unittest import mock
from rollback import services
from rollback.models import KillSwitch, KillSwitchActivation

create = KillSwitchActivation.objects.create

def create_and_hold(**fields):
    # Everything of the activation is written by now; its transaction is still open.
    activation = create(**fields)
    print("holding activation", activation.pk, flush=True)
    time.sleep(300)
    return activation

with mock.patch.object(KillSwitchActivation.objects, "create", create_and_hold):
    switch = KillSwitch.objects.get(pk=int(os.environ["KILL_SWITCH"]))
    services.kill_switch_trigger(switch=switch, reason="held", source="api")
"""


def switch_row_locked(switch: KillSwitch) -> bool:
    from django.db import OperationalError, transaction

    try:
        with transaction.atomic():
            KillSwitch.objects.select_for_update(nowait=True).get(pk=switch.pk)
    except OperationalError:
        return True
    return False


def test_a_process_killed_mid_activation__leaves_nothing_changed__and_a_second_trigger_works(
    make_world, spawn
):
    world = make_world()
    shop = world.routed["shop"]
    for routed in world.routed.values():
        canary_in_traffic(world, routed)
    before = served_flags(world.webs[0], world.key)
    switch = services.kill_switch_create(
        definition={"name": "stop-shop", "scope": "service", "targetComponent": "shop"},
        actor=world.person,
    )
    worker = spawn(
        "trigger",
        [sys.executable, "manage.py", "shell", "-c", HOLD_BEFORE_COMMIT],
        KILL_SWITCH=str(switch.pk),
    )
    held = wait_for(
        lambda: "holding activation" in worker.output() or worker.proc.poll() is not None,
        timeout=60,
    )
    assert held and worker.proc.poll() is None, worker.output()
    # Mid-activation: its transaction holds the switch's row, and nothing is visible outside.
    assert switch_row_locked(switch)
    assert not KillSwitchActivation.objects.exists()
    assert served_flags(world.webs[1], world.key) == before

    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(timeout=10)

    # PostgreSQL rolls the dead connection's transaction back and lets its locks go.
    assert wait_for(lambda: not switch_row_locked(switch), timeout=30)
    assert not KillSwitchActivation.objects.exists()
    assert KillSwitch.objects.get(pk=switch.pk).state == SwitchState.READY
    assert not Flag.objects.filter(status="killed").exists()
    assert Service.objects.get(pk=shop.service.pk).halted_since is None
    assert deployment_of(shop).status == DeploymentStatus.RUNNING
    # And every process serves as before: the flags, and the canary its share.
    for web in world.webs:
        assert served_flags(web, world.key) == before
    assert_traffic(world, sharing={"shop", "pay"})

    activation = Presser(world).trigger(switch, "checkout errors")

    assert KillSwitchActivation.objects.get() == activation
    assert activation.changes["services"] == [shop.service.pk]
    for web in world.webs:
        assert wait_for(
            lambda web=web: serves_killed(world, web, {"shop-checkout"}), timeout=NOTICED
        )
    canary_quiet(world, {"shop"})
    assert_traffic(world, stopped={"shop"}, sharing={"pay"})
    assert deployment_of(shop).status == DeploymentStatus.PAUSED
