"""Emergency kill switches: created and changed by engineers and admins, fired by a person, by
kill-all or by their conditions on the beat, and recovered by a person or automatically.

What an activation does, in one transaction, recording exactly what it changed:

- flag scope: its flags are killed (`flags.services.flags_kill_many`);
- service scope: the service is halted (`routing.services.services_halt`: every request by its
  default route to the stable version, so the canary is out of traffic in every proxy with no
  rule rewritten), no deployment of it may start, its running deployments are paused (or rolled
  back, as the switch says), and the flags linked to its deployments that have
  `kill_switch_enabled` are killed;
- system scope: the same for every service and every flag with `kill_switch_enabled`; flags
  without it keep serving.

It never waits on a deployment tick: the halt and the kills lock only service and flag rows, and
a deployment whose row a tick holds is paused by the next watch instead (the halt has already
taken its canary out). A switch that fires twice at once leaves one activation (its row is
locked, and one active activation per switch is a constraint). Triggering is never gated;
recovering is the action ``killswitch.recover``, which an approval policy may gate.

Recovery puts back what the activation recorded and nothing more: flags still killed by it to
the status each had, the services it halted released (another switch's halt stays), the
deployments it paused resumed if they are still paused on the same phase.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from canary_site import gates
from canary_site.audit import audit_context
from canary_site.choices import Role, Source
from canary_site.exceptions import (
    Forbidden,
    NotFound,
    TransitionNotAllowed,
    ValidationFailed,
    full_clean,
)
from canary_site.roles import has_any_role
from deployments import transitions
from deployments.choices import DeploymentStatus
from deployments.lifecycle import Action
from deployments.models import Deployment
from flags import services as flag_services
from flags.models import Flag
from health import services as health_services
from health import store
from health.choices import AlertSeverity, AlertStatus
from health.histogram import Histogram
from health.models import Alert
from rollback import killswitches
from rollback.choices import ActivationState, ActivationTrigger, SwitchState
from rollback.models import KillSwitch, KillSwitchActivation
from routing import services as routing_services
from routing.models import Service, Target

logger = logging.getLogger(__name__)

KILL_ALL_NAME = "kill-all"
RECOVER_ACTION = "killswitch.recover"
# The metric store's reads for the conditions are grouped in steps this long; windows are
# rounded up to it.
GROUP_SECONDS = 5


def kill_switch_validate(*, definition: Any) -> killswitches.KillSwitchSpec:
    """The typed switch, or a 400 naming the field at fault."""
    try:
        return killswitches.read_kill_switch(definition)
    except killswitches.InvalidKillSwitch as error:
        raise ValidationFailed(
            f"{error.field}: {error.message}" if error.field else error.message,
            field=error.field or "definition",
        ) from None


def kill_switch_create(
    *, definition: Any, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> KillSwitch:
    spec = kill_switch_validate(definition=definition)
    switch = KillSwitch(created_by=actor if getattr(actor, "is_authenticated", False) else None)
    return _save(switch, definition, spec, actor, source, reason, verb="create")


def kill_switch_update(
    *,
    switch: KillSwitch,
    definition: Any,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> KillSwitch:
    """Replace the switch's definition; an active switch keeps what its activation changed."""
    spec = kill_switch_validate(definition=definition)
    return _save(switch, definition, spec, actor, source, reason, verb="update")


