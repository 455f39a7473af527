"""Signals the health app sends; higher apps (deployments) receive them.

``health_evaluated`` is sent once for every health check stored by ``health_evaluate`` or
``health_evaluate_many``, after the check (and any alert it raised or resolved) is saved, with
``sender=HealthCheck`` and these keyword arguments:

- ``check``: the stored ``HealthCheck``;
- ``evaluation``: the ``health.analysis.Evaluation`` behind it (per-check results, rollback
  checks and statistics);
- ``service``, ``canary_version``, ``stable_version`` (``""`` when none): the series judged;
- ``policy``: the ``HealthPolicy`` used;
- ``verdict``: ``"pass"``, ``"warning"``, ``"critical"`` or ``"inconclusive"``;
- ``should_rollback``: True when an auto-rollback threshold of the policy was breached;
- ``alert``: the ``Alert`` raised, updated or resolved by the check, or None.

A check that was already stored for the same window (a pass that ran twice) is returned again
but not signalled again.
"""

from django.dispatch import Signal

health_evaluated = Signal()
