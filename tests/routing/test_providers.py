"""Traffic providers: a service's weights reach the data plane it names, with real HAProxy and
real nginx processes in front of two real backends, driven by the deployments' transitions and
the tick; drift is repaired, a failed ``nginx -t`` keeps the old file and weights, an
unreachable data plane is retried and alerted on, and the data planes' counters feed the
health judge as the built-in proxy's do."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from django.utils.html import escape

from canary_site.celery import app as celery_app
from deployments import services as deployment_services
from deployments.choices import DeploymentStatus
from deployments.models import Deployment
from health import conf as health_conf
from health.models import Alert, MetricBucket
from routing import services
from routing.choices import ProviderSyncAction
from routing.models import ProviderState, ProviderSync, Service
from routing.providers import sync
from routing.providers.base import plain_split
from routing.providers.haproxy import RuntimeApi, haproxy_config, servers_state
from routing.snapshot import service_snapshot
from tests.conftest import ManagedProcess, wait_for
from tests.deployments.conftest import Clock, make_config, phase
from tests.deployments.live import FaultyBackend, fault_backend_args
from tests.routing.conftest import CANARY, STABLE, fetch_many, free_port, http_get

pytestmark = pytest.mark.django_db

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
frontend fe_shop
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


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="canary-dp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loop(settings: Any) -> Iterator[None]:
    """The after-commit ``providers_apply`` runs in this process (Celery eager), as a worker
    would run it; the deployments' own follow-ups stay off, the tick is called by the test."""
    settings.CANARY_DEPLOYMENTS_ENQUEUE = False
    settings.CANARY_NOTIFY_ENQUEUE = False
    settings.CANARY_PROVIDERS_ENQUEUE = True
    settings.CANARY_DEPLOYMENT_PHASE_MIN_REQUESTS = 20
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = eager


@pytest.fixture
def start_faulty(spawn: Callable[..., ManagedProcess]) -> Callable[[str], FaultyBackend]:
    def start(version: str) -> FaultyBackend:
        backend = FaultyBackend(version, free_port())
        backend.process = spawn(f"backend-{version}", fault_backend_args(backend.port, version))
        assert wait_for(backend.ready, timeout=20), backend.process.output()
        return backend

    return start


@pytest.fixture
def backends(start_faulty: Callable[[str], FaultyBackend]) -> tuple[FaultyBackend, FaultyBackend]:
    return start_faulty(STABLE), start_faulty(CANARY)


@pytest.fixture
def policy(db: Any) -> Any:
    """Judge a 10-second window with a handful of requests, nothing else."""
    from health import services as health_services

    return health_services.health_policy_create(
        name="providers",
        alerting_enabled=False,
        policy={
            "window_seconds": 10,
            "min_requests": 10,
            "trend": {"enabled": False},
            "sample_ratio": {"enabled": False},
            "comparison": {"enabled": False},
            "auto_rollback": {"enabled": False},
        },
    )


def shop(backends: tuple[FaultyBackend, FaultyBackend], **provider: Any) -> Service:
    stable, canary = backends
    service = services.service_create(name="shop", stable_version=STABLE, **provider)
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    services.target_create(service=service, name="canary", endpoint=canary.url, version=CANARY)
    return Service.objects.get(pk=service.pk)


def served(backends: tuple[FaultyBackend, FaultyBackend]) -> tuple[int, int]:
    stable, canary = backends
    return stable.state()["served"], canary.state()["served"]


def canary_share(url: str, backends: tuple[FaultyBackend, FaultyBackend], count: int) -> float:
    """Send ``count`` requests through ``url``; the share the canary's backend counted."""
    before = served(backends)
    answers = fetch_many(url, [{}] * count, concurrency=8)
    assert len(answers) == count
    after = served(backends)
    stable, canary = after[0] - before[0], after[1] - before[1]
    assert stable + canary == count
    return canary / count


def start_deployment(clock: Clock, policy: Any, share: float = 10) -> Deployment:
    deployment = deployment_services.deployment_create(
        config=make_config(phases=[phase(share), phase(50), phase(100)]), health_policy=policy
    )
    deployment_services.deployment_transition(
        deployment_id=deployment.pk, action="start", source="api", now=clock.now
    )
    return deployment


def latest_sync(service: Service) -> ProviderSync:
    return ProviderSync.objects.filter(service=service).order_by("-id").first()


# ---------------------------------------------------------------------------------------------
# Settings, checked with their field paths