def _save(
    switch: KillSwitch,
    definition: Any,
    spec: killswitches.KillSwitchSpec,
    actor: Any,
    source: str,
    reason: str,
    *,
    verb: str,
) -> KillSwitch:
    if spec.name == KILL_ALL_NAME and spec.scope != killswitches.Scope.SYSTEM:
        # Kill-all fires the switch of this name: it stays a system switch.
        raise ValidationFailed(
            f"name: {KILL_ALL_NAME!r} is the kill-all switch's name; it can only be a system "
            "switch.",
            field="name",
        )
    service = None
    if spec.scope == killswitches.Scope.SERVICE:
        service = Service.objects.filter(name=spec.service).first()
        if service is None:
            raise ValidationFailed(
                f"targetComponent: there is no service named {spec.service!r}.",
                field="targetComponent",
            )
    flags: list[Flag] = []
    if spec.scope == killswitches.Scope.FLAG:
        flags = list(Flag.objects.filter(key__in=spec.flags))
        missing = sorted(set(spec.flags) - {flag.key for flag in flags})
        if missing:
            raise ValidationFailed(
                f"flags: there is no flag {', '.join(repr(key) for key in missing)}.",
                field="flags",
            )
    switch.name = spec.name
    switch.description = spec.description
    switch.scope = spec.scope.value
    switch.service = service
    switch.priority = spec.priority.value
    switch.enabled = spec.enabled
    switch.definition = killswitches.spec_to_dict(spec)
    switch.updated_at = timezone.now()
    if not spec.enabled and switch.state == SwitchState.ARMING:
        switch.state, switch.armed_since, switch.arming_reason = SwitchState.READY, None, ""
    full_clean(switch, exclude=["definition"])
    try:
        with (
            transaction.atomic(),
            audit_context(actor=actor, source=source, reason=reason, verb=verb),
        ):
            switch.save()
            switch.flags.set(flags)
    except IntegrityError:
        raise ValidationFailed(
            f"name: a kill switch named {spec.name!r} exists already.", field="name"
        ) from None
    return switch


def kill_switch_delete(
    *, switch: KillSwitch, actor: Any = None, source: str = Source.SYSTEM, reason: str = ""
) -> None:
    """Delete a switch; refused (409) while it is active: recover it first."""
    if switch.activations.filter(state=ActivationState.ACTIVE).exists():
        raise TransitionNotAllowed(
            f"Kill switch {switch.name!r} is active; recover it before deleting it.",
            code="active",
        )
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="delete"),
    ):
        switch.delete()


# --------------------------------------------------------------------------- firing


def _check_presser(actor: Any) -> None:
    if getattr(actor, "is_authenticated", False) and not has_any_role(
        actor, [Role.ENGINEER, Role.ADMIN]
    ):
        raise Forbidden("Only engineers and admins may trigger or recover kill switches.")


def _clean_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("reason: say why.", field="reason")
    if len(reason) > 2000:
        raise ValidationFailed("reason: at most 2,000 characters.", field="reason")
    return reason


def kill_switch_trigger(
    *,
    switch: KillSwitch,
    reason: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    now: datetime | None = None,
) -> KillSwitchActivation:
    """A person fires ``switch`` (never gated; a reason is required). Firing an active switch
    answers its activation."""
    _check_presser(actor)
    return _activate(
        switch, ActivationTrigger.MANUAL, _clean_reason(reason), {}, actor, source, now
    )


def kill_switch_kill_all(
    *, reason: str, actor: Any = None, source: str = Source.SYSTEM, now: datetime | None = None
) -> KillSwitchActivation:
    """`emergencyKillAll(reason)`: fire the system switch named ``kill-all`` (made on first
    use): every service halted, every flag with `kill_switch_enabled` killed."""
    _check_presser(actor)
    reason = _clean_reason(reason)
    switch = KillSwitch.objects.filter(name=KILL_ALL_NAME, scope=killswitches.Scope.SYSTEM).first()
    if switch is None:
        try:
            switch = kill_switch_create(
                definition={
                    "name": KILL_ALL_NAME,
                    "description": "Stops every canary and kills every flag that allows it.",
                    "scope": "system",
                    "priority": "critical",
                    "triggerConditions": [{"type": "manual"}],
                },
                actor=actor,
                source=source,
            )
        except ValidationFailed:
            # Made by a kill-all racing this one.
            switch = KillSwitch.objects.get(name=KILL_ALL_NAME)
    return _activate(switch, ActivationTrigger.KILL_ALL, reason, {}, actor, source, now)


@dataclass
class _Changes:
    flags: dict[int, str] = field(default_factory=dict)
    flag_keys: dict[int, str] = field(default_factory=dict)
    killed_at: str | None = None
    services: list[int] = field(default_factory=list)
    paused: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flags": [
                {"id": pk, "key": self.flag_keys.get(pk, ""), "previous": status}
                for pk, status in sorted(self.flags.items())
            ],
            "killedAt": self.killed_at,
            "services": self.services,
            "paused": self.paused,
            "rolledBack": self.rolled_back,
            "leftForTheWatch": self.left,
        }


