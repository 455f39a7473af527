"""Active health checks: real HTTP probes of real backends, thresholds, and the Celery task in a
real worker."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from canary_site.models import AuditEntry
from routing import selectors, services, tasks
from routing.models import Service, Target
from routing.snapshot import service_snapshot
from tests.conftest import celery_args, wait_for
from tests.routing.conftest import free_port

CHECK = {
    "path": "/health",
    "interval_s": 1,
    "timeout_s": 1,
    "healthy_threshold": 2,
    "unhealthy_threshold": 3,
}


def make_target(endpoint: str, *, check: dict | None = CHECK) -> Target:
    service = services.service_create(name="shop", stable_version="1.0.0")
    return services.target_create(
        service=service, name="canary", endpoint=endpoint, version="1.0.0", health_check=check
    )


def probe_rounds(count: int) -> list[services.ProbeSummary]:
    """``count`` probe rounds, each far enough after the last to be due."""
    return [
        services.targets_probe_due(now=timezone.now() + timedelta(minutes=round_ + 1))
        for round_ in range(count)
    ]


@pytest.mark.django_db
@pytest.mark.processes
def test_probes__mark_a_failing_target_unhealthy_at_the_threshold__and_healthy_again(
    start_backend,
):
    backend = start_backend("1.0.0")
    target = make_target(backend.url)
    version_before = Service.objects.get().routing_version
    backend.fail()

    probe_rounds(2)
    target.refresh_from_db()
    assert (target.healthy, target.consecutive_failures) == (True, 2)
    assert target.last_check_result.startswith("HTTP 503")

    summary = probe_rounds(1)[0]
    target.refresh_from_db()
    assert summary.marked_unhealthy == [str(target.pk)]
    assert target.healthy is False
    assert Service.objects.get().routing_version > version_before
    entry = AuditEntry.objects.filter(verb="mark_unhealthy").get()
    assert "3 consecutive failed health checks" in entry.reason
    assert service_snapshot(name="shop").targets[0].healthy is False

    backend.recover()
    probe_rounds(1)
    target.refresh_from_db()
    assert (target.healthy, target.consecutive_successes) == (False, 1)
    probe_rounds(1)
    target.refresh_from_db()
    assert target.healthy is True
    assert AuditEntry.objects.filter(verb="mark_healthy").exists()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.django_db
def test_probes__timeouts_and_refused_connections_count_as_failures(silent_port):
    target = make_target(
        f"http://127.0.0.1:{silent_port}",
        check=CHECK | {"timeout_s": 0.2, "unhealthy_threshold": 1},
    )
    refused = services.target_create(
        service=target.service,
        name="gone",
        endpoint=f"http://127.0.0.1:{free_port()}",
        version="1.0.0",
        health_check=CHECK | {"unhealthy_threshold": 1},
    )

    summary = probe_rounds(1)[0]

    target.refresh_from_db()
    refused.refresh_from_db()
    assert summary.failed == 2
    assert target.last_check_result == "timeout after 0.2 s"
    assert "ClientConnector" in refused.last_check_result
    assert not target.healthy and not refused.healthy


@pytest.mark.django_db
def test_probes__use_the_rule_check_unless_the_target_has_its_own_or_disables_it():
    service = services.service_create(name="shop", stable_version="1.0.0")
    for name in ["plain", "own", "off"]:
        services.target_create(
            service=service, name=name, endpoint=f"http://{name}:1", version="1.0.0"
        )
    services.target_update(
        target=Target.objects.get(name="own"), health_check={"path": "/own", "interval_s": 30}
    )
    services.target_update(target=Target.objects.get(name="off"), health_check={"enabled": False})
    services.rule_create(
        service=service,
        targets={"plain": 40, "own": 30, "off": 30},
        health_check={"path": "/from-rule", "interval_s": 10},
    )

    checks = {target.name: settings for target, settings in selectors.effective_health_checks()}

    assert set(checks) == {"plain", "own"}
    assert (checks["plain"].path, checks["plain"].interval_s) == ("/from-rule", 10.0)
    assert (checks["own"].path, checks["own"].interval_s) == ("/own", 30.0)


@pytest.mark.django_db
def test_probes__run_twice_in_a_row__the_second_finds_nothing_due(silent_port):
    make_target(
        f"http://127.0.0.1:{silent_port}", check=CHECK | {"timeout_s": 0.1, "interval_s": 60}
    )

    first = services.targets_probe_due()
    second = services.targets_probe_due()

    assert (first.probed, second.probed) == (1, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.processes
def test_probe_task__runs_in_a_real_worker__and_records_the_outcome(
    spawn, task_queue, start_backend
):
    backend = start_backend("1.0.0")
    target = make_target(backend.url)
    worker = spawn(
        "worker",
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        CANARY_TASK_QUEUE=task_queue,
    )

    tasks.targets_probe_due.apply_async(queue=task_queue)

    probed = wait_for(
        lambda: Target.objects.filter(pk=target.pk, last_checked_at__isnull=False).first(),
        timeout=60,
    )
    assert probed is not None, worker.output()
    assert probed.last_check_result.startswith("HTTP 200")
    assert probed.consecutive_successes == 1
