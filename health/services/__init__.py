"""Writes of the health app: plain keyword-only functions named <entity>_<action>, one module per
subsystem, every public one importable from here.

- `ingestion`: `metrics_record_outcomes` (the routing proxy's batches) and `metrics_push` (the
  REST push, idempotent by key).
- `prometheus`: `prometheus_query_create` and `prometheus_pull` (the beat's pull of PromQL
  queries).
- `compaction`: `metrics_compact` (roll-up of old fine buckets and retention).
- `policies`: `health_policy_create`, `health_policy_update`, `health_policy_delete`.
- `evaluation`: `health_evaluate` and `health_evaluate_many` store health checks, raise and
  resolve alerts and send `health.signals.health_evaluated`.
- `alerts`: the stored checks' alerts (the decision is `health.alerting.decide_alert`),
  `alert_acknowledge`, `alert_resolve` (people), `alerts_resolve_for_canaries` (a canary leaving
  traffic) and `alerts_escalate` (the beat).
- `outbox`: `notifications_queue` and `notifications_queue_many` (news other than alerts, such
  as a deployment's), and
  `notification_deliver`, `notifications_deliver_due`, `notification_retry` (the outbox's
  workers and the admin).
"""

from health.services.alerts import (
    alert_acknowledge,
    alert_raise,
    alert_resolve,
    alerts_escalate,
    alerts_resolve_for,
    alerts_resolve_for_canaries,
)
from health.services.compaction import CompactReport, metrics_compact
from health.services.evaluation import EvaluationRequest, health_evaluate, health_evaluate_many
from health.services.ingestion import (
    OutcomeBatchItem,
    PayloadTooLarge,
    PushResult,
    metrics_push,
    metrics_record_outcomes,
)
from health.services.outbox import (
    News,
    notification_deliver,
    notification_retry,
    notifications_deliver_due,
    notifications_queue,
    notifications_queue_many,
)
from health.services.policies import (
    POLICY_FIELDS,
    health_policy_create,
    health_policy_delete,
    health_policy_update,
)
from health.services.prometheus import PullReport, prometheus_pull, prometheus_query_create

__all__ = [
    "POLICY_FIELDS",
    "CompactReport",
    "EvaluationRequest",
    "News",
    "OutcomeBatchItem",
    "PayloadTooLarge",
    "PullReport",
    "PushResult",
    "alert_acknowledge",
    "alert_raise",
    "alert_resolve",
    "alerts_escalate",
    "alerts_resolve_for",
    "alerts_resolve_for_canaries",
    "health_evaluate",
    "health_evaluate_many",
    "health_policy_create",
    "health_policy_delete",
    "health_policy_update",
    "metrics_compact",
    "metrics_push",
    "metrics_record_outcomes",
    "notification_deliver",
    "notification_retry",
    "notifications_deliver_due",
    "notifications_queue",
    "notifications_queue_many",
    "prometheus_pull",
    "prometheus_query_create",
]