def holder(switch: KillSwitch) -> str:
    """The name a switch holds its services' halt under."""
    return f"kill switch {switch.pk}"


def _activate(
    switch: KillSwitch,
    trigger: str,
    reason: str,
    evidence: dict[str, Any],
    actor: Any,
    source: str,
    now: datetime | None,
) -> KillSwitchActivation:
    now = now or timezone.now()
    person = actor if getattr(actor, "is_authenticated", False) else None
    with (
        transaction.atomic(),
        audit_context(actor=person, source=source, reason=reason, verb="trigger"),
    ):
        locked = KillSwitch.objects.select_for_update().get(pk=switch.pk)
        active = locked.activations.filter(state=ActivationState.ACTIVE).first()
        if active is not None:
            return active
        spec = killswitches.read_kill_switch(locked.definition)
        services, flags = _reach(locked, spec)
        changes = _Changes(killed_at=now.isoformat())
        changes.flag_keys = {flag.pk: flag.key for flag in flags}
        changes.flags = flag_services.flags_kill_many(
            flags=flags,
            reason=f"Kill switch {locked.name}: {reason}",
            actor=person,
            source=source,
            now=now,
        )
        halted = routing_services.services_halt(
            services=services,
            holder=holder(locked),
            reason=f"kill switch {locked.name}: {reason}"[:500],
            actor=person,
            source=source,
            now=now,
        )
        changes.services = sorted(service.pk for service in halted)
        _stop_deployments(
            locked, spec, [s.pk for s in services], reason, person, source, now, changes
        )
        activation = KillSwitchActivation.objects.create(
            switch=locked,
            trigger=trigger,
            reason=reason,
            evidence=evidence,
            changes=changes.to_dict(),
            activated_by=person,
            source=source,
            activated_at=now,
        )
        locked.state = SwitchState.ACTIVE
        locked.armed_since = None
        locked.arming_reason = ""
        locked.condition_cleared_at = None
        locked.save(update_fields=["state", "armed_since", "arming_reason", "condition_cleared_at"])
        _tell(
            locked,
            spec,
            f"Kill switch {locked.name} fired: {reason}",
            f"activation:{activation.pk}",
            now,
        )
    switch.state = locked.state
    return activation


def _reach(
    switch: KillSwitch, spec: killswitches.KillSwitchSpec
) -> tuple[list[Service], list[Flag]]:
    """The services a switch halts and the flags it kills, in two queries."""
    if spec.scope == killswitches.Scope.FLAG:
        return [], list(switch.flags.all())
    if spec.scope == killswitches.Scope.SERVICE:
        services = [switch.service] if switch.service_id else []
        flags = list(
            Flag.objects.filter(
                kill_switch_enabled=True, deployments__service_id__in=[s.pk for s in services]
            ).distinct()
        )
        return services, flags
    return list(Service.objects.order_by("pk")), list(Flag.objects.filter(kill_switch_enabled=True))


def _stop_deployments(
    switch: KillSwitch,
    spec: killswitches.KillSwitchSpec,
    service_ids: list[int],
    reason: str,
    actor: Any,
    source: str,
    now: datetime,
    changes: _Changes,
) -> None:
    """Pause (or roll back) the running deployments of the halted services, skipping rows a
    tick holds: the halt already took their canaries out, and the watch pauses them next."""
    if not service_ids:
        return
    running = list(
        Deployment.objects.filter(
            service_id__in=service_ids, status=DeploymentStatus.RUNNING
        ).values_list("pk", "current_phase")
    )
    if not running:
        return
    why = f"Kill switch {switch.name}: {reason}"
    if spec.deployment_action == killswitches.DeploymentAction.ROLLBACK:
        requests = []
        for pk, _ in running:
            requests.append(
                transitions.TransitionRequest(
                    deployment_id=pk,
                    action=Action.ROLLBACK,
                    reason=why,
                    trigger="kill_switch",
                    expected_status=DeploymentStatus.RUNNING,
                )
            )
            requests.append(
                transitions.TransitionRequest(
                    deployment_id=pk,
                    action=Action.FINISH_ROLLBACK,
                    reason="Rolled back: the canary is out of traffic.",
                    expected_status=DeploymentStatus.ROLLING_BACK,
                )
            )
    else:
        requests = [
            transitions.TransitionRequest(
                deployment_id=pk,
                action=Action.PAUSE,
                reason=why,
                expected_status=DeploymentStatus.RUNNING,
            )
            for pk, _ in running
        ]
    results = transitions.deployments_transition(
        requests=requests, actor=actor, source=source, skip_locked=True, now=now
    )
    phases = dict(running)
    for result in results:
        request = result.request
        if str(request.action) == Action.FINISH_ROLLBACK:
            continue
        if not result.done:
            changes.left.append(request.deployment_id)
        elif str(request.action) == Action.ROLLBACK:
            changes.rolled_back.append(request.deployment_id)
        else:
            changes.paused.append(
                {"id": request.deployment_id, "phase": phases.get(request.deployment_id)}
            )


