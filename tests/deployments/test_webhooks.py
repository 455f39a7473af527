"""Webhook gates and news (`deployments.webhooks`): the tick against a local receiver, an HTTP
server in the test that records every request, answers as each test tells it, and whose
requests' signatures are checked; on the simulated clock of the other tick tests."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from deployments import services, webhooks
from deployments.choices import DeploymentStatus, EventKind, WebhookDeliveryStatus
from deployments.config import ConfigError, parse_config, read_config
from deployments.models import Deployment, WebhookDelivery, WebhookGate
from deployments.validation import validate
from health.notifications import verify
from routing import services as routing_services
from routing.models import RuleTarget
from tests.deployments.conftest import CANARY, STABLE, Clock, feed, make_config, phase

pytestmark = pytest.mark.django_db

SECRET = "hooks-test-secret"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers["Idempotency-Key"]


@dataclass
class HookReceiver:
    """Answers each path with the next of its (status, body) answers (the last one repeats),
    200 by default, and records every request."""

    answers: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{path}"

    def answer(self, path: str, *answers: tuple[int, str]) -> None:
        with self.lock:
            self.answers[path] = list(answers)

    def to(self, path: str) -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.path == f"/{path}"]

    def start(self) -> HookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(Request(self.path, dict(self.headers.items()), body))
                    queue = receiver.answers.get(self.path.lstrip("/"), [(200, "ok")])
                    status, text = queue[0]
                    if len(queue) > 1:
                        queue.pop(0)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def hooks(settings: Any) -> Iterator[HookReceiver]:
    settings.CANARY_WEBHOOK_SECRET = SECRET
    receiver = HookReceiver().start()
    yield receiver
    receiver.stop()
    # Every call the tick made was signed with the secret, over exactly the bytes sent.
    for request in receiver.requests:
        assert verify(request.body, request.headers["X-Canary-Signature"], SECRET)
        assert request.headers["X-Canary-Delivery"] == request.key
        assert request.json["idempotencyKey"] == request.key


def hook(name: str, type: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type, "url": url, **extra}


def start(deployment: Deployment, clock: Clock) -> Deployment:
    return services.deployment_transition(
        deployment_id=deployment.pk, action="start", source="api", now=clock.now
    )


def tick(clock: Clock, seconds: float = 5) -> services.TickReport:
    return services.deployments_tick(now=clock.advance(seconds))


def reload(deployment: Deployment) -> Deployment:
    return Deployment.objects.get(pk=deployment.pk)


def canary_weight(deployment: Deployment) -> float:
    deployment.refresh_from_db()
    if deployment.routing_rule_id is None:
        return 0.0
    return float(
        RuleTarget.objects.get(rule_id=deployment.routing_rule_id, target__name="canary").weight
    )


def reason_of(deployment: Deployment) -> str:
    return reload(deployment).phases.get(order=reload(deployment).current_phase).judgement["reason"]


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ready_phases() -> list[dict[str, Any]]:
    # Criteria that hold after 10 s of healthy traffic; the phase's minimum is 20 s.
    return [phase(10), phase(50), phase(100)]


# --------------------------------------------------------------------------- configuration


def test_config__webhooks_are_read_and_written_back():
    config = parse_config(
        make_config(
            webhooks=[
                hook("qa", "confirm-promotion", "https://qa.example.com/gate"),
                hook(
                    "load",
                    "rollout",
                    "https://load.example.com/check",
                    timeoutMs=1500,
                    metadata={"cmd": "hey -z 1m"},
                    failureThreshold=3,
                ),
            ]
        )
    )
    assert [(h.name, h.type, h.timeout_ms) for h in config.webhooks] == [
        ("qa", "confirm-promotion", 5000),
        ("load", "rollout", 1500),
    ]
    written = config.to_dict()["webhooks"]
    assert written[0] == {
        "name": "qa",
        "type": "confirm-promotion",
        "url": "https://qa.example.com/gate",
        "timeoutMs": 5000,
        "metadata": {},
    }
    assert written[1]["failureThreshold"] == 3 and written[1]["metadata"] == {"cmd": "hey -z 1m"}
    assert parse_config(config.to_dict()) == config


def test_config__a_bad_webhook__is_named_by_its_field_path():
    reading = read_config(
        make_config(
            webhooks=[
                hook("qa", "confirm-promotion", "https://qa.example.com/gate"),
                hook("smoke", "pre-flight", "ftp://files.example.com", timeoutMs=0),
                hook("qa", "event", "https://news.example.com", failureThreshold=2),
                {"name": "x", "type": "event", "url": "https://a.example.com", "retries": 3},
            ]
        )
    )
    fields = {error.field for error in reading.errors}
    assert {
        "webhooks[1].type",
        "webhooks[1].url",
        "webhooks[1].timeoutMs",
        "webhooks[2].failureThreshold",
        "webhooks[3].retries",
    } <= fields
    assert reading.config is None
    with pytest.raises(ConfigError) as refused:
        parse_config(
            make_config(
                webhooks=[hook("qa", "event", "https://a"), hook("qa", "event", "https://b")]
            )
        )
    assert refused.value.field == "webhooks[1].name"


def test_validation__a_plain_http_webhook__warns_in_production__is_an_error_with_https_required():
    config = make_config(webhooks=[hook("qa", "confirm-promotion", "http://qa.example.com/gate")])
    production = validate(config, context={"environment": "production"})
    assert [i.code for i in production.warnings if i.field == "webhooks[0].url"] == [
        "insecure_webhook"
    ]
    strict = validate(
        config,
        context={"environment": "staging", "securityPolicies": {"requireHttps": True}},
    )
    assert [i.code for i in strict.errors if i.field == "webhooks[0].url"] == ["insecure_webhook"]
    assert not validate(config).issues("insecure_webhook")


# --------------------------------------------------------------------------- entry gates


def test_pre_rollout__a_failing_hook__fails_the_deployment_at_its_start(
    make_deployment, clock, hooks
):
    hooks.answer("smoke", (500, "smoke tests failed: 3 of 40"))
    deployment = make_deployment(
        make_config(webhooks=[hook("smoke", "pre-rollout", hooks.url("smoke"))])
    )

    held = start(deployment, clock)
    assert held.status == DeploymentStatus.PENDING
    tick(clock)  # asks the hook
    assert reload(deployment).status == DeploymentStatus.PENDING
    report = tick(clock)  # acts on its answer

    deployment = reload(deployment)
    assert deployment.status == DeploymentStatus.FAILED
    assert report.failed == 1
    failed = deployment.events.get(kind=EventKind.FAIL)
    assert "pre-rollout hook 'smoke' answered HTTP 500 'smoke tests failed: 3 of 40'" in (
        failed.reason
    )
    # The canary never had a request's worth of weight.
    assert canary_weight(deployment) == 0.0
    (call,) = hooks.to("smoke")
    assert call.key == f"deployment-{deployment.pk}-phase-1-pre-rollout-smoke"
    assert call.json["type"] == "pre-rollout" and call.json["service"] == "shop"
    assert call.json["deployment"]["id"] == deployment.pk


def test_confirm_rollout__holds_the_start_at_zero_until_the_hook_answers_2xx(
    make_deployment, clock, hooks
):
    hooks.answer("go", (403, "change freeze"), (403, "change freeze"), (200, "go"))
    deployment = make_deployment(
        make_config(webhooks=[hook("go", "confirm-rollout", hooks.url("go"))])
    )
    start(deployment, clock)
    for _ in range(2):
        tick(clock)
        assert reload(deployment).status == DeploymentStatus.PENDING
        assert canary_weight(deployment) == 0.0
    assert "Waiting for confirm-rollout gate 'go': HTTP 403 'change freeze'" in (
        webhooks.start_waiting_reason(reload(deployment))
    )
    tick(clock)  # answers 200
    report = tick(clock)  # starts

    deployment = reload(deployment)
    assert report.started == 1
    assert (deployment.status, deployment.current_phase) == (DeploymentStatus.RUNNING, 1)
    assert canary_weight(deployment) == 10.0
    started = deployment.events.get(kind=EventKind.START)
    assert "confirm-rollout 'go' answered HTTP 200 'go'" in started.reason
    # Asked once a tick while closed, never again once open; one key for the phase's gate.
    assert {r.key for r in hooks.to("go")} == {
        f"deployment-{deployment.pk}-phase-1-confirm-rollout-go"
    }
    assert len(hooks.to("go")) == 3
    tick(clock)
    assert len(hooks.to("go")) == 3


# --------------------------------------------------------------------------- promotion gates


def run_until_ready(deployment: Deployment, clock: Clock) -> None:
    start(deployment, clock)
    feed(start=clock.now, seconds=300)
    feed(start=clock.now, seconds=300, version=STABLE)
    for _ in range(8):  # 40 s: phase 1's 20 s minimum and 10 s hold are over
        tick(clock)


def test_confirm_promotion__a_closed_gate_holds_a_ready_phase_until_it_answers_2xx(
    make_deployment, clock, hooks
):
    hooks.answer("qa", (403, "QA has not signed off"))
    deployment = make_deployment(
        make_config(
            phases=ready_phases(),
            webhooks=[hook("qa", "confirm-promotion", hooks.url("qa"), metadata={"team": "qa"})],
        )
    )
    run_until_ready(deployment, clock)

    deployment = reload(deployment)
    assert deployment.current_phase == 1
    reason = reason_of(deployment)
    assert reason.startswith(
        "Waiting for confirm-promotion gate 'qa': HTTP 403 'QA has not signed off' (tried "
    )
    assert "The phase is ready otherwise" in reason
    asked = hooks.to("qa")
    assert asked and {r.key for r in asked} == {
        f"deployment-{deployment.pk}-phase-1-confirm-promotion-qa"
    }
    body = asked[-1].json
    assert body["metadata"] == {"team": "qa"} and body["phase"]["order"] == 1
    assert body["judgement"]["outcome"] == "wait" and body["canaryShare"] == 10.0

    hooks.answer("qa", (200, "signed off"))
    tick(clock)  # the answer
    assert reload(deployment).current_phase == 1
    tick(clock)  # the promotion
    deployment = reload(deployment)
    assert deployment.current_phase == 2
    promoted = deployment.events.get(kind=EventKind.PROMOTE)
    assert promoted.evidence["webhooks"][0]["name"] == "qa"
    answers = deployment.events.filter(kind=EventKind.WEBHOOK).order_by("at", "id")
    # One entry when the gate first answered 403, one when it opened; not one a tick.
    assert [("403" in e.reason, "open" in e.reason) for e in answers] == [
        (True, False),
        (False, True),
    ]


def test_confirm_promotion__opened_by_hand_over_the_api__lets_the_phase_advance(
    make_deployment, clock, hooks, make_user
):
    hooks.answer("qa", (403, "nobody home"))
    deployment = make_deployment(
        make_config(
            phases=ready_phases(),
            webhooks=[
                hook("qa", "confirm-promotion", hooks.url("qa")),
                hook("news", "event", hooks.url("news")),
            ],
        )
    )
    run_until_ready(deployment, clock)
    assert reload(deployment).current_phase == 1
    url = f"/api/v1/deployments/{deployment.pk}/gates/qa/open/"

    viewer = APIClient()
    viewer.force_authenticate(make_user("vic", roles=["viewer"]))
    assert viewer.post(url, {}, format="json").status_code == 403
    engineer = APIClient()
    engineer.force_authenticate(make_user("erin", roles=["engineer"]))
    answer = engineer.post(url, {"reason": "checked the dashboards"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "open" and answer.json()["phase"] == 1
    assert (
        engineer.post(
            f"/api/v1/deployments/{deployment.pk}/gates/news/open/", {}, format="json"
        ).status_code
        == 400
    )
    assert (
        engineer.post(
            f"/api/v1/deployments/{deployment.pk}/gates/nope/open/", {}, format="json"
        ).status_code
        == 404
    )
    listed = engineer.get(f"/api/v1/deployments/{deployment.pk}/gates/").json()
    assert [(g["name"], g["state"]) for g in listed] == [("qa", "open")]

    asked = len(hooks.to("qa"))
    tick(clock)
    deployment = reload(deployment)
    assert deployment.current_phase == 2
    opened = deployment.events.filter(kind=EventKind.WEBHOOK, actor__username="erin").get()
    assert "opened by erin for phase 1: checked the dashboards" in opened.reason
    # Phase 2's gate is closed again and asked anew; phase 1's was asked no more.
    tick(clock)
    assert {r.key for r in hooks.to("qa")[asked:]} <= {
        f"deployment-{deployment.pk}-phase-2-confirm-promotion-qa"
    }


def test_an_unreachable_gate__gives_a_clear_reason_on_the_page(
    make_deployment, clock, hooks, client, make_user
):
    dead = f"http://127.0.0.1:{closed_port()}/qa"
    deployment = make_deployment(
        make_config(phases=ready_phases(), webhooks=[hook("qa", "confirm-promotion", dead)])
    )
    run_until_ready(deployment, clock)

    deployment = reload(deployment)
    assert deployment.status == DeploymentStatus.RUNNING and deployment.current_phase == 1
    reason = reason_of(deployment)
    assert reason.startswith("Waiting for confirm-promotion gate 'qa': connection refused (tried ")
    assert re.match(r"Waiting for .*\(tried \d\d:\d\d:\d\d\)\. ", reason)
    gate = WebhookGate.objects.get(deployment=deployment, name="qa")
    assert (gate.passed, gate.error, gate.status_code) == (False, "connection refused", None)
    client.force_login(make_user("erin", roles=["engineer"]))
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "Waiting for confirm-promotion gate &#x27;qa&#x27;: connection refused" in page
    assert "Open gate" in page
    viewer = make_user("vic", roles=["viewer"])
    client.force_login(viewer)
    assert "Open gate" not in client.get(f"/deployments/{deployment.pk}/").content.decode()


def test_an_unreachable_entry_gate__says_so_while_the_deployment_waits(
    make_deployment, clock, hooks
):
    dead = f"http://127.0.0.1:{closed_port()}/go"
    deployment = make_deployment(make_config(webhooks=[hook("go", "confirm-rollout", dead)]))
    start(deployment, clock)
    tick(clock)
    waiting = webhooks.start_waiting_reason(reload(deployment))
    assert waiting.startswith("Waiting for confirm-rollout gate 'go': connection refused (tried ")
    (view,) = webhooks.gate_views(reload(deployment))
    assert view.state == "closed" and view.can_open


# --------------------------------------------------------------------------- rollout checks


def test_rollout__a_failing_check_blocks_advancing_until_it_answers_2xx(
    make_deployment, clock, hooks
):
    hooks.answer("load", (500, "p99 too high"))
    deployment = make_deployment(
        make_config(
            phases=ready_phases(),
            webhooks=[hook("load", "rollout", hooks.url("load"), failureThreshold=100)],
        )
    )
    run_until_ready(deployment, clock)

    deployment = reload(deployment)
    assert deployment.current_phase == 1
    assert "rollout hook 'load' (failing, " in reason_of(deployment)
    # Asked on every tick of the phase, each with the tick's moment in its key.
    keys = [r.key for r in hooks.to("load")]
    assert len(keys) == 8 and len(set(keys)) == 8
    assert all(k.startswith(f"deployment-{deployment.pk}-phase-1-rollout-load-") for k in keys)

    hooks.answer("load", (200, "fine"))
    tick(clock)
    tick(clock)
    deployment = reload(deployment)
    assert deployment.current_phase == 2
    gate = WebhookGate.objects.get(deployment=deployment, phase=1, name="load")
    assert gate.passed and gate.failures == 0


def test_rollout__failures_in_a_row_up_to_the_threshold__roll_back(make_deployment, clock, hooks):
    hooks.answer("load", (503, "overloaded"))
    deployment = make_deployment(
        make_config(webhooks=[hook("load", "rollout", hooks.url("load"), failureThreshold=3)])
    )
    start(deployment, clock)
    feed(start=clock.now, seconds=300)
    for _ in range(5):
        tick(clock)

    deployment = reload(deployment)
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    rollback = deployment.events.get(kind=EventKind.ROLLBACK)
    assert rollback.reason.startswith(
        "Roll back: the rollout hook 'load' failed 3 times in a row (its threshold is 3): "
        "HTTP 503 'overloaded'"
    )
    assert len(hooks.to("load")) == 3


# --------------------------------------------------------------------------- news


def test_rollback__is_told_exactly_once_even_across_two_ticks(make_deployment, clock, hooks):
    deployment = make_deployment(
        make_config(
            webhooks=[
                hook("pager", "rollback", hooks.url("pager")),
                hook("cleanup", "post-rollout", hooks.url("cleanup")),
            ]
        )
    )
    start(deployment, clock)
    feed(start=clock.now, seconds=120, errors=30)  # 60% errors
    for _ in range(6):
        tick(clock)
    assert reload(deployment).status == DeploymentStatus.ROLLED_BACK
    # Two more ticks at the same moment, and one later: nothing is told twice.
    services.deployments_tick(now=clock.now)
    services.deployments_tick(now=clock.now)
    tick(clock)

    (told,) = hooks.to("pager")
    assert told.key == f"deployment-{deployment.pk}-phase-1-rollback-pager"
    assert told.json["event"]["kind"] == "rollback"
    (ended,) = hooks.to("cleanup")
    assert ended.key == f"deployment-{deployment.pk}-phase-1-post-rollout-cleanup"
    assert ended.json["event"]["toStatus"] == "rolled_back"
    assert WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.DELIVERED).count() == 2
    told_events = reload(deployment).events.filter(kind=EventKind.WEBHOOK)
    assert {e.evidence["webhook"]["name"] for e in told_events} == {"pager", "cleanup"}


def test_rollback__an_unreachable_hook_is_retried_with_backoff_then_given_up(
    make_deployment, clock, hooks, settings
):
    settings.CANARY_WEBHOOK_MAX_ATTEMPTS = 2
    dead = f"http://127.0.0.1:{closed_port()}/pager"
    deployment = make_deployment(make_config(webhooks=[hook("pager", "rollback", dead)]))
    start(deployment, clock)
    feed(start=clock.now, seconds=120, errors=30)
    for _ in range(12):
        tick(clock)
        if reload(deployment).status == DeploymentStatus.ROLLED_BACK:
            break
    # The tick that rolled back told the hook at once, after its decisions.
    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempts, row.error) == ("pending", 1, "connection refused")
    tick(clock, 1)  # the backoff (5 s) has not passed
    assert WebhookDelivery.objects.get().attempts == 1
    tick(clock, 10)
    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempts) == (WebhookDeliveryStatus.FAILED, 2)
    gave_up = reload(deployment).events.get(kind=EventKind.WEBHOOK)
    assert "could not be told after 2 attempts: connection refused" in gave_up.reason


def test_event__receives_every_timeline_entry_but_the_webhooks_own(make_deployment, clock, hooks):
    hooks.answer("qa", (403, "wait"), (200, "ok"))
    deployment = make_deployment(
        make_config(
            phases=ready_phases(),
            webhooks=[
                hook("qa", "confirm-promotion", hooks.url("qa")),
                hook("feed", "event", hooks.url("feed")),
            ],
        )
    )
    run_until_ready(deployment, clock)
    tick(clock)
    tick(clock)
    # The creation happened on the real clock, after the simulated one: send what is due now.
    webhooks.deliveries_send(now=timezone.now())

    told = hooks.to("feed")
    entries = reload(deployment).events.exclude(kind=EventKind.WEBHOOK)
    assert sorted(r.json["event"]["id"] for r in told) == sorted(e.pk for e in entries)
    assert {r.json["event"]["kind"] for r in told} >= {"created", "start", "promote"}
    for request in told:
        event = request.json["event"]
        assert request.key == (
            f"deployment-{deployment.pk}-phase-{event['phase'] or 0}-event-feed-{event['id']}"
        )
    # Delivered event news leaves the timeline alone; the gate's answers are on it.
    assert (
        not reload(deployment)
        .events.filter(kind=EventKind.WEBHOOK, evidence__webhook__name="feed")
        .exists()
    )


# --------------------------------------------------------------------------- keys, runs


def test_a_retried_deployment__asks_its_gates_again_under_new_keys(make_deployment, clock, hooks):
    hooks.answer("smoke", (500, "red"), (500, "red"), (200, "green"))
    deployment = make_deployment(
        make_config(webhooks=[hook("smoke", "pre-rollout", hooks.url("smoke"))])
    )
    start(deployment, clock)
    tick(clock)
    tick(clock)
    assert reload(deployment).status == DeploymentStatus.FAILED
    services.deployment_transition(
        deployment_id=deployment.pk, action="retry", source="api", now=clock.now
    )
    start(deployment, clock)
    tick(clock)
    tick(clock)
    deployment = reload(deployment)
    # Run 2's check answered red too; run 3's green.
    assert deployment.status == DeploymentStatus.FAILED
    services.deployment_transition(
        deployment_id=deployment.pk, action="retry", source="api", now=clock.now
    )
    start(deployment, clock)
    tick(clock)
    tick(clock)
    assert reload(deployment).status == DeploymentStatus.RUNNING
    assert [r.key for r in hooks.to("smoke")] == [
        f"deployment-{deployment.pk}-phase-1-pre-rollout-smoke",
        f"deployment-{deployment.pk}-run-2-phase-1-pre-rollout-smoke",
        f"deployment-{deployment.pk}-run-3-phase-1-pre-rollout-smoke",
    ]


def test_idempotency_key__names_deployment_run_phase_type_and_hook():
    key = webhooks.idempotency_key
    assert key(deployment_id=7, run=1, phase=2, type="rollback", name="pager") == (
        "deployment-7-phase-2-rollback-pager"
    )
    assert key(deployment_id=7, run=3, phase=1, type="rollout", name="load", suffix="x") == (
        "deployment-7-run-3-phase-1-rollout-load-x"
    )


# --------------------------------------------------------------------------- the tick's cost


def test_tick__queries_with_gates_do_not_grow_with_the_number_of_deployments(policy, clock, hooks):
    hooks.answer("qa", (403, "not yet"))

    def make_many(count: int, offset: int) -> None:
        for index in range(offset, offset + count):
            name = f"svc-{index}"
            service = routing_services.service_create(name=name, stable_version=STABLE)
            routing_services.target_create(
                service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
            )
            routing_services.target_create(
                service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
            )
            deployment = services.deployment_create(
                config=make_config(
                    service=name,
                    name=name,
                    phases=[phase(10, duration_ms=600_000), phase(100, duration_ms=600_000)],
                    maxDeploymentTimeMs=3_600_000,
                    webhooks=[
                        hook("qa", "confirm-promotion", hooks.url("qa")),
                        hook("load", "rollout", hooks.url("load")),
                    ],
                ),
                health_policy=policy,
            )
            start(deployment, clock)
            feed(start=clock.now - timedelta(seconds=60), seconds=120, service=name)

    def measured() -> int:
        services.deployments_tick(now=clock.advance(5))  # rows and answers of this phase exist
        with CaptureQueriesContext(connection) as captured:
            report = services.deployments_tick(now=clock.advance(5))
        assert report.webhook_calls == report.waiting  # each waiting phase's rollout check
        return len(captured.captured_queries)

    make_many(1, 0)
    one = measured()
    make_many(19, 1)
    twenty = measured()
    assert one == twenty
    calls = defaultdict(int)
    for request in hooks.to("load"):
        calls[request.json["deployment"]["id"]] += 1
    assert len(calls) == 20


# --------------------------------------------------------------------------- the pages


HTMX = {"HTTP_HX_REQUEST": "true"}


def wizard(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "shop 2.0",
        "service": "shop",
        "canary_version": CANARY,
        "strategy": "phased",
        "auto_promote": "on",
        "auto_rollback": "on",
        "max_minutes": "60",
        "phase_count": "2",
        "config_text": "",
    }
    for index, traffic in enumerate(["20", "100"]):
        data[f"phase-{index}-traffic"] = traffic
        data[f"phase-{index}-duration"] = "120"
    data.update(overrides)
    return data


def test_wizard__names_webhooks_in_rows_and_stores_them(routed_service, client, make_user):
    client.force_login(make_user("erin", roles=["engineer"]))
    added = client.post("/deployments/new/", wizard(op="add-hook"), **HTMX).content.decode()
    assert 'name="hook-0-name"' in added and 'name="hook-0-url"' in added

    rows = {
        "hook_count": "3",
        "hook-0-name": "qa",
        "hook-0-type": "confirm-promotion",
        "hook-0-url": "https://qa.example.com/gate",
        # A row left blank names no hook.
        "hook-1-name": "",
        "hook-1-type": "",
        "hook-1-url": "",
        "hook-2-name": "pager",
        "hook-2-type": "rollback",
        "hook-2-url": "not a url",
    }
    checked = client.post("/deployments/new/validate/", wizard(**rows), **HTMX).content.decode()
    assert 'data-field="webhooks[1].url"' in checked
    assert '<div id="hook-errors-2" class="errors" hx-swap-oob="true"><p>webhooks[1].url' in checked

    rows["hook-2-url"] = "https://pager.example.com/hook"
    client.post("/deployments/new/", wizard(op="create", **rows), **HTMX)
    deployment = Deployment.objects.get()
    assert [(h["name"], h["type"]) for h in deployment.config["webhooks"]] == [
        ("qa", "confirm-promotion"),
        ("pager", "rollback"),
    ]


def test_page__opens_a_gate_with_its_button(make_deployment, clock, hooks, client, make_user):
    hooks.answer("go", (403, "freeze"))
    deployment = make_deployment(
        make_config(webhooks=[hook("go", "confirm-rollout", hooks.url("go"))])
    )
    client.force_login(make_user("erin", roles=["engineer"]))
    client.post(f"/deployments/{deployment.pk}/act/", {"action": "start"}, **HTMX)
    assert reload(deployment).status == DeploymentStatus.PENDING
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'data-testid="start-waiting"' in page
    tick(clock)

    answer = client.post(
        f"/deployments/{deployment.pk}/gates/go/open/", {"reason": "freeze lifted"}, **HTMX
    )
    html = answer.content.decode()
    assert answer.status_code == 200
    assert 'data-testid="gate-state-go">open</span>' in html
    assert "opened by erin" in html
    tick(clock)
    assert reload(deployment).status == DeploymentStatus.RUNNING

    viewer = Client()
    viewer.force_login(make_user("vic", roles=["viewer"]))
    refused = viewer.post(f"/deployments/{deployment.pk}/gates/go/open/", {})
    assert refused.status_code == 403
