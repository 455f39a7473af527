"""Writes of the rollback app: plain keyword-only functions named <entity>_<action>.

- `approvals`: approval policies, the gate that opens requests, decisions and expiry.
- `plans`: rollback plans, read and checked in the guide's vocabulary.
- `executions`: rollbacks themselves: begun by the control loop on a breach, asked for by a
  person, rehearsed; run step by step by the beat, cancelled, finished or failed.
- `killswitches`: emergency kill switches: created, fired (by a person, kill-all or their
  conditions on the beat) and recovered.
"""

from rollback.services.approvals import (
    APPROVE_PERMISSION,
    POLICY_FIELDS,
    PolicyGate,
    approval_policy_create,
    approval_policy_delete,
    approval_policy_update,
    approval_policy_validate,
    approval_request_approve,
    approval_request_cancel,
    approval_request_open,
    approval_request_reject,
    approval_requests_expire,
    possible_approvers,
    request_summary,
)
from rollback.services.executions import (
    ExecutionRunner,
    rollback_execution_cancel,
    rollback_executions_advance,
    rollback_rehearse,
    rollback_request,
)
from rollback.services.killswitches import (
    kill_switch_create,
    kill_switch_delete,
    kill_switch_kill_all,
    kill_switch_recover,
    kill_switch_trigger,
    kill_switch_update,
    kill_switch_validate,
    kill_switches_watch,
)
from rollback.services.plans import (
    rollback_plan_create,
    rollback_plan_delete,
    rollback_plan_update,
    rollback_plan_validate,
)

__all__ = [
    "APPROVE_PERMISSION",
    "POLICY_FIELDS",
    "ExecutionRunner",
    "PolicyGate",
    "approval_policy_create",
    "approval_policy_delete",
    "approval_policy_update",
    "approval_policy_validate",
    "approval_request_approve",
    "approval_request_cancel",
    "approval_request_open",
    "approval_request_reject",
    "approval_requests_expire",
    "kill_switch_create",
    "kill_switch_delete",
    "kill_switch_kill_all",
    "kill_switch_recover",
    "kill_switch_trigger",
    "kill_switch_update",
    "kill_switch_validate",
    "kill_switches_watch",
    "possible_approvers",
    "request_summary",
    "rollback_execution_cancel",
    "rollback_executions_advance",
    "rollback_plan_create",
    "rollback_plan_delete",
    "rollback_plan_update",
    "rollback_plan_validate",
    "rollback_rehearse",
    "rollback_request",
]