# --------------------------------------------------------------------------- recovery


class _RecoverDescriber:
    """A switch's recovery as the approvers see it."""

    def action(self, arguments: Any) -> str | None:
        return RECOVER_ACTION

    def describe(self, arguments: Any) -> gates.Change:
        # What the service would refuse is refused before any approval is asked for (a
        # request's stored arguments carry neither the person nor the reason).
        if "reason" in arguments:
            _check_presser(arguments.get("actor"))
            _clean_reason(str(arguments.get("reason") or ""))
        switch = KillSwitch.objects.filter(pk=arguments.get("switch_id")).first()
        if switch is None:
            raise NotFound(f"There is no kill switch {arguments.get('switch_id')}.")
        active = switch.activations.filter(state=ActivationState.ACTIVE).first()
        if active is None and not gates.granted():
            raise TransitionNotAllowed(
                f"Kill switch {switch.name!r} is not active.", code="not_active"
            )
        return gates.Change(
            action=RECOVER_ACTION,
            object_type="rollback.killswitch",
            object_id=str(switch.pk),
            object_repr=switch.name,
            version=f"activation {active.pk}" if active else "inactive",
            before={"state": switch.state},
            after={"state": SwitchState.READY},
            service=switch.service.name if switch.service_id else "",
            evidence={"changes": active.changes if active else {}},
        )


@gates.gated(_RecoverDescriber())
def kill_switch_recover(
    *,
    switch_id: int,
    reason: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    now: datetime | None = None,
) -> KillSwitchActivation:
    """A person recovers an active switch (a reason is required; an approval policy on
    ``killswitch.recover`` may hold it); 409 when it is not active."""
    _check_presser(actor)
    reason = _clean_reason(reason)
    switch = KillSwitch.objects.filter(pk=switch_id).first()
    if switch is None:
        raise NotFound(f"There is no kill switch {switch_id}.")
    person = actor if getattr(actor, "is_authenticated", False) else None
    activation = _recover(switch, reason, person, source, None, now or timezone.now())
    if activation is None:
        raise TransitionNotAllowed(f"Kill switch {switch.name!r} is not active.", code="not_active")
    return activation


def _recover(
    switch: KillSwitch,
    reason: str,
    actor: Any,
    source: str,
    attempt: int | None,
    now: datetime,
) -> KillSwitchActivation | None:
    with (
        transaction.atomic(),
        audit_context(actor=actor, source=source, reason=reason, verb="recover"),
    ):
        locked = KillSwitch.objects.select_for_update().get(pk=switch.pk)
        activation = (
            locked.activations.select_for_update().filter(state=ActivationState.ACTIVE).first()
        )
        if activation is None:
            return None
        spec = killswitches.read_kill_switch(locked.definition)
        actions = (
            set(spec.auto_recovery.actions)
            if attempt is not None
            else set(killswitches.RecoveryAction)
        )
        changes = activation.changes or {}
        restored: dict[str, Any] = {}
        if killswitches.RecoveryAction.RE_ENABLE_FLAGS in actions:
            statuses = {int(item["id"]): item["previous"] for item in changes.get("flags", [])}
            killed_at = changes.get("killedAt")
            restored["flags"] = flag_services.flags_restore_many(
                statuses=statuses,
                killed_at=datetime.fromisoformat(killed_at) if killed_at else None,
                actor=actor,
                source=source,
                reason=f"Kill switch {locked.name} recovered: {reason}",
                now=now,
            )
        if killswitches.RecoveryAction.RESTORE_TRAFFIC in actions:
            released = routing_services.services_release(
                services=list(Service.objects.filter(pk__in=changes.get("services", []))),
                holder=holder(locked),
                actor=actor,
                source=source,
                reason=f"Kill switch {locked.name} recovered: {reason}",
                now=now,
            )
            restored["services"] = [service.pk for service in released]
        if killswitches.RecoveryAction.RESUME_DEPLOYMENTS in actions:
            restored["resumed"] = _resume(
                changes.get("paused", []), locked, reason, actor, source, now
            )
        activation.state = ActivationState.RECOVERED
        activation.recovered_at = now
        activation.recovered_by = actor
        activation.recovery_attempt = attempt
        how = "automatically" if attempt is not None else "by hand"
        activation.recovery = f"Recovered {how}: {reason}"
        activation.changes = {**changes, "restored": restored}
        activation.save()
        locked.state = SwitchState.READY
        locked.condition_cleared_at = None
        if attempt is not None:
            locked.recovery_attempts = attempt
        else:
            # A person has looked: automatic recovery may try again from the start.
            locked.recovery_attempts = 0
        locked.save(update_fields=["state", "condition_cleared_at", "recovery_attempts"])
        _tell(
            locked,
            spec,
            f"Kill switch {locked.name} recovered {how}: {reason}",
            f"recovery:{activation.pk}",
            now,
        )
    return activation


