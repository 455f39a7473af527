"""canaryctl, the command-line client, run for real: ``python canaryctl.py`` (and ``python -m
canaryctl``) as a child process against a live server, with real API tokens.

Most tests talk to pytest-django's live server in this process. The pipeline tests at the end run
the whole system as production does: gunicorn, a Celery worker and beat ticking every second, the
routing proxy in front of fault-injecting backends and a paced load through it; there the client
follows deployments to their end, and the shell step of docs/pipelines.md runs as written."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from canary_site import services as site_services
from deployments import conf as deployment_conf
from deployments.choices import DeploymentStatus, EventKind
from deployments.models import Deployment
from flags import services as flag_services
from flags.models import Flag
from health import services as health_services
from health.models import HealthPolicy
from rollback import services as rollback_services
from rollback.models import ApprovalRequest, RollbackExecution
from routing import services as routing_services
from routing.models import Service
from tests.conftest import BASE_DIR, ManagedProcess, wait_for
from tests.deployments.conftest import CANARY, STABLE
from tests.deployments.live import FaultyBackend, PacedLoad, fault_backend_args

# The closed loop's worker and beat, its fault-injecting "shop" and its quick health policy.
from tests.deployments.test_closed_loop import (  # noqa: F401
    faulty_shop,
    loop_processes,
    output,
    quick_policy,
)
from tests.routing.conftest import Proxy, free_port, http_get, start_proxy  # noqa: F401

CLIENT = BASE_DIR / "canaryctl.py"
PIPELINES_DOC = BASE_DIR / "docs" / "pipelines.md"
live = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_follow_up_tasks(request: pytest.FixtureRequest) -> None:
    # The live server runs in this process; with no worker for its follow-up ticks, they would
    # only fill the broker. The pipeline tests' gunicorn has a worker and keeps them.
    if "live_server" in request.fixturenames:
        settings = request.getfixturevalue("settings")
        settings.CANARY_DEPLOYMENTS_ENQUEUE = False
        settings.CANARY_NOTIFY_ENQUEUE = False


def run_ctl(
    *args: str,
    url: str | None = None,
    token: str | None = None,
    cwd: Path | None = None,
    module: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real client in a child process, configured through its environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("CANARY_URL", "CANARY_TOKEN")}
    if url is not None:
        env["CANARY_URL"] = url
    if token is not None:
        env["CANARY_TOKEN"] = token
    command = [sys.executable, "-m", "canaryctl"] if module else [sys.executable, str(CLIENT)]
    return subprocess.run(
        [*command, *args],
        cwd=BASE_DIR if module else (cwd or BASE_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def token_for(make_user: Callable[..., Any]) -> Callable[[str, str], str]:
    """A real API token of a new user with ``role``, as the profile page creates one."""

    def make(username: str, role: str) -> str:
        user = make_user(username, roles=[role])
        _row, secret = site_services.api_token_create(user=user, name="ci")
        return secret

    return make


@pytest.fixture
def ctl(live_server: Any, token_for: Callable[[str, str], str]) -> Callable[..., Any]:
    """``ctl(*args)`` runs the client against the live server as engineer "erin";
    ``as_token=`` runs it with another token."""
    engineer_token = token_for("erin", "engineer")

    def call(*args: str, as_token: str | None = None, **kwargs: Any) -> Any:
        return run_ctl(*args, url=live_server.url, token=as_token or engineer_token, **kwargs)

    return call


@pytest.fixture
def shop(db: Any) -> Service:
    """Service "shop" with its stable and canary targets (nothing needs to listen here)."""
    service = routing_services.service_create(name="shop", stable_version=STABLE)
    routing_services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    routing_services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
    )
    return service


def yaml_config(
    *, service: str = "shop", first_ms: int = 5_000, first_share: int = 30, last_ms: int = 5_000
) -> str:
    """A configuration file as a pipeline keeps it: two phases, the last one at 100%."""
    return f"""\
