"""How a phase stands outside the tick (`judge_phase`, for a person's promote and the pages),
and the health policy that judges the deployments that name none (`default_policy`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from canary_site.exceptions import CanaryError
from deployments import conf, observing, selectors
from deployments.lifecycle import Evidence, PhaseJudgement, phase_judgement
from deployments.models import Phase, phase_config
from health import services as health_services
from health.models import HealthPolicy


def judge_phase(phase: Phase, *, now: datetime | None = None) -> PhaseJudgement:
    """The current judgement of a phase from the observations the tick has stored."""
    now = now or timezone.now()
    spec = phase_config(phase)
    started = phase.started_at or now
    return phase_judgement(
        spec,
        started_at=started,
        now=now,
        observations=observing.observations(phase.observations, spec),
        max_gap=conf.max_gap(),
        evidence=Evidence.from_dict((phase.observations or {}).get("e")),
        min_requests=conf.phase_min_requests(),
        z=conf.threshold_z(),
    )


def default_policy_document() -> dict[str, Any]:
    """The policy document `default_policy` creates its policy from (`health.analysis`'s
    shape): the health app's safe comparison with stable, acting, with no thresholds of its
    own and no trend."""
    return {
        "window_seconds": conf.default_window_seconds(),
        "min_requests": conf.default_min_requests(),
        "no_data": "inconclusive",
        "thresholds": [],
        "trend": {"enabled": False},
        "auto_rollback": {"enabled": True},
    }


def default_policy() -> HealthPolicy:
    """The health policy for deployments that name none: created on first use through the
    health app's service, visible and editable on the health pages like any other.

    It is the health app's safe policy: the canary is compared with stable on each phase's own
    traffic and rolled back when it is significantly and materially worse (its error rate, or
    its latency), and the alert goes out on every channel the site has configured. A
    deployment created with no thresholds at all, from the wizard, the simple configuration
    or REST, is protected by it; the phases' own thresholds are a second line."""
    name = conf.default_policy_name()
    policy = selectors.health_policy_named(name)
    if policy is not None:
        return policy
    try:
        with transaction.atomic():
            return health_services.health_policy_create(
                name=name,
                description=(
                    "Judges canaries of deployments that name no policy: rolls back a canary "
                    "significantly and materially worse than stable on the phase's own "
                    "traffic. The deployment's phases hold the success criteria and the "
                    "absolute rollback thresholds."
                ),
                alerting_enabled=True,
                alert_channels=conf.default_alert_channels(),
                policy=default_policy_document(),
            )
    except CanaryError:
        # Two ticks creating it at once: the other one won.
        policy = selectors.health_policy_named(name)
        if policy is None:
            raise
        return policy