def _resume(
    paused: list[dict[str, Any]],
    switch: KillSwitch,
    reason: str,
    actor: Any,
    source: str,
    now: datetime,
) -> list[int]:
    """Resume the deployments the activation paused that are still paused on the same phase."""
    wanted = {int(item["id"]): item.get("phase") for item in paused}
    if not wanted:
        return []
    still = [
        pk
        for pk, phase in Deployment.objects.filter(
            pk__in=list(wanted), status=DeploymentStatus.PAUSED
        ).values_list("pk", "current_phase")
        if phase == wanted[pk]
    ]
    if not still:
        return []
    results = transitions.deployments_transition(
        requests=[
            transitions.TransitionRequest(
                deployment_id=pk,
                action=Action.RESUME,
                reason=f"Kill switch {switch.name} recovered: {reason}",
                expected_status=DeploymentStatus.PAUSED,
                expected_phase=wanted[pk],
            )
            for pk in still
        ],
        actor=actor,
        source=source,
        now=now,
    )
    return [result.request.deployment_id for result in results if result.done]


# --------------------------------------------------------------------------- the beat


@dataclass
class WatchReport:
    watched: int = 0
    arming: int = 0
    fired: int = 0
    disarmed: int = 0
    recovered: int = 0
    paused: int = 0
    errors: list[str] = field(default_factory=list)


def kill_switches_watch(*, now: datetime | None = None) -> WatchReport:
    """Each tick: judge every enabled switch's conditions from the metric store and the open
    alerts in a fixed number of queries, arm a switch whose condition holds, fire it once it has
    held for its grace period, disarm one whose condition cleared; recover an active switch
    automatically once its condition has been clear for ``delayMs``, at most ``maxAttempts``
    times; and pause what an activation could not (a deployment a tick held)."""
    now = now or timezone.now()
    report = WatchReport()
    switches = list(KillSwitch.objects.filter(enabled=True).select_related("service"))
    specs: dict[int, killswitches.KillSwitchSpec] = {}
    for switch in switches:
        try:
            specs[switch.pk] = killswitches.read_kill_switch(switch.definition)
        except killswitches.InvalidKillSwitch as error:
            report.errors.append(f"kill switch {switch.pk}: {error}")
    watched = [s for s in switches if s.pk in specs and specs[s.pk].automatic]
    report.watched = len(watched)
    readings = _readings(watched, specs, now)
    changed: list[KillSwitch] = []
    for switch in watched:
        spec = specs[switch.pk]
        holding = [reading for reading in readings[switch.pk] if reading.holds]
        try:
            if switch.state == SwitchState.ACTIVE:
                if _auto_recover(switch, spec, holding, now, report):
                    changed.append(switch)
            elif holding:
                _arm_or_fire(switch, spec, holding, now, report, changed)
            elif switch.state == SwitchState.ARMING:
                switch.state, switch.armed_since, switch.arming_reason = SwitchState.READY, None, ""
                report.disarmed += 1
                changed.append(switch)
        except Exception as error:
            logger.exception("Kill switch %s could not be watched", switch.pk)
            report.errors.append(f"kill switch {switch.pk}: {error}")
    if changed:
        KillSwitch.objects.bulk_update(
            changed, ["state", "armed_since", "arming_reason", "condition_cleared_at"]
        )
    report.paused = _pause_left_behind(now)
    return report