name: {service} {CANARY}
serviceName: {service}
stableVersion: {STABLE}
canaryVersion: {CANARY}
maxDeploymentTimeMs: 600000
phases:
  - trafficPercentage: {first_share}
    durationMs: {first_ms}
    successCriteria:
      - metric: availability
        operator: greater_than
        threshold: 90
        durationMs: 10000
    rollbackThresholds:
      errorRate: 10
      latencyP95: 2000
  - trafficPercentage: 100
    durationMs: {last_ms}
    successCriteria:
      - metric: availability
        operator: greater_than
        threshold: 90
        durationMs: 10000
    rollbackThresholds:
      errorRate: 10
      latencyP95: 2000
"""


# Two 60-second phases, 10% then 100%: a configuration the strict validator passes.
STRICT_YAML = yaml_config(first_ms=60_000, first_share=10, last_ms=60_000)


@pytest.fixture
def deploy_file(tmp_path: Path) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml_config())
    return path


def started(ctl: Callable[..., Any], deploy_file: Path) -> Deployment:
    result = ctl("deploy", "-f", str(deploy_file))
    assert result.returncode == 0, result.stderr
    return Deployment.objects.get()


# ---------------------------------------------------------------------------- help and usage

VERBS = [
    [],
    ["deploy"],
    ["status"],
    ["promote"],
    ["pause"],
    ["resume"],
    ["abort"],
    ["retry"],
    ["rollback"],
    ["validate"],
    ["flags"],
    ["flags", "get"],
    ["flags", "enable"],
    ["flags", "disable"],
    ["flags", "kill"],
    ["flags", "rollout"],
    ["approvals"],
    ["approvals", "list"],
    ["approvals", "get"],
    ["approvals", "approve"],
    ["approvals", "reject"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda verb: " ".join(verb) or "canaryctl")
def test_help__every_verb__explains_itself_and_exits_0(verb):
    result = run_ctl(*verb, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['canaryctl', *verb])} ")
    assert "--url" in result.stdout and "--output" in result.stdout


def test_help__of_the_client__names_every_verb_and_the_exit_codes():
    text = run_ctl("--help").stdout

    for verb in ("deploy", "status", "promote", "pause", "resume", "abort", "rollback", "retry"):
        assert re.search(rf"^\s+{verb}\s", text, re.MULTILINE), verb
    assert "Exit codes: 0" in text


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["flags", "kill", "dark-mode"], id="kill-without-reason"),
        pytest.param(["rollback", "7"], id="rollback-without-reason"),
        pytest.param(["deploy"], id="deploy-without-file"),
        pytest.param(["launch"], id="unknown-verb"),
        pytest.param(["status", "7", "--interval", "0"], id="interval-0"),
    ],
)
def test_usage_error__exits_2_before_asking_anything(args):
    result = run_ctl(*args, url="http://127.0.0.1:9")

    assert result.returncode == 2
    assert "usage: canaryctl" in result.stderr


def test_no_server_configured__exits_2_and_says_how_to_name_one():
    result = run_ctl("status", "7")

    assert result.returncode == 2
    assert "set CANARY_URL or pass --url" in result.stderr


def test_packaging__pip_installs_the_one_module_as_the_canaryctl_command(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    package = BASE_DIR / "packaging" / "canaryctl"

    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(package)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert installed.returncode == 0, installed.stderr
    version = subprocess.run(
        [str(venv / "bin" / "canaryctl"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.strip() == "canaryctl 0.1.0"
    (module,) = venv.glob("lib/python*/site-packages/canaryctl.py")
    assert module.read_text() == CLIENT.read_text()
    assert not list(venv.glob("lib/python*/site-packages/canary_site"))
    assert sorted(path.name for path in package.iterdir()) == ["pyproject.toml"]


def test_python_dash_m__runs_the_same_client():
    result = run_ctl("--version", module=True)

    assert (result.returncode, result.stdout.strip()) == (0, "canaryctl 0.1.0")


# ---------------------------------------------------------------------------- validate


@live
def test_validate__a_valid_file__exits_0(ctl, tmp_path):
    (tmp_path / "deploy.yaml").write_text(STRICT_YAML)

    result = ctl("validate", "-f", "deploy.yaml", "--strict", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "deploy.yaml: valid"
    assert "estimate full promotion in " in result.stdout


@live
def test_validate__an_invalid_file__exits_2_naming_each_field(ctl, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_config().replace("durationMs: 5000", "durationMs: -5", 1))

    result = ctl("validate", "-f", str(path))

    assert result.returncode == 2
    assert "error    phases[0].durationMs: must not be negative." in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == f"{path}: not valid (1 error(s))"


@live
def test_validate__strict__counts_the_warnings_as_errors(ctl, deploy_file):
    lenient = ctl("validate", "-f", str(deploy_file))
    strict = ctl("validate", "-f", str(deploy_file), "--strict")

    short = "phases[0].durationMs: is 5s: under a minute is too short"
    assert lenient.returncode == 0 and f"warning  {short}" in lenient.stdout
    assert strict.returncode == 2 and f"error    {short}" in strict.stdout


@live
def test_validate__for_production__applies_its_rules(ctl, tmp_path):
    path = tmp_path / "deploy.json"
    config = {
        "name": "shop 2.0",
        "serviceName": "shop",
        "stableVersion": STABLE,
        "canaryVersion": CANARY,
        "canaryEndpoint": "http://canary.shop.internal:8080",
        "phases": [{"trafficPercentage": 100, "durationMs": 600_000}],
    }
    path.write_text(json.dumps(config))

    def findings(*args: str) -> tuple[int, set[str]]:
        result = ctl("validate", "-f", str(path), "-o", "json", *args)
        report = json.loads(result.stdout)
        return result.returncode, {i["field"] for i in report["errors"] + report["warnings"]}

    assert "canaryEndpoint" not in findings()[1]
    assert "canaryEndpoint" in findings("--environment", "production")[1]
    assert findings("--environment", "production", "--strict")[0] == 2


@live
def test_validate__output_json__is_the_validators_report_as_it_is(ctl, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "x", "phases": []}))

    result = ctl("validate", "-f", str(path), "--output", "json")

    report = json.loads(result.stdout)
    assert result.returncode == 2
    assert report["valid"] is False
    assert {"serviceName", "phases"} <= {issue["field"] for issue in report["errors"]}
    assert set(report) >= {"errors", "warnings", "recommendations", "estimates"}


# ---------------------------------------------------------------------------- deploy and status


@live
def test_deploy__without_wait__creates_and_starts_the_deployment(ctl, shop, deploy_file):
    result = ctl("deploy", "-f", str(deploy_file), "--reason", "pipeline 41")

    deployment = Deployment.objects.get()
    assert result.returncode == 0, result.stderr
    assert deployment.status == DeploymentStatus.RUNNING
    assert f"created deployment {deployment.pk}: shop {CANARY}" in result.stdout
    assert f"deployment {deployment.pk}: phase 1/2  share 30%  running" in result.stdout
    start = deployment.events.get(kind=EventKind.START)
    assert (start.actor.username, start.source, start.reason) == ("erin", "api", "pipeline 41")
    # The validator's warnings are shown, and do not stop a lenient deploy.
    assert "warning  phases[0].durationMs: is 5s" in result.stdout


@pytest.mark.usefixtures("quick_policy")
@live
def test_deploy__a_json_file_with_a_health_policy__is_judged_by_that_policy(ctl, shop, tmp_path):
    path = tmp_path / "deploy.json"
    path.write_text(
        json.dumps(
            {
                "name": "shop json",
                "serviceName": "shop",
                "stableVersion": STABLE,
                "canaryVersion": CANARY,
                "phases": [{"trafficPercentage": 100, "durationMs": 60_000}],
            }
        )
    )

    result = ctl("deploy", "-f", str(path), "--health-policy", "closed-loop", "-o", "json")

    body = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert (body["name"], body["status"], body["health_policy"]) == (
        "shop json",
        "running",
        "closed-loop",
    )
    assert Deployment.objects.get().health_policy.name == "closed-loop"


BAD_FILES = {
    "invalid-value.yaml": (
        yaml_config().replace("durationMs: 5000", "durationMs: -5", 1),
        "error    phases[0].durationMs: must not be negative.",
    ),
    "broken.json": ('{"name": "shop", ', "broken.json is not valid JSON"),
    "broken.yaml": ("name: [unclosed\n", "error    config: is not valid YAML"),
}


@live
def test_deploy__a_bad_file__exits_2_and_creates_nothing(ctl, shop, tmp_path):
    for name, (text, message) in BAD_FILES.items():
        (tmp_path / name).write_text(text)

        result = ctl("deploy", "-f", name, "--wait", cwd=tmp_path)

        assert result.returncode == 2, name
        assert message in result.stdout + result.stderr, name
    assert not Deployment.objects.exists()


@live
def test_deploy__a_file_that_is_missing__exits_2(ctl, tmp_path):
    result = ctl("deploy", "-f", str(tmp_path / "nowhere.yaml"))

    assert result.returncode == 2
    assert "cannot read" in result.stderr and "nowhere.yaml" in result.stderr


@live
def test_status__shows_the_phases__and_json_is_the_apis_deployment(ctl, shop, deploy_file):
    deployment = started(ctl, deploy_file)

    text = ctl("status", str(deployment.pk))
    as_json = ctl("status", str(deployment.pk), "--output", "json")

    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == f"deployment {deployment.pk}: shop {CANARY} (shop {STABLE} -> {CANARY})"
    assert lines[1].startswith("  status running, phase 1/2, canary share 30%")
    assert lines[2].split() == ["*", "1", "30%", "running"]
    assert lines[3].split() == ["2", "100%", "pending"]
    assert "pause" in lines[4] and "abort" in lines[4]
    body = json.loads(as_json.stdout)
    assert (body["id"], body["status"], body["current_phase"]) == (deployment.pk, "running", 1)
    assert [phase["traffic_percentage"] for phase in body["phases"]] == ["30.00", "100.00"]


@live
def test_status__of_no_such_deployment__or_with_a_bad_token__exits_2(ctl, shop):
    missing = ctl("status", "999999")
    unknown = ctl("status", "1", as_token="cnry_not-a-token")

    assert missing.returncode == 2 and "error: Not found." in missing.stderr
    assert unknown.returncode == 2 and "Invalid, expired or revoked token." in unknown.stderr


# ---------------------------------------------------------------------------- lifecycle verbs


@live
def test_lifecycle_verbs__steer_the_deployment__and_refusals_exit_1(ctl, shop, deploy_file):
    deployment = started(ctl, deploy_file)
    pk = str(deployment.pk)

    def status() -> tuple[str, int | None]:
        row = Deployment.objects.get(pk=deployment.pk)
        return row.status, row.current_phase

    assert ctl("pause", pk, "--reason", "look at the graphs").returncode == 0
    assert status() == ("paused", 1)
    again = ctl("pause", pk)
    assert again.returncode == 1
    assert "A paused deployment cannot be paused" in again.stderr
    assert ctl("resume", pk).returncode == 0
    assert status() == ("running", 1)

    # The phase has no data of its own: promoting needs a reason, which is bad input.
    unexplained = ctl("promote", pk)
    assert unexplained.returncode == 2
    assert "say why you promote anyway" in unexplained.stderr
    promoted = ctl("promote", pk, "--reason", "the graphs look fine", "--phase", "1")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"deployment {pk}: phase 2/2  share 100%  running"
    assert status() == ("running", 2)
    stale = ctl("promote", pk, "--reason", "again", "--phase", "1")
    assert stale.returncode == 1

    assert ctl("abort", pk, "--reason", "wrong build").returncode == 0
    assert status()[0] == "aborted"
    assert ctl("retry", pk).returncode == 0
    assert status()[0] == "pending"
    abort = Deployment.objects.get(pk=deployment.pk).events.get(kind=EventKind.ABORT)
    assert (abort.actor.username, abort.reason) == ("erin", "wrong build")


@live
def test_promote_full__makes_the_canary_stable(ctl, shop, deploy_file):
    deployment = started(ctl, deploy_file)

    result = ctl("promote", str(deployment.pk), "--full", "--reason", "hotfix", "-o", "json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert Service.objects.get(pk=shop.pk).stable_version == CANARY


@live
def test_rollback__rolls_a_running_deployment_back_by_its_plan(ctl, shop, deploy_file):
    deployment = started(ctl, deploy_file)

    result = ctl("rollback", str(deployment.pk), "--reason", "error budget burnt")

    execution = RollbackExecution.objects.get(deployment=deployment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"deployment {deployment.pk}: rollback execution {execution.pk} by the plan "
    )
    assert (execution.reason, execution.requested_by.username) == ("error budget burnt", "erin")
    assert Deployment.objects.get(pk=deployment.pk).status in ("rolling_back", "rolled_back")

    refused = ctl("rollback", str(deployment.pk), "--reason", "twice")
    assert refused.returncode == 1, refused.stderr


# ---------------------------------------------------------------------------- flags


@live
def test_flags__get_enable_rollout_disable_and_kill(ctl):
    flag_services.flag_create(key="new-checkout", name="New checkout")

    def flag() -> Flag:
        return Flag.objects.get(key="new-checkout")

    got = ctl("flags", "get", "new-checkout")
    assert got.returncode == 0
    assert got.stdout.startswith("flag new-checkout: disabled, rollout ")
    assert ctl("flags", "enable", "new-checkout", "--reason", "launch").returncode == 0
    assert flag().status == "enabled"
    rolled = ctl("flags", "rollout", "new-checkout", "25.5")
    assert rolled.returncode == 0
    assert rolled.stdout.startswith("flag new-checkout: enabled, rollout 25.5%")
    assert json.loads(ctl("flags", "get", "new-checkout", "-o", "json").stdout)[
        "rollout_percentage"
    ] in ("25.50", 25.5)
    too_much = ctl("flags", "rollout", "new-checkout", "150")
    assert too_much.returncode == 2
    assert "percentage: Ensure this value is less than or equal to 100." in too_much.stderr
    assert ctl("flags", "disable", "new-checkout").returncode == 0
    assert flag().status == "disabled"
    killed = ctl("flags", "kill", "new-checkout", "--reason", "payments failing")
    assert killed.returncode == 0
    assert "(killed: payments failing)" in killed.stdout
    assert (flag().status, flag().killed_reason) == ("killed", "payments failing")

    body = json.loads(ctl("flags", "get", "new-checkout", "-o", "json").stdout)
    assert (body["key"], body["status"], body["killed_reason"]) == (
        "new-checkout",
        "killed",
        "payments failing",
    )
    missing = ctl("flags", "get", "no-such-flag")
    assert missing.returncode == 2 and "Not found." in missing.stderr


# ---------------------------------------------------------------------------- approvals


@pytest.fixture
def approver(token_for: Callable[[str, str], str]) -> str:
    """The token of "abe", an approver."""
    return token_for("abe", "approver")


@pytest.fixture
def starts_need_approval(approver: str) -> Any:
    """Every deployment start needs one approver's sign-off."""
    return rollback_services.approval_policy_create(
        name="starts", scope_kind="all", actions=["deployment.start"], quorum=1
    )