@pytest.mark.parametrize(
    ("provider", "config", "field"),
    [
        ("haproxy", {"backend": "be_shop"}, "provider_config.runtimeApi"),
        ("haproxy", {"runtimeApi": "sock", "backend": "be_shop"}, "provider_config.runtimeApi"),
        ("haproxy", {"runtimeApi": "unix:/run/a.sock"}, "provider_config.backend"),
        (
            "haproxy",
            {"runtimeApi": "127.0.0.1:9999", "backend": "be shop"},
            "provider_config.backend",
        ),
        (
            "haproxy",
            {"runtimeApi": "127.0.0.1:9999", "backend": "be", "extra": 1},
            "provider_config.extra",
        ),
        (
            "nginx",
            {"reloadCommand": ["nginx"], "testCommand": ["nginx"]},
            "provider_config.configPath",
        ),
        (
            "nginx",
            {
                "configPath": "/tmp/elsewhere.conf",
                "reloadCommand": ["nginx", "-s", "reload"],
                "testCommand": ["nginx", "-t"],
            },
            "provider_config.configPath",
        ),
        (
            "nginx",
            {
                "configPath": "/etc/nginx/conf.d/shop.conf",
                "reloadCommand": ["sh", "-c", "reboot"],
                "testCommand": ["nginx", "-t"],
            },
            "provider_config.reloadCommand[0]",
        ),
        (
            "nginx",
            {
                "configPath": "/etc/nginx/conf.d/shop.conf",
                "reloadCommand": ["nginx", "-s", "reload"],
                "testCommand": ["nginx", "-t", "-g", "load_module /tmp/x.so;"],
            },
            "provider_config.testCommand[2]",
        ),
        (
            "nginx",
            {
                "configPath": "/etc/nginx/conf.d/shop.conf",
                "reloadCommand": ["nginx", "-s", "reload"],
                "testCommand": ["nginx", "-t", "-c", "/tmp/mine.conf"],
            },
            "provider_config.testCommand[3]",
        ),
        ("builtin", {"runtimeApi": "127.0.0.1:1"}, "provider_config"),
        ("envoy", {}, "provider"),
    ],
)
def test_service_provider__bad_settings__are_refused_naming_the_field(
    api_client, engineer, provider, config, field
):
    api_client.force_authenticate(engineer)
    response = api_client.post(
        "/api/v1/routing/services/",
        {"name": "shop", "stable_version": STABLE, "provider": provider, "provider_config": config},
        format="json",
    )

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not Service.objects.exists()


