"""App config of the rollback app."""

from django.apps import AppConfig


class RollbackConfig(AppConfig):
    name = "rollback"
    verbose_name = "Rollback"

    def ready(self) -> None:
        # The lower apps' services call the gate in canary_site; the policies live here.
        from canary_site import gates
        from deployments import rollbacks
        from rollback.services import ExecutionRunner, PolicyGate

        gates.register(PolicyGate())
        # Rollbacks the control loop or a person begins run by their plans.
        rollbacks.register(ExecutionRunner())
        # The validator's ``type: "rollback"`` and ``type: "kill_switch"`` read plans and
        # switches as this app does.
        from deployments.validation import register_validator
        from rollback.killswitch_validation import validate_kill_switch
        from rollback.validation import validate_rollback_plan

        register_validator("rollback", validate_rollback_plan)
        register_validator("kill_switch", validate_kill_switch)
        # /metrics reads this app's state from the database at scrape time.
        from canary_site.metrics import register_collector
        from rollback.metrics import collector

        register_collector(collector)
