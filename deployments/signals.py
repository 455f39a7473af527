"""Signals the deployments app sends; higher apps (rollback) receive them.

Both are sent after the transaction that caused them has committed (``transaction.on_commit``),
with ``send_robust``: a receiver sees committed rows, and a failing receiver is logged without
undoing the deployment's decision.

``deployment_breached``, ``sender=Deployment``, when the tick finds the canary breaching a
rollback threshold of its phase, or its health policy asking for a rollback:

- ``deployment``: the `Deployment` (as committed);
- ``phase``: the order of the phase that breached;
- ``evidence``: the phase judgement, the health check and the breaches, as JSON;
- ``reason``: the sentence recorded on the timeline;
- ``rolled_back``: True when auto-rollback was on and the deployment has taken the canary out
  of traffic itself; False when auto-rollback is off and a person (or the rollback app, with
  an approval) must decide.

``deployment_transitioned``, ``sender=Deployment``, after every lifecycle transition:

- ``deployment``, ``event`` (the `DeploymentEvent` written), ``action``, ``from_status``,
  ``to_status``.
"""

from typing import Any

from django.db.models import ProtectedError
from django.dispatch import Signal

deployment_breached = Signal()
deployment_transitioned = Signal()


def keep_policies_in_use(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``pre_delete`` of a health policy: refused while a deployment under way is judged by it
    (the link itself empties on delete, which must not happen to a running canary)."""
    from deployments.lifecycle import ACTIVE_STATUSES
    from deployments.models import Deployment

    using = list(
        Deployment.objects.filter(
            health_policy=instance, status__in=[str(status) for status in ACTIVE_STATUSES]
        )[:5]
    )
    if using:
        raise ProtectedError(f"Health policy {instance} judges deployments under way.", set(using))
