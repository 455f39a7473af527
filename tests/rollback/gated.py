"""A gated service of the tests' own, so the approval workflow is tested apart from the lower
apps' call sites: it changes a health policy's description, and its version is the policy's
``updated_at``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary_site import gates
from canary_site.choices import Source
from health import services as health_services
from health.models import HealthPolicy

ACTION = "flag.update"
TAG = "payments"


class NoteDescriber:
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        return ACTION

    def describe(self, arguments: Mapping[str, Any]) -> gates.Change:
        policy = HealthPolicy.objects.get(pk=arguments["policy"].pk)
        return gates.Change(
            action=ACTION,
            object_type="health.healthpolicy",
            object_id=str(policy.pk),
            object_repr=f"health policy {policy.name}",
            version=policy.updated_at.isoformat(),
            before={"description": policy.description},
            after={"description": arguments["description"]},
            tags=(TAG,),
        )


@gates.gated(NoteDescriber())
def policy_note(
    *,
    policy: HealthPolicy,
    description: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
) -> HealthPolicy:
    return health_services.health_policy_update(
        policy=policy, description=description, actor=actor, source=source
    )
