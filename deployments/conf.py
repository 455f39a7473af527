"""The deployments app's settings, read when used so a changed setting (or a test) takes effect.

Each is a ``CANARY_*`` setting with the default shown; none is required. The environment is read
next, so a knob works before settings.py names it.
"""

from __future__ import annotations

from datetime import timedelta

from canary_site.conf import setting
from deployments.validation import Timing

_get = setting


def tick_seconds() -> float:
    """How often beat runs the control tick (the site's own setting)."""
    return float(_get("CANARY_TICK_SECONDS", 5.0))


def default_policy_name() -> str:
    """The health policy a deployment without one is judged by; created on first use."""
    return str(_get("CANARY_DEPLOYMENT_DEFAULT_POLICY", "deployments-default"))


def default_window_seconds() -> int:
    """The default policy's evaluation window."""
    return int(_get("CANARY_DEPLOYMENT_WINDOW_SECONDS", 60))


def default_min_requests() -> int:
    """The default policy's smallest window that counts as data."""
    return int(_get("CANARY_DEPLOYMENT_MIN_REQUESTS", 20))


def phase_min_requests() -> int:
    """The canary requests a phase needs of its own, judged healthy, before it may advance,
    whatever its criteria (a phase without criteria too)."""
    return int(_get("CANARY_DEPLOYMENT_PHASE_MIN_REQUESTS", 100))


def threshold_z() -> float:
    """How sure a breach of an error-rate or availability threshold must be: the z of the
    one-sided Wilson bound that must lie beyond it (3.9: about 1 in 20,000 looks)."""
    return float(_get("CANARY_DEPLOYMENT_THRESHOLD_Z", 3.9))


def default_alert_channels() -> list[str]:
    """The channels the default policy tells of its alerts: those the site has configured
    (``CANARY_SLACK_WEBHOOK_URL``, ``CANARY_WEBHOOK_URL``), or the ones this setting lists."""
    listed = _get("CANARY_DEPLOYMENT_ALERT_CHANNELS", None)
    if listed:
        if isinstance(listed, str):
            listed = [part.strip() for part in listed.split(",")]
        return [str(channel) for channel in listed if channel]
    from health import conf as health_conf

    channels = []
    if health_conf.slack_webhook_url():
        channels.append("slack")
    if health_conf.webhook_url():
        channels.append("webhook")
    return channels


def max_gap() -> timedelta:
    """How far apart two observations may be before a criterion's run counts as broken."""
    return timedelta(seconds=float(_get("CANARY_DEPLOYMENT_MAX_GAP_SECONDS", 60)))


def rule_priority() -> int:
    """Priority of the routing rule a deployment creates (lower runs first): after people's
    own rules, so a header that pins a tester to a version still wins."""
    return int(_get("CANARY_DEPLOYMENT_RULE_PRIORITY", 1000))


def rollback_action_ms() -> int:
    """The validator's budget for taking a canary out of traffic."""
    return int(_get("CANARY_DEPLOYMENT_ROLLBACK_ACTION_MS", 30_000))


def enqueue_follow_ups() -> bool:
    """Whether a transition hands the deployment's next tick to a worker at once (after commit)
    rather than leaving it to the next beat."""
    value = _get("CANARY_DEPLOYMENTS_ENQUEUE", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def timing() -> Timing:
    """The control loop's timing as the validator needs it for its estimates."""
    from health import conf as health_conf
    from routing import conf as routing_conf

    delay = routing_conf.proxy_flush_seconds() + health_conf.bucket_seconds()
    return Timing(
        tick_interval_ms=int(tick_seconds() * 1000),
        evaluation_interval_ms=None,
        rollback_action_ms=rollback_action_ms(),
        data_delay_ms=int((delay + health_conf.settle_seconds()) * 1000),
        window_ms=default_window_seconds() * 1000,
    )