@live
def test_approvals__a_held_start__exits_1__and_is_listed_and_approved(
    ctl, shop, deploy_file, starts_need_approval, approver
):

    held = ctl("deploy", "-f", str(deploy_file))

    request = ApprovalRequest.objects.get()
    deployment = Deployment.objects.get()
    assert held.returncode == 1
    assert f"held for approval: request #{request.pk} deployment.start of " in held.stdout
    assert deployment.status == DeploymentStatus.PENDING

    listed = ctl("approvals", "list", as_token=approver)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:3] == [
        str(request.pk),
        "pending",
        "deployment.start",
    ]
    as_json = json.loads(ctl("approvals", "list", "-o", "json", as_token=approver).stdout)
    assert [item["id"] for item in as_json["results"]] == [request.pk]

    own = ctl("approvals", "approve", str(request.pk))
    assert own.returncode == 2, own.stderr  # the engineer's role may not approve
    approved = ctl("approvals", "approve", str(request.pk), "--comment", "ok", as_token=approver)
    assert approved.returncode == 0, approved.stderr
    assert "Approved and applied." in approved.stdout
    assert Deployment.objects.get().status == DeploymentStatus.RUNNING
    assert ctl("approvals", "list", as_token=approver).stdout.strip() == "no approval requests"
    decided = ctl("approvals", "approve", str(request.pk), as_token=approver)
    assert decided.returncode == 1 and "has been applied already" in decided.stderr


