"""What a deployment's lifecycle action looks like to an approver: the approval gate's view of
`deployment_transition` (`canary_site.gates`).

The person's verbs that a policy may gate are start, promote, promote fully, abort, retry and a
manual rollback; pause and resume are not gated, and nor is anything the control loop decides
(its transitions go through `deployments_transition`, which is `gates.part_of` them). The
version is the deployment's ``updated_at``: any change to its row since the request supersedes
the request. The scope is the deployment's service and the tags of the flags it drives.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from canary_site import gates
from canary_site.exceptions import NotFound, TransitionNotAllowed
from deployments import lifecycle
from deployments.lifecycle import Action
from deployments.models import Deployment

ACTIONS = {
    Action.START: "deployment.start",
    Action.PROMOTE: "deployment.promote",
    Action.PROMOTE_FULL: "deployment.promote_full",
    Action.ABORT: "deployment.abort",
    Action.RETRY: "deployment.retry",
    Action.ROLLBACK: "deployment.rollback",
}


class TransitionDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        try:
            return ACTIONS.get(Action(str(arguments.get("action"))))
        except ValueError:
            return None

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        verb = Action(str(arguments["action"]))
        deployment = (
            Deployment.objects.select_related("service")
            .prefetch_related("flags", "phases")
            .filter(pk=arguments.get("deployment_id"))
            .first()
        )
        if deployment is None:
            raise NotFound(f"There is no deployment {arguments.get('deployment_id')}.")
        status = lifecycle.Status(deployment.status)
        if not lifecycle.can(status, verb):
            raise TransitionNotAllowed(lifecycle.refusal_reason(status, verb))
        phases = sorted(deployment.phases.all(), key=lambda phase: phase.order)
        current = next((p for p in phases if p.order == deployment.current_phase), None)
        before = {
            "status": deployment.status,
            "phase": deployment.current_phase,
            "canary_share": float(deployment.canary_share),
        }
        evidence: dict[str, Any] = {}
        if arguments.get("evidence"):
            evidence["evidence"] = gates.plain(arguments["evidence"])
        if current is not None and current.judgement:
            evidence["phase"] = current.order
            evidence["judgement"] = gates.plain(current.judgement)
        tags = sorted({tag for flag in deployment.flags.all() for tag in flag.tags or []})
        return gates.Change(
            action=ACTIONS[verb],
            object_type="deployments.deployment",
            object_id=str(deployment.pk),
            object_repr=f"deployment {deployment.name} ({deployment.service.name} "
            f"{deployment.canary_version})",
            version=deployment.updated_at.isoformat(),
            before=before,
            after={**before, **_after(verb, deployment, phases)},
            service=deployment.service.name,
            tags=tuple(tags),
            evidence=evidence,
        )


def _after(verb: Action, deployment: Deployment, phases: list[Any]) -> dict[str, Any]:
    def share(order: int) -> float:
        phase = next((p for p in phases if p.order == order), None)
        return float(phase.traffic_percentage) if phase is not None else 0.0

    if verb == Action.START:
        return {"status": "running", "phase": 1, "canary_share": share(1)}
    if verb == Action.PROMOTE:
        following = (deployment.current_phase or 0) + 1
        if following > len(phases):
            return {"status": "succeeded", "canary_share": 100.0}
        return {"phase": following, "canary_share": share(following)}
    if verb == Action.PROMOTE_FULL:
        return {"status": "succeeded", "canary_share": float(Decimal(100))}
    if verb == Action.ABORT:
        return {"status": "aborted", "canary_share": 0.0}
    if verb == Action.ROLLBACK:
        return {"status": "rolling_back", "canary_share": 0.0}
    return {"status": "pending", "phase": None, "canary_share": 0.0}


transition = TransitionDescriber()