def _arm_or_fire(
    switch: KillSwitch,
    spec: killswitches.KillSwitchSpec,
    holding: list[killswitches.Reading],
    now: datetime,
    report: WatchReport,
    changed: list[KillSwitch],
) -> None:
    sentence = "; ".join(reading.sentence for reading in holding)
    if switch.state != SwitchState.ARMING:
        switch.state, switch.armed_since, switch.arming_reason = SwitchState.ARMING, now, sentence
        report.arming += 1
        changed.append(switch)
        _tell(
            switch,
            spec,
            f"Kill switch {switch.name} is arming: {sentence}",
            f"arming:{int(now.timestamp())}",
            now,
        )
        if spec.grace_period_ms > 0:
            return
    assert switch.armed_since is not None
    if now - switch.armed_since < timedelta(milliseconds=spec.grace_period_ms):
        switch.arming_reason = sentence
        changed.append(switch)
        return
    held = int((now - switch.armed_since).total_seconds())
    _activate(
        switch,
        ActivationTrigger.CONDITION,
        f"{sentence} (held {held} s, grace period {spec.grace_period_ms // 1000} s)",
        {
            "conditions": [reading.numbers for reading in holding],
            "armedSince": switch.armed_since.isoformat(),
        },
        None,
        Source.SYSTEM,
        now,
    )
    # Written by the activation itself; not again by the watch's bulk update.
    if switch in changed:
        changed.remove(switch)
    report.fired += 1


def _auto_recover(
    switch: KillSwitch,
    spec: killswitches.KillSwitchSpec,
    holding: list[killswitches.Reading],
    now: datetime,
    report: WatchReport,
) -> bool:
    """Whether the switch's row changed (its clearing moment); recovers when its time has come."""
    recovery = spec.auto_recovery
    if not recovery.enabled:
        return False
    if holding:
        if switch.condition_cleared_at is not None:
            switch.condition_cleared_at = None
            return True
        return False
    if switch.condition_cleared_at is None:
        switch.condition_cleared_at = now
        return True
    if now - switch.condition_cleared_at < timedelta(milliseconds=recovery.delay_ms):
        return False
    active = switch.activations.filter(state=ActivationState.ACTIVE).first()
    if active is None or active.trigger != ActivationTrigger.CONDITION:
        # Pressed by a person: a person recovers it.
        return False
    if switch.recovery_attempts >= recovery.max_attempts:
        note = (
            f"Automatic recovery used its {recovery.max_attempts} attempts; the switch stays "
            "active until a person recovers it."
        )
        if active.recovery != note:
            active.recovery = note
            active.save(update_fields=["recovery"])
            _tell(switch, spec, f"Kill switch {switch.name}: {note}", f"exhausted:{active.pk}", now)
        return False
    cleared = int((now - switch.condition_cleared_at).total_seconds())
    _recover(
        switch,
        f"the condition has been clear for {cleared} s (attempt {switch.recovery_attempts + 1} "
        f"of {recovery.max_attempts})",
        None,
        Source.SYSTEM,
        switch.recovery_attempts + 1,
        now,
    )
    switch.refresh_from_db()
    report.recovered += 1
    return False


