"""A person's rollback in real Chromium against a live server, run by a real Celery worker and
beat: an engineer opens a running deployment, presses Roll back with a reason, lands on the
execution's page and watches its steps fill in as the beat advances them (the canary down in
two steps, then a webhook to a local receiver), sees it succeed and the polling stop, then finds
it in the history."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from deployments.models import Deployment
from rollback import services
from rollback.models import RollbackExecution
from tests.conftest import celery_args, login
from tests.rollback.test_rollback_views import running, shop  # noqa: F401

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
    pytest.mark.processes,
]

# Every step the page shows, each time the steps are swapped in: [[state, ...], ...].
RECORD_STEPS = """() => {
  window.stepsSeen = [];
  const snap = () => {
    const states = [...document.querySelectorAll('#execution-steps [data-testid=step-state]')]
      .map((cell) => cell.textContent.trim());
    const last = window.stepsSeen[window.stepsSeen.length - 1];
    if (states.length && JSON.stringify(states) !== JSON.stringify(last)) {
      window.stepsSeen.push(states);
    }
  };
  snap();
  new MutationObserver(snap).observe(document.body, {childList: true, subtree: true});
}"""


@pytest.fixture
def control_loop(spawn: Any, task_queue: str, tmp_path: Any) -> dict[str, Any]:
    """A worker and a beat ticking every second on a queue of their own: the beat's rollback
    step (`rollback_executions_advance`) is what runs the execution."""
    env = {"CANARY_TASK_QUEUE": task_queue, "CANARY_TICK_SECONDS": "1"}
    worker = spawn(
        "worker",
        celery_args("worker", "-Q", task_queue, "--pool", "solo", "--loglevel", "INFO"),
        **env,
    )
    beat = spawn(
        "beat", celery_args("beat", "-s", str(tmp_path / "schedule"), "--loglevel", "INFO"), **env
    )
    return {"worker": worker, "beat": beat}


@pytest.fixture
def pager_plan(receiver: Any, shop: Any) -> Any:  # noqa: F811
    """shop's default plan: the canary down in two steps over 4 s, then the pager's webhook."""
    return services.rollback_plan_create(
        definition={
            "name": "shop two steps",
            "service": "shop",
            "isDefault": True,
            "strategy": "gradual",
            "strategyConfig": {"durationMs": 4000, "steps": 2},
            "actions": [
                {"id": "stop", "name": "Stop new traffic", "type": "stop_new_traffic", "order": 1},
                {
                    "id": "pager",
                    "name": "Tell the pager",
                    "type": "call_webhook",
                    "order": 2,
                    "timeoutMs": 10_000,
                    "config": {"url": receiver.url, "secret": "pager-secret"},
                },
            ],
        }
    )


def test_browser__roll_back__watch_the_steps_fill_in__succeed__find_it_in_the_history(
    page,
    live_server,
    people,
    running,  # noqa: F811
    pager_plan,
    receiver,
    control_loop,
):
    login(page, "erin")
    page.goto(f"/deployments/{running.pk}/")
    panel = page.get_by_test_id("rollback-panel")
    expect(panel).to_contain_text("shop two steps")

    panel.get_by_label("Why roll back").fill("checkout errors since 2.0")
    panel.get_by_role("button", name="Roll back").click()

    expect(page).to_have_url(re.compile(r"/rollback/executions/\d+/$"))
    execution = RollbackExecution.objects.get()
    page.evaluate(RECORD_STEPS)
    expect(
        page.get_by_role("heading", name=re.compile(f"Rollback #{execution.pk}"))
    ).to_be_visible()
    expect(page.locator("#execution-header")).to_contain_text("checkout errors since 2.0")
    expect(page.locator("#execution-header")).to_contain_text("erin")
    steps = page.get_by_test_id("execution-steps")
    expect(steps).to_contain_text("Canary to 5%")
    expect(steps).to_contain_text("Tell the pager")

    state = page.get_by_test_id("execution-state")
    expect(state).to_have_text("Succeeded", timeout=60_000)
    for position in range(3):
        expect(page.get_by_test_id(f"step-{position}").get_by_test_id("step-state")).to_have_text(
            "Succeeded"
        )
    # Polling stopped: the steps no longer carry a trigger, and the header no Cancel button.
    expect(page.locator("#execution-steps[hx-trigger]")).to_have_count(0)
    expect(page.locator("#execution-steps[hx-get]")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel rollback")).to_have_count(0)
    assert control_loop["worker"].proc.poll() is None, control_loop["worker"].output()

    # The page filled in as the beat went: some step done while a later one still waited.
    seen = page.evaluate("window.stepsSeen")
    assert seen[-1] == ["Succeeded"] * 3, seen
    assert any(states[0] == "Succeeded" and states[-1] != "Succeeded" for states in seen), seen

    execution.refresh_from_db()
    assert execution.state == "succeeded", execution.outcome
    assert Deployment.objects.get(pk=running.pk).status == "rolled_back"
    hooks = [delivery for delivery in receiver.accepted if delivery.path == "/hook"]
    assert len(hooks) == 1
    assert hooks[0].headers["Idempotency-Key"] == f"rollback-{execution.pk}-pager"

    page.get_by_role("navigation", name="Rollback").get_by_role("link", name="History").click()
    expect(page).to_have_url(re.compile(r"/rollback/executions/$"))
    row = page.get_by_test_id(f"execution-{execution.pk}")
    expect(row).to_contain_text("Succeeded")
    expect(row).to_contain_text("shop two steps")
    expect(row).to_contain_text("checkout errors since 2.0")
