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

from django.dispatch import Signal

deployment_breached = Signal()
deployment_transitioned = Signal()