def _readings(
    switches: Sequence[KillSwitch], specs: dict[int, killswitches.KillSwitchSpec], now: datetime
) -> dict[int, list[killswitches.Reading]]:
    """Every condition of every switch judged, from one read of the metric store and one of
    the open alerts."""
    conditions = [
        (switch.pk, condition) for switch in switches for condition in specs[switch.pk].conditions
    ]
    metric_services = {c.service for _, c in conditions if c.watches_metrics}
    alert_services = {
        c.service for _, c in conditions if c.type == killswitches.ConditionType.CRITICAL_ALERT
    }
    windows: dict[tuple[str, int], killswitches.Window] = {}
    if metric_services:
        longest = max(_groups(c.window_ms) for _, c in conditions if c.watches_metrics)
        versions = list(
            Target.objects.filter(service__name__in=metric_services)
            .values_list("version", flat=True)
            .distinct()
        )
        groups = store.grouped(
            services=metric_services,
            spans=[(versions, longest * GROUP_SECONDS)],
            end=now,
            group_seconds=GROUP_SECONDS,
        )
        for service in metric_services:
            mine = [group for group in groups if group.service == service]
            for count in {_groups(c.window_ms) for _, c in conditions if c.service == service}:
                inside = [group for group in mine if group.index < count]
                histogram = Histogram.merged(
                    group.histogram() for group in inside if group.latency_text
                )
                windows[(service, count)] = killswitches.Window(
                    requests=sum(group.requests for group in inside),
                    errors=sum(min(group.errors, group.requests) for group in inside),
                    latency_p95=histogram.percentile(95) if histogram.total else None,
                )
    alerts: dict[str, int] = {}
    if alert_services:
        alerts = dict(
            Alert.objects.filter(service__in=alert_services, severity=AlertSeverity.CRITICAL)
            .exclude(status=AlertStatus.RESOLVED)
            .values("service")
            .annotate(n=Count("pk"))
            .values_list("service", "n")
        )
    readings: dict[int, list[killswitches.Reading]] = {switch.pk: [] for switch in switches}
    for pk, condition in conditions:
        window = windows.get((condition.service, _groups(condition.window_ms)))
        readings[pk].append(killswitches.judge(condition, window, alerts.get(condition.service, 0)))
    return readings


def _groups(window_ms: int) -> int:
    return max(1, -(-window_ms // (GROUP_SECONDS * 1000)))


def _pause_left_behind(now: datetime) -> int:
    """Running deployments of halted services: an activation skipped them while a tick held
    their rows. Paused now (and recorded on the activation that halted the service)."""
    left = list(
        Deployment.objects.filter(
            status=DeploymentStatus.RUNNING, service__halted_since__isnull=False
        ).values_list("pk", flat=True)
    )
    if not left:
        return 0
    results = transitions.deployments_transition(
        requests=[
            transitions.TransitionRequest(
                deployment_id=pk,
                action=Action.PAUSE,
                reason="Paused: its service is halted by a kill switch.",
                expected_status=DeploymentStatus.RUNNING,
            )
            for pk in left
        ],
        skip_locked=True,
        now=now,
    )
    done = [result for result in results if result.done and result.deployment is not None]
    if done:
        _record_late_pauses(done)
    return len(done)


def _record_late_pauses(done: list[transitions.TransitionResult]) -> None:
    by_service: dict[int, list[dict[str, Any]]] = {}
    for result in done:
        deployment = result.deployment
        assert deployment is not None
        by_service.setdefault(deployment.service_id, []).append(
            {"id": deployment.pk, "phase": deployment.current_phase}
        )
    active = KillSwitchActivation.objects.select_for_update().filter(state=ActivationState.ACTIVE)
    with transaction.atomic():
        for activation in active:
            changes = activation.changes or {}
            mine = [pk for pk in changes.get("services", []) if pk in by_service]
            if not mine:
                continue
            paused = list(changes.get("paused", []))
            for pk in mine:
                paused += by_service.pop(pk)
            activation.changes = {**changes, "paused": paused}
            activation.save(update_fields=["changes"])


def _tell(
    switch: KillSwitch, spec: killswitches.KillSwitchSpec, text: str, what: str, now: datetime
) -> None:
    """News of a switch to its channels, the more urgent the higher its priority."""
    if not spec.notify_channels:
        return
    health_services.notifications_queue_many(
        news=[
            health_services.News(
                key=f"killswitch:{switch.pk}:{what}",
                policy=None,
                subject=f"[canary] [{spec.priority.value}] {text}"[:200],
                payload={
                    "event": "killswitch",
                    "text": text,
                    "switch": switch.pk,
                    "name": switch.name,
                    "scope": switch.scope,
                    "priority": spec.priority.value,
                    "state": switch.state,
                },
                channels=list(spec.notify_channels),
                recipients=list(spec.notify_recipients),
            )
        ],
        now=now,
    )