@live
def test_approvals__reject__closes_the_request_with_the_comment(
    ctl, shop, deploy_file, starts_need_approval, approver
):
    assert ctl("deploy", "-f", str(deploy_file)).returncode == 1
    request = ApprovalRequest.objects.get()

    result = ctl(
        "approvals", "reject", str(request.pk), "--comment", "not on a Friday", as_token=approver
    )

    assert result.returncode == 0, result.stderr
    request.refresh_from_db()
    assert request.state == "rejected"
    assert request.decisions.get().comment == "not on a Friday"
    got = json.loads(ctl("approvals", "get", str(request.pk), "-o", "json").stdout)
    assert got["state"] == "rejected"
    assert Deployment.objects.get().status == DeploymentStatus.PENDING


@live
def test_deploy_wait__held_for_approval__waits_for_it_then_follows_the_deployment(
    live_server, shop, deploy_file, starts_need_approval, approver, token_for, tmp_path
):
    engineer = token_for("erin", "engineer")
    env = {**os.environ, "CANARY_URL": live_server.url, "CANARY_TOKEN": engineer}
    log = (tmp_path / "wait.log").open("w+")
    waiting = subprocess.Popen(
        [
            sys.executable,
            str(CLIENT),
            "deploy",
            "-f",
            str(deploy_file),
            "--wait",
            "--interval",
            "0.2",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        request = wait_for(ApprovalRequest.objects.first, timeout=30)
        assert request, Path(log.name).read_text()
        approved = run_ctl(
            "approvals", "approve", str(request.pk), url=live_server.url, token=approver
        )
        assert approved.returncode == 0, approved.stderr
        assert wait_for(lambda: "share 30%  running" in Path(log.name).read_text(), timeout=30)
        aborted = run_ctl(
            "abort",
            str(request.object_id),
            "--reason",
            "enough",
            url=live_server.url,
            token=engineer,
        )
        assert aborted.returncode == 0, aborted.stderr
        code = waiting.wait(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
        log.close()

    text = Path(log.name).read_text()
    assert code == 1, text
    assert f"waiting for approval request #{request.pk}" in text
    assert f"approval request #{request.pk} applied" in text
    assert text.splitlines()[-1] == f"deployment {request.object_id} aborted: enough"


# ---------------------------------------------------------------------------- unreachable


def test_unreachable__a_refused_connection__exits_3():
    result = run_ctl("status", "1", url=f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 3
    assert "cannot reach" in result.stderr and "connection refused" in result.stderr


def test_unreachable__a_name_that_does_not_resolve__exits_3():
    result = run_ctl("--retries", "0", "status", "1", url="http://canary.invalid")

    assert result.returncode == 3
    assert "name not resolved" in result.stderr


def test_unreachable__output_json__says_so_in_the_error_body():
    result = run_ctl(
        "status", "1", "-o", "json", "--retries", "0", url=f"http://127.0.0.1:{free_port()}"
    )

    assert result.returncode == 3
    assert json.loads(result.stdout)["error"]["code"] == "unreachable"


class OneAnswerServer:
    """A web server that answers every request with ``status`` and counts them: a broken load
    balancer or a crashed upstream in front of Canary."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.hits: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                owner.hits.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<h1>Bad gateway</h1>")

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OneAnswerServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_server_errors__a_read_is_retried__then_exits_3():
    with OneAnswerServer(502) as server:
        result = run_ctl("status", "1", url=server.url, token="t")

    assert result.returncode == 3
    assert "the server failed: HTTP 502 from GET /api/v1/deployments/1/" in result.stderr
    assert server.hits == ["GET /api/v1/deployments/1/"] * 3


def test_server_errors__a_write_is_retried_only_on_503__which_says_nothing_was_done():
    with OneAnswerServer(500) as crashed:
        failed = run_ctl("pause", "1", url=crashed.url, token="t")
    with OneAnswerServer(503, {"Retry-After": "0"}) as unavailable:
        unavailable_result = run_ctl("pause", "1", url=unavailable.url, token="t")

    assert failed.returncode == 3 and crashed.hits == ["POST /api/v1/deployments/1/pause/"]
    assert unavailable_result.returncode == 3
    assert unavailable.hits == ["POST /api/v1/deployments/1/pause/"] * 3


def test_a_redirected_write__is_not_replayed_as_a_read__and_exits_2():
    elsewhere = "https://canary.example.com/api/v1/deployments/1/pause/"
    with OneAnswerServer(301, {"Location": elsewhere}) as server:
        result = run_ctl("pause", "1", url=server.url, token="t")

    assert result.returncode == 2
    assert f"redirected POST /api/v1/deployments/1/pause/ to {elsewhere}" in result.stderr
    assert server.hits == ["POST /api/v1/deployments/1/pause/"]


# ---------------------------------------------------------------------------- the pipeline


@pytest.fixture
def web(spawn: Callable[..., ManagedProcess], task_queue: str, tmp_path: Path) -> str:
    """gunicorn as the Procfile runs it, handing follow-up ticks to the loop's worker."""
    port = free_port()
    process = spawn(
        "web",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "canary_site.wsgi:application",
            "--config",
            str(BASE_DIR / "canary_site" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
        ],
        CANARY_TASK_QUEUE=task_queue,
        CANARY_TICK_SECONDS="1",
        CANARY_VAR_DIR=str(tmp_path / "web-var"),
    )
    url = f"http://127.0.0.1:{port}"
    ready = wait_for(lambda: (http_get(f"{url}/healthz", timeout=1) or [0])[0] == 200, timeout=60)
    assert ready, process.output()
    return url


@pytest.fixture
def failing_cart(spawn: Callable[..., ManagedProcess]) -> FaultyBackend:
    """Service "cart" beside "shop": a healthy stable backend and a canary failing every
    request from the start."""
    backends = []
    for version in (STABLE, CANARY):
        backend = FaultyBackend(version, free_port())
        backend.process = spawn(f"cart-{version}", fault_backend_args(backend.port, version))
        assert wait_for(backend.ready, timeout=20), backend.process.output()
        backends.append(backend)
    stable, canary = backends
    canary.fault(error_rate=1.0)
    service = routing_services.service_create(name="cart", stable_version=STABLE)
    for name, backend in (("stable", stable), ("canary", canary)):
        routing_services.target_create(
            service=service, name=name, endpoint=backend.url, version=backend.version
        )
    return canary


def documented_step() -> str:
    """The CI step of docs/pipelines.md, between its markers, as a shell script."""
    text = PIPELINES_DOC.read_text()
    found = re.search(r"<!-- ci-step -->\s*```sh\n(.*?)```\s*<!-- /ci-step -->", text, re.DOTALL)
    assert found, "docs/pipelines.md has no marked CI step"
    return found.group(1)


@pytest.fixture
def system(web, faulty_shop, failing_cart, start_proxy, loop_processes) -> dict[str, Any]:  # noqa: F811 (the fixtures)
    """Everything a pipeline deploys through: web, worker, beat, proxy and backends."""
    return {"web": web, "proxy": start_proxy("shop"), "loop": loop_processes}


@pytest.mark.usefixtures("quick_policy")
@pytest.mark.processes
@live
def test_pipeline__the_documented_step_ships_a_healthy_canary__a_failing_one_exits_1(
    system, token_for, tmp_path
):
    token = token_for("ci", "engineer")
    web, proxy = system["web"], system["proxy"]
    # The documented step names no health policy, so the site's default judges it: here one
    # that judges by the phases' own criteria and thresholds, without the comparison with
    # stable that the millisecond noise of a busy two-core machine can trip on 2 ms backends.
    health_services.health_policy_create(
        name=deployment_conf.default_policy_name(),
        alerting_enabled=False,
        policy=HealthPolicy.objects.get(name="closed-loop").policy,
    )
    # The CI job's workspace: the configuration files and canaryctl on the PATH.
    (tmp_path / "deploy.yaml").write_text(STRICT_YAML)
    (tmp_path / "cart.json").write_text(
        json.dumps(
            {
                "name": "cart 2.0",
                "serviceName": "cart",
                "stableVersion": STABLE,
                "canaryVersion": CANARY,
                "maxDeploymentTimeMs": 600_000,
                "phases": [
                    {
                        "trafficPercentage": 40,
                        "durationMs": 300_000,
                        "rollbackThresholds": {"errorRate": 10},
                    },
                    {"trafficPercentage": 100, "durationMs": 60_000},
                ],
            }
        )
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "canaryctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{CLIENT}" "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CANARY_URL": web,
        "CANARY_TOKEN": token,
    }
    step = tmp_path / "step.sh"
    step.write_text(documented_step())

    shop_load = PacedLoad(proxy.url, rate=50, limit=240)
    cart_load = PacedLoad(proxy.url, rate=20, limit=240, headers={"X-Canary-Service": "cart"})
    with shop_load, cart_load:
        # The failing canary, from the JSON file, through ``python -m canaryctl``.
        cart_log = (tmp_path / "cart.log").open("w+")
        cart = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "canaryctl",
                "deploy",
                "-f",
                str(tmp_path / "cart.json"),
                "--wait",
                "--health-policy",
                "closed-loop",
                "--timeout",
                "180",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=cart_log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            shipped = subprocess.run(
                ["bash", str(step)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            cart_code = cart.wait(timeout=60)
        finally:
            if cart.poll() is None:
                cart.kill()
            cart_log.close()
    cart_text = Path(cart_log.name).read_text()
    processes = output(*system["loop"].values(), proxy.process)

    assert shipped.returncode == 0, shipped.stdout + shipped.stderr + processes
    shop_deployment = Deployment.objects.get(service__name="shop")
    lines = shipped.stdout.splitlines()
    assert "deploy.yaml: valid" in lines
    assert f"created deployment {shop_deployment.pk}: shop {CANARY}" in shipped.stdout
    progress = [line.split("  ", 1)[1] for line in lines if re.match(r"\d\d:\d\d:\d\d  ", line)]
    assert progress[0].startswith("phase 1/2  share 10%  running")
    assert any(line.startswith("phase 2/2  share 100%  running") for line in progress)
    assert progress[-1].startswith("phase 2/2  share 100%  succeeded")
    assert lines[-1].startswith(f"deployment {shop_deployment.pk} succeeded")
    assert shop_deployment.status == DeploymentStatus.SUCCEEDED
    assert Service.objects.get(name="shop").stable_version == CANARY

    cart_deployment = Deployment.objects.get(service__name="cart")
    assert cart_code == 1, cart_text + processes
    assert cart_deployment.status == DeploymentStatus.ROLLED_BACK
    assert "phase 1/2  share 40%  running" in cart_text
    assert cart_text.splitlines()[-1].startswith(
        f"deployment {cart_deployment.pk} rolled_back: Roll back: error_rate"
    )
    assert Service.objects.get(name="cart").stable_version == STABLE
