"""The alert decision without a database: what one stored check does to its canary's alert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from health.alerting import AlertAction, Event, OpenAlert, Status, decide_alert

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def decide(verdict: str, alert: OpenAlert | None = None, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "verdict": verdict,
        "message": f"checkout 2.0 is {verdict}",
        "service": "checkout",
        "canary_version": "2.0",
        "alert": alert,
        "cooldown_seconds": 300,
        "cooling_until": None,
        "now": NOW,
    }
    return decide_alert(**(arguments | overrides))


def test_decide__a_failing_check_without_an_alert__raises_one_and_notifies():
    decision = decide("warning")

    assert decision.action == AlertAction.RAISE
    assert decision.notify == Event.RAISED
    assert decision.changes["severity"] == "warning"
    assert decision.changes["status"] == Status.OPEN
    assert decision.changes["title"] == "Warning: checkout 2.0 is unhealthy"
    assert decision.changes["check_count"] == 1
    assert decision.changes["last_notified_at"] == NOW
    assert decision.changes["cooldown_until"] == NOW + timedelta(seconds=300)


def test_decide__a_failing_check_while_an_earlier_alert_cools_down__raises_one_silently():
    until = NOW + timedelta(seconds=90)

    decision = decide("critical", cooling_until=until)

    assert decision.action == AlertAction.RAISE
    assert decision.notify is None
    assert decision.changes["cooldown_until"] == until
    assert "last_notified_at" not in decision.changes


def test_decide__a_failing_check_no_worse_than_the_open_alert__counts_it_silently():
    alert = OpenAlert(severity="critical", check_count=3, notified=True)

    decision = decide("warning", alert)

    assert decision.action == AlertAction.SEEN
    assert decision.notify is None
    assert decision.changes == {
        "message": "checkout 2.0 is warning",
        "check_count": 4,
        "last_seen_at": NOW,
    }


def test_decide__a_critical_check_on_a_warning_alert__worsens_it_and_restarts_escalation():
    alert = OpenAlert(severity="warning", check_count=2, notified=False)

    decision = decide("critical", alert, cooling_until=NOW + timedelta(hours=1))

    assert decision.action == AlertAction.WORSEN
    assert decision.notify == Event.SEVERITY
    assert decision.changes["severity"] == "critical"
    assert decision.changes["title"] == "Critical: checkout 2.0 is unhealthy"
    assert decision.changes["check_count"] == 3
    assert decision.changes["escalation_level"] == 0
    assert decision.changes["escalation_since"] == NOW
    assert decision.changes["cooldown_until"] == NOW + timedelta(seconds=300)


def test_decide__a_passing_check__resolves_the_open_alert_and_tells_whoever_was_told():
    told = decide("pass", OpenAlert(severity="warning", check_count=1, notified=True))
    untold = decide("pass", OpenAlert(severity="warning", check_count=1, notified=False))

    assert told.action == untold.action == AlertAction.RESOLVE
    assert told.changes["status"] == Status.RESOLVED
    assert told.changes["resolution"] == "Recovered: checkout 2.0 is pass"
    assert told.notify == Event.RESOLVED
    assert untold.notify is None


def test_decide__no_data_inconclusive_or_a_pass_without_an_alert__change_nothing():
    alert = OpenAlert(severity="critical", check_count=1, notified=True)

    for verdict, current in (("no_data", alert), ("inconclusive", alert), ("pass", None)):
        decision = decide(verdict, current)
        assert decision.action == AlertAction.NOTHING, verdict
        assert decision.notify is None
        assert not decision.changes
