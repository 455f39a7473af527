"""The validator of kill switches: ``type: "kill_switch"`` of `deployments.validation.validate`
(and so of ``POST /api/v1/validate``), registered when the rollback app is ready.

It reads the switch as the services would (`rollback.killswitches.read_kill_switch`) and says
what would make it fail or mislead, each finding with its field and a stable code:

- **Schema**: the reader's first problem, by its field [invalid_value].
- **Targets**: the service a service switch stops, the flags a flag switch kills and the
  services its conditions watch must exist [not_found].
- **Triggers**: a condition on metrics with no grace period fires on one bad window
  [no_grace_period]; a system switch fired by one service's metrics stops every service
  [system_switch_on_one_service]; auto-recovery on a switch that only a person fires never runs
  [auto_recovery_never_runs]; a condition needing fewer than 10 requests judges on very thin
  traffic [thin_condition].
- **News**: a critical switch that tells nobody (a recommendation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deployments.config import INVALID_TYPE, INVALID_VALUE, ConfigError, load_text
from deployments.validation import Context, Findings, Timing
from flags.models import Flag
from rollback import killswitches
from routing.models import Service

NOT_FOUND = "not_found"


def validate_kill_switch(raw: Any, context: Context, timing: Timing, findings: Findings) -> None:
    """The checks of a kill switch; see the module docstring."""
    if isinstance(raw, str | bytes):
        try:
            raw = load_text(raw)
        except ConfigError as error:
            for problem in error.errors:
                findings.error(problem.field, problem.code, problem.message)
            return
    if not isinstance(raw, Mapping):
        findings.error("config", INVALID_TYPE, "config must be an object: a kill switch.")
        return
    try:
        spec = killswitches.read_kill_switch(raw)
    except killswitches.InvalidKillSwitch as error:
        findings.error(error.field or "config", INVALID_VALUE, str(error))
        return
    _check_targets(spec, findings)
    _check_triggers(spec, findings)
    if spec.priority == killswitches.Priority.CRITICAL and not spec.notify_channels:
        findings.recommend(
            "A critical kill switch tells nobody: add notifications (channels and recipients)."
        )


def _check_targets(spec: killswitches.KillSwitchSpec, findings: Findings) -> None:
    watched = {c.service for c in spec.conditions if c.service}
    named = watched | ({spec.service} if spec.scope == killswitches.Scope.SERVICE else set())
    known = set(Service.objects.filter(name__in=named).values_list("name", flat=True))
    if spec.scope == killswitches.Scope.SERVICE and spec.service not in known:
        findings.error(
            "targetComponent", NOT_FOUND, f"targetComponent: there is no service {spec.service!r}."
        )
    for index, condition in enumerate(spec.conditions):
        if condition.service and condition.service not in known:
            findings.error(
                f"triggerConditions[{index}].component",
                NOT_FOUND,
                f"triggerConditions[{index}].component: there is no service {condition.service!r}.",
            )
    if spec.scope == killswitches.Scope.FLAG:
        found = set(Flag.objects.filter(key__in=spec.flags).values_list("key", flat=True))
        for key in spec.flags:
            if key not in found:
                findings.error("flags", NOT_FOUND, f"flags: there is no flag {key!r}.")


def _check_triggers(spec: killswitches.KillSwitchSpec, findings: Findings) -> None:
    metric = [c for c in spec.conditions if c.watches_metrics]
    if metric and spec.grace_period_ms == 0:
        findings.warning(
            "gracePeriodMs",
            "no_grace_period",
            "gracePeriodMs is 0: one bad window of a watched service fires the switch; a grace "
            "period of a few windows rides out a blip.",
        )
    if spec.scope == killswitches.Scope.SYSTEM and metric:
        findings.warning(
            "scope",
            "system_switch_on_one_service",
            "A system switch fired by a service's metrics stops every service and every flag "
            "that allows it; a service switch stops only the service at fault.",
        )
    if spec.auto_recovery.enabled and not spec.automatic:
        findings.warning(
            "autoRecovery.enabled",
            "auto_recovery_never_runs",
            "Automatic recovery follows a condition that cleared; this switch is only fired by a "
            "person, so a person recovers it.",
        )
    for index, condition in enumerate(spec.conditions):
        if condition.watches_metrics and condition.min_requests < 10:
            findings.warning(
                f"triggerConditions[{index}].minRequests",
                "thin_condition",
                f"triggerConditions[{index}].minRequests is {condition.min_requests}: the switch "
                "judges on very few requests.",
            )