def test_service_provider__is_set_and_shown_over_rest__and_a_new_provider_starts_from_no_settings(
    api_client, engineer
):
    api_client.force_authenticate(engineer)
    config = {"runtimeApi": "unix:/run/haproxy/admin.sock", "backend": "be_shop"}
    response = api_client.post(
        "/api/v1/routing/services/",
        {
            "name": "shop",
            "stable_version": STABLE,
            "provider": "haproxy",
            "provider_config": config,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["provider"] == "haproxy"
    assert response.json()["provider_config"] == config

    response = api_client.patch(
        "/api/v1/routing/services/shop/", {"provider": "nginx"}, format="json"
    )
    assert response.status_code == 400
    assert "provider_config.configPath" in response.json()["error"]["fields"]

    response = api_client.patch(
        "/api/v1/routing/services/shop/", {"provider": "builtin"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["provider_config"] == {}


# ---------------------------------------------------------------------------------------------
# The split a weight-only data plane carries


def test_plain_split__is_the_first_rule_without_conditions__or_the_stable_default_route():
    service = services.service_create(name="shop", stable_version=STABLE)
    for name, version in (("stable-a", STABLE), ("stable-b", STABLE), ("canary", CANARY)):
        services.target_create(
            service=service, name=name, endpoint=f"http://127.0.0.1:1{len(name)}", version=version
        )
    split = plain_split(service_snapshot(name="shop"))
    assert split.percents() == {"canary": 0.0, "stable-a": 50.0, "stable-b": 50.0}

    services.rule_create(
        service=service,
        name="beta",
        priority=1,
        conditions=[{"source": "header", "name": "x-beta", "operator": "equals", "values": ["1"]}],
        targets={"canary": 100},
    )
    rule = services.rule_create(
        service=service, name="split", targets={"stable-a": 45, "stable-b": 45, "canary": 10}
    )
    split = plain_split(service_snapshot(name="shop"))
    assert split.source == f"rule {rule.pk} 'split'"
    assert split.percents() == {"canary": 10.0, "stable-a": 45.0, "stable-b": 45.0}

    # An unhealthy target's share goes to the others of the split, as in the engine.
    canary = service.targets.get(name="canary")
    services.target_set_health(target=canary, healthy=False)
    assert plain_split(service_snapshot(name="shop")).percents()["canary"] == 0.0

    services.services_halt(services=[service], holder="switch", reason="stop")
    split = plain_split(service_snapshot(name="shop"))
    assert "halted" in split.source
    assert split.percents() == {"canary": 0.0, "stable-a": 50.0, "stable-b": 50.0}


# ---------------------------------------------------------------------------------------------
# The generated HAProxy configuration


def test_haproxy_config__of_a_service__passes_haproxy_c(tmp_path):
    service = services.service_create(name="checkout", stable_version="1.4.0")
    services.target_create(
        service=service, name="stable-1", endpoint="http://127.0.0.1:9001", version="1.4.0"
    )
    services.target_create(
        service=service, name="canary-1", endpoint="https://10.0.0.9:8443", version="1.5.0"
    )
    services.rule_create(service=service, targets={"stable-1": 87.5, "canary-1": 12.5})
    text = haproxy_config(service_snapshot(name="checkout"), server_prefix="cnry-")
    main = tmp_path / "main.cfg"
    main.write_text(
        HAPROXY_MAIN.format(dir=tmp_path, port=free_port()).replace("be_shop", "be_checkout")
    )
    (tmp_path / "backend.cfg").write_text(text)

    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(main), "-f", str(tmp_path / "backend.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stdout + result.stderr + text
    assert "server cnry-canary-1 10.0.0.9:8443 weight 32 ssl verify required" in text
    assert "server cnry-stable-1 127.0.0.1:9001 weight 224" in text


# ---------------------------------------------------------------------------------------------
# The after-commit hook


def test_a_routing_change__enqueues_providers_apply_after_commit__only_for_external_data_planes(
    monkeypatch, settings, django_capture_on_commit_callbacks
):
    settings.CANARY_PROVIDERS_ENQUEUE = True
    sent: list[list[int]] = []
    from routing import tasks

    monkeypatch.setattr(tasks.providers_apply, "delay", lambda **kwargs: sent.append(kwargs))
    builtin = services.service_create(name="plain", stable_version=STABLE)
    external = services.service_create(
        name="shop",
        stable_version=STABLE,
        provider="haproxy",
        provider_config={"runtimeApi": "127.0.0.1:1", "backend": "be_shop"},
    )

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.services_halt(services=[builtin, external], holder="switch", reason="stop")
        assert sent == []  # nothing before the commit
    assert callbacks
    assert sent == [{"service_ids": [external.pk]}]

    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.service_update(service=builtin, description="no data plane to tell")
    assert sent == []


# ---------------------------------------------------------------------------------------------
# A data plane that cannot be reached


def test_an_unreachable_haproxy__fails_clearly__backs_off__alerts_after_five__and_recovers(
    settings, short_dir
):
    settings.CANARY_PROVIDERS_ENQUEUE = False
    settings.CANARY_PROVIDER_RETRY_SECONDS = 5
    socket_path = short_dir / "admin.sock"
    service = services.service_create(
        name="shop",
        stable_version=STABLE,
        provider="haproxy",
        provider_config={"runtimeApi": f"unix:{socket_path}", "backend": "be_shop"},
    )
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    now = timezone.now()

    report = sync.providers_sync(now=now)
    assert report.failed == ["shop"]
    failure = latest_sync(service)
    assert not failure.ok and failure.action == ProviderSyncAction.APPLY
    assert f"HAProxy's Runtime API at unix:{socket_path} cannot be reached" in failure.detail
    assert "1 in a row; tried again in 5 s" in failure.detail
    state = ProviderState.objects.get(service=service)
    assert state.retry_at == now + timedelta(seconds=5)

    # Within the wait nothing is tried; after it, again, each wait twice the last.
    assert sync.providers_sync(now=now + timedelta(seconds=2)).skipped == ["shop"]
    moment = now
    for count, wait in ((2, 10), (3, 20), (4, 40)):
        moment = ProviderState.objects.get(service=service).retry_at
        sync.providers_sync(now=moment)
        assert f"{count} in a row; tried again in {wait} s" in latest_sync(service).detail
    assert not Alert.objects.exists()
    sync.providers_sync(now=ProviderState.objects.get(service=service).retry_at)
    alert = Alert.objects.get()
    assert (alert.service, alert.canary_version, alert.severity, alert.status) == (
        "shop",
        sync.ALERT_VERSION,
        "critical",
        "open",
    )
    assert "cannot be reached" in alert.message
    # A sixth failure raises no second alert.
    sync.providers_sync(now=ProviderState.objects.get(service=service).retry_at)
    assert Alert.objects.count() == 1 and Alert.objects.get().check_count == 1
    state = ProviderState.objects.get(service=service)
    assert state.alerted and state.consecutive_failures == 6

    # HAProxy comes up: the next try applies, the alert is resolved, the count starts over.
    (short_dir / "haproxy.cfg").write_text(
        HAPROXY_MAIN.format(dir=short_dir, port=free_port())
        + haproxy_config(service_snapshot(name="shop"))
    )
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(short_dir / "haproxy.cfg")])
    try:
        assert wait_for(socket_path.exists, timeout=10)
        report = sync.providers_sync(now=ProviderState.objects.get(service=service).retry_at)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert report.applied == ["shop"], latest_sync(service).detail
    assert latest_sync(service).ok
    assert Alert.objects.get().status == "resolved"
    state = ProviderState.objects.get(service=service)
    assert (state.consecutive_failures, state.retry_at, state.alerted) == (0, None, False)


# ---------------------------------------------------------------------------------------------
# HAProxy, live


@pytest.fixture
def start_haproxy(
    spawn: Callable[..., ManagedProcess], short_dir: Path
) -> Callable[[Service], tuple[str, RuntimeApi]]:
    """A real HAProxy: its Runtime API on a unix socket in a temporary directory, a frontend
    on a free port, and the backend Canary generates for the service (``haproxy -c`` first)."""

    def start(service: Service, *, backend_text: str | None = None) -> tuple[str, RuntimeApi]:
        port = free_port()
        main = short_dir / "haproxy.cfg"
        main.write_text(HAPROXY_MAIN.format(dir=short_dir, port=port))
        backend = short_dir / "backend.cfg"
        backend.write_text(backend_text or haproxy_config(service_snapshot(name=service.name)))
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(main), "-f", str(backend)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        process = spawn("haproxy", [HAPROXY, "-db", "-f", str(main), "-f", str(backend)])
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: http_get(f"{url}/", timeout=1), timeout=20), process.output()
        return url, RuntimeApi(f"unix:{short_dir / 'admin.sock'}")

    return start


def haproxy_settings(short_dir: Path) -> dict[str, Any]:
    return {
        "provider": "haproxy",
        "provider_config": {"runtimeApi": f"unix:{short_dir / 'admin.sock'}", "backend": "be_shop"},
    }


@pytest.mark.processes
def test_haproxy__phases_move_its_share__a_breach_rolls_back_to_zero__drift_is_repaired(
    loop, backends, policy, short_dir, start_haproxy, django_capture_on_commit_callbacks
):
    service = shop(backends, **haproxy_settings(short_dir))
    url, api = start_haproxy(service)
    assert canary_share(url, backends, 200) == 0  # the generated backend: stable only
    clock = Clock()

    # Each phase's weights reach HAProxy after the transition commits, with no reload.
    with django_capture_on_commit_callbacks(execute=True):
        deployment = start_deployment(clock, policy)
    weights = {name: state.weight for name, state in servers_state(api, "be_shop").items()}
    assert weights == {"stable": 230, "canary": 26}
    assert 0.07 <= canary_share(url, backends, 600) <= 0.13
    applied = latest_sync(service)
    assert applied.ok and applied.action == ProviderSyncAction.APPLY
    assert applied.weights == {"canary": 10.0, "stable": 90.0}
    assert applied.routing_version == Service.objects.get(pk=service.pk).routing_version

    with django_capture_on_commit_callbacks(execute=True):
        deployment_services.deployment_transition(
            deployment_id=deployment.pk,
            action="promote",
            source="api",
            reason="by hand",
            now=clock.advance(1),
        )
    assert 0.45 <= canary_share(url, backends, 600) <= 0.55

    # Someone sets a weight behind Canary's back; the next sync finds it and repairs it.
    assert api.command("set server be_shop/canary weight 256").strip() == ""
    assert canary_share(url, backends, 300) > 0.6
    report = sync.providers_sync(now=clock.advance(5))
    assert report.repaired == ["shop"]
    repair = latest_sync(service)
    assert repair.drift and repair.action == ProviderSyncAction.REPAIR and repair.ok
    assert "canary has weight 256, Canary set 128" in repair.detail
    assert repair.observed == {"canary": 66.67, "stable": 33.33}
    assert 0.45 <= canary_share(url, backends, 600) <= 0.55
    # A quiet tick records nothing.
    count = ProviderSync.objects.count()
    assert sync.providers_sync(now=clock.advance(5)).repaired == []
    assert ProviderSync.objects.count() == count

    # The canary starts failing: HAProxy's counters reach the metric store through the sync,
    # the tick judges the breach and rolls back, and HAProxy's canary weight goes to 0.
    _stable, canary = backends
    canary.fault(error_rate=1.0)
    faulty_since = clock.advance(20)  # in a bucket of its own
    for _ in range(3):
        fetch_many(url, [{}] * 100, concurrency=8)
        assert sync.providers_sync(now=clock.advance(5)).requests > 0
    faulty = MetricBucket.objects.filter(
        service="shop",
        version=CANARY,
        resolution=health_conf.bucket_seconds(),
        start__gte=faulty_since - timedelta(seconds=5),
    )
    assert sum(bucket.errors for bucket in faulty) >= 100
    assert sum(bucket.errors for bucket in faulty) == sum(bucket.requests for bucket in faulty)
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(6):
            deployment_services.deployments_tick(now=clock.advance(5))
            if Deployment.objects.get(pk=deployment.pk).status != DeploymentStatus.RUNNING:
                break
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK, list(
        deployment.events.values_list("kind", "reason")
    )
    assert servers_state(api, "be_shop")["canary"].weight == 0
    assert canary_share(url, backends, 300) == 0


@pytest.mark.processes
def test_haproxy__a_canary_target_without_a_server__is_added_at_run_time(
    loop, backends, short_dir, start_haproxy, django_capture_on_commit_callbacks
):
    stable, _canary = backends
    service = services.service_create(
        name="shop", stable_version=STABLE, **haproxy_settings(short_dir)
    )
    services.target_create(service=service, name="stable", endpoint=stable.url, version=STABLE)
    url, api = start_haproxy(service)
    assert set(servers_state(api, "be_shop")) == {"stable"}

    with django_capture_on_commit_callbacks(execute=True):
        services.target_create(
            service=service, name="canary", endpoint=backends[1].url, version=CANARY
        )
        services.rule_create(service=service, targets={"stable": 70, "canary": 30})

    state = servers_state(api, "be_shop")
    assert state["canary"].weight == 77 and state["canary"].serving_weight == 77
    assert "added canary" in " ".join(ProviderSync.objects.values_list("detail", flat=True))
    assert 0.25 <= canary_share(url, backends, 600) <= 0.35

    # The canary target moves (here onto the stable backend): its server follows.
    with django_capture_on_commit_callbacks(execute=True):
        services.target_update(target=service.targets.get(name="canary"), endpoint=stable.url)
    assert servers_state(api, "be_shop")["canary"].port == stable.port
    assert latest_sync(service).ok and "canary moved to" in latest_sync(service).detail
    assert canary_share(url, backends, 100) == 0


# ---------------------------------------------------------------------------------------------
# nginx, live


class Nginx:
    """A real nginx run as this user with a prefix of its own: the main file includes
    ``conf.d/*.conf``, where the provider writes the service's file."""

    def __init__(self, directory: Path, spawn: Callable[..., ManagedProcess]) -> None:
        self.dir = directory
        self.port = free_port()
        self.main = directory / "nginx.conf"
        self.config_path = directory / "conf.d" / "canary-shop.conf"
        self.access_log = directory / "logs" / "canary-shop.log"
        (directory / "conf.d").mkdir()
        (directory / "logs").mkdir()
        self.main.write_text(NGINX_MAIN.format(dir=directory))
        self.base = [
            NGINX,
            "-p",
            str(directory),
            "-c",
            str(self.main),
            "-e",
            str(directory / "error.log"),
        ]
        self.process = spawn("nginx", [*self.base, "-g", "daemon off;"])
        assert wait_for(lambda: (directory / "nginx.pid").exists(), timeout=20), self.output()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        error_log = self.dir / "error.log"
        return self.process.output() + (error_log.read_text() if error_log.exists() else "")

    def settings(self, *, test_command: list[str] | None = None) -> dict[str, Any]:
        return {
            "provider": "nginx",
            "provider_config": {
                "configPath": str(self.config_path),
                "testCommand": test_command or [*self.base, "-t", "-q"],
                "reloadCommand": [*self.base, "-s", "reload"],
                "accessLog": str(self.access_log),
                "listen": f"127.0.0.1:{self.port}",
            },
        }

    def workers(self) -> set[int]:
        """The pids of the master's workers that take new connections."""
        master = int((self.dir / "nginx.pid").read_text())
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master and "worker process" in command and "shutting down" not in command:
                found.add(int(entry.name))
        return found

    def wait_reloaded(self, before: set[int]) -> None:
        """Until the workers that took new connections before are gone: the new file serves."""
        assert wait_for(lambda: self.workers() and not self.workers() & before, timeout=20), (
            self.output()
        )

    def reload_by_hand(self) -> None:
        before = self.workers()
        subprocess.run([*self.base, "-s", "reload"], check=True, timeout=30)
        self.wait_reloaded(before)


@pytest.fixture
def nginx(settings: Any, short_dir: Path, spawn: Callable[..., ManagedProcess]) -> Nginx:
    settings.CANARY_NGINX_DIRS = str(short_dir)
    settings.CANARY_NGINX_COMMANDS = [NGINX]
    return Nginx(short_dir, spawn)


def applied(nginx: Nginx, action: Callable[[], Any]) -> Any:
    """Run ``action`` (a routing change, its after-commit apply included) and wait until
    nginx serves with the reloaded file."""
    before = nginx.workers()
    result = action()
    nginx.wait_reloaded(before)
    return result


@pytest.mark.processes
def test_nginx__phases_move_its_share__drift_is_repaired__a_breach_rolls_back_to_zero(
    loop, backends, policy, nginx, django_capture_on_commit_callbacks
):
    service = shop(backends, **nginx.settings())
    applied(nginx, lambda: sync.providers_apply(service_ids=[service.pk]))
    assert canary_share(nginx.url, backends, 200) == 0
    clock = Clock()

    def transition(**kwargs: Any) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return deployment_services.deployment_transition(source="api", **kwargs)

    deployment = deployment_services.deployment_create(
        config=make_config(phases=[phase(10), phase(50), phase(100)]), health_policy=policy
    )
    applied(nginx, lambda: transition(deployment_id=deployment.pk, action="start", now=clock.now))
    assert 0.06 <= canary_share(nginx.url, backends, 1000) <= 0.14
    written = latest_sync(service)
    assert written.ok and written.weights == {"canary": 10.0, "stable": 90.0}
    assert "the test passed and nginx reloaded" in written.detail
    assert "split_clients" in nginx.config_path.read_text()

    applied(
        nginx,
        lambda: transition(
            deployment_id=deployment.pk, action="promote", reason="by hand", now=clock.advance(1)
        ),
    )
    assert 0.42 <= canary_share(nginx.url, backends, 1000) <= 0.58

    # The file is edited behind Canary's back and nginx reloaded: the sync puts it right.
    text = nginx.config_path.read_text()
    assert "50.00% canary_shop_u" in text
    nginx.config_path.write_text(text.replace("50.00% canary_shop_u", "90.00% canary_shop_u"))
    nginx.reload_by_hand()
    assert canary_share(nginx.url, backends, 500) > 0.75
    report = applied(nginx, lambda: sync.providers_sync(now=clock.advance(5)))
    assert report.repaired == ["shop"]
    repair = latest_sync(service)
    assert repair.drift and repair.ok
    assert "differs from what Canary set" in repair.detail and "90.00%" in repair.detail
    assert repair.observed == {"canary": 90.0, "stable": 10.0}
    assert nginx.config_path.read_text() == text
    assert 0.42 <= canary_share(nginx.url, backends, 1000) <= 0.58

    # The canary fails: nginx's access log feeds the metric store, the tick rolls it back and
    # the reload takes the canary out of nginx's traffic.
    _stable, canary = backends
    assert sync.providers_sync(now=clock.advance(5)).requests >= 1000  # the healthy traffic
    canary.fault(error_rate=1.0)
    faulty_since = clock.advance(20)
    for _ in range(3):
        fetch_many(nginx.url, [{}] * 60, concurrency=6)
        assert sync.providers_sync(now=clock.advance(5)).requests >= 60
    faulty = MetricBucket.objects.filter(
        service="shop",
        version=CANARY,
        resolution=health_conf.bucket_seconds(),
        start__gte=faulty_since - timedelta(seconds=5),
    )
    assert sum(bucket.errors for bucket in faulty) >= 50
    assert sum(bucket.errors for bucket in faulty) == sum(bucket.requests for bucket in faulty)

    def ticks() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            for _ in range(6):
                deployment_services.deployments_tick(now=clock.advance(5))
                if Deployment.objects.get(pk=deployment.pk).status != DeploymentStatus.RUNNING:
                    break

    applied(nginx, ticks)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    assert canary_share(nginx.url, backends, 300) == 0


@pytest.mark.processes
def test_nginx__a_reload_whose_test_fails__keeps_the_old_file_and_the_old_weights_serving(
    loop, backends, nginx, django_capture_on_commit_callbacks
):
    service = shop(backends, **nginx.settings())

    def split_80_20() -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return services.rule_create(service=service, targets={"stable": 80, "canary": 20})

    rule = applied(nginx, split_80_20)
    assert 0.15 <= canary_share(nginx.url, backends, 1000) <= 0.25
    good = nginx.config_path.read_text()
    # The test now reads a main file that does not exist: "nginx -t" fails.
    broken = nginx.settings(
        test_command=[*nginx.base[:3], "-c", str(nginx.dir / "missing.conf"), "-t"]
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.service_update(service=service, **broken)
    workers = nginx.workers()

    with django_capture_on_commit_callbacks(execute=True):
        services.rule_set_weights(rule=rule, weights={"stable": 40, "canary": 60})

    failure = latest_sync(service)
    assert not failure.ok and failure.action == ProviderSyncAction.APPLY
    assert "the test command" in failure.detail and "failed with status 1" in failure.detail
    assert "missing.conf" in failure.detail
    assert "nothing was reloaded and the previous file was put back" in failure.detail
    assert nginx.config_path.read_text() == good
    assert not list((nginx.dir / "conf.d").glob(".*"))  # no temporary file left
    assert nginx.workers() == workers
    assert 0.15 <= canary_share(nginx.url, backends, 1000) <= 0.25

    # With the test put right, the next change applies.
    applied(nginx, lambda: _update(service, nginx.settings(), django_capture_on_commit_callbacks))
    assert latest_sync(service).ok
    assert 0.52 <= canary_share(nginx.url, backends, 1000) <= 0.68


def _update(service: Service, settings: dict[str, Any], capture: Any) -> None:
    with capture(execute=True):
        services.service_update(service=service, **settings)


# ---------------------------------------------------------------------------------------------
# Pages, the admin and the HAProxy export over REST


def _unreachable_shop(settings: Any) -> Service:
    settings.CANARY_PROVIDERS_ENQUEUE = False
    service = services.service_create(
        name="shop",
        stable_version=STABLE,
        provider="haproxy",
        provider_config={"runtimeApi": "unix:/nonexistent/admin.sock", "backend": "be_shop"},
    )
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    sync.providers_sync()
    return service


def test_routing_pages__show_the_data_plane_and_its_latest_syncs(settings, make_user, client):
    service = _unreachable_shop(settings)
    services.service_create(name="plain", stable_version=STABLE)
    client.force_login(make_user("vic", roles=["viewer"]))

    index = client.get("/routing/").content.decode()
    assert "HAProxy (Runtime API)" in index and "Built-in proxy" in index
    assert "failing" in index and "cannot be reached" in index

    page = client.get("/routing/services/shop/").content.decode()
    assert 'id="provider-panel"' in page
    assert "1 failure in a row" in page
    assert "/api/v1/routing/services/shop/haproxy.cfg" in page
    panel = client.get(
        "/routing/services/shop/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="provider-panel"
    )
    assert panel.status_code == 200
    assert panel.content.decode().lstrip().startswith('<section id="provider-panel"')
    assert escape(latest_sync(service).detail) in panel.content.decode()


def test_deployment_page__shows_the_latest_provider_sync(settings, make_user, client):
    _unreachable_shop(settings)
    services.target_create(
        service=Service.objects.get(name="shop"),
        name="canary",
        endpoint="http://127.0.0.1:10",
        version=CANARY,
    )
    deployment = deployment_services.deployment_create(config=make_config())
    client.force_login(make_user("vic", roles=["viewer"]))

    page = client.get(f"/deployments/{deployment.pk}/").content.decode()

    assert 'data-testid="provider-sync"' in page
    assert "HAProxy (Runtime API)" in page and "failing" in page


def test_admin__refuses_bad_provider_settings_on_their_field__and_saves_good_ones(
    make_user, client
):
    client.force_login(make_user("ada", roles=["admin"]))
    data = {
        "name": "shop",
        "stable_version": STABLE,
        "description": "",
        "provider": "haproxy",
        "provider_config": '{"runtimeApi": "unix:/run/haproxy/admin.sock"}',
        "targets-TOTAL_FORMS": "0",
        "targets-INITIAL_FORMS": "0",
    }

    refused = client.post("/admin/routing/service/add/", data)
    assert refused.status_code == 200
    assert "backend: is required" in refused.content.decode()
    assert not Service.objects.exists()

    data["provider_config"] = '{"runtimeApi": "unix:/run/haproxy/admin.sock", "backend": "be"}'
    saved = client.post("/admin/routing/service/add/", data)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert Service.objects.get().provider_config["backend"] == "be"
    assert client.get("/admin/routing/providersync/").status_code == 200


def test_haproxy_export_over_rest__is_text__and_refuses_a_bad_backend_name(api_client, engineer):
    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9001", version=STABLE
    )
    api_client.force_authenticate(engineer)

    response = api_client.get("/api/v1/routing/services/shop/haproxy.cfg")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "backend be_shop" in response.content.decode()
    assert "server stable 127.0.0.1:9001 weight 256" in response.content.decode()

    bad = api_client.get("/api/v1/routing/services/shop/haproxy.cfg", {"backend": "a b"})
    assert bad.status_code == 400
    assert "backend" in bad.json()["error"]["fields"]
    assert api_client.get("/api/v1/routing/services/none/haproxy.cfg").status_code == 404


@pytest.mark.processes
def test_providers_sync__costs_the_same_queries_for_one_service_as_for_six(
    settings, short_dir, spawn
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.CANARY_PROVIDERS_ENQUEUE = False
    api = f"unix:{short_dir / 'admin.sock'}"
    fleet = []
    for index in range(6):
        service = services.service_create(
            name=f"svc-{index}",
            stable_version=STABLE,
            provider="haproxy",
            provider_config={"runtimeApi": api, "backend": f"be_svc_{index}"},
        )
        for name, version in (("stable", STABLE), ("canary", CANARY)):
            services.target_create(
                service=service,
                name=name,
                endpoint=f"http://127.0.0.1:{9 + index}",
                version=version,
            )
        fleet.append(service)
    (short_dir / "haproxy.cfg").write_text(
        HAPROXY_MAIN.format(dir=short_dir, port=free_port()).replace("be_shop", "be_svc_0")
        + "".join(
            haproxy_config(service_snapshot(name=service.name), backend=f"be_svc_{index}")
            for index, service in enumerate(fleet)
        )
    )
    process = spawn("haproxy", [HAPROXY, "-db", "-f", str(short_dir / "haproxy.cfg")])
    assert wait_for((short_dir / "admin.sock").exists, timeout=20), process.output()

    def counted(only: list[Service]) -> tuple[int, Any]:
        Service.objects.exclude(pk__in=[service.pk for service in only]).update(provider="builtin")
        with CaptureQueriesContext(connection) as captured:
            report = sync.providers_sync()
        return len(captured.captured_queries), report

    # Every service's first pass applies; the next ones look, read counters and write nothing.
    _count, first = counted(fleet)
    assert sorted(first.applied) == sorted(service.name for service in fleet)
    many, report = counted(fleet)
    assert report.failed == [] and report.applied == []
    one, report = counted(fleet[:1])
    assert report.failed == [] and report.applied == []
    assert many == one


def test_a_service_moved_back_to_the_builtin_proxy__has_its_data_plane_alert_resolved(settings):
    settings.CANARY_PROVIDERS_ENQUEUE = False
    settings.CANARY_PROVIDER_FAILURE_LIMIT = 1
    service = _unreachable_shop(settings)
    assert Alert.objects.get().status == "open"

    services.service_update(service=service, provider="builtin")
    sync.providers_sync()

    assert Alert.objects.get().status == "resolved"
    assert not ProviderState.objects.get(service=service).alerted
